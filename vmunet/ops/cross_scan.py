"""Cross-scan and cross-merge: the four 1-D orders VM-UNet's SS2D reads a 2-D feature map in.

The orders follow VMamba / VM-UNet ``SS2D.forward_core`` (JCruan519/VM-UNet,
models/vmunet/vmamba.py): k=0 row-major (``x.view(B, C, H*W)``), k=1 column-major (H and W
transposed, then flattened), k=2 and k=3 the same two sequences reversed. The merge maps each
direction's output back to row-major positions and sums the four, which makes it the adjoint
(transpose) of the scan.
"""

from __future__ import annotations

import torch

__all__ = ["cross_scan_2d", "cross_merge_2d"]


def cross_scan_2d(x: torch.Tensor) -> torch.Tensor:
    """Read a (B, C, H, W) map in VM-UNet's four scan orders.

    Args:
        x: feature map, (B, C, H, W).

    Returns:
        (B, 4, C, H*W): [row-major, column-major, reversed row-major, reversed column-major].

    Example:
        >>> import torch
        >>> from vmunet.ops import cross_scan_2d
        >>> x = torch.arange(6.0).view(1, 1, 2, 3)
        >>> cross_scan_2d(x)[0, :, 0]
        tensor([[0., 1., 2., 3., 4., 5.],
                [0., 3., 1., 4., 2., 5.],
                [5., 4., 3., 2., 1., 0.],
                [5., 2., 4., 1., 3., 0.]])
    """
    if x.dim() != 4:
        raise ValueError(f"cross_scan_2d: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if x.device.type == "cuda":  # one Triton kernel (vmunet/ops/_triton_cross.py) when triton imports
        from vmunet.ops._backends import triton_cross_kernels

        if (kernels := triton_cross_kernels()) is not None:
            return kernels.cross_scan_2d(x)
    b, c, h, w = x.shape
    hw = x.reshape(b, c, h * w)
    wh = x.transpose(2, 3).reshape(b, c, h * w)
    two = torch.stack([hw, wh], dim=1)
    return torch.cat([two, two.flip(-1)], dim=1)


def cross_merge_2d(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Map the four scan-order sequences back to row-major positions and sum them.

    Args:
        y: (B, 4, C, H*W), in the order produced by ``cross_scan_2d``.
        H: height of the map the sequences came from.
        W: width of the map the sequences came from.

    Returns:
        (B, C, H*W) in row-major order.

    Example:
        >>> import torch
        >>> from vmunet.ops import cross_scan_2d, cross_merge_2d
        >>> x = torch.randn(2, 3, 4, 5)
        >>> torch.allclose(cross_merge_2d(cross_scan_2d(x), 4, 5), 4 * x.flatten(2))
        True
    """
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[3] != H * W:
        raise ValueError(
            f"cross_merge_2d: y must be (B, 4, C, H*W) = (B, 4, C, {H * W}) for H={H}, W={W}; "
            f"got shape {tuple(y.shape)}"
        )
    if y.device.type == "cuda":  # one Triton kernel (vmunet/ops/_triton_cross.py) when triton imports
        from vmunet.ops._backends import triton_cross_kernels

        if (kernels := triton_cross_kernels()) is not None:
            return kernels.cross_merge_2d(y, H, W)
    b, _, c, L = y.shape
    fwd = y[:, 0:2] + y[:, 2:4].flip(-1)  # undo the reversal: (B, 2, C, L)
    col = fwd[:, 1].reshape(b, c, W, H).transpose(2, 3).reshape(b, c, L)
    return fwd[:, 0] + col
