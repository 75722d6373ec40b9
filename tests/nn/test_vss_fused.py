"""SSND's fused cross-scan path ("cpu" backend) against its unfused path with the "torch" backend."""

from __future__ import annotations

import pytest
import torch

from vmunet import ops
from vmunet.nn.vss import SS2D, SSND
from vmunet.ops._backends import numba_kernels

pytestmark = pytest.mark.skipif(numba_kernels()[0] is None, reason="numba unavailable")


@pytest.mark.parametrize("spatial_dims,size,k", [(2, (3, 5), 4), (3, (3, 4, 5), 6), (3, (3, 4, 5), 2)])
def test_fused_matches_unfused_torch_backend(spatial_dims, size, k, monkeypatch):
    torch.manual_seed(0)
    m = SSND(16, d_state=4, spatial_dims=spatial_dims, scan_directions=k, bias=True)
    x = torch.randn(2, *size, 16, requires_grad=True)
    m.scan_backend, m.fused_scan = "torch", None  # "torch": never fused
    y0 = m(x)
    g0 = torch.autograd.grad(y0.square().sum(), [x, *m.parameters()])
    calls = []
    real = ops.cross_selective_scan_packed
    monkeypatch.setattr(
        ops, "cross_selective_scan_packed", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    m.scan_backend = "cpu"
    y1 = m(x)
    g1 = torch.autograd.grad(y1.square().sum(), [x, *m.parameters()])
    assert calls, "the cpu backend did not take the fused path"
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    for (name, _), a, b in zip([("x", None), *m.named_parameters()], g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


def test_fused_can_be_switched_off(monkeypatch):
    m = SS2D(16, d_state=4, scan_backend="cpu")
    called = []
    monkeypatch.setattr(ops, "cross_selective_scan_packed", lambda *a, **kw: called.append(1))
    m.fused_scan = False
    x = torch.randn(1, 4, 4, 16)
    with torch.inference_mode():
        y = m(x)
    assert not called and y.shape == x.shape


def test_index_cached_under_inference_mode_serves_training():
    # the scan-order map is cached per grid; one first built under inference_mode must still be
    # usable by autograd (inference tensors cannot be saved for backward)
    m = SS2D(16, d_state=4, scan_backend="cpu")
    x = torch.randn(1, 3, 7, 16)  # a grid no other test uses
    with torch.inference_mode():
        m(x)
    m(x).sum().backward()
    assert m.x_proj_weight.grad is not None and torch.isfinite(m.x_proj_weight.grad).all()


@pytest.mark.parametrize("spatial_dims,size,k", [(2, (5, 7), 4), (3, (3, 4, 5), 6), (3, (3, 4, 5), 2)])
def test_inference_gate_fused_matches_unfused_torch_backend(spatial_dims, size, k, monkeypatch):
    # without gradients the LayerNorm and the SiLU gate run inside the op; with them, they do not
    torch.manual_seed(1)
    m = SSND(16, d_state=4, spatial_dims=spatial_dims, scan_directions=k)
    with torch.no_grad():
        m.out_norm.weight.uniform_(0.5, 1.5)
        m.out_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, *size, 16)
    m.scan_backend = "torch"
    with torch.inference_mode():
        want = m(x)
    calls = []
    real = ops.cross_selective_scan_gated
    monkeypatch.setattr(ops, "cross_selective_scan_gated", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    m.scan_backend = "cpu"
    with torch.inference_mode():
        got = m(x)
    assert calls == [1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    m(x).sum().backward()  # gradients needed: the unfused gate
    assert calls == [1]
