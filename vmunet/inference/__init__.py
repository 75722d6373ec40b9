"""Inference: segment 2-D images and 3-D volumes with a trained checkpoint.

* :class:`Segmenter` loads a checkpoint (which carries everything inference
  needs) and predicts label maps for images, volumes and whole folders.
* :func:`predict_probabilities` / :func:`predict_volume` are the prediction
  core over any 2-D ``nn.Module`` (sliding window with Gaussian blending, or
  resize; test-time flips; slice-by-slice volumes).
* :func:`segment_folder` writes label maps with the inputs' geometry, optional
  probabilities and overlays, and a summary CSV.

Example:
    >>> from vmunet.inference import Segmenter
    >>> seg = Segmenter("best.pt", device="auto")  # doctest: +SKIP
    >>> seg.segment_folder(["scans/"], "masks/").n_failed  # doctest: +SKIP
    0
"""

from vmunet.inference.folder import FolderSummary, collect_inputs, overlay_image, segment_folder
from vmunet.inference.predict import (
    axial_axis,
    labels_from_probabilities,
    logits_to_probabilities,
    predict_probabilities,
    predict_volume,
)
from vmunet.inference.segmenter import InferenceSpec, Prediction, Segmenter, resolve_device

__all__ = [
    "FolderSummary",
    "InferenceSpec",
    "Prediction",
    "Segmenter",
    "axial_axis",
    "collect_inputs",
    "labels_from_probabilities",
    "logits_to_probabilities",
    "overlay_image",
    "predict_probabilities",
    "predict_volume",
    "resolve_device",
    "segment_folder",
]
