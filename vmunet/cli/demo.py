"""``vmunet demo``: train, test and segment on the bundled real demo data (MNI152 brain slices).

Example:
    $ vmunet demo --output demo_output
    $ vmunet demo --quick            # one short epoch: checks the installation in about a minute
"""

from __future__ import annotations

import argparse

from vmunet.cli._common import add_set_argument

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  vmunet demo                               # everything into ./demo_output (a few minutes on 2 CPU cores)
  vmunet demo --output /tmp/demo --epochs 4
  vmunet demo --quick                       # one short epoch: checks the installation end to end

What it does, with the same functions as the other commands:
  1. builds the demo data offline: axial slices of the MNI ICBM152 2009a brain template shipped
     with nilearn, labelled background / grey matter / white matter   (vmunet.data.make_demo_data)
  2. trains the packaged 'demo' recipe (tiny VM-UNet)                  (vmunet train demo)
  3. scores the best checkpoint on the held-out test slices            (vmunet test demo ...)
  4. segments the held-out scans with overlays and scores the files    (vmunet segment / evaluate)
Outputs: run/ (checkpoints, curves.png), test/, segmentations/ (overlays/), evaluation.json,
summary.json. The demo data is reused on a second run; the training is redone.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train, test and segment on the bundled real demo data (brain MRI template slices)",
        description=(
            "End-to-end demo on real images, offline: build the MNI152 demo data, train the tiny "
            "VM-UNet, test it on the held-out slices, segment them with overlays, print a summary."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", "-o", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the demo recipe's train.epochs)")
    p.add_argument(
        "--quick", action="store_true", help="two training steps at 32x32: a smoke check, not a result"
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train (default: auto)"
    )
    add_set_argument(p, "override values of the demo recipe, e.g. --set train.seed=1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while segmenting")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmunet import __version__
    from vmunet.demo import run_demo
    from vmunet.errors import VmunetUserError

    if args.epochs is not None and args.epochs < 1:
        raise VmunetUserError(f"--epochs: expected a positive integer, got {args.epochs}")
    print(f"vmunet {__version__} demo -> {args.output}", flush=True)
    summary = run_demo(
        args.output,
        epochs=args.epochs,
        quick=args.quick,
        device=args.device,
        overrides=args.overrides,
        progress=not args.no_progress,
    )
    print(summary.format())
    if args.quick:
        print("(quick mode: a smoke check of every step; run `vmunet demo` for real numbers)")
    return 0
