"""vmunet: VM-UNet (Vision Mamba UNet) for medical image segmentation.

The public face of the package. Heavy submodules are imported lazily so that
``import vmunet`` stays cheap and never touches optional extras (mamba-ssm).

Example:
    >>> import vmunet
    >>> model = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=2)
"""

from __future__ import annotations

import importlib
from typing import Any

from vmunet._version import __version__

__all__ = ["VMUNet", "create_model", "list_models", "load_checkpoint", "__version__"]

_LAZY = {
    "VMUNet": "vmunet.models",
    "create_model": "vmunet.models",
    "list_models": "vmunet.models",
    "load_checkpoint": "vmunet.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vmunet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
