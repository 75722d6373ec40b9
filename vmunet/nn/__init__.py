"""Building blocks of VM-UNet in 2-D and 3-D: SS2D / SS3D, the VSS block, stages, patch layers.

Example:
    >>> import torch
    >>> from vmunet.nn import VSSBlock
    >>> VSSBlock(d_model=32, d_state=4)(torch.randn(1, 8, 8, 32)).shape
    torch.Size([1, 8, 8, 32])
"""

from __future__ import annotations

from .patch import (
    FinalPatchExpand,
    FinalPatchExpand2D,
    FinalPatchExpand3D,
    PatchEmbed,
    PatchEmbed2D,
    PatchEmbed3D,
    PatchExpand,
    PatchExpand2D,
    PatchExpand3D,
    PatchMerging,
    PatchMerging2D,
    PatchMerging3D,
    pixel_shuffle_last,
)
from .vss import (
    NUM_SCAN_DIRECTIONS,
    SCAN_DIRECTIONS,
    SS2D,
    SS3D,
    SSND,
    DropPath,
    VSSBlock,
    VSSStage,
    VSSUpStage,
)

__all__ = [
    "NUM_SCAN_DIRECTIONS",
    "SCAN_DIRECTIONS",
    "DropPath",
    "SSND",
    "SS2D",
    "SS3D",
    "VSSBlock",
    "VSSStage",
    "VSSUpStage",
    "PatchEmbed2D",
    "PatchMerging2D",
    "PatchExpand2D",
    "FinalPatchExpand2D",
    "PatchEmbed3D",
    "PatchMerging3D",
    "PatchExpand3D",
    "FinalPatchExpand3D",
    "PatchEmbed",
    "PatchMerging",
    "PatchExpand",
    "FinalPatchExpand",
    "pixel_shuffle_last",
]
