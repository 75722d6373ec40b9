"""selective_scan: every backend against the sequential reference computed in float64.

Pattern after state-spaces/mamba tests/ops/test_selective_scan.py: outputs and gradients of every
input, tolerances per dtype, many small shapes.
"""

from __future__ import annotations

import pytest
import torch

from vmunet.ops import ScanBackendUnavailableError, available_backends, resolve_backend, selective_scan
from vmunet.ops._reference import selective_scan_reference

CPU_BACKENDS = [b for b in ("cpu", "chunked", "torch") if b in available_backends()]
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
# (forward rtol, atol) per input dtype; gradients get 2x
TOL = {torch.float32: (2e-4, 2e-4), torch.bfloat16: (3e-2, 3e-2), torch.float16: (5e-3, 5e-3)}


def make_inputs(b, d, L, N, bc, G=2, D=True, z=True, bias=True, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device)

    bc_shape = {"const": (d, N), "shared": (b, N, L), "grouped": (b, G, N, L)}[bc]
    ins = {
        "u": r(b, d, L),
        "delta": r(b, d, L, scale=0.5),
        "A": -torch.rand(d, N, generator=g, dtype=torch.float64).to(device) * 2 - 0.1,
        "B": r(*bc_shape),
        "C": r(*bc_shape),
        "D": r(d) if D else None,
        "z": r(b, d, L) if z else None,
        "delta_bias": r(d, scale=0.5) if bias else None,
    }
    # low-precision inputs are rounded first so that the float64 reference sees the same values
    low = ("u", "delta", "B", "C", "z")
    return {k: (v.to(dtype) if v is not None and k in low else v) for k, v in ins.items()}


def run(ins, backend, softplus=True, last=False, dlast_weight=0.0):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in ins.items() if v is not None}
    kw = {k: leaves.get(k) for k in NAMES}
    if backend == "ref64":
        kw = {k: (v.double() if v is not None else None) for k, v in kw.items()}
        out, state = selective_scan_reference(**kw, delta_softplus=softplus)
    else:
        out, state = selective_scan(**kw, delta_softplus=softplus, return_last_state=True, backend=backend)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    loss = (out.double() * w).sum()
    if last:
        loss = loss + dlast_weight * (state.double() ** 2).sum()
    loss.backward()
    return out.detach(), state.detach(), {k: v.grad for k, v in leaves.items()}


def assert_close(actual, expected, rtol, atol, what):
    actual = actual.double().cpu()
    expected = expected.double().cpu()
    scale = expected.abs().max().clamp_min(1.0)
    err = (actual - expected).abs().max()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert err <= atol * scale + rtol * scale, f"{what}: max abs err {err:.3e} (scale {scale:.3e})"


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("bc", ["const", "shared", "grouped"])
@pytest.mark.parametrize("L", [1, 37, 130])
def test_matches_reference_float32(backend, bc, L):
    ins = make_inputs(2, 6, L, 5, bc, G=3)
    out, state, grads = run(ins, backend, last=True, dlast_weight=0.5)
    out64, state64, grads64 = run(ins, "ref64", last=True, dlast_weight=0.5)
    rtol, atol = TOL[torch.float32]
    assert out.dtype == torch.float32
    assert_close(out, out64, rtol, atol, "out")
    assert_close(state, state64, rtol, atol, "last_state")
    for k in grads64:
        assert_close(grads[k], grads64[k], 2 * rtol, 2 * atol, f"grad {k}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "D,z,bias,softplus", [(False, False, False, False), (True, False, True, True), (False, True, False, True)]
)
def test_optional_inputs(backend, D, z, bias, softplus):
    ins = make_inputs(1, 8, 50, 4, "grouped", G=2, D=D, z=z, bias=bias)
    out, state, grads = run(ins, backend, softplus=softplus)
    out64, state64, grads64 = run(ins, "ref64", softplus=softplus)
    assert_close(out, out64, 2e-4, 2e-4, "out")
    assert set(grads) == set(grads64)
    for k in grads64:
        assert_close(grads[k], grads64[k], 4e-4, 4e-4, f"grad {k}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(backend, dtype):
    ins = make_inputs(2, 4, 45, 4, "grouped", G=2, dtype=dtype)
    out, _, grads = run(ins, backend)
    out64, _, grads64 = run(ins, "ref64")
    assert out.dtype == dtype
    rtol, atol = TOL[dtype]
    assert_close(out, out64, rtol, atol, "out")
    for k in grads64:
        assert grads[k].dtype == ins[k].dtype
        assert_close(grads[k], grads64[k], 2 * rtol, 2 * atol, f"grad {k}")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_float64_inputs_keep_dtype(backend):
    ins = make_inputs(1, 4, 20, 3, "shared", dtype=torch.float64)
    out = selective_scan(**ins, delta_softplus=True, backend=backend)
    assert out.dtype == torch.float64
    out64, _, _ = run(ins, "ref64")
    tol = 1e-12 if backend in ("chunked", "torch", "reference") else 2e-4
    assert_close(out, out64, tol, tol, "out")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_large_negative_A_and_large_delta_stay_finite(backend):
    b, d, L, N = 1, 4, 64, 4
    ins = make_inputs(b, d, L, N, "grouped", G=2)
    ins["A"] = -torch.logspace(0, 4, N, dtype=torch.float64).repeat(d, 1)  # down to -1e4
    ins["delta"] = torch.full((b, d, L), 50.0, dtype=torch.float64)  # softplus(50 + bias) ~ 50
    out, state, grads = run(ins, backend, last=True, dlast_weight=0.1)
    out64, state64, grads64 = run(ins, "ref64", last=True, dlast_weight=0.1)
    assert_close(out, out64, 2e-4, 2e-4, "out")
    for k in grads64:
        assert torch.isfinite(grads[k]).all(), f"grad {k} not finite"
        assert_close(grads[k], grads64[k], 4e-4, 4e-4, f"grad {k}")


@pytest.mark.parametrize("L", [1024, 2100])
def test_chunked_long_sequences_use_every_level(L):
    """L = 1024 fills both chunk levels exactly; L = 2100 pads both and leaves a 3-step quadratic top."""
    from vmunet.ops import _chunked_scan

    assert _chunked_scan.CHUNK**_chunked_scan.LEVELS <= L  # both chunk levels are full or padded
    ins = make_inputs(1, 3, L, 2, "grouped", G=3)
    out, state, grads = run(ins, "chunked", last=True, dlast_weight=0.5)
    out64, state64, grads64 = run(ins, "ref64", last=True, dlast_weight=0.5)
    assert_close(out, out64, 2e-4, 2e-4, "out")
    assert_close(state, state64, 2e-4, 2e-4, "last_state")
    for k in grads64:
        assert_close(grads[k], grads64[k], 4e-4, 4e-4, f"grad {k}")


def test_chunked_float64_is_exact_over_levels():
    ins = make_inputs(2, 2, 1500, 3, "shared", dtype=torch.float64)
    out = selective_scan(**ins, delta_softplus=True, backend="chunked")
    out64, _, _ = run(ins, "ref64")
    assert_close(out, out64, 1e-12, 1e-12, "out")


def test_vmunet_call_pattern():
    """The way SS2D calls it: xs (B, K*D, L), Bs/Cs (B, K, N, L), D and delta_bias, softplus."""
    Bsz, K, Dm, N, L = 1, 4, 6, 4, 25
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(Bsz, K, Dm, L, generator=g)
    dts = torch.randn(Bsz, K * Dm, L, generator=g)
    As = -torch.exp(torch.randn(K * Dm, N, generator=g))
    Bs = torch.randn(Bsz, K, N, L, generator=g)
    Cs = torch.randn(Bsz, K, N, L, generator=g)
    Ds = torch.ones(K * Dm)
    bias = torch.randn(K * Dm, generator=g)
    ref, _ = selective_scan_reference(
        xs.view(Bsz, K * Dm, L).double(), dts.double(), As.double(), Bs.double(), Cs.double(),
        Ds.double(), None, bias.double(), True,
    )  # fmt: skip
    for backend in CPU_BACKENDS:
        out = selective_scan(
            xs.view(Bsz, K * Dm, L),
            dts,
            As,
            Bs,
            Cs,
            Ds,
            delta_bias=bias,
            delta_softplus=True,
            backend=backend,
        )
        assert_close(out, ref, 2e-4, 2e-4, backend)


def test_grouped_channel_assignment():
    """Channel c uses group c // (dim // G): only channels of group 1 respond to a change in B[:, 1]."""
    ins = make_inputs(1, 6, 10, 3, "grouped", G=3, z=False)
    base = selective_scan(**ins, backend="torch")
    ins["B"] = ins["B"].clone()
    ins["B"][:, 1] += 1.0
    changed = (selective_scan(**ins, backend="torch") - base).abs().amax(-1)[0] > 0
    assert changed.tolist() == [False, False, True, True, False, False]


def test_non_contiguous_inputs_are_accepted():
    ins = make_inputs(2, 4, 16, 3, "grouped", G=2)
    expected = selective_scan(**ins, delta_softplus=True, backend="torch")
    nc = dict(ins)
    nc["u"] = ins["u"].transpose(1, 2).contiguous().transpose(1, 2)
    nc["B"] = ins["B"].transpose(2, 3).contiguous().transpose(2, 3)
    assert not nc["u"].is_contiguous() and not nc["B"].is_contiguous()
    for backend in CPU_BACKENDS + ["reference"]:
        got = selective_scan(**nc, delta_softplus=True, backend=backend)
        assert_close(got, expected, 2e-4, 2e-4, backend)


# ----------------------------------------------------------------------------------- bad input
def _good():
    return make_inputs(2, 4, 8, 3, "grouped", G=2)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"u": torch.zeros(2, 4)}, "u must be"),
        ({"delta": torch.zeros(2, 4, 7)}, "delta must be"),
        ({"A": torch.zeros(5, 3)}, "A must be"),
        ({"A": torch.zeros(4, 3, dtype=torch.complex64)}, "A must be real"),
        ({"B": torch.zeros(2, 3, 3, 8)}, "not divisible"),
        ({"B": torch.zeros(2, 2, 4, 8)}, "B must be"),
        ({"C": torch.zeros(2, 3, 9)}, "C must be"),
        ({"C": torch.zeros(8)}, "C must be"),
        ({"D": torch.zeros(5)}, "D must be"),
        ({"z": torch.zeros(2, 4, 9)}, "z must be"),
        ({"delta_bias": torch.zeros(4, 1)}, "delta_bias must be"),
        ({"u": torch.zeros(2, 4, 8, dtype=torch.int64)}, "floating-point"),
        ({"D": torch.zeros(4, device="meta")}, "one device"),
    ],
)
def test_bad_input_raises_value_error(change, match):
    ins = {**_good(), **change}
    with pytest.raises(ValueError, match=match):
        selective_scan(**ins, backend="torch")


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="'cuda', 'cpu', 'chunked', 'torch', 'reference'"):
        selective_scan(**_good(), backend="fast")


def test_env_var_override(monkeypatch):
    u = torch.zeros(1)
    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "reference")
    assert resolve_backend(None, u) == "reference"
    assert resolve_backend("torch", u) == "torch"  # the argument wins
    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="VMUNET_SCAN_BACKEND"):
        resolve_backend(None, u)
    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "auto")
    assert resolve_backend(None, u) in ("cpu", "torch")


def test_env_var_reaches_selective_scan(monkeypatch):
    ins = _good()
    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        selective_scan(**ins)


def test_automatic_choice_on_cpu():
    expected = "cpu" if "cpu" in available_backends() else "torch"
    assert resolve_backend(None, torch.zeros(1)) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_backend_unavailable_message():
    with pytest.raises(ScanBackendUnavailableError) as info:
        selective_scan(**_good(), backend="cuda")
    msg = str(info.value)
    assert "cuda" in msg and "tensors are on 'cpu'" in msg
    assert "MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation 'vmunet[cuda]'" in msg
    assert isinstance(info.value, RuntimeError)


def test_cpu_backend_rejects_gpu_like_device(monkeypatch):
    from vmunet.ops import _backends

    assert _backends._why_unavailable("cpu", torch.zeros(1, device="meta")) is not None


def test_import_does_not_touch_mamba():
    import subprocess
    import sys

    code = "import sys, vmunet, vmunet.ops; assert 'mamba_ssm' not in sys.modules; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# ----------------------------------------------------------------------------------- GPU
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["torch", "reference", "auto"])
def test_gpu_tensors_match_reference(backend):
    ins = make_inputs(2, 8, 64, 4, "grouped", G=2, device="cuda")
    if backend == "auto" and "cuda" not in available_backends(ins["u"]):
        backend = "torch"
    out, state, grads = run(ins, None if backend == "auto" else backend, last=True, dlast_weight=0.0)
    out64, state64, grads64 = run(ins, "ref64", last=True, dlast_weight=0.0)
    assert out.device.type == "cuda"
    assert_close(out, out64, 2e-4, 2e-4, "out")
    for k in grads64:
        assert_close(grads[k], grads64[k], 1e-3, 1e-3, f"grad {k}")


@pytest.mark.cuda
def test_cuda_backend_matches_reference_when_installed():
    ins = make_inputs(2, 8, 64, 4, "grouped", G=2, device="cuda")
    if "cuda" not in available_backends(ins["u"]):
        pytest.skip("mamba-ssm not installed")
    out, _, grads = run(ins, "cuda")
    out64, _, grads64 = run(ins, "ref64")
    assert_close(out, out64, 1e-3, 1e-3, "out")
    for k in grads64:
        assert_close(grads[k], grads64[k], 5e-3, 5e-3, f"grad {k}")
