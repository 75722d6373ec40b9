"""Watching a run: progress bar or log lines, metrics log, TensorBoard, PNG plots.

Example:
    >>> from vmunet.train.monitor import EpochProgress
    >>> bar = EpochProgress(total=10, epoch=0, epochs=1, enabled=False)
    >>> bar.update(loss=0.5, lr=1e-3, images=4)
    >>> bar.close()
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.utils.io import atomic_path, atomic_write_text

__all__ = ["EpochProgress", "MetricsLog", "plot_curves", "plot_validation_grid"]

logger = logging.getLogger("vmunet.train")


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class EpochProgress:
    """A tqdm bar (loss, lr, img/s, ETA) on a terminal; plain log lines every ``log_every`` steps otherwise.

    Args:
        total: steps in this epoch.
        epoch: 0-based epoch index.
        epochs: number of epochs.
        enabled: False on non-main ranks (prints nothing).
        log_every: steps between log lines when stderr is not a terminal.
        initial: steps already done (resume).

    Example:
        >>> EpochProgress(total=3, epoch=0, epochs=1, enabled=False).close()
    """

    def __init__(
        self, total: int, epoch: int, epochs: int, enabled: bool = True, log_every: int = 20, initial: int = 0
    ) -> None:
        self.total = total
        self.epoch = epoch
        self.epochs = epochs
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.done = initial
        self.images = 0
        self.loss_sum = 0.0
        self.count = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=f"epoch {epoch + 1}/{epochs}",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )

    def update(self, loss: float, lr: float, images: int) -> None:
        self.done += 1
        self.images += images
        self.loss_sum += loss
        self.count += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{self.loss_sum / self.count:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}"
            )
            self.bar.update(1)
        elif self.done % self.log_every == 0 or self.done == self.total:
            eta = (self.total - self.done) * elapsed / max(1, self.count)
            logger.info(
                "epoch %d/%d step %d/%d loss %.4f lr %.2e %.1f img/s ETA %s",
                self.epoch + 1,
                self.epochs,
                self.done,
                self.total,
                self.loss_sum / self.count,
                lr,
                rate,
                _fmt_time(eta),
            )

    @property
    def images_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else float("nan")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Per-epoch metrics in `metrics.jsonl` and `metrics.csv` (rewritten atomically); TensorBoard if present.

    The whole history is rewritten each epoch from the list kept in the checkpoint, so after a
    resume the log matches the run exactly (no duplicated or lost lines).

    Example:
        >>> log = MetricsLog("runs/x", enabled=False)
        >>> log.write([{"epoch": 1, "train_loss": 0.5}])
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.tb = None
        self._tb_written = 0
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the JSON/CSV logs remain
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self.tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))

    def write(self, history: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        lines = "".join(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n" for row in history)
        atomic_write_text(self.dir / "metrics.jsonl", lines)
        columns: list[str] = []
        for row in history:
            columns.extend(k for k, v in row.items() if k not in columns and not isinstance(v, (list, dict)))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
        atomic_write_text(self.dir / "metrics.csv", buf.getvalue())
        if self.tb is not None:
            for row in history[self._tb_written :]:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                        self.tb.add_scalar(k, v, global_step=row["epoch"])
            self.tb.flush()
            self._tb_written = len(history)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Training curves: losses, validation Dice and learning rate against epoch, as a PNG."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        x, y = series(key)
        if x:
            axes[0].plot(x, y, marker="o", ms=3, label=label)
    axes[0].set_title("loss")
    axes[0].legend()
    x, y = series("val_dice")
    axes[1].plot(x, y, marker="o", ms=3, color="tab:green")
    axes[1].set_title("validation Dice")
    axes[1].set_ylim(0, 1)
    x, y = series("lr")
    axes[2].plot(x, y, color="tab:purple")
    axes[2].set_title("learning rate")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return Path(path)


def _display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) normalised tensor data -> (H, W[, 3]) in [0, 1] for display."""
    img = np.asarray(image, dtype=np.float64)
    img = img[0] if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / (hi - lo + 1e-8), 0, 1)


def plot_validation_grid(
    images: np.ndarray, labels: np.ndarray, preds: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """A grid of validation images with true (green) and predicted (red) contours of each class.

    Args:
        images: (N, C, H, W) network inputs.
        labels: (N, H, W) integer class maps (binary: 0/1).
        preds: (N, H, W) integer class maps.
        path: the PNG to write.
        title: figure title.
    """
    from matplotlib.collections import LineCollection
    from skimage.measure import find_contours

    plt = _pyplot()
    n = len(images)
    cols = min(4, max(1, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(_display(images[i]), cmap="gray")
        for cls in np.unique(np.concatenate([np.unique(labels[i]), np.unique(preds[i])])):
            if cls == 0:
                continue
            for mask, color in ((labels[i] == cls, "lime"), (preds[i] == cls, "red")):
                # Pad so that a mask touching the border (or filling the image) still gets a contour.
                # One LineCollection per mask: a noisy early prediction has hundreds of contours,
                # and one ax.plot call each made a validation plot take seconds.
                contours = find_contours(np.pad(mask.astype(np.float32), 1), 0.5)
                if contours:
                    segments = [c[:, ::-1] - 1 for c in contours]  # (row, col) -> (x, y)
                    ax.add_collection(LineCollection(segments, colors=color, linewidths=1))
    fig.suptitle(f"{title}  (green: truth, red: prediction)".strip())
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(path)
