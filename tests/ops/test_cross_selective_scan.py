"""The fused cross-scan + selective scan + cross-merge ("cpu" kernels) against the reference path:
``cross_scan_2d`` / ``cross_scan_3d`` -> float64 sequential ``selective_scan`` -> ``cross_merge``."""

from __future__ import annotations

import pytest
import torch

from vmunet.ops import (
    cross_merge_2d,
    cross_merge_3d,
    cross_scan_2d,
    cross_scan_3d,
    cross_selective_scan,
    selective_scan,
)
from vmunet.ops._backends import numba_kernels
from vmunet.ops.scan_orders import scan_index

pytestmark = pytest.mark.skipif(numba_kernels()[0] is None, reason="numba unavailable")

CASES = [((3, 5), 4), ((2, 3), 4), ((3, 4, 5), 6), ((3, 4, 5), 2), ((2, 1, 3), 6)]


def _scan(x, k):
    return cross_scan_2d(x) if x.dim() == 4 else cross_scan_3d(x, k)


def _merge(y, size):
    return cross_merge_2d(y, *size) if len(size) == 2 else cross_merge_3d(y, *size)


def _to_scan_order(t, size, k):
    """(b, K, L, c) at row-major positions -> (b, K, c, L) in each direction's own order."""
    b, K, L, c = t.shape
    out = []
    for j in range(K):
        grid = t[:, j].transpose(1, 2).reshape(b, c, *size)
        out.append(_scan(grid, k)[:, j])
    return torch.stack(out, 1)


def _reference(u, delta, A, B, C, D, bias, size, k):
    b, L, d = u.shape
    x = u.transpose(1, 2).reshape(b, d, *size)
    xs = _scan(x, k)
    ys = selective_scan(
        xs.reshape(b, k * d, L),
        _to_scan_order(delta, size, k).reshape(b, k * d, L),
        A,
        _to_scan_order(B, size, k),
        _to_scan_order(C, size, k),
        D,
        delta_bias=bias,
        delta_softplus=True,
        backend="reference",
    )
    return _merge(ys.reshape(b, k, d, L), size).transpose(1, 2)


def _inputs(size, k, b=2, d=5, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.Size(size).numel()
    return [
        torch.randn(b, L, d, generator=g),
        torch.randn(b, k, L, d, generator=g) * 0.5,
        -torch.rand(k * d, n, generator=g) - 0.2,
        torch.randn(b, k, L, n, generator=g),
        torch.randn(b, k, L, n, generator=g),
        torch.randn(k * d, generator=g),
        torch.randn(k * d, generator=g) * 0.3,
    ]


@pytest.mark.parametrize("size,k", CASES)
def test_index_maps_are_the_cross_scan_orders(size, k):
    x = torch.randn(2, 3, *size)
    idx = scan_index(size, k)
    assert idx.shape == (k, torch.Size(size).numel())
    flat = x.flatten(2)
    torch.testing.assert_close(torch.stack([flat[..., idx[j]] for j in range(k)], 1), _scan(x, k))
    for j in range(k):  # each a permutation
        assert torch.equal(idx[j].sort().values, torch.arange(idx.shape[1]))


@pytest.mark.parametrize("size,k", CASES)
def test_fused_forward_and_gradients_match_reference(size, k):
    ins = _inputs(size, k)
    fused_in = [t.clone().requires_grad_(True) for t in ins]
    ref_in = [t.double().requires_grad_(True) for t in ins]
    y = cross_selective_scan(*fused_in, scan_index(size, k))
    y_ref = _reference(*ref_in, size, k)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y_ref)
    (y.double() * g).sum().backward()
    (y_ref * g).sum().backward()
    for name, a, r in zip(("u", "delta", "A", "B", "C", "D", "delta_bias"), fused_in, ref_in):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_fused_long_sequence_many_channels():
    # several tiles (L > 32) and two channel blocks (d > 64): tile hand-over and block splits
    size, k = (7, 11), 4
    ins = _inputs(size, k, b=1, d=70, n=4, seed=1)
    fused_in = [t.clone().requires_grad_(True) for t in ins]
    ref_in = [t.double().requires_grad_(True) for t in ins]
    y = cross_selective_scan(*fused_in, scan_index(size, k))
    y_ref = _reference(*ref_in, size, k)
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-4, atol=2e-4)
    y.sum().backward()
    y_ref.sum().backward()
    for a, r in zip(fused_in, ref_in):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=5e-4, atol=5e-4)


def test_fused_inference_mode_and_shape_errors():
    size, k = (3, 5), 4
    ins = _inputs(size, k)
    with torch.inference_mode():
        y = cross_selective_scan(*ins, scan_index(size, k))
    y_ref = _reference(*[t.double() for t in ins], size, k)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="delta must be"):
        cross_selective_scan(ins[0], ins[1][:, :2], *ins[2:], scan_index(size, k))
