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
    cross_selective_scan_gated,
    cross_selective_scan_packed,
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


def _packed_inputs(size, k, b=2, d=5, n=3, r=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.Size(size).numel()
    return [
        torch.randn(b, L, d, generator=g),
        torch.randn(b, L, k, r + 2 * n, generator=g),  # x_proj's output: dt inputs, B, C
        torch.randn(k, d, r, generator=g) * 0.5,  # dt_proj's weight
        -torch.rand(k * d, n, generator=g) - 0.2,
        torch.randn(k * d, generator=g),
        torch.randn(k * d, generator=g) * 0.3,
    ]


def _packed_reference(u, x_dbl, w, A, D, bias, size, k):
    """float64: delta = x_dbl[..., :r] @ w[k].T by einsum, then the sequential reference path."""
    n = A.shape[1]
    r = w.shape[2]
    dts, B, C = torch.split(x_dbl.transpose(1, 2), [r, n, n], dim=3)  # (b, K, L, .)
    delta = torch.einsum("bklr,kdr->bkld", dts, w)
    return _reference(u, delta, A, B, C, D, bias, size, k)


@pytest.mark.parametrize(
    "size,k,d,r",
    [
        ((3, 5), 4, 5, 2),
        ((7, 11), 4, 70, 3),
        ((3, 4, 5), 6, 5, 2),
        ((3, 4, 5), 2, 5, 1),
        ((2, 1, 3), 6, 4, 4),
        ((3, 5), 4, 5, 40),  # rank above _KERNEL_RANK_MAX: expanded by a matmul before the kernels
    ],
)
def test_packed_low_rank_forward_and_gradients_match_reference(size, k, d, r):
    # dt_proj folded into the kernels; (7, 11) x 70 channels: several tiles and two channel blocks;
    # K = 2: a single direction pair (no sum over groups)
    ins = _packed_inputs(size, k, d=d, r=r, seed=d + r)
    fused_in = [t.clone().requires_grad_(True) for t in ins]
    ref_in = [t.double().requires_grad_(True) for t in ins]
    y = cross_selective_scan_packed(*fused_in, scan_index(size, k))
    y_ref = _packed_reference(*ref_in, size, k)
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-4, atol=2e-4)
    g = torch.randn_like(y_ref)
    (y.double() * g).sum().backward()
    (y_ref * g).sum().backward()
    for name, a, b in zip(("u", "x_dbl", "dt_weight", "A", "D", "delta_bias"), fused_in, ref_in):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=5e-4, atol=5e-4, msg=name)


def test_packed_without_dt_weight_reads_delta_columns():
    size, k, d, n = (3, 5), 4, 5, 3
    u, delta, A, B, C, D, bias = _inputs(size, k, d=d, n=n)
    x_dbl = torch.cat([delta, B, C], dim=3).transpose(1, 2).contiguous()  # R = d columns of delta
    y = cross_selective_scan_packed(u, x_dbl, None, A, D, bias, scan_index(size, k))
    y_ref = _reference(*[t.double() for t in (u, delta, A, B, C, D, bias)], size, k)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="x_dbl must be"):
        cross_selective_scan_packed(u, x_dbl[..., 1:], None, A, D, bias, scan_index(size, k))
    with pytest.raises(ValueError, match="dt_weight must be"):
        cross_selective_scan_packed(u, x_dbl, torch.randn(k, d + 1, d), A, D, bias, scan_index(size, k))


@pytest.mark.parametrize("size,k,r", [((7, 11), 4, 2), ((3, 4, 5), 6, 2), ((3, 4, 5), 2, 2), ((3, 5), 4, 40)])
def test_gated_equals_layer_norm_times_silu_in_float64(size, k, r):
    d = 70 if size == (7, 11) else 5
    ins = _packed_inputs(size, k, d=d, r=r, seed=3)
    b, L = ins[0].shape[:2]
    xz = torch.randn(b, L, 2 * d, generator=torch.Generator().manual_seed(4))
    norm = torch.nn.LayerNorm(d)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        y = cross_selective_scan_gated(*ins, scan_index(size, k), xz, norm)
        y64 = _packed_reference(*[t.double() for t in ins], size, k)
        want = torch.nn.functional.layer_norm(y64, (d,), norm.weight.double(), norm.bias.double(), norm.eps)
        want = want * torch.nn.functional.silu(xz[..., d:].double())
    torch.testing.assert_close(y.double(), want, rtol=2e-4, atol=2e-4)


def test_gated_refuses_gradients_and_bad_gate_inputs():
    size, k, d = (3, 5), 4, 5
    ins = _packed_inputs(size, k, d=d)
    b, L = ins[0].shape[:2]
    norm = torch.nn.LayerNorm(d)
    with pytest.raises(RuntimeError, match="inference only"):
        cross_selective_scan_gated(*ins, scan_index(size, k), torch.randn(b, L, 2 * d), norm)
    with torch.no_grad():
        with pytest.raises(ValueError, match="xz must be"):
            cross_selective_scan_gated(*ins, scan_index(size, k), torch.randn(b, L, d), norm)
        with pytest.raises(ValueError, match="affine LayerNorm over 5"):
            cross_selective_scan_gated(
                *ins, scan_index(size, k), torch.randn(b, L, 2 * d), torch.nn.LayerNorm(4)
            )


@pytest.mark.parametrize("k", [1, 3])
def test_packed_any_orders_and_an_odd_number_of_directions(k):
    # any permutations as scan orders, and K odd (one direction per work item, no pairs): each
    # direction scanned on its own by the float64 reference and scattered back
    b, L, d, n, r = 2, 37, 6, 3, 2
    g = torch.Generator().manual_seed(11)
    idx = torch.stack([torch.randperm(L, generator=g) for _ in range(k)])
    u, x_dbl, w, A, D, bias = _packed_inputs((L,), k, b=b, d=d, n=n, r=r, seed=12)
    fused_in = [t.clone().requires_grad_(True) for t in (u, x_dbl, w)]
    y = cross_selective_scan_packed(*fused_in, A, D, bias, idx)
    u64, x64, w64 = (t.double().requires_grad_(True) for t in (u, x_dbl, w))
    want = torch.zeros(b, L, d, dtype=torch.float64)
    for j in range(k):
        rows = x64[:, idx[j], j]  # (b, L, r + 2n) in direction j's order
        dts, Bj, Cj = torch.split(rows, [r, n, n], dim=2)
        yj = selective_scan(
            u64[:, idx[j]].transpose(1, 2),
            (dts @ w64[j].T).transpose(1, 2),
            A[j * d : (j + 1) * d].double(),
            Bj.transpose(1, 2).unsqueeze(1),
            Cj.transpose(1, 2).unsqueeze(1),
            D[j * d : (j + 1) * d].double(),
            delta_bias=bias[j * d : (j + 1) * d].double(),
            delta_softplus=True,
            backend="reference",
        )
        want = want.index_add(1, idx[j], yj.transpose(1, 2))
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    gy = torch.randn(b, L, d, generator=g, dtype=torch.float64)
    (y.double() * gy).sum().backward()
    (want * gy).sum().backward()
    for name, a, ref in zip(("u", "x_dbl", "dt_weight"), fused_in, (u64, x64, w64)):
        torch.testing.assert_close(a.grad.double(), ref.grad, rtol=5e-4, atol=5e-4, msg=name)
