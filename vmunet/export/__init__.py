"""Export a trained checkpoint: ONNX / TorchScript / pt2 graphs, and a MONAI bundle.

* :func:`export_checkpoint`: ONNX (ONNX Runtime), TorchScript or pt2 (``torch.export``), built with
  the ``chunked`` selective-scan backend, dynamic batch and spatial sizes, run by its own runtime
  and held against PyTorch's logits before it is kept (:mod:`vmunet.export.graph`).
* :func:`export_bundle`: a MONAI bundle (``configs/metadata.json``, ``configs/inference.json``,
  ``models/model.pt``, ``docs/README.md``, ``LICENSE``) that ``python -m monai.bundle run`` runs
  over a folder of scans with the checkpoint's own preprocessing and sliding window
  (:mod:`vmunet.export.bundle`).

Example:
    >>> from vmunet.export import FORMATS
    >>> FORMATS
    ('onnx', 'torchscript', 'pt2', 'bundle')
"""

from vmunet.export._source import EXPORT_SCAN_BACKEND, ExportSource, load_source
from vmunet.export.bundle import BUNDLE_SCHEMA_URL, BundleResult, export_bundle
from vmunet.export.graph import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    GRAPH_FORMATS,
    MIN_OPSET,
    ExportCheckError,
    ExportResult,
    check_opset,
    export_checkpoint,
    max_opset,
    run_exported,
)

FORMATS = (*GRAPH_FORMATS, "bundle")

__all__ = [
    "BUNDLE_SCHEMA_URL",
    "BundleResult",
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "EXPORT_SCAN_BACKEND",
    "ExportCheckError",
    "ExportResult",
    "ExportSource",
    "FORMATS",
    "GRAPH_FORMATS",
    "MIN_OPSET",
    "check_opset",
    "export_bundle",
    "export_checkpoint",
    "load_source",
    "max_opset",
    "run_exported",
]
