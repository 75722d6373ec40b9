"""Cross-scan and cross-merge: the 1-D orders VM-UNet's SS2D / SS3D read a feature map in.

The orders follow VMamba / VM-UNet ``SS2D.forward_core`` (JCruan519/VM-UNet,
models/vmunet/vmamba.py): k=0 row-major (``x.view(B, C, H*W)``), k=1 column-major (H and W
transposed, then flattened), k=2 and k=3 the same two sequences reversed. The merge maps each
direction's output back to row-major positions and sums the four, which makes it the adjoint
(transpose) of the scan.

In 3-D (``cross_scan_3d`` / ``cross_merge_3d``) the token grid is ``(H, W, D)``, MONAI's axis
order (the slice axis last). Each of the three axes in turn is the fastest-changing one, in
the cyclic orders ``(H, W, D)`` (D fastest: the memory order), ``(D, H, W)`` (W fastest) and
``(W, D, H)`` (H fastest); each is also read reversed, which gives six directions. The light
two-direction option keeps the memory order, forward and reversed (one flattened sequence in
each sense, as U-Mamba's 3-D blocks scan it forward).
"""

from __future__ import annotations

import torch

__all__ = ["cross_scan_2d", "cross_merge_2d", "cross_scan_3d", "cross_merge_3d", "SCAN_DIRECTIONS_3D"]

#: The direction counts ``cross_scan_3d`` accepts.
SCAN_DIRECTIONS_3D = (2, 6)


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


# Cyclic axis orders of a (B, C, H, W, D) tensor, slowest axis first: D, W, H fastest in turn.
_ORDERS_3D = ((2, 3, 4), (4, 2, 3), (3, 4, 2))


def _check_directions(directions: int, where: str) -> int:
    if isinstance(directions, bool) or directions not in SCAN_DIRECTIONS_3D:
        raise ValueError(f"{where}: directions must be one of {SCAN_DIRECTIONS_3D}, got {directions!r}")
    return int(directions)


def cross_scan_3d(x: torch.Tensor, directions: int = 6) -> torch.Tensor:
    """Read a (B, C, H, W, D) volume in ``directions`` flattened orders.

    Args:
        x: feature volume, (B, C, H, W, D) (MONAI's axis order).
        directions: 6 (each axis in turn fastest, forward and reversed) or 2 (the memory order,
            D fastest, forward and reversed).

    Returns:
        (B, K, C, H*W*D). For K = 6: [(H, W, D), (D, H, W), (W, D, H), the same three reversed],
        each tuple naming the axes slowest first. For K = 2: [(H, W, D), reversed].

    Example:
        >>> import torch
        >>> from vmunet.ops import cross_scan_3d
        >>> x = torch.arange(8.0).view(1, 1, 2, 2, 2)
        >>> cross_scan_3d(x)[0, :3, 0]
        tensor([[0., 1., 2., 3., 4., 5., 6., 7.],
                [0., 2., 4., 6., 1., 3., 5., 7.],
                [0., 4., 1., 5., 2., 6., 3., 7.]])
    """
    k = _check_directions(directions, "cross_scan_3d")
    if x.dim() != 5:
        raise ValueError(f"cross_scan_3d: x must be (B, C, H, W, D), got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    orders = _ORDERS_3D[: k // 2]
    fwd = torch.stack([x.permute(0, 1, *order).reshape(b, c, -1) for order in orders], dim=1)
    return torch.cat([fwd, fwd.flip(-1)], dim=1)


def cross_merge_3d(y: torch.Tensor, H: int, W: int, D: int) -> torch.Tensor:
    """Map the sequences of ``cross_scan_3d`` back to memory order (D fastest) and sum them.

    The number of directions (2 or 6) is read from ``y.shape[1]``. This is the adjoint of
    :func:`cross_scan_3d`: ``<cross_scan_3d(x), y> == <x, cross_merge_3d(y)>``.

    Args:
        y: (B, K, C, H*W*D), in the order produced by ``cross_scan_3d``.
        H: first spatial size of the volume the sequences came from.
        W: second spatial size.
        D: third spatial size (the slice axis).

    Returns:
        (B, C, H*W*D) in memory order.

    Example:
        >>> import torch
        >>> from vmunet.ops import cross_scan_3d, cross_merge_3d
        >>> x = torch.randn(2, 3, 4, 5, 2)
        >>> torch.allclose(cross_merge_3d(cross_scan_3d(x), 4, 5, 2), 6 * x.flatten(2))
        True
    """
    L = H * W * D
    if y.dim() != 4 or y.shape[1] not in SCAN_DIRECTIONS_3D or y.shape[3] != L:
        raise ValueError(
            f"cross_merge_3d: y must be (B, K, C, H*W*D) = (B, K, C, {L}) with K in {SCAN_DIRECTIONS_3D} "
            f"for H={H}, W={W}, D={D}; got shape {tuple(y.shape)}"
        )
    b, k, c, _ = y.shape
    n = k // 2
    fwd = y[:, :n] + y[:, n:].flip(-1)  # undo the reversal: (B, K/2, C, L)
    sizes = {2: H, 3: W, 4: D}
    out = fwd[:, 0]
    for i in range(1, n):
        order = _ORDERS_3D[i]
        vol = fwd[:, i].reshape(b, c, *(sizes[a] for a in order))
        inverse = [0, 1] + [2 + order.index(a) for a in (2, 3, 4)]
        out = out + vol.permute(*inverse).reshape(b, c, L)
    return out
