"""Cumulative metrics for training and validation loops, correct under ``torch.distributed``.

Each class accumulates batches with :meth:`update` (or by calling the object),
returns the aggregate with :meth:`aggregate` and starts over with :meth:`reset`,
like MONAI's ``CumulativeIterationMetric``. When ``torch.distributed`` is
initialised, :meth:`aggregate` (and :meth:`get_buffer`) are collective calls:
every rank must call them; counts are all-reduced and per-case values
all-gathered, so every rank gets the same numbers as a single process that
saw all the batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vmunet.metrics.functional import (
    ASSD_MODES,
    EMPTY_RULES,
    HD95_MODES,
    _check_choice,
    _check_metrics,
    compute_per_case,
    nan_summary,
)
from vmunet.metrics.protocols import pooled_confusion_metrics, to_unit_range

__all__ = ["CumulativeMetric", "CumulativeConfusion"]


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _comm_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class CumulativeMetric:
    """Per-case, per-class metrics accumulated over batches (Dice, HD95, ...).

    Args:
        classes: class values (label-map input) or channel indices (one-hot input) to score.
        metrics: metric names (see :data:`vmunet.metrics.METRICS`); default ``("dice",)``.
        spacing: pixel / voxel spacing used when :meth:`update` is given none (None: 1 per axis).
        onehot: input layout: ``False`` for label maps ``(B, *spatial)``, ``True`` for
            one-hot / multi-label masks ``(B, C, *spatial)``.
        hd95_mode: ``"pooled"`` (medpy, default) or ``"max"`` (MONAI).
        assd_mode: ``"pooled"`` (default) or ``"average"``.
        empty: empty-mask rule, ``"standard"`` (NaN, excluded from means and counted) or ``"synapse"``.

    Example:
        >>> import torch
        >>> from vmunet.metrics import CumulativeMetric
        >>> metric = CumulativeMetric(classes=[1, 2], metrics=("dice",))
        >>> label = torch.zeros(2, 8, 8, dtype=torch.long); label[:, 2:5, 2:5] = 1; label[:, 6:, 6:] = 2
        >>> _ = metric(label, label)  # update with a batch of predictions and labels
        >>> metric.aggregate()["dice"]["mean"]
        1.0
        >>> metric.reset()
    """

    def __init__(
        self,
        classes: Sequence[int],
        metrics: Sequence[str] = ("dice",),
        spacing: float | Sequence[float] | None = None,
        onehot: bool = False,
        hd95_mode: str = "pooled",
        assd_mode: str = "pooled",
        empty: str = "standard",
    ) -> None:
        classes = [int(c) for c in classes]
        if not classes:
            raise ValueError("classes: expected at least one class value or channel index")
        self.classes = classes
        self.metrics = _check_metrics(metrics)
        _check_choice(hd95_mode, HD95_MODES, "hd95_mode")
        _check_choice(assd_mode, ASSD_MODES, "assd_mode")
        _check_choice(empty, EMPTY_RULES, "empty")
        self.spacing = spacing
        self.onehot = bool(onehot)
        self.hd95_mode = hd95_mode
        self.assd_mode = assd_mode
        self.empty = empty
        self._buffers: dict[str, list[np.ndarray]] = {m: [] for m in self.metrics}

    def update(self, pred: Any, label: Any, spacing: Any = None) -> dict[str, np.ndarray]:
        """Score a batch and keep the per-case values.

        Args:
            pred: label maps ``(B, *spatial)`` or, with ``onehot=True``, ``(B, C, *spatial)``;
                tensors on any device or numpy arrays.
            label: same layout and shape.
            spacing: this batch's spacing (one for all, or one per case); default the constructor's.

        Returns:
            ``{metric: (B, len(classes)) array}`` for this batch.
        """
        res = compute_per_case(
            pred,
            label,
            self.classes,
            self.metrics,
            self.spacing if spacing is None else spacing,
            self.onehot,
            self.hd95_mode,
            self.assd_mode,
            self.empty,
        )
        for m in self.metrics:
            self._buffers[m].append(res[m])
        return {m: res[m] for m in self.metrics}

    __call__ = update

    def get_buffer(self) -> dict[str, np.ndarray]:
        """All per-case values so far, ``{metric: (N, len(classes))}``, gathered over ranks (rank order)."""
        local = {
            m: np.concatenate(v) if v else np.zeros((0, len(self.classes)), dtype=np.float64)
            for m, v in self._buffers.items()
        }
        if not _dist_ready() or torch.distributed.get_world_size() == 1:
            return local
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, local)
        return {m: np.concatenate([g[m] for g in gathered]) for m in self.metrics}

    def aggregate(self) -> dict[str, dict[str, Any]]:
        """Per metric: ``per_class`` means (NaN excluded), ``per_class_std``, ``count`` and ``nan_count`` per
        class, and ``mean`` (the mean of the class means)."""
        buf = self.get_buffer()
        out: dict[str, dict[str, Any]] = {}
        for m, values in buf.items():
            stats = [nan_summary(values[:, i]) for i in range(values.shape[1])]
            means = np.array([s["mean"] for s in stats], dtype=np.float64)
            ok = means[~np.isnan(means)]
            out[m] = {
                "per_class": means,
                "per_class_std": np.array([s["std"] for s in stats], dtype=np.float64),
                "count": np.array([s["n"] for s in stats], dtype=np.int64),
                "nan_count": np.array([s["n_nan"] for s in stats], dtype=np.int64),
                "mean": float(ok.mean()) if ok.size else math.nan,
            }
        return out

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._buffers = {m: [] for m in self.metrics}


class CumulativeConfusion:
    """Pooled confusion counts over batches: the ISIC protocol inside a training loop.

    Args:
        threshold: prediction threshold (foreground is ``pred >= threshold``); labels use 0.5.
        zero_division: value of a ratio with a zero denominator (default NaN).

    Example:
        >>> import torch
        >>> from vmunet.metrics import CumulativeConfusion
        >>> metric = CumulativeConfusion()
        >>> metric.update(torch.tensor([0.9, 0.2, 0.7, 0.1]), torch.tensor([1, 0, 0, 0]))
        >>> metric.aggregate()["dsc"]
        0.6666666666666666
    """

    def __init__(self, threshold: float = 0.5, zero_division: float = math.nan) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.zero_division = float(zero_division)
        self._counts = np.zeros(4, dtype=np.int64)

    def update(self, pred: Any, label: Any) -> None:
        """Add a batch of probabilities (or binary masks) and binary labels of the same shape."""
        p = to_unit_range(pred, "pred") >= self.threshold
        lab = to_unit_range(label, "label") >= 0.5
        if p.shape != lab.shape:
            raise ValueError(f"pred and label must have the same shape, got {p.shape} and {lab.shape}")
        tp = int(np.count_nonzero(p & lab))
        n_p, n_l = int(np.count_nonzero(p)), int(np.count_nonzero(lab))
        self._counts += (tp, n_p - tp, n_l - tp, p.size - n_p - n_l + tp)

    __call__ = update

    def counts(self) -> tuple[int, int, int, int]:
        """``(TP, FP, FN, TN)`` so far, summed over ranks when distributed."""
        counts = self._counts
        if _dist_ready() and torch.distributed.get_world_size() > 1:
            t = torch.as_tensor(counts, dtype=torch.int64, device=_comm_device())
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
            counts = t.cpu().numpy()
        return tuple(int(v) for v in counts)  # type: ignore[return-value]

    def aggregate(self) -> dict[str, float]:
        """``{"miou", "dsc", "accuracy", "sensitivity", "specificity"}`` of the pooled counts."""
        return pooled_confusion_metrics(*self.counts(), zero_division=self.zero_division)

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._counts = np.zeros(4, dtype=np.int64)
