"""cross_scan_2d / cross_merge_2d: VM-UNet's four scan orders and the adjoint merge."""

from __future__ import annotations

import pytest
import torch

from vmunet.ops import cross_merge_2d, cross_scan_2d


def test_orders_by_hand():
    # 2 x 3 map with values = row-major position
    x = torch.arange(6.0).view(1, 1, 2, 3)
    xs = cross_scan_2d(x)[0, :, 0]
    assert xs[0].tolist() == [0, 1, 2, 3, 4, 5]  # row-major
    assert xs[1].tolist() == [0, 3, 1, 4, 2, 5]  # column-major (H and W transposed)
    assert xs[2].tolist() == [5, 4, 3, 2, 1, 0]
    assert xs[3].tolist() == [5, 2, 4, 1, 3, 0]


def test_matches_vmunet_forward_core_construction():
    # the construction in VM-UNet's SS2D.forward_core: stack(hw, transpose(2,3) -> wh), cat(flip)
    B, C, H, W = 2, 3, 4, 5
    x = torch.randn(B, C, H, W)
    L = H * W
    x_hwwh = torch.stack([x.view(B, -1, L), x.transpose(2, 3).contiguous().view(B, -1, L)], dim=1)
    expected = torch.cat([x_hwwh, x_hwwh.flip(-1)], dim=1)
    torch.testing.assert_close(cross_scan_2d(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("H,W", [(1, 1), (3, 5), (4, 4), (7, 2)])
def test_merge_is_adjoint_of_scan(H, W):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
    y = torch.randn(2, 4, 3, H * W, generator=g, dtype=torch.float64)
    lhs = (cross_scan_2d(x) * y).sum()
    rhs = (x.flatten(2) * cross_merge_2d(y, H, W)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_merge_matches_vmunet_recombination():
    B, C, H, W = 1, 2, 3, 4
    L = H * W
    out_y = torch.randn(B, 4, C, L)
    inv_y = torch.flip(out_y[:, 2:4], dims=[-1]).view(B, 2, -1, L)
    wh_y = out_y[:, 1].view(B, -1, W, H).transpose(2, 3).contiguous().view(B, -1, L)
    invwh_y = inv_y[:, 1].view(B, -1, W, H).transpose(2, 3).contiguous().view(B, -1, L)
    expected = out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y
    torch.testing.assert_close(cross_merge_2d(out_y, H, W), expected)


def test_differentiable():
    x = torch.randn(1, 2, 3, 4, requires_grad=True)
    cross_merge_2d(cross_scan_2d(x), 3, 4).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cross_scan_2d(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="H\\*W"):
        cross_merge_2d(torch.zeros(1, 4, 2, 11), 3, 4)
