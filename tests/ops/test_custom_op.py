"""The scan is one torch.library op: opcheck, torch.compile(fullgraph) and torch.export see it."""

from __future__ import annotations

import pytest
import torch

from vmunet.ops import available_backends, selective_scan
from vmunet.ops._reference import selective_scan_reference

BACKENDS = [b for b in ("cpu", "torch") if b in available_backends()]


class Tiny(torch.nn.Module):
    def __init__(self, d=4, n=3, groups=2, backend=None):
        super().__init__()
        self.A_log = torch.nn.Parameter(torch.randn(d, n) * 0.1)
        self.D = torch.nn.Parameter(torch.ones(d))
        self.bias = torch.nn.Parameter(torch.zeros(d))
        self.groups = groups
        self.backend = backend

    def forward(self, u, B, C):
        A = -torch.exp(self.A_log)
        return selective_scan(
            u, u * 0.5, A, B, C, self.D, delta_bias=self.bias, delta_softplus=True, backend=self.backend
        )


def _inputs(b=1, d=4, n=3, L=12, groups=2):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(b, d, L, generator=g),
        torch.randn(b, groups, n, L, generator=g),
        torch.randn(b, groups, n, L, generator=g),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    u, B, C = _inputs()
    d, n = 4, 3
    args = (u, u.clone(), -torch.rand(d, n), B, C, torch.ones(d), None, torch.zeros(d), True, backend)
    op = torch.ops.vmunet.selective_scan.default
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_one_op_in_the_graph():
    from torch.fx.experimental.proxy_tensor import make_fx

    u, B, C = _inputs()
    m = Tiny(backend="torch")
    gm = make_fx(lambda u, B, C: m(u, B, C))(u, B, C)
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("vmunet.selective_scan" in t for t in targets) == 1


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_torch_compile_fullgraph_forward_backward(backend):
    u, B, C = _inputs()
    m = Tiny(backend=backend)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    u1 = u.clone().requires_grad_()
    out = compiled(u1, B, C)
    out.sum().backward()
    u2 = u.clone().requires_grad_()
    ref = m(u2, B, C)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-4, atol=1e-4)
    # and against the float64 reference directly
    A = -torch.exp(m.A_log.detach())
    r64, _ = selective_scan_reference(
        u.double(), 0.5 * u.double(), A.double(), B.double(), C.double(), m.D.detach().double(),
        None, m.bias.detach().double(), True,
    )  # fmt: skip
    torch.testing.assert_close(out.detach().double(), r64, rtol=2e-4, atol=2e-4)


def test_torch_export_sees_the_op():
    u, B, C = _inputs()
    m = Tiny(backend="torch")
    ep = torch.export.export(m, (u, B, C))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert any("vmunet.selective_scan" in t for t in targets), targets
    torch.testing.assert_close(ep.module()(u, B, C), m(u, B, C))
