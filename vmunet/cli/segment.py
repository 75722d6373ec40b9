"""``vmunet segment``: segment files, folders and DICOM series with a trained checkpoint.

Thin shell over :class:`vmunet.inference.Segmenter` and its ``segment_folder``.
Exit status: 0 all inputs segmented (or skipped), 1 some inputs failed (see the
summary CSV), 2 a usage error (bad checkpoint, missing input, bad option).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  vmunet segment scans/ --checkpoint runs/synapse/best.pt --output masks/
  vmunet segment ct1.nii.gz ct2.nrrd dicom_series/ --checkpoint best.pt --output out/ --overlay
  vmunet segment lesions/ --checkpoint isic.pt --output out/ --tta --probabilities --device cpu
  vmunet segment ct/ --checkpoint runs/synapse3d/best.pt --output out/ --overlap 0.5 --tta

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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


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
        help="slices / windows (2-D or 3-D) per forward pass",
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar / per-file lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``vmunet segment``; returns the exit status."""
    from vmunet.errors import VmunetUserError
    from vmunet.inference import Segmenter

    try:
        seg = Segmenter(
            args.checkpoint,
            device=args.device,
            batch_size=args.batch_size,
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
    )
    print(
        f"vmunet segment: {summary.n_ok} segmented, {summary.n_skipped} skipped (already done), "
        f"{summary.n_failed} failed; summary: {summary.csv_path}",
        file=sys.stderr,
    )
    return 0 if summary.ok else 1
