"""Plain metric functions over binary masks, label maps and one-hot arrays (numpy or torch), 2-D and 3-D.

Conventions are named arguments, never implicit:

* ``spacing``: physical size of a pixel / voxel per axis, in the arrays' index
  order. ``None`` means 1 per axis (distances in voxels).
* ``mode`` of :func:`compute_hd95` (default ``"pooled"``):

  - ``"pooled"``: the 95th percentile of the two directed surface-distance
    sets pooled together, as medpy's ``metric.binary.hd95`` computes it (the
    number the Synapse papers report: TransUNet / VM-UNet ``utils.py`` call
    medpy's ``hd95``).
  - ``"max"``: the larger of the two directed 95th percentiles, as MONAI's
    ``compute_hausdorff_distance(..., percentile=95)`` computes it.

  Percentiles use linear interpolation (numpy's default; ``torch.quantile``'s too).
* ``mode`` of :func:`compute_assd` (default ``"pooled"``): the mean of the two
  directed distance sets pooled together (medpy >= 0.5 ``assd`` and MONAI
  ``compute_average_surface_distance(symmetric=True)``), or ``"average"``: the
  mean of the two directed means (medpy < 0.5).
* ``empty``: what a metric is when a mask is empty (see :data:`EMPTY_RULES`):

  - ``"standard"`` (default, MONAI-like): overlap metrics (Dice, IoU,
    sensitivity) are NaN when the label is empty, and 0 when only the
    prediction is empty; distance metrics are NaN when either mask is empty;
    specificity is NaN when the label covers the whole image. NaN means
    "cannot be scored": means skip it (``nanmean``) and the protocols count it.
  - ``"synapse"``: the rule of the public TransUNet / VM-UNet test code
    (``utils.py`` ``calculate_metric_percase``, github.com/Beckschen/TransUNet
    and github.com/JCruan519/VM-UNet): both non-empty -> computed; prediction
    non-empty and label empty -> Dice 1, HD95 0; prediction empty (label empty
    or not) -> Dice 0, HD95 0. Applies to Dice, IoU and the distance metrics
    (IoU follows Dice, the distances follow HD95); sensitivity, specificity and
    accuracy keep the standard rule.

Surfaces and distances are exactly medpy's and MONAI's (cross-shaped erosion,
exact Euclidean distances); see :mod:`vmunet.metrics._surface`.

Example:
    >>> import numpy as np
    >>> from vmunet.metrics import compute_dice, compute_hd95
    >>> a = np.zeros((8, 8), bool); a[2:5, 2:5] = True
    >>> b = np.zeros((8, 8), bool); b[2:5, 3:6] = True
    >>> round(compute_dice(a, b), 4)
    0.6667
    >>> compute_hd95(a, b, spacing=(1.0, 2.0))
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from vmunet.metrics._surface import padded_crop, surface_distances_padded, union_box

__all__ = [
    "METRICS",
    "DISTANCE_METRICS",
    "HD95_MODES",
    "ASSD_MODES",
    "EMPTY_RULES",
    "compute_dice",
    "compute_iou",
    "compute_hd95",
    "compute_hausdorff",
    "compute_assd",
    "compute_sensitivity",
    "compute_specificity",
    "compute_accuracy",
    "compute_confusion",
    "compute_surface_distances",
    "compute_per_class",
    "compute_per_case",
]

METRICS = ("dice", "iou", "hd95", "hd", "assd", "sensitivity", "specificity", "accuracy")
DISTANCE_METRICS = ("hd95", "hd", "assd")
HD95_MODES = ("pooled", "max")
ASSD_MODES = ("pooled", "average")
EMPTY_RULES = ("standard", "synapse")

_NAN = float("nan")


# ----------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a numeric array or tensor, got dtype object")
    return arr


def _as_binary(x: Any, name: str) -> np.ndarray:
    """A boolean array from a bool or 0/1 array or tensor (other values are an error)."""
    arr = _to_numpy(x, name)
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected a boolean or 0/1 array, got dtype {arr.dtype}")
    out = arr != 0
    if not np.all(out | (arr == 0)) or not np.all(arr[out] == 1):
        raise ValueError(
            f"{name}: expected a boolean or 0/1 mask; found other values "
            "(threshold probabilities or pick a class first, e.g. label == c)"
        )
    return out


def _as_labelmap(x: Any, name: str) -> np.ndarray:
    """An integer label map from an integer, bool, or integral float array or tensor."""
    arr = _to_numpy(x, name)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name}: label maps must be non-negative integers, found {arr.min()}")
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: expected an integer label map, found non-integer values")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name}: label maps must be non-negative integers, found {arr.min()}")
        return arr.astype(np.int64)
    raise ValueError(f"{name}: expected an integer label map, got dtype {arr.dtype}")


def _check_shapes(pred: np.ndarray, label: np.ndarray) -> None:
    if pred.shape != label.shape:
        raise ValueError(f"pred and label must have the same shape, got {pred.shape} and {label.shape}")
    if pred.ndim < 1:
        raise ValueError("pred and label must have at least one dimension")


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    sp = np.asarray(_to_numpy(spacing, "spacing"), dtype=np.float64).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing: expected {ndim} values (one per spatial axis), got {sp.size}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing: expected positive finite values, got {sp.tolist()}")
    return sp


def _check_choice(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    for m in metrics:
        _check_choice(m, METRICS, "metrics")
    if not metrics:
        raise ValueError("metrics: expected at least one metric name")
    return metrics


# ----------------------------------------------------------------------------------------------------------
# the arithmetic
# ----------------------------------------------------------------------------------------------------------
def _empty_value(metric: str, rule: str, pred_any: bool, label_any: bool) -> float | None:
    """The value a metric takes by convention when a mask is empty; None means compute it."""
    if rule == "synapse" and metric in ("dice", "iou", *DISTANCE_METRICS):
        if pred_any and label_any:
            return None
        if pred_any:  # label empty
            return 1.0 if metric in ("dice", "iou") else 0.0
        return 0.0
    if metric in ("dice", "iou", "sensitivity"):
        return _NAN if not label_any else None
    if metric in DISTANCE_METRICS:
        return _NAN if not (pred_any and label_any) else None
    return None


def _from_counts(metric: str, tp: int, fp: int, fn: int, tn: int) -> float:
    def ratio(num: int, den: int) -> float:
        return num / den if den else _NAN

    if metric == "dice":
        return ratio(2 * tp, 2 * tp + fp + fn)
    if metric == "iou":
        return ratio(tp, tp + fp + fn)
    if metric == "sensitivity":
        return ratio(tp, tp + fn)
    if metric == "specificity":
        return ratio(tn, tn + fp)
    if metric == "accuracy":
        return ratio(tp + tn, tp + fp + fn + tn)
    raise AssertionError(metric)


def _from_distances(metric: str, d_pl: np.ndarray, d_lp: np.ndarray, hd95_mode: str, assd_mode: str) -> float:
    if metric == "hd":
        return float(max(d_pl.max(), d_lp.max()))
    if metric == "hd95":
        if hd95_mode == "pooled":
            return float(np.percentile(np.concatenate([d_pl, d_lp]), 95))
        return float(max(np.percentile(d_pl, 95), np.percentile(d_lp, 95)))
    if metric == "assd":
        if assd_mode == "pooled":
            return float(np.concatenate([d_pl, d_lp]).mean())
        return float((d_pl.mean() + d_lp.mean()) / 2.0)
    raise AssertionError(metric)


def _score_masks(
    pred_crop: np.ndarray,
    label_crop: np.ndarray,
    total: int,
    metrics: tuple[str, ...],
    spacing: np.ndarray,
    hd95_mode: str,
    assd_mode: str,
    empty: str,
) -> dict[str, float]:
    """All requested metrics of one binary pair, given crops that hold all of both masks.

    ``total`` is the number of voxels of the full image (for true negatives).
    """
    n_pred = int(np.count_nonzero(pred_crop))
    n_label = int(np.count_nonzero(label_crop))
    tp = int(np.count_nonzero(pred_crop & label_crop)) if n_pred and n_label else 0
    fp, fn = n_pred - tp, n_label - tp
    tn = total - tp - fp - fn
    out: dict[str, float] = {}
    distances: tuple[np.ndarray, np.ndarray] | None = None
    for metric in metrics:
        fixed = _empty_value(metric, empty, n_pred > 0, n_label > 0)
        if fixed is not None:
            out[metric] = fixed
        elif metric in DISTANCE_METRICS:
            if distances is None:  # once per class, shared by hd95 / hd / assd
                p, lab = padded_crop([pred_crop, label_crop], None)
                distances = surface_distances_padded(p, lab, spacing)
            out[metric] = _from_distances(metric, distances[0], distances[1], hd95_mode, assd_mode)
        else:
            out[metric] = _from_counts(metric, tp, fp, fn, tn)
    return out


def _score_binary(
    pred: Any, label: Any, metrics: tuple[str, ...], spacing: Any, hd95_mode: str, assd_mode: str, empty: str
) -> dict[str, float]:
    _check_choice(hd95_mode, HD95_MODES, "mode")
    _check_choice(assd_mode, ASSD_MODES, "mode")
    _check_choice(empty, EMPTY_RULES, "empty")
    p = _as_binary(pred, "pred")
    lab = _as_binary(label, "label")
    _check_shapes(p, lab)
    sp = _spacing(spacing, p.ndim)
    box = union_box(p, lab)
    if box is None:
        p_crop = lab_crop = np.zeros((1,) * p.ndim, dtype=bool)
    else:
        p_crop, lab_crop = p[box], lab[box]
    return _score_masks(p_crop, lab_crop, p.size, metrics, sp, hd95_mode, assd_mode, empty)


# ----------------------------------------------------------------------------------------------------------
# binary, single case
# ----------------------------------------------------------------------------------------------------------
def compute_dice(pred: Any, label: Any, empty: str = "standard") -> float:
    """Dice similarity coefficient ``2|P & L| / (|P| + |L|)`` of two binary masks.

    Args:
        pred: boolean or 0/1 array or tensor, any shape.
        label: same shape as ``pred``.
        empty: empty-mask rule, ``"standard"`` (NaN when the label is empty) or
            ``"synapse"`` (see the module docstring).

    Returns:
        The Dice coefficient as a Python float.
    """
    return _score_binary(pred, label, ("dice",), None, "pooled", "pooled", empty)["dice"]


def compute_iou(pred: Any, label: Any, empty: str = "standard") -> float:
    """Intersection over union (Jaccard) ``|P & L| / |P | L|``; see :func:`compute_dice`."""
    return _score_binary(pred, label, ("iou",), None, "pooled", "pooled", empty)["iou"]


def compute_sensitivity(pred: Any, label: Any) -> float:
    """Sensitivity (recall) ``TP / (TP + FN)``; NaN when the label is empty."""
    return _score_binary(pred, label, ("sensitivity",), None, "pooled", "pooled", "standard")["sensitivity"]


def compute_specificity(pred: Any, label: Any) -> float:
    """Specificity ``TN / (TN + FP)``; NaN when the label covers the whole image."""
    return _score_binary(pred, label, ("specificity",), None, "pooled", "pooled", "standard")["specificity"]


def compute_accuracy(pred: Any, label: Any) -> float:
    """Pixel accuracy ``(TP + TN) / N``."""
    return _score_binary(pred, label, ("accuracy",), None, "pooled", "pooled", "standard")["accuracy"]


def compute_confusion(pred: Any, label: Any) -> tuple[int, int, int, int]:
    """Counts ``(TP, FP, FN, TN)`` of two binary masks of the same shape."""
    p = _as_binary(pred, "pred")
    lab = _as_binary(label, "label")
    _check_shapes(p, lab)
    tp = int(np.count_nonzero(p & lab))
    n_p, n_l = int(np.count_nonzero(p)), int(np.count_nonzero(lab))
    return tp, n_p - tp, n_l - tp, p.size - n_p - n_l + tp


def compute_hd95(
    pred: Any,
    label: Any,
    spacing: float | Sequence[float] | None = None,
    mode: str = "pooled",
    empty: str = "standard",
) -> float:
    """95th-percentile Hausdorff distance between the surfaces of two binary masks.

    Args:
        pred: boolean or 0/1 array or tensor, 2-D or 3-D.
        label: same shape as ``pred``.
        spacing: pixel / voxel size per axis (or one number for all); None for 1.
        mode: ``"pooled"`` (default; medpy ``hd95``, the Synapse papers' number) or
            ``"max"`` (MONAI ``compute_hausdorff_distance(percentile=95)``).
        empty: empty-mask rule, ``"standard"`` (NaN when either mask is empty) or ``"synapse"``.

    Returns:
        HD95 in the units of ``spacing``.
    """
    return _score_binary(pred, label, ("hd95",), spacing, mode, "pooled", empty)["hd95"]


def compute_hausdorff(
    pred: Any, label: Any, spacing: float | Sequence[float] | None = None, empty: str = "standard"
) -> float:
    """Hausdorff distance (maximum surface distance, both directions); medpy ``hd`` and MONAI agree."""
    return _score_binary(pred, label, ("hd",), spacing, "pooled", "pooled", empty)["hd"]


def compute_assd(
    pred: Any,
    label: Any,
    spacing: float | Sequence[float] | None = None,
    mode: str = "pooled",
    empty: str = "standard",
) -> float:
    """Average symmetric surface distance.

    Args:
        pred: boolean or 0/1 array or tensor.
        label: same shape as ``pred``.
        spacing: pixel / voxel size per axis; None for 1.
        mode: ``"pooled"`` (default; mean of both directed sets pooled, medpy >= 0.5
            ``assd`` and MONAI ``compute_average_surface_distance(symmetric=True)``) or
            ``"average"`` (mean of the two directed means).
        empty: empty-mask rule, as in :func:`compute_hd95`.
    """
    return _score_binary(pred, label, ("assd",), spacing, "pooled", mode, empty)["assd"]


def compute_surface_distances(
    pred: Any, label: Any, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The two directed surface-distance sets ``(pred -> label, label -> pred)``.

    Both masks must be non-empty. The values equal medpy's
    ``__surface_distances(pred, label)`` and ``__surface_distances(label, pred)``
    element for element (same order: ``np.nonzero`` over each surface).
    """
    p = _as_binary(pred, "pred")
    lab = _as_binary(label, "label")
    _check_shapes(p, lab)
    if not p.any() or not lab.any():
        raise ValueError("compute_surface_distances: both pred and label must contain foreground")
    box = union_box(p, lab)
    pp, lp = padded_crop([p, lab], box)
    return surface_distances_padded(pp, lp, _spacing(spacing, p.ndim))


# ----------------------------------------------------------------------------------------------------------
# multi-class and batched
# ----------------------------------------------------------------------------------------------------------
def _labelmap_boxes(labelmap: np.ndarray, classes: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box of every class of an integer label map, in one pass where possible."""
    boxes: dict[int, tuple[slice, ...] | None] = {}
    positive = [c for c in classes if c > 0]
    if positive:
        top = max(positive)
        found = ndi.find_objects(labelmap, max_label=top)  # one pass over the whole map
        for c in positive:
            boxes[c] = found[c - 1]
    if 0 in classes:
        boxes[0] = union_box(labelmap == 0)
    return boxes


def _merge_boxes(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def compute_per_class(
    pred: Any,
    label: Any,
    classes: Sequence[int] | None = None,
    metrics: Sequence[str] = ("dice", "hd95"),
    spacing: float | Sequence[float] | None = None,
    onehot: bool = False,
    hd95_mode: str = "pooled",
    assd_mode: str = "pooled",
    empty: str = "standard",
) -> dict[str, np.ndarray]:
    """Metrics of one case, per class.

    Args:
        pred: integer label map (``onehot=False``; spatial shape) or one-hot /
            multi-label masks ``(C, *spatial)`` (``onehot=True``).
        label: same layout and shape as ``pred``.
        classes: class values (label maps) or channel indices (one-hot) to score.
            Default: label maps, every non-zero value present in either map;
            one-hot, every channel but channel 0 (background), or channel 0 when C == 1.
        metrics: names from :data:`METRICS`.
        spacing: pixel / voxel size per spatial axis; None for 1.
        onehot: layout of ``pred`` and ``label``.
        hd95_mode: ``"pooled"`` or ``"max"`` (see :func:`compute_hd95`).
        assd_mode: ``"pooled"`` or ``"average"`` (see :func:`compute_assd`).
        empty: empty-mask rule (see the module docstring).

    Returns:
        ``{metric: float64 array of shape (len(classes),)}`` plus ``"classes"``
        (the class values scored, int64).
    """
    metrics = _check_metrics(metrics)
    _check_choice(hd95_mode, HD95_MODES, "hd95_mode")
    _check_choice(assd_mode, ASSD_MODES, "assd_mode")
    _check_choice(empty, EMPTY_RULES, "empty")
    if onehot:
        p = _to_numpy(pred, "pred")
        lab = _to_numpy(label, "label")
        _check_shapes(p, lab)
        if p.ndim < 2:
            raise ValueError(f"one-hot input must be (C, *spatial), got shape {p.shape}")
        n_ch = p.shape[0]
        cls = list(range(1, n_ch) if n_ch > 1 else [0]) if classes is None else [int(c) for c in classes]
        for c in cls:
            if not 0 <= c < n_ch:
                raise ValueError(f"classes: channel {c} is out of range for {n_ch} channels")
        sp = _spacing(spacing, p.ndim - 1)
        total = int(np.prod(p.shape[1:]))
        rows = []
        for c in cls:
            pc = _as_binary(p[c], f"pred[{c}]")
            lc = _as_binary(lab[c], f"label[{c}]")
            box = union_box(pc, lc)
            if box is None:
                pc = lc = np.zeros((1,) * pc.ndim, dtype=bool)
            else:
                pc, lc = pc[box], lc[box]
            rows.append(_score_masks(pc, lc, total, metrics, sp, hd95_mode, assd_mode, empty))
    else:
        p = _as_labelmap(pred, "pred")
        lab = _as_labelmap(label, "label")
        _check_shapes(p, lab)
        sp = _spacing(spacing, p.ndim)
        if classes is None:  # the non-zero values present: one find_objects pass per map, no sort
            top = int(max(p.max(initial=0), lab.max(initial=0)))
            found_p = ndi.find_objects(p, max_label=top) if top else []
            found_l = ndi.find_objects(lab, max_label=top) if top else []
            cls = [c for c in range(1, top + 1) if found_p[c - 1] is not None or found_l[c - 1] is not None]
            boxes_p = {c: found_p[c - 1] for c in cls}
            boxes_l = {c: found_l[c - 1] for c in cls}
        else:
            cls = [int(c) for c in classes]
            if any(c < 0 for c in cls):
                raise ValueError(f"classes: expected non-negative class values, got {cls}")
            boxes_p = _labelmap_boxes(p, cls)
            boxes_l = _labelmap_boxes(lab, cls)
        rows = []
        for c in cls:
            box = _merge_boxes(boxes_p[c], boxes_l[c])
            if box is None:
                pc = lc = np.zeros((1,) * p.ndim, dtype=bool)
            else:
                pc, lc = p[box] == c, lab[box] == c
            rows.append(_score_masks(pc, lc, p.size, metrics, sp, hd95_mode, assd_mode, empty))
    out = {m: np.array([r[m] for r in rows], dtype=np.float64) for m in metrics}
    out["classes"] = np.asarray(cls, dtype=np.int64)
    return out


def compute_per_case(
    pred: Any,
    label: Any,
    classes: Sequence[int],
    metrics: Sequence[str] = ("dice", "hd95"),
    spacing: Any = None,
    onehot: bool = False,
    hd95_mode: str = "pooled",
    assd_mode: str = "pooled",
    empty: str = "standard",
) -> dict[str, np.ndarray]:
    """Metrics of a batch, per case and per class.

    Args:
        pred: label maps ``(B, *spatial)`` or one-hot ``(B, C, *spatial)`` (``onehot=True``).
        label: same layout and shape.
        classes: class values or channel indices to score (the same for every case).
        metrics: names from :data:`METRICS`.
        spacing: None, one spacing for all cases, or a sequence of B spacings.
        onehot, hd95_mode, assd_mode, empty: as in :func:`compute_per_class`.

    Returns:
        ``{metric: float64 array (B, len(classes))}`` plus ``"classes"``.
    """
    p = _to_numpy(pred, "pred")
    lab = _to_numpy(label, "label")
    _check_shapes(p, lab)
    n = p.shape[0]
    if spacing is None or np.ndim(_to_numpy(spacing, "spacing")) <= 1:
        spacings = [spacing] * n
    else:
        spacings = list(spacing)
        if len(spacings) != n:
            raise ValueError(f"spacing: expected one spacing per case ({n}), got {len(spacings)}")
    metrics = _check_metrics(metrics)
    per = [
        compute_per_class(p[b], lab[b], classes, metrics, spacings[b], onehot, hd95_mode, assd_mode, empty)
        for b in range(n)
    ]
    out = {m: np.stack([r[m] for r in per]) if per else np.zeros((0, len(classes))) for m in metrics}
    out["classes"] = np.asarray([int(c) for c in classes], dtype=np.int64)
    return out


def nan_summary(values: np.ndarray) -> dict[str, float | int]:
    """Mean, standard deviation (population), count and NaN count of a 1-D array, NaN excluded."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = v[~np.isnan(v)]
    return {
        "mean": float(ok.mean()) if ok.size else math.nan,
        "std": float(ok.std()) if ok.size else math.nan,
        "n": int(ok.size),
        "n_nan": int(v.size - ok.size),
    }
