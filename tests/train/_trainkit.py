"""Throwaway pieces for trainer tests: a tiny conv net (with dropout, to exercise the RNG)
and a synthetic segmentation data set (with a random flip, to exercise augmentation seeding)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "width": width}
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Dropout2d(0.2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SquaresDataset(torch.utils.data.Dataset):
    """Bright squares on noise; label = the square (binary) or square/disc classes (multi-class)."""

    def __init__(self, n: int = 12, size: int = 32, classes: int = 2, seed: int = 0, augment: bool = True):
        rng = np.random.default_rng(seed)
        self.images, self.labels = [], []
        yy, xx = np.mgrid[:size, :size]
        for _ in range(n):
            lab = np.zeros((size, size), np.int64)
            img = rng.normal(0, 0.3, (size, size)).astype(np.float32)
            for c in range(1, classes):
                cy, cx = rng.integers(6, size - 6, 2)
                r = rng.integers(3, 6)
                m = (
                    (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
                    if c == 1
                    else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                )
                lab[m] = c
                img[m] += 1.0 * c
            self.images.append(img[None])
            self.labels.append(lab)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        img, lab = self.images[i], self.labels[i]
        # The global NumPy RNG on purpose: the trainer seeds it per sample.
        if self.augment and np.random.rand() < 0.5:  # noqa: NPY002
            img, lab = img[:, :, ::-1], lab[:, ::-1]
        return {"image": torch.from_numpy(img.copy()), "label": torch.from_numpy(lab.copy())}


# Overrides shared by the trainer tests and _worker.py (a fresh process for kill / torchrun runs).
BASE_OVERRIDES = [
    "model.name=_trainkit:TinyNet",
    "model.in_channels=1",
    "model.out_channels=3",
    "data.batch_size=4",
    "data.num_workers=0",
    "train.epochs=3",
    "train.val_every=3",
    "train.log_every_steps=1",
    "scheduler.t_max=2",
]


def make_trainer(out, overrides=(), resume=None, train_ds=None):
    from vmunet.config import load_config
    from vmunet.train import Trainer

    cfg = load_config(None, [*BASE_OVERRIDES, *overrides])
    return Trainer(
        cfg,
        output_dir=out,
        resume=resume,
        device="cpu",
        train_dataset=train_ds if train_ds is not None else SquaresDataset(14, classes=3, seed=1),
        val_dataset=SquaresDataset(5, classes=3, seed=2, augment=False),
    )


class OracleNet(nn.Module):
    """Predictions we control: binary logit ``x - 127.5`` (foreground where the pixel is > 127.5);
    with ``out_channels > 1`` the argmax is ``round(x / 100)`` (0..out_channels-1)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.offset = nn.Parameter(torch.tensor(127.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1]
        if self.out_channels == 1:
            return v - self.offset
        centres = torch.arange(self.out_channels, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 100
        return -((v - centres) ** 2)
