"""The "triton" scan backend: interpreter run (subprocess), packaging, detection, and GPU checks.

The kernels themselves are checked by ``_triton_interp_cases.py``, run here in a subprocess with
``TRITON_INTERPRET=1`` (it must be set before triton is imported, and must not reach other tests).
The cuda-marked tests run the same comparisons on a GPU at VM-UNet's four stage shapes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from vmunet.ops import (
    BACKENDS,
    ScanBackendUnavailableError,
    _backends,
    available_backends,
    resolve_backend,
    selective_scan,
)

from .test_selective_scan import assert_close, make_inputs, run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (it is in the [dev] extra)")
def test_triton_kernels_under_the_interpreter():
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE / "_triton_interp_cases.py"),
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    res = subprocess.run(
        cmd, cwd=ROOT / "tests", env=_subprocess_env(TRITON_INTERPRET="1"), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    tail = (res.stdout + res.stderr)[-4000:]
    assert res.returncode == 0, tail
    summary = re.search(r"(\d+) passed", res.stdout)
    assert summary and int(summary.group(1)) >= 20, tail
    assert not re.search(r"\d+ (failed|skipped|error)", res.stdout), tail


def test_import_vmunet_does_not_import_triton():
    code = (
        "import sys, torch, vmunet, vmunet.ops; from vmunet.ops import available_backends; "
        "available_backends(torch.zeros(1)); "
        "assert 'triton' not in sys.modules, 'triton imported'; print('ok')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=_subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_triton_is_a_named_backend_first_in_the_list():
    assert BACKENDS[0] == "triton" and "cuda" in BACKENDS
    assert resolve_backend(None, torch.zeros(1)) in ("cpu", "torch")  # CPU tensors never get triton


def test_triton_on_cpu_tensors_without_interpreter_raises():
    assert os.environ.get("TRITON_INTERPRET") != "1"
    with pytest.raises(ScanBackendUnavailableError) as info:
        selective_scan(**make_inputs(1, 4, 8, 3, "grouped"), backend="triton")
    msg = str(info.value)
    assert "'triton' runs on CUDA tensors" in msg and "TRITON_INTERPRET=1" in msg and "\n" not in msg
    assert "triton" not in available_backends(torch.zeros(1))


def test_missing_triton_raises_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now fails as if not installed
    monkeypatch.setattr(_backends, "_triton_cache", _backends._UNSET)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ScanBackendUnavailableError) as info:
        resolve_backend("triton", torch.zeros(1))
    msg = str(info.value)
    assert "triton is not installed" in msg and "CUDA build of PyTorch" in msg and "\n" not in msg
    assert "triton" not in available_backends(torch.zeros(1))


def test_fake_op_without_the_triton_module(monkeypatch):
    """The chunk count lives only in ``_triton_scan``; without it, the fake says why instead of guessing."""
    import importlib

    from torch._subclasses.fake_tensor import FakeTensorMode

    op_module = importlib.import_module("vmunet.ops.selective_scan")  # the package re-exports the function
    monkeypatch.setattr(_backends, "_triton_cache", (None, "triton is not installed"))
    ins = make_inputs(1, 4, 18, 3, "grouped", G=2, seed=3)
    args = [ins[k].float() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    op = torch.ops.vmunet.selective_scan.default
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if t is not None else None for t in args]
        out, last, states = op(*fake, True, "triton", False)  # no saved states: no count needed
        assert tuple(out.shape) == (1, 4, 18) and states.numel() == 0
        with pytest.raises(RuntimeError, match="triton is not installed"):
            op(*fake, True, "triton", True)
    assert op_module._n_states("triton", False, 18) == 0
    with pytest.raises(RuntimeError, match="triton is not installed"):
        op_module._n_states("triton", True, 18)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (it is in the [dev] extra)")
def test_saved_states_chunk_is_read_from_the_kernels():
    import importlib

    op_module = importlib.import_module("vmunet.ops.selective_scan")
    mod, why = _backends.triton_kernels()
    assert mod is not None, why
    assert not hasattr(_backends, "TRITON_CHUNK") and not hasattr(op_module, "TRITON_CHUNK")
    for L in (1, mod.CHUNK, mod.CHUNK + 1, 3 * mod.CHUNK - 1):
        assert op_module._n_states("triton", True, L) == -(-L // mod.CHUNK)


def test_mamba_module_without_spec_does_not_break_detection(monkeypatch):
    fake = types.ModuleType("mamba_ssm")
    fake.__spec__ = None
    monkeypatch.setitem(sys.modules, "mamba_ssm", fake)
    monkeypatch.setattr(_backends, "_mamba_cache", _backends._UNSET)
    monkeypatch.setattr(_backends, "_mamba_check_cache", {})
    with pytest.raises(ValueError):  # what the detection has to survive
        importlib.util.find_spec("mamba_ssm")
    names = available_backends()
    assert "cuda" not in names and "torch" in names
    fn, why = _backends.mamba_selective_scan_fn()
    assert fn is None and "failed to import" in why


def _fake_mamba(kind: str):
    from vmunet.ops._reference import selective_scan_reference

    def fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        if kind == "raises":
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")
        out, _ = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return out * 2 if kind == "wrong" else out

    return fn


@pytest.mark.parametrize(
    "kind,expected", [("ok", None), ("raises", "no kernel image"), ("wrong", "wrong values")]
)
def test_mamba_kernel_check_runs_one_call(kind, expected):
    why = _backends.mamba_kernel_check(_fake_mamba(kind), torch.device("cpu"))
    if expected is None:
        assert why is None
    else:
        assert expected in why and "\n" not in why


def test_cuda_backend_uses_the_kernel_check(monkeypatch):
    """mamba-ssm importing is not enough: a failing check call makes 'cuda' unavailable, once per device."""
    real_check = _backends.mamba_kernel_check
    calls = []

    def check_on_cpu(fn, device):  # the check call itself runs on the CPU here
        calls.append(str(device))
        return real_check(fn, torch.device("cpu"))

    monkeypatch.setattr(_backends, "_mamba_cache", (_fake_mamba("raises"), None))
    monkeypatch.setattr(_backends, "_mamba_check_cache", {})
    monkeypatch.setattr(_backends, "mamba_kernel_check", check_on_cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda_tensor = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda"))  # only .device is read
    for _ in range(2):
        why = _backends._why_unavailable("cuda", cuda_tensor)
        assert why is not None and "no kernel image" in why and "MAMBA_KEEP_CUDA_BUILD=TRUE" in why
    assert len(calls) == 1  # cached after the first use
    monkeypatch.setattr(_backends, "_mamba_cache", (_fake_mamba("ok"), None))
    monkeypatch.setattr(_backends, "_mamba_check_cache", {})
    assert _backends._why_unavailable("cuda", cuda_tensor) is None


def _triton_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("triton").split(".")[:2]) if HAS_TRITON else (0,)


@pytest.mark.skipif(_triton_version() < (3, 3), reason="needs triton >= 3.3 (ASTSource with named signature)")
def test_kernels_compile_for_a_hopper_gpu_without_one():
    """Ahead-of-time compile (Triton -> PTX -> cubin with triton's own ptxas) for sm_90, no GPU needed.

    The interpreter checks what the kernels compute; this checks that Triton's compiler accepts them
    (loop-carried types, constexpr branches, casts on store), which the interpreter does not."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vmunet.ops import _triton_cross, _triton_scan

    dtype = "*bf16"  # low-precision loads and stores; A, D, delta_bias and the float32 buffers stay *fp32
    low = {"u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddt_ptr", "dz_ptr"}

    def compile_for_sm90(fn, consts, ptr_types=None):
        names = fn.arg_names
        sig = {}
        for nm in names:
            if nm in consts:
                sig[nm] = "constexpr"
            elif nm.endswith("_ptr"):
                sig[nm] = (ptr_types or {}).get(nm, dtype if nm in low else "*fp32")
            else:
                sig[nm] = "i32"
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        assert kernel.asm["cubin"], fn

    opts = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BLOCK_D=16, BLOCK_N=16)
    opts["CHUNK"] = _triton_scan.CHUNK
    # one B constant in time, C time-varying: both code paths of the B/C loads and gradient sums
    compile_for_sm90(_triton_scan._fwd_kernel, dict(opts, B_TIME=False, C_TIME=True, SAVE=True))
    compile_for_sm90(_triton_scan._bwd_kernel, dict(opts, B_TIME=False, C_TIME=True, HAS_DLAST=True))
    compile_for_sm90(_triton_cross._scan_kernel, dict(BLOCK=256), {"x_ptr": dtype, "out_ptr": dtype})
    compile_for_sm90(
        _triton_cross._merge_kernel, dict(BLOCK=256, F64=False), {"y_ptr": dtype, "out_ptr": dtype}
    )


# ----------------------------------------------------------------------------------------- GPU
GPU_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 3e-2), torch.float16: (5e-3, 5e-3)}
STAGES = [(768, 4096), (1536, 1024), (3072, 256), (6144, 64)]  # benchmarks/selective_scan.py


@pytest.mark.cuda
def test_auto_choice_on_cuda_is_triton():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    assert resolve_backend(None, torch.zeros(1, device="cuda")) == "triton"


@pytest.mark.cuda
@pytest.mark.parametrize("dim,L", STAGES)
def test_gpu_stage_shapes_match_reference(dim, L):
    # VM-UNet's call: batch 1, grouped B/C with G = 4 directions, N = 16, D, delta_bias, softplus
    ins = make_inputs(1, dim, L, 16, "grouped", G=4, z=False, device="cuda")
    out, state, grads = run(ins, "triton", last=True, dlast_weight=0.5)
    cpu = {k: (v.cpu() if v is not None else None) for k, v in ins.items()}
    out64, state64, grads64 = run(cpu, "ref64", last=True, dlast_weight=0.5)
    assert_close(out, out64, 1e-5, 1e-5, "out")
    assert_close(state, state64, 1e-5, 1e-5, "last_state")
    for k in grads64:
        assert_close(grads[k], grads64[k], 1e-4, 1e-4, f"grad {k}")


@pytest.mark.cuda
@pytest.mark.parametrize("bc", ["const", "shared", "grouped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_forms_and_dtypes_match_reference(bc, dtype):
    ins = make_inputs(2, 64, 300, 16, bc, G=4, dtype=dtype, device="cuda")
    out, state, grads = run(ins, "triton", last=True, dlast_weight=0.5)
    cpu = {k: (v.cpu() if v is not None else None) for k, v in ins.items()}
    out64, state64, grads64 = run(cpu, "ref64", last=True, dlast_weight=0.5)
    rtol, atol = GPU_TOL[dtype]
    assert out.dtype == dtype
    assert_close(out, out64, rtol, atol, "out")
    for k in grads64:
        assert_close(grads[k], grads64[k], 2 * max(rtol, 1e-4), 2 * max(atol, 1e-4), f"grad {k}")


@pytest.mark.cuda
def test_gpu_cross_scan_matches_torch():
    from vmunet.ops import _triton_cross, cross_merge_2d, cross_scan_2d

    x = torch.randn(2, 8, 17, 23, device="cuda")
    xs = cross_scan_2d(x)  # dispatches to Triton for CUDA tensors
    two = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], 1)
    assert torch.equal(xs, torch.cat([two, two.flip(-1)], 1))
    y = torch.randn(2, 4, 8, 17 * 23, device="cuda")
    fwd = y[:, 0:2] + y[:, 2:4].flip(-1)
    ref = fwd[:, 0] + fwd[:, 1].reshape(2, 8, 23, 17).transpose(2, 3).reshape(2, 8, -1)
    torch.testing.assert_close(cross_merge_2d(y, 17, 23), ref)
    torch.testing.assert_close(_triton_cross.cross_merge_2d(y, 17, 23), ref)
    from torch.fx.experimental.proxy_tensor import make_fx

    targets = [str(n.target) for n in make_fx(cross_scan_2d)(x).graph.nodes if n.op == "call_function"]
    assert any("cross_scan_2d_triton" in t for t in targets), targets  # the dispatch took the kernel


@pytest.mark.cuda
def test_gpu_compile_fullgraph_sees_the_ops():
    from vmunet.ops import cross_merge_2d, cross_scan_2d

    ins = make_inputs(1, 8, 64, 4, "grouped", G=4, z=False, device="cuda")
    ins = {k: (v.float() if v is not None else None) for k, v in ins.items()}

    def f(x, u, delta, A, B, C, D, delta_bias):
        y = cross_merge_2d(cross_scan_2d(x), 4, 4)
        return (
            y.sum() + selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True).sum()
        )

    x = torch.randn(1, 2, 4, 4, device="cuda")
    args = (x, ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["delta_bias"])
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(*args), f(*args))


@pytest.mark.cuda
def test_gpu_vmunet_small_triton_matches_reference_backend():
    import vmunet

    torch.manual_seed(0)
    model = vmunet.create_model("vmunet_small").to("cuda")
    x = torch.randn(1, 3, 64, 64, device="cuda")
    outs, grads = {}, {}
    for backend in ("triton", "reference"):
        model.set_scan_backend(backend)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.float().square().mean().backward()
        outs[backend] = out.detach()
        grads[backend] = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    torch.testing.assert_close(outs["triton"], outs["reference"], rtol=1e-4, atol=1e-4)
    assert len(grads["triton"]) == len(grads["reference"])
    for a, b in zip(grads["triton"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)
