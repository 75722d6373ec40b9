"""Inference: segment 2-D images and 3-D volumes with a trained checkpoint.

* :mod:`vmunet.inference.inferers`: the one place a network meets an image (MONAI-style
  ``inferer(x, network) -> probabilities``: whole image, 2-D sliding window, slice by
  slice, 3-D gaussian sliding window; flip TTA and the activation once). Training
  validation, ``vmunet test`` and ``vmunet segment`` all use them.
* :class:`Segmenter` loads a checkpoint (which carries everything inference needs) and
  predicts label maps for images, volumes and whole folders through a strategy
  (:mod:`vmunet.inference.strategies`: preprocess -> inferer -> postprocess).
* :func:`segment_folder` writes label maps with the inputs' geometry, optional
  probabilities and overlays, and a summary CSV.

Example:
    >>> from vmunet.inference import Segmenter
    >>> seg = Segmenter("best.pt", device="auto")  # doctest: +SKIP
    >>> seg.segment_folder(["scans/"], "masks/").n_failed  # doctest: +SKIP
    0
"""

from vmunet.inference.folder import FolderSummary, collect_inputs, overlay_image, segment_folder
from vmunet.inference.inferers import (
    SliceInferer,
    SlidingWindowInferer2D,
    SlidingWindowInferer3D,
    VmunetInferer,
    WholeImageInferer,
    labels_from_probabilities,
    logits_to_probabilities,
    predict_probabilities,
    probabilities_to_numpy,
)
from vmunet.inference.segmenter import Segmenter, resolve_device
from vmunet.inference.spec import InferenceSpec, Prediction
from vmunet.inference.strategies import axial_axis

__all__ = [
    "FolderSummary",
    "InferenceSpec",
    "Prediction",
    "Segmenter",
    "SliceInferer",
    "SlidingWindowInferer2D",
    "SlidingWindowInferer3D",
    "VmunetInferer",
    "WholeImageInferer",
    "axial_axis",
    "collect_inputs",
    "labels_from_probabilities",
    "logits_to_probabilities",
    "overlay_image",
    "predict_probabilities",
    "probabilities_to_numpy",
    "resolve_device",
    "segment_folder",
]
