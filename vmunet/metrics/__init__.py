"""Segmentation metrics: Dice, IoU, HD95 and the published evaluation protocols.

* Plain functions over masks, label maps and one-hot arrays (numpy or torch):
  :func:`compute_dice`, :func:`compute_iou`, :func:`compute_hd95`,
  :func:`compute_hausdorff`, :func:`compute_assd`, :func:`compute_sensitivity`,
  :func:`compute_specificity`, :func:`compute_accuracy`, and the multi-class /
  batched forms :func:`compute_per_class` and :func:`compute_per_case`.
* Named conventions: HD95 ``mode="pooled"`` (medpy, default) or ``"max"``
  (MONAI); empty masks ``empty="standard"`` (NaN, default) or ``"synapse"``.
* Protocols that reproduce published tables: :func:`isic_protocol`,
  :func:`synapse_protocol`, :func:`standard_protocol`.
* Cumulative classes for training loops (torch.distributed aware):
  :class:`CumulativeMetric` and :class:`CumulativeConfusion`.
* :func:`evaluate_folders`: score a folder of predictions against a folder of labels.

This package knows nothing of models; it reads arrays (and, in
:func:`evaluate_folders`, files through :func:`vmunet.data.read_image`).

Example:
    >>> import numpy as np
    >>> from vmunet.metrics import compute_dice, compute_hd95
    >>> a = np.zeros((8, 8), bool); a[2:5, 2:5] = True
    >>> b = np.roll(a, 1, axis=1)
    >>> round(compute_dice(a, b), 4), compute_hd95(a, b, spacing=(1.0, 2.0))
    (0.6667, 2.0)
"""

from vmunet.metrics.cumulative import CumulativeConfusion, CumulativeMetric
from vmunet.metrics.evaluate import EvaluationResult, evaluate_folders
from vmunet.metrics.functional import (
    ASSD_MODES,
    DISTANCE_METRICS,
    EMPTY_RULES,
    HD95_MODES,
    METRICS,
    compute_accuracy,
    compute_assd,
    compute_confusion,
    compute_dice,
    compute_hausdorff,
    compute_hd95,
    compute_iou,
    compute_per_case,
    compute_per_class,
    compute_sensitivity,
    compute_specificity,
    compute_surface_distances,
)
from vmunet.metrics.protocols import (
    PROTOCOLS,
    SYNAPSE_CLASSES,
    isic_protocol,
    pooled_confusion_metrics,
    standard_protocol,
    synapse_protocol,
)

__all__ = [
    "ASSD_MODES",
    "DISTANCE_METRICS",
    "EMPTY_RULES",
    "HD95_MODES",
    "METRICS",
    "PROTOCOLS",
    "SYNAPSE_CLASSES",
    "CumulativeConfusion",
    "CumulativeMetric",
    "EvaluationResult",
    "compute_accuracy",
    "compute_assd",
    "compute_confusion",
    "compute_dice",
    "compute_hausdorff",
    "compute_hd95",
    "compute_iou",
    "compute_per_case",
    "compute_per_class",
    "compute_sensitivity",
    "compute_specificity",
    "compute_surface_distances",
    "evaluate_folders",
    "isic_protocol",
    "pooled_confusion_metrics",
    "standard_protocol",
    "synapse_protocol",
]
