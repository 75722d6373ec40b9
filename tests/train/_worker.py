"""Run a short training in a fresh process (used by the resume and kill tests).

usage: python _worker.py OUTPUT_DIR [--resume] [KEY=VALUE ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import SquaresDataset  # noqa: E402

from vmunet.config import load_config  # noqa: E402
from vmunet.train import Trainer  # noqa: E402

out = sys.argv[1]
resume = "auto" if "--resume" in sys.argv else None
overrides = [a for a in sys.argv[2:] if "=" in a]
cfg = load_config(None, ["model.name=tiny:TinyNet", "model.in_channels=1", *overrides])
classes = max(2, cfg.model.out_channels)
Trainer(
    cfg,
    output_dir=out,
    resume=resume,
    device="cpu",
    train_dataset=SquaresDataset(14, classes=classes, seed=1),
    val_dataset=SquaresDataset(5, classes=classes, seed=2, augment=False),
).fit()
