"""The "triton" scan backend and the Triton cross-scan kernels under Triton's interpreter, on CPU.

Not collected by the default run (the name does not start with ``test_``): ``test_triton_backend.py``
runs this file in a subprocess with ``TRITON_INTERPRET=1`` set before triton is imported, so the
variable never reaches other tests. Run by hand with::

    TRITON_INTERPRET=1 python -m pytest tests/ops/_triton_interp_cases.py

Every comparison is against the sequential reference in float64 (outputs and all gradients),
with tolerances per input dtype as in state-spaces/mamba tests/ops/test_selective_scan.py. The
interpreter runs each program step by step in numpy, so shapes are tiny; L = 21, 20 and 12 are not
multiples of the kernels' 16-step chunk (``_triton_scan.CHUNK``), L = 16 is exactly one chunk.
"""

from __future__ import annotations

import os

import pytest
import torch

from ops.test_selective_scan import TOL, assert_close, make_inputs, run
from vmunet.ops import ScanBackendUnavailableError, available_backends, resolve_backend, selective_scan

if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover - guard against running it wrongly
    raise RuntimeError("run this file with TRITON_INTERPRET=1 (see tests/ops/test_triton_backend.py)")


def _compare(ins, softplus=True, last=True, dlast_weight=0.5, tol=None):
    out, state, grads = run(ins, "triton", softplus=softplus, last=last, dlast_weight=dlast_weight)
    out64, state64, grads64 = run(ins, "ref64", softplus=softplus, last=last, dlast_weight=dlast_weight)
    dtype = ins["u"].dtype if ins["u"].dtype != torch.float64 else torch.float32
    rtol, atol = tol or TOL[dtype]
    assert out.dtype == ins["u"].dtype
    assert state.dtype == torch.float32
    assert_close(out, out64, rtol, atol, "out")
    assert_close(state, state64, rtol, atol, "last_state")
    assert set(grads) == set(grads64)
    for k in grads64:
        assert grads[k].dtype == ins[k].dtype, k
        assert grads[k].shape == ins[k].shape, k
        assert_close(grads[k], grads64[k], 2 * rtol, 2 * atol, f"grad {k}")


def test_backend_is_available_under_the_interpreter():
    u = torch.zeros(1)
    assert "triton" in available_backends(u)
    assert resolve_backend(None, u) in ("cpu", "torch")  # never chosen automatically for CPU tensors


@pytest.mark.parametrize("bc", ["const", "shared", "grouped"])
def test_every_bc_form_all_options(bc):
    _compare(make_inputs(1, 4, 21, 3, bc, G=2))


def test_batch_two_one_chunk():
    _compare(make_inputs(2, 4, 16, 2, "grouped", G=2, seed=2))


def test_length_one():
    _compare(make_inputs(1, 4, 1, 3, "grouped", G=2, seed=3))


@pytest.mark.parametrize(
    "D,z,bias,softplus", [(False, False, False, False), (True, False, True, True), (False, True, False, True)]
)
def test_optional_inputs(D, z, bias, softplus):
    ins = make_inputs(1, 4, 12, 4, "grouped", G=2, D=D, z=z, bias=bias, seed=4)
    _compare(ins, softplus=softplus)


def test_without_last_state_gradient():
    # return_last_state's value is used, but no gradient flows into it (dlast is None in the backward)
    _compare(make_inputs(1, 4, 20, 3, "shared", seed=5), last=False)


def test_mixed_forms_constant_B_grouped_C():
    ins = make_inputs(1, 4, 20, 3, "grouped", G=2, seed=6)
    ins["B"] = make_inputs(1, 4, 20, 3, "const", seed=7)["B"]
    _compare(ins)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    _compare(make_inputs(1, 4, 12, 3, "grouped", G=2, dtype=dtype, seed=8))


def test_float64_inputs_computed_in_float32():
    ins = make_inputs(1, 4, 10, 3, "grouped", G=2, dtype=torch.float64, seed=9)
    out = selective_scan(**ins, delta_softplus=True, backend="triton")
    assert out.dtype == torch.float64
    out64, _, _ = run(ins, "ref64")
    assert_close(out, out64, 2e-4, 2e-4, "out")


def test_large_negative_A_and_large_delta_stay_finite():
    ins = make_inputs(1, 4, 12, 4, "grouped", G=2, seed=10)
    ins["A"] = -torch.logspace(0, 4, 4, dtype=torch.float64).repeat(4, 1)
    ins["delta"] = torch.full((1, 4, 12), 50.0, dtype=torch.float64)
    _compare(ins, dlast_weight=0.1)


def test_custom_op_schema_and_fake():
    ins = make_inputs(1, 4, 18, 3, "grouped", G=2, seed=11)
    f = {k: (v.float() if v is not None else None) for k, v in ins.items()}
    args = (f["u"], f["delta"], f["A"], f["B"], f["C"], f["D"], f["z"], f["delta_bias"], True, "triton", True)
    torch.library.opcheck(
        torch.ops.vmunet.selective_scan.default, args, test_utils=("test_schema", "test_faketensor")
    )
    out, last, states = torch.ops.vmunet.selective_scan.default(*args)
    from vmunet.ops import _triton_scan

    assert _triton_scan.CHUNK < 18  # more than one chunk
    assert states.shape == (1, -(-18 // _triton_scan.CHUNK), 3, 4)  # (b, chunks, N, d)
    assert torch.equal(states[:, 0], torch.zeros(1, 3, 4))


def test_custom_ops_fake_match_real_for_bf16_inputs():
    # bf16 tensors reach the kernels as they are: out in bf16, last state and saved states in float32
    ins = make_inputs(1, 4, 5, 2, "grouped", G=2, dtype=torch.bfloat16, seed=12)
    f = {k: (v.to(torch.bfloat16) if v is not None else None) for k, v in ins.items()}
    f["A"] = f["A"].float()
    args = (f["u"], f["delta"], f["A"], f["B"], f["C"], f["D"], f["z"], f["delta_bias"], True, "triton", True)
    torch.library.opcheck(torch.ops.vmunet.selective_scan.default, args, test_utils=("test_faketensor",))
    out, last, states = torch.ops.vmunet.selective_scan.default(*args)
    assert (out.dtype, last.dtype, states.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    dout, dlast = torch.ones_like(out), torch.ones_like(last)
    bargs = (dout, dlast, *args[:10], states)
    torch.library.opcheck(
        torch.ops.vmunet.selective_scan_backward.default, bargs, test_utils=("test_faketensor",)
    )
    grads = torch.ops.vmunet.selective_scan_backward.default(*bargs)
    assert [g.dtype for g in grads] == [t.dtype for t in args[:8]]


def test_triton_on_cpu_rejected_when_kernels_not_interpreted(monkeypatch):
    from vmunet.ops import _backends

    mod, _ = _backends.triton_kernels()
    monkeypatch.setattr(mod, "INTERPRET", False)
    with pytest.raises(ScanBackendUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.zeros(1))


# ------------------------------------------------------------------------------------- cross scan
@pytest.mark.parametrize("shape", [(2, 3, 3, 5), (1, 2, 4, 4), (1, 1, 1, 7)])
def test_cross_scan_and_merge_match_torch(shape):
    from vmunet.ops import _triton_cross
    from vmunet.ops.cross_scan import cross_merge_2d, cross_scan_2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    b, c, h, w = shape
    assert torch.equal(_triton_cross.cross_scan_2d(x), cross_scan_2d(x))
    y = torch.randn(b, 4, c, h * w, generator=g)
    torch.testing.assert_close(_triton_cross.cross_merge_2d(y, h, w), cross_merge_2d(y, h, w))


def test_cross_scan_reads_strided_input_and_keeps_dtype():
    from vmunet.ops import _triton_cross
    from vmunet.ops.cross_scan import cross_scan_2d

    x = torch.randn(2, 3, 4, 5).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = _triton_cross.cross_scan_2d(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, cross_scan_2d(x))


def test_cross_scan_and_merge_are_adjoint_and_differentiable():
    from vmunet.ops import _triton_cross

    g = torch.Generator().manual_seed(1)
    b, c, h, w = 1, 2, 3, 4
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randn(b, 4, c, h * w, generator=g, dtype=torch.float64).requires_grad_()
    sx = _triton_cross.cross_scan_2d(x)
    my = _triton_cross.cross_merge_2d(y, h, w)
    # <scan(x), y> == <x, merge(y)>: merge is the transpose of scan
    lhs, rhs = (sx * y).sum(), (x.flatten(2) * my).sum()
    torch.testing.assert_close(lhs, rhs)
    # gradients: d<scan(x), y>/dx = merge(y), d<x, merge(y)>/dy = scan(x)
    (gx,) = torch.autograd.grad(lhs, x, retain_graph=True)
    (gy,) = torch.autograd.grad(rhs, y)
    torch.testing.assert_close(gx.flatten(2), my.detach())
    torch.testing.assert_close(gy, sx.detach())
