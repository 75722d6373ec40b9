"""Evaluation protocols that reproduce the published VM-UNet tables, and a plain standard one.

``isic`` (ISIC 2017 / 2018 tables of VM-UNet)
    Every pixel of the test set is pooled into one confusion matrix: prediction
    ``>= threshold`` (0.5) is foreground, label ``>= 0.5`` is foreground; then
    mIoU = TP / (TP + FP + FN) (the foreground IoU, as the code names it),
    DSC = 2TP / (2TP + FP + FN), accuracy, sensitivity = TP / (TP + FN),
    specificity = TN / (TN + FP). This is what ``engine.py`` ``test_one_epoch``
    of github.com/JCruan519/VM-UNet computes (sklearn ``confusion_matrix`` over
    the flattened test set). That code crashes when the set holds only one
    class (the confusion matrix is 1 x 1); here a ratio with a zero
    denominator is ``zero_division`` (default NaN; the public code's guards use 0).
    Masks stored as 0/255 (integer arrays with values above 1) are divided by 255 first.

``synapse`` (Synapse multi-organ tables of TransUNet / VM-UNet)
    Per volume and per organ, Dice and HD95 with the "pooled" convention
    (medpy ``hd95``), under the ``"synapse"`` empty-mask rule of ``utils.py``
    ``calculate_metric_percase``; per-organ mean over cases, then the mean over
    organs (``engine_synapse.py`` ``val_one_epoch``). HD95 in voxels by default,
    as the public code calls ``hd95`` without a spacing; ``hd95_units="mm"``
    uses each case's spacing. Organs (label values of the TransUNet-preprocessed
    data, the column order of TransUNet's Table 1 and the ``class_map`` of the
    public Swin-Unet / TransUNet test scripts): 1 aorta, 2 gallbladder,
    3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen, 8 stomach.

``standard``
    Per case and per class, Dice and HD95 in physical units (the label's
    spacing, mm), NaN where a case cannot be scored (the ``"standard"`` empty-mask
    rule); per class the mean and standard deviation over the cases that could
    be scored (NaN excluded and counted), then the mean over classes. A case
    whose file stores no spacing (PNG, JPEG, NumPy, HDF5) is scored in pixels,
    and the result's ``settings["hd95_units"]`` says so (``"mm"``, ``"pixel"``,
    or ``"mm; pixel where a file has no spacing"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vmunet.metrics.functional import (
    HD95_MODES,
    _check_choice,
    _check_metrics,
    _score_masks,
    _spacing,
    _to_numpy,
    compute_per_class,
    nan_summary,
)
from vmunet.metrics.results import EvaluationResult

__all__ = [
    "PROTOCOLS",
    "SYNAPSE_CLASSES",
    "isic_protocol",
    "synapse_protocol",
    "standard_protocol",
    "pooled_confusion_metrics",
    "to_unit_range",
]

PROTOCOLS = ("standard", "isic", "synapse")

SYNAPSE_CLASSES: dict[int, str] = {
    1: "aorta",
    2: "gallbladder",
    3: "left kidney",
    4: "right kidney",
    5: "liver",
    6: "pancreas",
    7: "spleen",
    8: "stomach",
}


def pooled_confusion_metrics(
    tp: int, fp: int, fn: int, tn: int, zero_division: float = math.nan
) -> dict[str, float]:
    """The ISIC numbers from pooled confusion counts.

    Args:
        tp, fp, fn, tn: pixel counts.
        zero_division: value of a ratio whose denominator is 0 (default NaN; the
            public VM-UNet code uses 0 where it does not crash).

    Returns:
        ``{"miou", "dsc", "accuracy", "sensitivity", "specificity"}``.
    """
    tp, fp, fn, tn = (int(v) for v in (tp, fp, fn, tn))

    def ratio(num: int, den: int) -> float:
        return num / den if den else float(zero_division)

    return {
        "miou": ratio(tp, tp + fp + fn),
        "dsc": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
    }


def to_unit_range(x: Any, name: str) -> np.ndarray:
    """Probabilities or masks as float values in [0, 1]: 0/255 integer masks are divided by 255.

    Raises:
        ValueError: integer values above 255 or negative, or float values outside [0, 1].
    """
    arr = _to_numpy(x, name)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: expected a 0/1 or 0/255 mask, found values in [{lo}, {hi}]")
        return arr.astype(np.float32) / (255.0 if hi > 1 else 1.0)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{name}: expected probabilities in [0, 1], found values outside that range")
        return arr
    raise ValueError(f"{name}: expected a numeric mask or probability map, got dtype {arr.dtype}")


# ------------------------------------------------------------------------------------------------------
# streaming accumulators (used by the protocol functions and by evaluate_folders)
# ------------------------------------------------------------------------------------------------------
class _IsicAccumulator:
    metrics = ("dice", "iou", "sensitivity", "specificity", "accuracy")

    def __init__(self, threshold: float = 0.5, zero_division: float = math.nan) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.zero_division = float(zero_division)
        self.counts = np.zeros(4, dtype=np.int64)
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, pred: Any, label: Any, spacing: Any = None) -> None:
        p = to_unit_range(pred, f"{name}: prediction") >= self.threshold
        lab = to_unit_range(label, f"{name}: label") >= 0.5
        if p.shape != lab.shape:
            raise ValueError(f"{name}: prediction shape {p.shape} != label shape {lab.shape}")
        tp = int(np.count_nonzero(p & lab))
        n_p, n_l = int(np.count_nonzero(p)), int(np.count_nonzero(lab))
        fp, fn = n_p - tp, n_l - tp
        tn = p.size - tp - fp - fn
        self.counts += (tp, fp, fn, tn)
        row: dict[str, Any] = {"case": name, "class_id": 1, "class_name": "foreground"}
        row.update(
            _score_masks(p, lab, p.size, self.metrics, _spacing(None, p.ndim), "pooled", "pooled", "standard")
        )
        row.update(tp=tp, fp=fp, fn=fn, tn=tn)
        self.rows.append(row)

    def result(self) -> EvaluationResult:
        tp, fp, fn, tn = (int(v) for v in self.counts)
        return EvaluationResult(
            protocol="isic",
            metrics=self.metrics,
            classes={1: "foreground"},
            rows=self.rows,
            summary={
                "pooled": pooled_confusion_metrics(tp, fp, fn, tn, self.zero_division),
                "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            },
            settings={
                "threshold": self.threshold,
                "label_threshold": 0.5,
                "zero_division": self.zero_division,
            },
        )


class _LabelmapAccumulator:
    """Per-case, per-class scores of label maps (the ``standard`` and ``synapse`` protocols)."""

    def __init__(
        self,
        protocol: str,
        classes: Mapping[int, str] | Sequence[int] | None,
        metrics: Sequence[str],
        hd95_mode: str,
        use_spacing: bool,
        empty: str,
    ) -> None:
        _check_choice(hd95_mode, HD95_MODES, "hd95_mode")
        self.protocol = protocol
        self.metrics = _check_metrics(metrics)
        self.hd95_mode = hd95_mode
        self.use_spacing = use_spacing
        self.empty = empty
        self.fixed_classes = _class_names(classes) if classes is not None else None
        self.cases: list[tuple[str, dict[int, dict[str, float]], int]] = []
        self.n_with_spacing = 0
        self.n_without_spacing = 0

    @property
    def hd95_units(self) -> str:
        """The unit of the HD95 values added so far (spacing-using protocols)."""
        if self.n_without_spacing == 0:
            return "mm"
        if self.n_with_spacing == 0:
            return "pixel"
        return "mm; pixel where a file has no spacing"

    def add(self, name: str, pred: Any, label: Any, spacing: Any = None) -> None:
        if spacing is None:
            self.n_without_spacing += 1
        else:
            self.n_with_spacing += 1
        classes = list(self.fixed_classes) if self.fixed_classes is not None else None
        res = compute_per_class(
            pred,
            label,
            classes,
            self.metrics,
            spacing if self.use_spacing else None,
            hd95_mode=self.hd95_mode,
            empty=self.empty,
        )
        per = {int(c): {m: float(res[m][i]) for m in self.metrics} for i, c in enumerate(res["classes"])}
        self.cases.append((name, per, int(np.asarray(_to_numpy(label, "label")).size)))

    def result(self, settings: dict[str, Any]) -> EvaluationResult:
        if self.use_spacing and settings.get("hd95_units") == "spacing":
            settings = {**settings, "hd95_units": self.hd95_units}
        if self.fixed_classes is not None:
            names = dict(self.fixed_classes)
        else:
            seen = sorted({c for _, per, _ in self.cases for c in per})
            names = {c: str(c) for c in seen}
        rows = []
        for case, per, total in self.cases:
            for c, cname in names.items():
                values = per.get(c)
                if values is None:  # class absent from this case's prediction and label: the rule's value
                    empty_mask = np.zeros((1,), dtype=bool)
                    values = _score_masks(
                        empty_mask,
                        empty_mask,
                        total,
                        self.metrics,
                        np.ones(1),
                        self.hd95_mode,
                        "pooled",
                        self.empty,
                    )
                rows.append({"case": case, "class_id": c, "class_name": cname, **values})
        per_class = {}
        for c, cname in names.items():
            per_class[cname] = {
                m: nan_summary(np.array([r[m] for r in rows if r["class_id"] == c])) for m in self.metrics
            }
        mean = {}
        for m in self.metrics:
            class_means = np.array([per_class[n][m]["mean"] for n in per_class], dtype=np.float64)
            ok = class_means[~np.isnan(class_means)]
            mean[m] = float(ok.mean()) if ok.size else math.nan
        return EvaluationResult(
            protocol=self.protocol,
            metrics=self.metrics,
            classes=names,
            rows=rows,
            summary={"per_class": per_class, "mean": mean},
            settings=settings,
        )


def _class_names(classes: Mapping[int, str] | Sequence[int]) -> dict[int, str]:
    if isinstance(classes, Mapping):
        out = {int(k): str(v) for k, v in classes.items()}
    else:
        out = {int(c): str(int(c)) for c in classes}
    if not out:
        raise ValueError("classes: expected at least one class")
    if any(c < 0 for c in out):
        raise ValueError(f"classes: expected non-negative class values, got {sorted(out)}")
    return out


def _names(n: int, case_names: Sequence[str] | None) -> list[str]:
    if case_names is None:
        return [f"case{i:04d}" for i in range(n)]
    if len(case_names) != n:
        raise ValueError(f"case_names: expected {n} names, got {len(case_names)}")
    return [str(c) for c in case_names]


def _spacings(n: int, spacings: Any) -> list[Any]:
    if spacings is None:
        return [None] * n
    spacings = list(spacings)
    if len(spacings) != n:
        raise ValueError(f"spacings: expected one spacing per case ({n}), got {len(spacings)}")
    return spacings


# ------------------------------------------------------------------------------------------------------
# public protocol functions
# ------------------------------------------------------------------------------------------------------
def isic_protocol(
    preds: Iterable[Any],
    labels: Iterable[Any],
    threshold: float = 0.5,
    zero_division: float = math.nan,
    case_names: Sequence[str] | None = None,
) -> EvaluationResult:
    """The ISIC protocol of the VM-UNet paper: one confusion matrix over all pixels of the test set.

    Args:
        preds: per image, probabilities in [0, 1] or binary masks (0/1 or 0/255).
        labels: per image, binary masks (0/1 or 0/255), same shapes.
        threshold: prediction threshold (foreground is ``pred >= threshold``).
        zero_division: value of a ratio with a zero denominator (default NaN).
        case_names: optional names for the per-image rows.

    Returns:
        An :class:`EvaluationResult` whose ``summary["pooled"]`` holds ``miou``,
        ``dsc``, ``accuracy``, ``sensitivity``, ``specificity`` and
        ``summary["confusion"]`` the pooled counts; ``rows`` hold per-image
        Dice / IoU / sensitivity / specificity / accuracy for inspection.
    """
    preds, labels = list(preds), list(labels)
    if len(preds) != len(labels):
        raise ValueError(
            f"preds and labels: expected the same number of images, got {len(preds)} and {len(labels)}"
        )
    acc = _IsicAccumulator(threshold, zero_division)
    for name, p, lab in zip(_names(len(preds), case_names), preds, labels):
        acc.add(name, p, lab)
    return acc.result()


def synapse_protocol(
    preds: Iterable[Any],
    labels: Iterable[Any],
    spacings: Sequence[Any] | None = None,
    case_names: Sequence[str] | None = None,
    classes: Mapping[int, str] | Sequence[int] | None = None,
    hd95_units: str = "voxel",
) -> EvaluationResult:
    """The Synapse protocol of TransUNet / VM-UNet: per volume and organ, Dice and HD95 (pooled).

    Args:
        preds: per volume, an integer label map.
        labels: per volume, an integer label map of the same shape.
        spacings: per volume, the voxel spacing (needed for ``hd95_units="mm"``).
        case_names: optional names for the rows.
        classes: organ value -> name; default :data:`SYNAPSE_CLASSES`.
        hd95_units: ``"voxel"`` (default, as the papers) or ``"mm"``.

    Returns:
        An :class:`EvaluationResult`; ``summary["per_class"][organ]["dice"]["mean"]``
        is the mean over cases and ``summary["mean"]["dice"]`` the mean over organs
        (likewise ``"hd95"``).
    """
    _check_choice(hd95_units, ("voxel", "mm"), "hd95_units")
    preds, labels = list(preds), list(labels)
    if len(preds) != len(labels):
        raise ValueError(
            f"preds and labels: expected the same number of volumes, got {len(preds)} and {len(labels)}"
        )
    if hd95_units == "mm" and spacings is None:
        raise ValueError("spacings: required when hd95_units='mm'")
    acc = _synapse_accumulator(classes, hd95_units)
    for name, p, lab, sp in zip(
        _names(len(preds), case_names), preds, labels, _spacings(len(preds), spacings)
    ):
        acc.add(name, p, lab, sp)
    return acc.result(_synapse_settings(hd95_units))


def standard_protocol(
    preds: Iterable[Any],
    labels: Iterable[Any],
    spacings: Sequence[Any] | None = None,
    case_names: Sequence[str] | None = None,
    classes: Mapping[int, str] | Sequence[int] | None = None,
    metrics: Sequence[str] = ("dice", "hd95"),
    hd95_mode: str = "pooled",
) -> EvaluationResult:
    """Per case and class, Dice and HD95 in physical units, NaN where a case cannot be scored.

    Args:
        preds: per case, an integer label map (a binary mask is the label map of class 1).
        labels: per case, an integer label map of the same shape.
        spacings: per case, the pixel / voxel spacing in mm, or ``None`` for a case whose file
            has none (scored in pixels); ``None`` for all: every case in pixels. The unit lands
            in ``settings["hd95_units"]``.
        case_names: optional names for the rows.
        classes: class value -> name (or a list of values); default: every
            non-zero value found in any prediction or label.
        metrics: names from :data:`vmunet.metrics.METRICS`.
        hd95_mode: ``"pooled"`` (medpy, default) or ``"max"`` (MONAI).

    Returns:
        An :class:`EvaluationResult`; ``summary["per_class"][name][metric]`` holds
        ``mean``, ``std`` (over scoreable cases), ``n`` and ``n_nan``;
        ``summary["mean"][metric]`` the mean of the class means.
    """
    preds, labels = list(preds), list(labels)
    if len(preds) != len(labels):
        raise ValueError(
            f"preds and labels: expected the same number of cases, got {len(preds)} and {len(labels)}"
        )
    acc = _standard_accumulator(classes, metrics, hd95_mode)
    for name, p, lab, sp in zip(
        _names(len(preds), case_names), preds, labels, _spacings(len(preds), spacings)
    ):
        acc.add(name, p, lab, sp)
    return acc.result(_standard_settings(hd95_mode))


def _synapse_accumulator(classes: Any, hd95_units: str) -> _LabelmapAccumulator:
    return _LabelmapAccumulator(
        "synapse",
        SYNAPSE_CLASSES if classes is None else classes,
        ("dice", "hd95"),
        "pooled",
        hd95_units == "mm",
        "synapse",
    )


def _synapse_settings(hd95_units: str) -> dict[str, Any]:
    return {"hd95_mode": "pooled", "hd95_units": hd95_units, "empty": "synapse"}


def _standard_accumulator(classes: Any, metrics: Sequence[str], hd95_mode: str) -> _LabelmapAccumulator:
    return _LabelmapAccumulator("standard", classes, metrics, hd95_mode, True, "standard")


def _standard_settings(hd95_mode: str) -> dict[str, Any]:
    return {"hd95_mode": hd95_mode, "hd95_units": "spacing", "empty": "standard"}
