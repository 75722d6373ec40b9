"""VM-UNet and its registered variants; loading and saving checkpoints.

Example:
    >>> import torch, vmunet
    >>> model = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=2)
    >>> model(torch.randn(1, 1, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

from .checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    build_model_from_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .registry import create_model, get_model_builder, list_models, register_model
from .vmunet import VMUNet, checkpoint_filter_fn, default_cfgs

__all__ = [
    "VMUNet",
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
