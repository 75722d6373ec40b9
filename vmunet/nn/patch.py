"""Patch embedding, merging and expanding layers of VM-UNet (channels-last tensors).

All layers take and return ``(B, H, W, C)`` tensors except ``PatchEmbed2D``, which takes the
image as ``(B, C, H, W)``. Layouts, parameter names and the LayerNorm placement follow the
public VM-UNet implementation (JCruan519/VM-UNet, ``models/vmunet/vmamba.py``), so that its
checkpoints map one to one. Every norm is ``nn.LayerNorm`` with PyTorch's default eps (1e-5),
which is what that implementation passes down (its ``VSSM`` hands ``nn.LayerNorm`` to every
layer).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchEmbed2D", "PatchMerging2D", "PatchExpand2D", "FinalPatchExpand2D", "pixel_shuffle_last"]


def pixel_shuffle_last(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Channels-last pixel shuffle: ``(B, H, W, s*s*c) -> (B, H*s, W*s, c)``.

    The channel axis is read as ``(s_row, s_col, c)`` with ``c`` fastest, the order the
    public implementation uses (``b h w (p1 p2 c) -> b (h p1) (w p2) c``).
    """
    b, h, w, ch = x.shape
    c = ch // (scale * scale)
    x = x.reshape(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * scale, w * scale, c)


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch embedding: ``Conv2d(k=s=patch_size)``, channels-last, LayerNorm.

    Args:
        patch_size: side of the square patch (and the stride).
        in_channels: channels of the input image.
        embed_dim: channels of the output tokens.

    Example:
        >>> embed = PatchEmbed2D(patch_size=4, in_channels=3, embed_dim=96)
        >>> embed(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 16, 16, 96])
    """

    def __init__(self, patch_size: int = 4, in_channels: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2x downsampling: concatenate each 2x2 neighbourhood (4C), LayerNorm, Linear 4C -> 2C.

    The four sub-grids are concatenated in the order (even row, even col), (odd row, even
    col), (even row, odd col), (odd row, odd col), as in the public implementation.

    Args:
        dim: input channels C.

    Example:
        >>> merge = PatchMerging2D(dim=96)
        >>> merge(torch.zeros(1, 16, 16, 96)).shape
        torch.Size([1, 8, 8, 192])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """2x upsampling of the decoder: Linear 2C -> 4C, pixel shuffle x2, LayerNorm on C.

    ``dim`` is the OUTPUT width C (the width of the decoder stage it opens), as in the public
    implementation: the input has ``2 * dim`` channels.

    Args:
        dim: output channels C; the input has 2C.
        dim_scale: upsampling factor (2).

    Example:
        >>> up = PatchExpand2D(dim=384)
        >>> up(torch.zeros(1, 2, 2, 768)).shape
        torch.Size([1, 4, 4, 384])
    """

    def __init__(self, dim: int, dim_scale: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.dim_scale = dim_scale
        in_dim = 2 * dim
        self.expand = nn.Linear(in_dim, dim_scale * in_dim, bias=False)
        self.norm = nn.LayerNorm(in_dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_last(self.expand(x), self.dim_scale))


class FinalPatchExpand2D(nn.Module):
    """Final 4x upsampling: Linear C -> 4C, pixel shuffle x4 (to C/4 channels), LayerNorm on C/4.

    Args:
        dim: input channels C (divisible by ``dim_scale ** 2`` / ``dim_scale``, see below).
        dim_scale: upsampling factor (4, the patch size).

    Example:
        >>> up = FinalPatchExpand2D(dim=96)
        >>> up(torch.zeros(1, 8, 8, 96)).shape
        torch.Size([1, 32, 32, 24])
    """

    def __init__(self, dim: int, dim_scale: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.dim_scale = dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_last(self.expand(x), self.dim_scale))
