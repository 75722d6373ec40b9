"""Index maps of the cross-scan orders: the one description of the 2-D and 3-D scan directions.

``scan_index(size, K)[k, l]`` is the row-major (memory-order) position of the ``l``-th token that
direction ``k`` reads, so that direction ``k``'s sequence is ``x.flatten(2)[..., index[k]]``. The
orders are those of :func:`vmunet.ops.cross_scan_2d` (row-major, column-major, both reversed) and
:func:`vmunet.ops.cross_scan_3d` (the three cyclic axis orders, then the same reversed; or the
memory order forward and reversed), which stay the reference implementation; the tests check the
maps against them. The fused CPU kernels (``vmunet.ops._numba_scan``) read their inputs and write
their outputs through these maps instead of materialising the flipped / transposed copies.

Example:
    >>> from vmunet.ops.scan_orders import scan_index
    >>> scan_index((2, 3), 4)
    tensor([[0, 1, 2, 3, 4, 5],
            [0, 3, 1, 4, 2, 5],
            [5, 4, 3, 2, 1, 0],
            [5, 2, 4, 1, 3, 0]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["scan_index", "ORDERS_3D"]

#: Cyclic axis orders of an (H, W, D) grid, slowest axis first (D, W, H fastest in turn), as
#: indices into (H, W, D).
ORDERS_3D = ((0, 1, 2), (2, 0, 1), (1, 2, 0))


def scan_index(size: Sequence[int], directions: int, device: torch.device | None = None) -> torch.Tensor:
    """Row-major positions read by each scan direction, ``(K, prod(size))`` int64.

    Args:
        size: the token grid, ``(H, W)`` (K = 4) or ``(H, W, D)`` (K = 6 or 2).
        directions: the number of directions K.
        device: device of the returned tensor.

    Returns:
        ``index`` with ``cross_scan(x)[:, k] == x.flatten(2)[..., index[k]]``.
    """
    size = tuple(int(s) for s in size)
    grid = torch.arange(torch.Size(size).numel(), device=device).view(size)
    if len(size) == 2:
        if directions != 4:
            raise ValueError(f"scan_index: a 2-D grid has 4 directions, got {directions!r}")
        fwd = [grid.reshape(-1), grid.transpose(0, 1).reshape(-1)]
    elif len(size) == 3:
        if directions not in (2, 6):
            raise ValueError(f"scan_index: a 3-D grid has 6 or 2 directions, got {directions!r}")
        fwd = [grid.permute(*order).reshape(-1) for order in ORDERS_3D[: directions // 2]]
    else:
        raise ValueError(f"scan_index: size must be (H, W) or (H, W, D), got {size!r}")
    two = torch.stack(fwd)
    return torch.cat([two, two.flip(-1)]).contiguous()
