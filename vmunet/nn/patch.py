"""Patch embedding, merging and expanding layers of VM-UNet, in 2-D and 3-D (channels-last tensors).

All layers take and return channels-last tensors, ``(B, H, W, C)`` in 2-D and ``(B, H, W, D, C)``
in 3-D, except the patch embedding, which takes the image channels-first (``(B, C, H, W)`` /
``(B, C, H, W, D)``, MONAI's layout). Each layer is written once and takes ``spatial_dims``
(MONAI's habit, ``monai/networks/nets/swin_unetr.py``); the ``*2D`` / ``*3D`` names fix it.

Layouts, parameter names and the LayerNorm placement of the 2-D layers follow the public VM-UNet
implementation (JCruan519/VM-UNet, ``models/vmunet/vmamba.py``), so that its checkpoints map one
to one; the 3-D layers are the same operations with one more axis. Every norm is
``nn.LayerNorm`` with PyTorch's default eps (1e-5), which is what that implementation passes down
(its ``VSSM`` hands ``nn.LayerNorm`` to every layer).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "PatchEmbed",
    "PatchMerging",
    "PatchExpand",
    "FinalPatchExpand",
    "PatchEmbed2D",
    "PatchMerging2D",
    "PatchExpand2D",
    "FinalPatchExpand2D",
    "PatchEmbed3D",
    "PatchMerging3D",
    "PatchExpand3D",
    "FinalPatchExpand3D",
    "pixel_shuffle_last",
    "CONV",
]

#: Convolution class per number of spatial dimensions (MONAI's ``Conv[Conv.CONV, spatial_dims]``).
CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}


def _check_spatial_dims(spatial_dims: int) -> int:
    if isinstance(spatial_dims, bool) or spatial_dims not in CONV:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def _per_axis(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """``value`` as one positive int per axis (an int applies to every axis)."""
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value,) * spatial_dims
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        out = tuple(value)
    else:
        raise ValueError(f"{name} must be an int or {spatial_dims} ints, got {value!r}")
    if len(out) != spatial_dims or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out
    ):
        raise ValueError(f"{name} must be a positive int or {spatial_dims} positive ints, got {value!r}")
    return out


def pixel_shuffle_last(x: torch.Tensor, scale: int | Sequence[int]) -> torch.Tensor:
    """Channels-last pixel shuffle: ``(B, *S, prod(s)*c) -> (B, *(S_i * s_i), c)``.

    Works for any number of spatial axes (``x.dim() - 2``); ``scale`` is one int for every axis
    or one per axis. The channel axis is read as ``(s_0, s_1, ..., c)`` with ``c`` fastest, the
    order the public implementation uses in 2-D (``b h w (p1 p2 c) -> b (h p1) (w p2) c``).
    """
    n = x.dim() - 2
    s = _per_axis(scale, n, "scale")
    b, *spatial, ch = x.shape
    c = ch // math.prod(s)
    x = x.reshape(b, *spatial, *s, c)
    # (b, S_0..S_{n-1}, s_0..s_{n-1}, c) -> (b, S_0, s_0, S_1, s_1, ..., c)
    perm = [0] + [p for i in range(n) for p in (1 + i, 1 + n + i)] + [1 + 2 * n]
    x = x.permute(*perm)
    return x.reshape(b, *(size * f for size, f in zip(spatial, s)), c)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``Conv{2,3}d(k=s=patch_size)``, channels-last, LayerNorm.

    Args:
        spatial_dims: 2 or 3.
        patch_size: the patch (and stride), one int for every axis or one per axis.
        in_channels: channels of the input image.
        embed_dim: channels of the output tokens.

    Example:
        >>> embed = PatchEmbed(3, patch_size=(4, 4, 2), in_channels=1, embed_dim=32)
        >>> embed(torch.zeros(1, 1, 32, 32, 16)).shape
        torch.Size([1, 8, 8, 8, 32])
    """

    def __init__(
        self,
        spatial_dims: int,
        patch_size: int | Sequence[int] = 4,
        in_channels: int = 3,
        embed_dim: int = 96,
    ) -> None:
        super().__init__()
        sd = _check_spatial_dims(spatial_dims)
        ps = _per_axis(patch_size, sd, "patch_size")
        # an int for an isotropic patch: the 2-D conv then reprs (and behaves) exactly as before
        ks = ps[0] if len(set(ps)) == 1 else ps
        self.proj = CONV[sd](in_channels, embed_dim, kernel_size=ks, stride=ks)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, *range(2, x.dim()), 1))


class PatchMerging(nn.Module):
    """2x downsampling of every axis: concatenate each 2^n neighbourhood, LayerNorm, Linear -> 2C.

    2-D: 4C -> 2C; 3-D: 8C -> 2C. The sub-grids are concatenated with the FIRST axis's offset
    changing fastest: in 2-D (even row, even col), (odd row, even col), (even row, odd col),
    (odd row, odd col), the public implementation's order; in 3-D the same with the third axis
    slowest.

    Args:
        dim: input channels C.
        spatial_dims: 2 or 3.

    Example:
        >>> merge = PatchMerging(dim=32, spatial_dims=3)
        >>> merge(torch.zeros(1, 8, 8, 4, 32)).shape
        torch.Size([1, 4, 4, 2, 64])
    """

    def __init__(self, dim: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        self.dim = dim
        n_sub = 2**self.spatial_dims
        self.norm = nn.LayerNorm(n_sub * dim)
        self.reduction = nn.Linear(n_sub * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for offsets in itertools.product((0, 1), repeat=self.spatial_dims):
            offsets = offsets[::-1]  # first axis fastest
            parts.append(x[(slice(None), *(slice(o, None, 2) for o in offsets))])
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class PatchExpand(nn.Module):
    """2x upsampling of every axis in the decoder: Linear 2C -> 2^n C, pixel shuffle x2, LayerNorm(C).

    ``dim`` is the OUTPUT width C (the width of the decoder stage it opens), as in the public
    implementation: the input has ``2 * dim`` channels.

    Args:
        dim: output channels C; the input has 2C.
        spatial_dims: 2 or 3.
        dim_scale: upsampling factor (2).

    Example:
        >>> up = PatchExpand(dim=32, spatial_dims=3)
        >>> up(torch.zeros(1, 2, 2, 1, 64)).shape
        torch.Size([1, 4, 4, 2, 32])
    """

    def __init__(self, dim: int, spatial_dims: int = 2, dim_scale: int = 2) -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        self.dim = dim
        self.dim_scale = dim_scale
        in_dim = 2 * dim
        # 2-D: Linear(2C, dim_scale * 2C) = 4C, the public layer; 3-D: 8C
        self.expand = nn.Linear(in_dim, dim_scale**self.spatial_dims * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_last(self.expand(x), self.dim_scale))


class FinalPatchExpand(nn.Module):
    """Final upsampling by the patch size: Linear C -> prod(p) * C/max(p), pixel shuffle, LayerNorm.

    In 2-D with a 4x4 patch this is the public layer: Linear C -> 4C, shuffle x4 to C/4 channels.
    In 3-D with a (4, 4, 2) patch: Linear C -> 32 * C/4 = 8C, shuffle to C/4 channels.

    Args:
        dim: input channels C (a multiple of the largest patch side).
        spatial_dims: 2 or 3.
        dim_scale: the patch size (one int, or one per axis).

    Example:
        >>> up = FinalPatchExpand(dim=16, spatial_dims=3, dim_scale=(4, 4, 2))
        >>> up(torch.zeros(1, 2, 2, 2, 16)).shape
        torch.Size([1, 8, 8, 4, 4])
    """

    def __init__(self, dim: int, spatial_dims: int = 2, dim_scale: int | Sequence[int] = 4) -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        self.dim = dim
        self.dim_scale = dim_scale
        scale = _per_axis(dim_scale, self.spatial_dims, "dim_scale")
        #: channels of the full-resolution output
        self.out_dim = dim // max(scale)
        self.expand = nn.Linear(dim, math.prod(scale) * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_last(self.expand(x), self.dim_scale))


# ---------------------------------------------------------------- fixed-dimension names


class PatchEmbed2D(PatchEmbed):
    """:class:`PatchEmbed` in 2-D: ``Conv2d(k=s=patch_size)``, channels-last, LayerNorm.

    Args:
        patch_size: side of the square patch (and the stride), or (height, width).
        in_channels: channels of the input image.
        embed_dim: channels of the output tokens.

    Example:
        >>> embed = PatchEmbed2D(patch_size=4, in_channels=3, embed_dim=96)
        >>> embed(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 16, 16, 96])
    """

    def __init__(
        self, patch_size: int | Sequence[int] = 4, in_channels: int = 3, embed_dim: int = 96
    ) -> None:
        super().__init__(2, patch_size, in_channels, embed_dim)


class PatchEmbed3D(PatchEmbed):
    """:class:`PatchEmbed` in 3-D: ``Conv3d(k=s=patch_size)``, channels-last, LayerNorm.

    Args:
        patch_size: the patch (and stride), one int or (H, W, D) sides.
        in_channels: channels of the input volume.
        embed_dim: channels of the output tokens.

    Example:
        >>> PatchEmbed3D((4, 4, 2), 1, 16)(torch.zeros(1, 1, 16, 16, 8)).shape
        torch.Size([1, 4, 4, 4, 16])
    """

    def __init__(
        self, patch_size: int | Sequence[int] = (4, 4, 2), in_channels: int = 1, embed_dim: int = 96
    ) -> None:
        super().__init__(3, patch_size, in_channels, embed_dim)


class PatchMerging2D(PatchMerging):
    """:class:`PatchMerging` in 2-D: each 2x2 neighbourhood (4C), LayerNorm, Linear 4C -> 2C.

    Args:
        dim: input channels C.

    Example:
        >>> merge = PatchMerging2D(dim=96)
        >>> merge(torch.zeros(1, 16, 16, 96)).shape
        torch.Size([1, 8, 8, 192])
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, spatial_dims=2)


class PatchMerging3D(PatchMerging):
    """:class:`PatchMerging` in 3-D: each 2x2x2 neighbourhood (8C), LayerNorm, Linear 8C -> 2C.

    Args:
        dim: input channels C.

    Example:
        >>> PatchMerging3D(dim=8)(torch.zeros(1, 4, 4, 4, 8)).shape
        torch.Size([1, 2, 2, 2, 16])
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, spatial_dims=3)


class PatchExpand2D(PatchExpand):
    """:class:`PatchExpand` in 2-D: Linear 2C -> 4C, pixel shuffle x2, LayerNorm on C.

    Args:
        dim: output channels C; the input has 2C.
        dim_scale: upsampling factor (2).

    Example:
        >>> up = PatchExpand2D(dim=384)
        >>> up(torch.zeros(1, 2, 2, 768)).shape
        torch.Size([1, 4, 4, 384])
    """

    def __init__(self, dim: int, dim_scale: int = 2) -> None:
        super().__init__(dim, spatial_dims=2, dim_scale=dim_scale)


class PatchExpand3D(PatchExpand):
    """:class:`PatchExpand` in 3-D: Linear 2C -> 8C, pixel shuffle x2 on every axis, LayerNorm on C.

    Args:
        dim: output channels C; the input has 2C.
        dim_scale: upsampling factor (2).

    Example:
        >>> PatchExpand3D(dim=8)(torch.zeros(1, 2, 2, 2, 16)).shape
        torch.Size([1, 4, 4, 4, 8])
    """

    def __init__(self, dim: int, dim_scale: int = 2) -> None:
        super().__init__(dim, spatial_dims=3, dim_scale=dim_scale)


class FinalPatchExpand2D(FinalPatchExpand):
    """:class:`FinalPatchExpand` in 2-D: Linear C -> 4C, pixel shuffle x4 (to C/4 channels), LayerNorm.

    Args:
        dim: input channels C (divisible by ``dim_scale``).
        dim_scale: upsampling factor (4, the patch size).

    Example:
        >>> up = FinalPatchExpand2D(dim=96)
        >>> up(torch.zeros(1, 8, 8, 96)).shape
        torch.Size([1, 32, 32, 24])
    """

    def __init__(self, dim: int, dim_scale: int | Sequence[int] = 4) -> None:
        super().__init__(dim, spatial_dims=2, dim_scale=dim_scale)


class FinalPatchExpand3D(FinalPatchExpand):
    """:class:`FinalPatchExpand` in 3-D: upsampling by the (H, W, D) patch size.

    Args:
        dim: input channels C (divisible by the largest patch side).
        dim_scale: the patch size.

    Example:
        >>> FinalPatchExpand3D(dim=16)(torch.zeros(1, 2, 2, 2, 16)).shape
        torch.Size([1, 8, 8, 4, 4])
    """

    def __init__(self, dim: int, dim_scale: int | Sequence[int] = (4, 4, 2)) -> None:
        super().__init__(dim, spatial_dims=3, dim_scale=dim_scale)
