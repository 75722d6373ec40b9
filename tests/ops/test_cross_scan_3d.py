"""cross_scan_3d / cross_merge_3d: the 3-D scan orders (hand-built), permutations, the adjoint merge."""

from __future__ import annotations

import itertools

import pytest
import torch

from vmunet.ops import cross_merge_3d, cross_scan_3d


def _order_by_loops(H: int, W: int, D: int, slow_to_fast: str) -> list[int]:
    """Memory positions (h*W*D + w*D + d) visited by nested loops, ``slow_to_fast`` e.g. 'dhw'."""
    size = {"h": H, "w": W, "d": D}
    out = []
    for idx in itertools.product(*(range(size[a]) for a in slow_to_fast)):
        pos = dict(zip(slow_to_fast, idx))
        out.append(pos["h"] * W * D + pos["w"] * D + pos["d"])
    return out


@pytest.mark.parametrize("H, W, D", [(2, 3, 4), (3, 2, 1)])
def test_six_orders_against_nested_loops(H, W, D):
    # values = memory position, so a scanned sequence lists the positions it visits
    x = torch.arange(float(H * W * D)).view(1, 1, H, W, D)
    xs = cross_scan_3d(x, directions=6)[0, :, 0].long().tolist()
    expected = [_order_by_loops(H, W, D, o) for o in ("hwd", "dhw", "wdh")]
    expected += [e[::-1] for e in expected]
    assert xs == expected


def test_hand_built_2x2x2_and_two_directions():
    x = torch.arange(8.0).view(1, 1, 2, 2, 2)  # value 4h + 2w + d
    xs = cross_scan_3d(x)[0, :, 0].tolist()
    assert xs[0] == [0, 1, 2, 3, 4, 5, 6, 7]  # d fastest, h slowest
    assert xs[1] == [0, 2, 4, 6, 1, 3, 5, 7]  # w fastest, d slowest
    assert xs[2] == [0, 4, 1, 5, 2, 6, 3, 7]  # h fastest, w slowest
    assert xs[3] == [7, 6, 5, 4, 3, 2, 1, 0]
    two = cross_scan_3d(x, directions=2)[0, :, 0].tolist()
    assert two == [xs[0], xs[3]]


@pytest.mark.parametrize("directions", [2, 6])
@pytest.mark.parametrize("H, W, D", [(1, 1, 1), (3, 4, 5), (2, 5, 3)])
def test_every_direction_visits_every_voxel_once(directions, H, W, D):
    L = H * W * D
    x = torch.arange(L).view(1, 1, H, W, D)
    xs = cross_scan_3d(x, directions=directions)
    assert xs.shape == (1, directions, 1, L)
    for k in range(directions):
        assert sorted(xs[0, k, 0].tolist()) == list(range(L)), f"direction {k} is not a permutation"


@pytest.mark.parametrize("directions", [2, 6])
@pytest.mark.parametrize("H, W, D", [(1, 1, 1), (3, 4, 5), (4, 2, 3)])
def test_merge_is_adjoint_of_scan(directions, H, W, D):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, H, W, D, generator=g, dtype=torch.float64)
    y = torch.randn(2, directions, 3, H * W * D, generator=g, dtype=torch.float64)
    lhs = (cross_scan_3d(x, directions) * y).sum()
    rhs = (x.flatten(2) * cross_merge_3d(y, H, W, D)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_merge_by_scatter():
    # the merge puts each sequence element back at the position the scan read it from
    H, W, D = 2, 3, 2
    L = H * W * D
    pos = cross_scan_3d(torch.arange(L).view(1, 1, H, W, D))[0, :, 0]
    y = torch.randn(1, 6, 2, L, dtype=torch.float64)
    expected = torch.zeros(1, 2, L, dtype=torch.float64)
    for k in range(6):
        for i in range(L):
            expected[..., pos[k, i]] += y[0, k, :, i]
    torch.testing.assert_close(cross_merge_3d(y, H, W, D), expected, rtol=0, atol=1e-12)


def test_differentiable():
    x = torch.randn(1, 2, 3, 4, 2, requires_grad=True)
    cross_merge_3d(cross_scan_3d(x), 3, 4, 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 6.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(B, C, H, W, D\)"):
        cross_scan_3d(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"directions must be one of \(2, 6\), got 4"):
        cross_scan_3d(torch.zeros(1, 1, 2, 2, 2), directions=4)
    with pytest.raises(ValueError, match=r"H\*W\*D"):
        cross_merge_3d(torch.zeros(1, 6, 2, 11), 3, 2, 2)
    with pytest.raises(ValueError, match=r"K in \(2, 6\)"):
        cross_merge_3d(torch.zeros(1, 4, 2, 12), 3, 2, 2)
