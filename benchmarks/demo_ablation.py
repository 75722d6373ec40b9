"""Why VM-UNet lost to a plain U-Net on the demo, and what fixes it: one short training per row.

Every row trains the packaged ``demo`` recipe (MNI152 slices, Dice + CE, AdamW, cosine) with a
few overrides on the same demo data, keeps ``best.pt`` by validation Dice and scores it on the
held-out test split with the ``standard`` protocol (what ``vmunet test`` runs). Printed: best
validation Dice, mean test Dice (grey + white matter), test HD95 (mm), training seconds, and
parameters. Timings are wall-clock on whatever machine runs it (compare rows of one run only).

Run by hand (not a test):

    PYTHONPATH=. python benchmarks/demo_ablation.py --output /tmp/ablation            # every row
    PYTHONPATH=. python benchmarks/demo_ablation.py --output /tmp/ablation --rows 0 3  # some rows
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

# (label, overrides on top of the demo recipe)
ROWS: list[tuple[str, list[str]]] = [
    ("A. old demo: vmunet_tiny, patch 4, lr 1e-2, 10 ep, val every 2", ["train.val_every=2"]),
    ("B. MONAI BasicUNet, same recipe", ["model.name=monai_basicunet_2d", "train.val_every=2"]),
    ("C. vmunet_tiny, patch_size 2", ["model.overrides.patch_size=2", "train.val_every=2"]),
    ("D. vmunet_tiny, full_res_skip 16", ["model.overrides.full_res_skip=16", "train.val_every=2"]),
    (
        "E. vmunet_tiny, patch 2 + full_res_skip 16",
        ["model.overrides.patch_size=2", "model.overrides.full_res_skip=16", "train.val_every=2"],
    ),
    ("F. vmunet_tiny, lr 2e-3", ["optim.lr=2e-3", "train.val_every=2"]),
    ("G. vmunet_tiny, 96x96 input", ["data.size=[96, 96]", "train.val_every=2"]),
    ("H. vmunet_tiny, 20 epochs", ["train.epochs=20", "scheduler.t_max=20", "train.val_every=2"]),
    (
        "I. vmunet_tiny, full_res_skip 16, 20 epochs",
        ["model.overrides.full_res_skip=16", "train.epochs=20", "scheduler.t_max=20", "train.val_every=2"],
    ),
    ("J. vmunet_tiny, full_res_skip 16, lr 2e-3", ["model.overrides.full_res_skip=16", "optim.lr=2e-3"]),
]


def run_row(label: str, overrides: list[str], data_dir: Path, out: Path) -> dict:
    from vmunet.config import load_config
    from vmunet.train import Trainer
    from vmunet.train.evaluate import test_checkpoint

    base = [f"data.datalist={data_dir / 'datalist.json'}", f"data.root={data_dir}", "data.kind=datalist"]
    base.append("model.overrides={}")  # every row starts from the old demo (no full_res_skip)
    cfg = load_config("demo", base + ["train.device=cpu"] + overrides)
    trainer = Trainer(cfg, output_dir=out)
    n_params = sum(p.numel() for p in trainer.raw_model.parameters())
    t0 = time.perf_counter()
    summary = trainer.fit()
    seconds = time.perf_counter() - t0
    tested = test_checkpoint(cfg, summary["best"], split="test", device="cpu", output_dir=out / "test")
    res = tested["result"].summary
    per_class = res.get("per_class", {})
    return {
        "row": label,
        "overrides": overrides,
        "params": n_params,
        "best_val_dice": summary["best_val_dice"],
        "best_epoch": summary["best_epoch"],
        "test_dice": float(res.get("mean", {}).get("dice", math.nan)),
        "test_hd95": float(res.get("mean", {}).get("hd95", math.nan)),
        "test_dice_per_class": {k: float(v["dice"]["mean"]) for k, v in per_class.items()},
        "train_seconds": seconds,
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True)
    ap.add_argument("--rows", type=int, nargs="*", help="row indices (default: all)")
    args = ap.parse_args()
    from vmunet.data import make_demo_data

    out = Path(args.output)
    data_dir = out / "demo_data"
    make_demo_data(data_dir)
    results = []
    for i in args.rows if args.rows else range(len(ROWS)):
        label, overrides = ROWS[i]
        r = run_row(label, overrides, data_dir, out / f"row{i}")
        results.append(r)
        print(
            f"| {r['row']} | {r['best_val_dice']:.3f} | {r['test_dice']:.3f} | {r['test_hd95']:.2f} "
            f"| {r['train_seconds']:.0f} | {r['params'] / 1e6:.2f} M |",
            flush=True,
        )
        (out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
