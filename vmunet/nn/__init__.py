"""Building blocks of VM-UNet: SS2D, the VSS block, encoder / decoder stages, patch layers.

Example:
    >>> import torch
    >>> from vmunet.nn import VSSBlock
    >>> VSSBlock(d_model=32, d_state=4)(torch.randn(1, 8, 8, 32)).shape
    torch.Size([1, 8, 8, 32])
"""

from __future__ import annotations

from .patch import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D, pixel_shuffle_last
from .vss import NUM_SCAN_DIRECTIONS, SS2D, DropPath, VSSBlock, VSSStage, VSSUpStage

__all__ = [
    "NUM_SCAN_DIRECTIONS",
    "DropPath",
    "SS2D",
    "VSSBlock",
    "VSSStage",
    "VSSUpStage",
    "PatchEmbed2D",
    "PatchMerging2D",
    "PatchExpand2D",
    "FinalPatchExpand2D",
    "pixel_shuffle_last",
]
