"""``vmunet plan``: fingerprint a data set and write the recipe ``vmunet train`` runs."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  vmunet plan nnUNet_raw/Dataset001_Brain --output plans/brain.yaml
  vmunet plan my_data/ --output plans/mine.yaml --dims 2 --memory-gb 8
  vmunet plan datalist.json --output plans/dl.yaml --fold 1

DATA is an nnU-Net raw folder (dataset.json, imagesTr/, labelsTr/), a MONAI datalist
JSON, or a folder with images/ and labels/. The scans are read once; fingerprint.json
beside the recipe is reused by a second plan with other options. Every planned key
carries a comment saying why. Then: vmunet train plans/brain.yaml
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="fingerprint your own data set and write a training recipe for it",
        description="Fingerprint a data set (shapes, spacings, intensities, labels), check it, split it, "
        "and write the recipe vmunet train runs (2-D or 3-D, spacing, normalisation, size, batch).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="nnU-Net raw folder, MONAI datalist JSON, or images/ + labels/ folder")
    p.add_argument("--output", required=True, help="the recipe to write (.yaml)")
    p.add_argument(
        "--dims", type=int, choices=[2, 3], default=None, help="force 2-D or 3-D (default: decide)"
    )
    p.add_argument(
        "--memory-gb",
        type=float,
        default=None,
        help="memory per training step (default: the GPU's, or a CPU figure)",
    )
    p.add_argument("--fold", type=int, default=0, help="which of the folds validates (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="override the planned epochs")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 4)")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="plan from the good cases, list the ones with problems in the recipe (default: strict)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from vmunet.errors import VmunetUserError
    from vmunet.plan import plan_dataset

    for name in ("memory_gb", "epochs", "workers"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise VmunetUserError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    if args.fold < 0:
        raise VmunetUserError(f"--fold must be >= 0, got {args.fold}")

    def progress(done: int, total: int) -> None:
        width = 30
        bar = "#" * (width * done // total)
        sys.stderr.write(f"\rfingerprint [{bar:<{width}}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    path, summary = plan_dataset(
        args.data,
        args.output,
        dims=args.dims,
        memory_gb=args.memory_gb,
        fold=args.fold,
        epochs=args.epochs,
        workers=args.workers,
        skip_invalid=args.skip_invalid,
        progress=progress if sys.stderr.isatty() else None,
    )
    if summary["fingerprint_reused"]:
        print(f"fingerprint reused: {path.parent / 'fingerprint.json'}")
    print(f"recipe: {path} ({summary['spatial_dims']}-D, fold {summary['fold']} of {len(summary['folds'])})")
    print(f"next: vmunet train {path}")
    return 0
