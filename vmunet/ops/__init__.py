"""Selective scan (backends) and VM-UNet's cross-scan / cross-merge. No nn.Modules here.

Example:
    >>> import torch
    >>> from vmunet.ops import available_backends, selective_scan
    >>> "reference" in available_backends()
    True
"""

from vmunet.ops._backends import (
    BACKENDS,
    ENV_VAR,
    ScanBackendUnavailableError,
    available_backends,
    resolve_backend,
)
from vmunet.ops.cross_scan import (
    SCAN_DIRECTIONS_3D,
    cross_merge_2d,
    cross_merge_3d,
    cross_scan_2d,
    cross_scan_3d,
)
from vmunet.ops.selective_scan import (
    cross_selective_scan,
    cross_selective_scan_gated,
    cross_selective_scan_packed,
    selective_scan,
)

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "SCAN_DIRECTIONS_3D",
    "ScanBackendUnavailableError",
    "available_backends",
    "cross_merge_2d",
    "cross_selective_scan",
    "cross_selective_scan_gated",
    "cross_selective_scan_packed",
    "cross_merge_3d",
    "cross_scan_2d",
    "cross_scan_3d",
    "resolve_backend",
    "selective_scan",
]
