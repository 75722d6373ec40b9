"""2-D against 3-D on the same data: vmunet_tiny (slice-wise) vs vmunet3d_tiny (3-D patches).

Data: the demo3d slabs (real MNI152 2009a template at 2 mm, grey / white matter; built offline by
``vmunet.data.demo3d``): three training slabs, one validation slab, one held-out test slab, no
voxel shared. Both models train on the same three training slabs:

* 2-D: ``vmunet_tiny`` on every axial slice of the training slabs (48 slices), resized to 96 x 96
  (``data.size``), ``light`` augmentation, batch 8.
* 3-D: ``vmunet3d_tiny`` on random 64 x 64 x 16 patches at 2 mm (pos:neg 1:1), flips, batch 2.

Equal compute = **equal training wall time** on the same machine and threads: each model trains
whole epochs until ``--budget`` seconds have passed (the epoch that crosses the line is finished),
the same optimiser for both (AdamW lr 1e-2, weight decay 1e-2, grad clip 1, constant lr, CE + Dice).
Training voxels seen are printed too (the other common yardstick).

Scoring (identical for both): the last checkpoint segments the held-out test slab with
``vmunet.inference.Segmenter`` (2-D: slice by slice along Z; 3-D: gaussian sliding window,
overlap 0.5) on the slab's own grid, then the Synapse protocol gives Dice and HD95 in mm per tissue.

    python benchmarks/compare_2d_3d.py [--budget 240] [--threads 2] [--out /tmp/cmp2d3d]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vmunet.config import load_config  # noqa: E402
from vmunet.data.demo3d import make_demo3d_data  # noqa: E402

COMMON = [
    "optim.lr=1e-2",
    "optim.weight_decay=1e-2",
    "scheduler.name=none",
    "loss.name=ce_dice",
    "train.grad_clip=1.0",
    "train.device=cpu",
    "train.log_every_steps=1000",
    "data.num_workers=0",
]


def _train_for(trainer, budget: float) -> dict:
    """Whole epochs until ``budget`` seconds of training have passed; returns steps, epochs, time."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget:
        trainer.train_one_epoch()
        trainer.epoch += 1
        trainer.epoch_step = 0
        trainer._epoch_loss_sum, trainer._epoch_loss_count = 0.0, 0
    seconds = time.perf_counter() - t0
    trainer.save("last.pt")
    return {"seconds": seconds, "epochs": trainer.epoch, "steps": trainer.global_step}


def _score(ckpt: Path, image: Path, label: Path, names: list[str], **seg_kwargs) -> dict:
    from vmunet.data import read_image
    from vmunet.inference import Segmenter
    from vmunet.metrics import synapse_protocol

    seg = Segmenter(ckpt, device="cpu", **seg_kwargs)
    img, lab = read_image(image), read_image(label)
    t0 = time.perf_counter()
    pred = seg.predict(img).labels
    dt = time.perf_counter() - t0
    res = synapse_protocol(
        [pred.astype(np.int64)],
        [np.asarray(lab.array, np.int64)],
        spacings=[img.spacing],
        classes={i: n for i, n in enumerate(names) if i},
        hd95_units="mm",
    )
    s = res.to_dict()
    per = s["per_class"] if "per_class" in s else s["summary"]["per_class"]
    mean = s["mean"] if "mean" in s else s["summary"]["mean"]
    return {
        "dice": {n: per[n]["dice"]["mean"] for n in names[1:]},
        "hd95_mm": {n: per[n]["hd95"]["mean"] for n in names[1:]},
        "mean_dice": mean["dice"],
        "mean_hd95_mm": mean["hd95"],
        "segment_seconds": dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/vmunet_cmp2d3d")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    root = out / "demo3d_data"
    dl = json.loads(make_demo3d_data(root).read_text())
    names = ["background", "grey_matter", "white_matter"]
    test = dl["test"][0]

    from vmunet.train import Trainer

    cfg2 = load_config(
        "demo",
        overrides=[
            *COMMON,
            "data.kind=datalist",
            f"data.root={root}",
            f"data.datalist={root / 'datalist.json'}",
            "data.size=[96, 96]",
            "data.batch_size=8",
            "data.augmentation=light",
            "data.normalization={kind: window, min: 0, max: 255}",
            f"output_dir={out / 'run2d'}",
        ],
    )
    cfg3 = load_config(
        "demo3d",
        overrides=[*COMMON, f"data.root={root}", "data.size=[64, 64, 16]", f"output_dir={out / 'run3d'}"],
    )
    rows = {}
    for tag, cfg, cls, roi_voxels in (
        ("2-D vmunet_tiny (slices)", cfg2, Trainer, 96 * 96),
        ("3-D vmunet3d_tiny (patches)", cfg3, Trainer, 64 * 64 * 16),
    ):
        torch.manual_seed(0)
        trainer = cls(cfg, Path(cfg.output_dir))
        n_params = sum(p.numel() for p in trainer.raw_model.parameters())
        run = _train_for(trainer, args.budget)
        samples = run["steps"] * cfg.data.batch_size
        seg_kwargs = {"overlap": 0.5, "batch_size": 4}
        score = _score(
            Path(cfg.output_dir) / "last.pt", root / test["image"], root / test["label"], names, **seg_kwargs
        )
        rows[tag] = {**run, "params": n_params, "train_voxels": samples * roi_voxels, **score}
        print(tag, json.dumps(rows[tag]), flush=True)

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {args.threads}; "
        f"budget {args.budget:.0f} s of training per model (equal wall time)"
    )
    head = ["model", "params", "epochs", "steps", "train s", "Mvoxels", "Dice GM", "Dice WM", "mean"]
    head += ["HD95 GM", "HD95 WM", "mean", "seg s"]
    print(f"{head[0]:30s} " + " ".join(f"{h:>8s}" for h in head[1:]))
    for tag, r in rows.items():
        d, h = r["dice"], r["hd95_mm"]
        vals = [r["params"], r["epochs"], r["steps"], round(r["seconds"]), round(r["train_voxels"] / 1e6, 1)]
        vals += [d["grey_matter"], d["white_matter"], r["mean_dice"]]
        vals += [h["grey_matter"], h["white_matter"], r["mean_hd95_mm"], r["segment_seconds"]]
        print(f"{tag:30s} " + " ".join(f"{v:8.3f}" if isinstance(v, float) else f"{v:>8}" for v in vals))
    a, b = rows.values()
    better = "3-D" if b["mean_dice"] > a["mean_dice"] else "2-D"
    print(
        f"mean Dice ratio 3-D / 2-D: {b['mean_dice'] / a['mean_dice']:.3f} ({better} higher); "
        f"mean HD95 ratio 3-D / 2-D: {b['mean_hd95_mm'] / a['mean_hd95_mm']:.3f}"
        if a["mean_dice"] and math.isfinite(a["mean_hd95_mm"]) and a["mean_hd95_mm"]
        else ""
    )
    (out / "compare_2d_3d.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
