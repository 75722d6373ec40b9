"""``vmunet compare``: train several models under one recipe with equal epochs and score each.

Example:
    $ vmunet compare demo --models vmunet_tiny,monai_basicunet_2d --output runs/compare
"""

from __future__ import annotations

import argparse

from vmunet.cli._common import add_set_argument

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  vmunet compare demo --models vmunet_tiny,monai_basicunet_2d --output runs/compare
  vmunet compare configs/isic17.yaml --models vmunet_small,monai_swinunetr_2d --output runs/cmp17 --epochs 100

Every model trains with the same recipe (data, augmentation, loss, optimiser, schedule, seed)
and the same epochs, in its own process; best.pt (by validation Dice) is scored on the
held-out test split with the recipe's protocol. The recipe's model.overrides apply to the
recipe's own model only; the other models use their registered defaults.
Writes DIR/comparison.csv, comparison.md, comparison.json, comparison.png and one run folder
per model. Peak memory: peak RSS of each model's process on the CPU, or
torch.cuda.max_memory_allocated on a GPU.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train several models under one recipe (equal epochs) and compare them on the test split",
        description="Train several models under one recipe with equal epochs, score each on the held-out "
        "test split, and write a table (parameters, time per epoch, peak memory, Dice, HD95) and a plot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="recipe: a YAML path or a packaged name (demo, isic17, isic18, synapse)")
    p.add_argument(
        "--models",
        required=True,
        help="comma-separated registered names, e.g. vmunet_tiny,monai_basicunet_2d",
    )
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--epochs", type=int, help="epochs for every model (default: the recipe's train.epochs)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    add_set_argument(p, "override recipe values for every model, e.g. --set data.root=data/isic2017")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmunet.errors import VmunetUserError
    from vmunet.train.compare import compare_models

    if args.epochs is not None and args.epochs < 1:
        raise VmunetUserError(f"--epochs: expected a positive integer, got {args.epochs}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = compare_models(
        args.config, models, args.output, epochs=args.epochs, overrides=args.overrides, device=args.device
    )
    print(result.format_table())
    print(f"test split {result.split!r}, {result.protocol} protocol; peak memory: {result.memory_kind}")
    for key in ("csv", "markdown", "plot"):
        print(f"{key:9s} {result.files[key]}")
    return 0
