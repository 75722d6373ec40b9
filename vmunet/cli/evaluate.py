"""``vmunet evaluate``: score a folder of predictions against a folder of labels.

A thin shell over :func:`vmunet.metrics.evaluate_folders`.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  vmunet evaluate --pred masks/ --label labelsTs/           # Dice + HD95 (mm), NaN when unscoreable
  vmunet evaluate --pred preds/ --label labels/ --protocol synapse --output synapse.json
  vmunet evaluate --pred probs/ --label ISIC2018_Test_GroundTruth/ --protocol isic
  vmunet evaluate --pred masks/ --label labels/ --labels dataset.json --hd95-mode max

protocols:
  standard  per case and class: Dice, HD95 in the label's spacing units, NaN when a mask is empty
  isic      all pixels pooled into one confusion matrix at --threshold (VM-UNet's ISIC tables)
  synapse   8 organs, Dice and HD95 (voxels, or --hd95-units mm), TransUNet's empty-mask rule

--output FILE.json writes FILE.json (summary) and FILE.csv (per case); --output DIR writes
DIR/summary.json and DIR/per_case.csv. Exit status: 0 all cases scored, 1 some skipped, 2 usage error.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``vmunet evaluate``."""
    p = subparsers.add_parser(
        "evaluate",
        help="score predictions against labels (Dice, HD95, ISIC / Synapse protocols)",
        description="Pair predictions with labels by case name and score them under a protocol.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predictions")
    p.add_argument("--label", required=True, metavar="DIR", help="folder of labels (headers give spacing)")
    p.add_argument(
        "--protocol", default="standard", choices=("standard", "isic", "synapse"), help="default: standard"
    )
    p.add_argument(
        "--labels",
        metavar="JSON",
        help="class names: a JSON file (e.g. dataset.json) or string, {'1': 'liver'} or {'liver': 1}",
    )
    p.add_argument(
        "--output", metavar="FILE", help="write FILE.json + FILE.csv (or DIR/summary.json + per_case.csv)"
    )
    p.add_argument(
        "--hd95-mode",
        default="pooled",
        choices=("pooled", "max"),
        help="standard: pooled (medpy) or max (MONAI)",
    )
    p.add_argument(
        "--hd95-units", default="voxel", choices=("voxel", "mm"), help="synapse: voxel (papers) or mm"
    )
    p.add_argument("--threshold", type=float, default=0.5, help="isic: prediction threshold (default 0.5)")
    p.add_argument("--no-progress", action="store_true", help="never show the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the summary table, write the files; 0 when every case was scored, else 1."""
    from vmunet.errors import VmunetUserError
    from vmunet.metrics import evaluate_folders

    if not 0.0 <= args.threshold <= 1.0:
        raise VmunetUserError(f"--threshold: expected a value in [0, 1], got {args.threshold}")
    result = evaluate_folders(
        args.pred,
        args.label,
        protocol=args.protocol,
        labels=args.labels,
        hd95_mode=args.hd95_mode,
        hd95_units=args.hd95_units,
        threshold=args.threshold,
        progress=False if args.no_progress else None,
    )
    print(result.format_table())
    if args.output:
        csv_path, json_path = result.save(args.output)
        print(f"wrote {csv_path} and {json_path}")
    if result.n_scored == 0:
        print("vmunet evaluate: no case could be scored", file=sys.stderr)
        return 1
    return 1 if result.n_skipped else 0
