"""``vmunet train`` and ``vmunet test``: train a recipe; score a checkpoint on the held-out split.

Example:
    $ vmunet train configs/isic17.yaml --set data.root=data/isic2017 --output runs/isic17
    $ vmunet train demo --set train.epochs=2
    $ vmunet test configs/isic17.yaml --checkpoint runs/isic17/best.pt
    $ torchrun --nproc_per_node=2 -m vmunet train configs/synapse.yaml
"""

from __future__ import annotations

import argparse
import json
import math

from vmunet.cli._common import add_set_argument

__all__ = ["add_parser", "run", "run_test"]

TRAIN_EPILOG = """examples:
  vmunet train demo                                   # the packaged demo recipe (builds its data)
  vmunet train configs/isic17.yaml --set data.root=data/isic2017 train.epochs=100
  vmunet train configs/isic17.yaml --resume            # continue from <output>/last.pt
  vmunet train configs/isic17.yaml --resume runs/isic17/last.pt --device cuda
  torchrun --nproc_per_node=4 -m vmunet train configs/synapse.yaml   # DDP on 4 GPUs

Writes config.yaml, last.pt (every epoch), best.pt (best validation Dice), metrics.jsonl/.csv,
curves.png and val_samples.png into the output folder.
"""

TEST_EPILOG = """examples:
  vmunet test configs/isic17.yaml --checkpoint runs/isic17/best.pt
  vmunet test configs/synapse.yaml --checkpoint runs/synapse/best.pt --split test

Prints the paper's table (ISIC: pooled mIoU, DSC, Acc, Spe, Sen; Synapse: DSC and HD95 per organ
on whole volumes) and writes <checkpoint>.<split>.json / .csv beside the checkpoint.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML recipe (resumable, multi-GPU with torchrun)",
        description="Train VM-UNet from a YAML recipe (a file, or: demo, demo3d, isic17, isic18, synapse, "
        "synapse3d).",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML recipe path or packaged recipe name")
    add_set_argument(p, "override config values (YAML scalars), e.g. --set train.epochs=3 optim.lr=1e-4")
    p.add_argument("--output", "-o", help="output folder (default: the config's output_dir)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="continue a run: from CKPT, or from <output>/last.pt when no path is given",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override train.device")
    p.set_defaults(func=run)

    t = subparsers.add_parser(
        "test",
        help="score a checkpoint on the held-out split with the dataset's protocol",
        description="Evaluate a checkpoint on the test split (ISIC pooled / Synapse per organ / standard).",
        epilog=TEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", help="YAML recipe path or packaged recipe name (data and protocol)")
    t.add_argument("--checkpoint", "-c", required=True, help="a checkpoint written by vmunet train")
    t.add_argument("--split", default=None, help="split to score (default: the config's data.test_split)")
    add_set_argument(t, "override config values, e.g. --set data.root=/data/isic2017")
    t.add_argument("--output", "-o", help="folder for the JSON/CSV results (default: beside the checkpoint)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the model")
    t.set_defaults(func=run_test)


def run(args: argparse.Namespace) -> int:
    from vmunet.config import load_config
    from vmunet.train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, output_dir=args.output, resume=args.resume, device=args.device)
    best = summary["best_val_dice"]
    best_txt = f"{best:.4f} (epoch {summary['best_epoch']})" if math.isfinite(best) else "n/a"
    print(
        f"trained {summary['epochs']} epochs ({summary['steps']} steps) in {summary['seconds']:.0f} s; "
        f"best validation Dice {best_txt}"
    )
    print(f"checkpoints: {summary['best']} (best), {summary['last']} (last)")
    return 0


def run_test(args: argparse.Namespace) -> int:
    from vmunet.config import load_config
    from vmunet.train.evaluate import format_table, test_checkpoint

    cfg = load_config(args.config, args.overrides)
    result = test_checkpoint(
        cfg, args.checkpoint, split=args.split, device=args.device, output_dir=args.output
    )
    print(format_table(result))
    print(f"results: {result['files']['json']}, {result['files']['csv']}")
    if args.verbose:
        print(json.dumps(result["summary"], indent=2))
    return 0
