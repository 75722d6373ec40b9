"""VM-UNet and its registered variants, the MONAI baselines; loading and saving checkpoints.

Layout: :mod:`~vmunet.models.registry` (names and builders; a leaf),
:mod:`~vmunet.models.vmunet` and :mod:`~vmunet.models.baselines` (one family per file, each
registering its builders), :mod:`~vmunet.models.checkpoint` (``create_model`` with weights,
loading, saving).

Example:
    >>> import torch, vmunet
    >>> model = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=2)
    >>> model(torch.randn(1, 1, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

from .baselines import MonaiBaseline
from .checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    build_model_from_checkpoint,
    create_model,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .registry import get_model_builder, list_models, register_model
from .vmunet import VMUNet, checkpoint_filter_fn, default_cfgs

__all__ = [
    "VMUNet",
    "MonaiBaseline",
    "create_model",
    "list_models",
    "register_model",
    "get_model_builder",
    "load_checkpoint",
    "save_checkpoint",
    "read_checkpoint",
    "build_model_from_checkpoint",
    "checkpoint_filter_fn",
    "default_cfgs",
    "LoadReport",
    "CheckpointMismatchError",
]
