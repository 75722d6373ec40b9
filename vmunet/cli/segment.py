"""``vmunet segment``: segment files, folders and DICOM series with a trained checkpoint.

Thin shell over :class:`vmunet.inference.Segmenter` and its ``segment_folder``.
Exit status: 0 all inputs segmented (or skipped), 1 some inputs failed (see the
summary CSV), 2 a usage error (bad checkpoint, missing input, bad option).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  vmunet segment scans/ --checkpoint runs/synapse/best.pt --output masks/
  vmunet segment ct1.nii.gz ct2.nrrd dicom_series/ --checkpoint best.pt --output out/ --overlay
  vmunet segment lesions/ --checkpoint isic.pt --output out/ --tta --probabilities --device cpu
  vmunet segment ct/ --checkpoint runs/synapse3d/best.pt --output out/ --overlap 0.5 --tta
  vmunet segment scans/ -c best.pt -o masks/ --workers 2 --sw-batch-size 8
  torchrun --nproc_per_node 4 -m vmunet segment scans/ -c best.pt -o masks/
  vmunet segment scans/ -c best.pt -o masks/ --engine ray --ray-address auto

scale-out: --workers N decodes and preprocesses the next inputs in N background processes
while the model runs, and writes outputs in a background thread. Under torchrun every rank
segments its share of the inputs (input i -> rank i % WORLD_SIZE, each on cuda:LOCAL_RANK
when there are GPUs) and rank 0 writes the one summary.csv; multi-node runs need the output
folder on a shared file system. --engine ray (pip install vmunet[ray]) runs one model per
Ray actor, on a local Ray instance or the cluster at --ray-address.

2-D checkpoints segment volumes slice by slice; 3-D checkpoints (trained with data.spatial_dims: 3)
resample each volume to the training spacing, run a gaussian 3-D sliding window and write the label
map back on the input's own grid.

outputs (in --output): the label maps, named like their inputs and in their format with
their geometry (a DICOM series becomes <folder>.nii.gz, JPEG becomes PNG), input sub-folders
mirrored; probabilities/ and overlays/ when asked; summary.csv with one row per input.
Existing outputs are skipped unless --overwrite, so an interrupted run resumes.
"""


def _overlap(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def _unit(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``; ``what`` names it in the message."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_non_negative_int = _int_at_least(0, "an integer >= 0")
_positive_int = _int_at_least(1, "a positive integer")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``vmunet segment``."""
    p = subparsers.add_parser(
        "segment",
        help="segment images, volumes and DICOM series with a trained checkpoint",
        description="Segment files, folders (recursed) and DICOM series folders; label maps keep the "
        "input's geometry and format.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or DICOM series folders")
    p.add_argument("--checkpoint", "-c", required=True, metavar="CKPT", help="a vmunet checkpoint (.pt)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=4,
        metavar="N",
        help="slices (and, without --sw-batch-size, sliding windows) per forward pass",
    )
    p.add_argument(
        "--sw-batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="sliding windows (2-D or 3-D) per forward pass (default: --batch-size)",
    )
    p.add_argument(
        "--overlap",
        type=_overlap,
        default=None,
        metavar="F",
        help="sliding-window overlap [0, 1) (default: the checkpoint's, from the recipe's eval.overlap)",
    )
    p.add_argument(
        "--threshold",
        type=_unit,
        default=None,
        metavar="P",
        help="sigmoid models: foreground from this probability (default: the checkpoint's eval.threshold)",
    )
    p.add_argument(
        "--tta", action="store_true", help="average over flips (test-time augmentation; 3-D: each axis)"
    )
    p.add_argument("--probabilities", action="store_true", help="also write probability maps")
    p.add_argument("--overlay", action="store_true", help="also write PNG overlays of the contours")
    p.add_argument(
        "--axis",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="2-D checkpoints: slicing axis for volumes (default: the axial axis from the orientation)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs already exist")
    p.add_argument(
        "--workers",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="background processes decoding and preprocessing the next inputs (default 0: none)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (or each torchrun rank); ray: Ray Data actors (pip install vmunet[ray])",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="--engine ray: an existing Ray cluster (e.g. auto, ray://head:10001); default: a local instance",
    )
    p.add_argument(
        "--ray-num-cpus",
        type=_positive_int,
        default=None,
        metavar="N",
        help="--engine ray: CPUs of the local Ray instance (default: all); one actor per CPU without GPUs",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write a DICOM Segmentation <case>_seg.dcm for every DICOM series input "
        "(pip install vmunet[dicom]); every input must then be DICOM",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar / per-file lines")
    p.set_defaults(func=run)


def _dicom_seg_writers(args: argparse.Namespace) -> list:
    """``[DicomSegWriter]`` for ``--dicom-seg`` (after checking that every input is DICOM), else ``[]``."""
    if not args.dicom_seg:
        return []
    from vmunet.data.io import image_format
    from vmunet.errors import VmunetUserError
    from vmunet.inference.dicom_seg import DicomSegWriter, require_highdicom
    from vmunet.inference.folder import collect_inputs

    require_highdicom()
    for item in collect_inputs(args.inputs, exclude=args.output):
        fmt = image_format(item.path) if item.supported else None
        if fmt != "dicom":
            what = f"a {fmt} file" if fmt else "not an image vmunet reads"
            raise VmunetUserError(
                f"--dicom-seg: input {str(item.path)!r} is {what}; a DICOM Segmentation references DICOM "
                "source images, so every input must be a DICOM series (drop --dicom-seg for NIfTI label maps)"
            )
    return [DicomSegWriter(model_name=Path(args.checkpoint).stem)]


def run(args: argparse.Namespace) -> int:
    """Run ``vmunet segment``; returns the exit status."""
    from vmunet.errors import VmunetUserError
    from vmunet.inference import Segmenter
    from vmunet.inference.engines import check_engine, rank_device, share_cpu_threads, torchrun_env

    env = torchrun_env()
    if env is not None and env.world_size > 1:
        share_cpu_threads()
    check_engine(args.engine, env)  # before the model is loaded
    if args.engine != "ray" and (args.ray_address is not None or args.ray_num_cpus is not None):
        raise VmunetUserError("--ray-address / --ray-num-cpus need --engine ray")
    writers = _dicom_seg_writers(args)
    device = args.device
    if args.engine == "ray":
        device = "cpu"  # the driver only plans; each Ray actor loads its own model on its own device
    elif env is not None:
        device = rank_device(args.device, env)
    try:
        seg = Segmenter(
            args.checkpoint,
            device=device,
            batch_size=args.batch_size,
            sw_batch_size=args.sw_batch_size,
            overlap=args.overlap,
            tta=args.tta,
            axis=args.axis,
            threshold=args.threshold,
        )
    except ValueError as exc:  # a bad option value (e.g. --device gpu): one line, exit 2
        if isinstance(exc, VmunetUserError):
            raise
        raise VmunetUserError(str(exc)) from exc
    summary = seg.segment_folder(
        args.inputs,
        args.output,
        probabilities=args.probabilities,
        overlay=args.overlay,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        workers=args.workers,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_num_cpus=args.ray_num_cpus,
        ray_use_gpus=str(args.device).strip().lower() != "cpu",
        writers=writers,
    )
    if env is not None and not env.is_main:
        return 0 if summary.ok else 1
    print(
        f"vmunet segment: {summary.n_ok} segmented, {summary.n_skipped} skipped (already done), "
        f"{summary.n_failed} failed; summary: {summary.csv_path}",
        file=sys.stderr,
    )
    return 0 if summary.ok else 1
