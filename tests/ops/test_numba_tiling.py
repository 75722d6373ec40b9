"""The numba "cpu" backend's blocking and tiling edges against the float64 reference.

The kernels split channels into blocks of at most LANES lanes (padding the last lanes of a narrow
block) and time into tiles of TILE steps (the backward recomputes each tile from a checkpoint).
These shapes put block and tile boundaries where they can go wrong: several blocks per group, a
block narrower than LANES, L one past / one short of a tile multiple, batch > 1 with per-batch B/C.
"""

from __future__ import annotations

import pytest
import torch

from vmunet.ops import available_backends, selective_scan
from vmunet.ops._reference import selective_scan_reference

pytestmark = pytest.mark.skipif("cpu" not in available_backends(), reason="numba not available")


def _grads(backend, ins, weights, dlast_w):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in ins.items() if v is not None}
    if backend == "ref64":
        kw = {k: v.double() for k, v in leaves.items()}
        out, last = selective_scan_reference(**kw, delta_softplus=True)
    else:
        out, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
    loss = (out.double() * weights).sum() + (last.double() * dlast_w).sum()
    loss.backward()
    return out.detach().double(), last.detach().double(), {k: v.grad.double() for k, v in leaves.items()}


@pytest.mark.parametrize("with_z", [True, False])  # without z the backward starts from the forward's states
@pytest.mark.parametrize(
    ("b", "G", "per_group", "L"),
    [(1, 2, 150, 33), (2, 1, 70, 31), (1, 4, 64, 65)],  # 3 blocks/group (50 lanes), 2 blocks, exact LANES
)
def test_blocks_and_tiles_match_reference(b, G, per_group, L, with_z):
    from vmunet.ops import _numba_scan

    d, N = G * per_group, 4
    g = torch.Generator().manual_seed(b * 100 + L)
    ins = {
        "u": torch.randn(b, d, L, generator=g),
        "delta": torch.randn(b, d, L, generator=g) * 0.5,
        "A": -torch.rand(d, N, generator=g) * 3 - 0.05,
        "B": torch.randn(b, G, N, L, generator=g),
        "C": torch.randn(b, G, N, L, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, L, generator=g) if with_z else None,
        "delta_bias": torch.randn(d, generator=g) * 0.5,
    }
    weights = torch.randn(b, d, L, generator=g, dtype=torch.float64)
    dlast_w = torch.randn(b, d, N, generator=g, dtype=torch.float64)
    assert L % _numba_scan.TILE != 0 or L > _numba_scan.TILE
    out, last, grads = _grads("cpu", ins, weights, dlast_w)
    out64, last64, grads64 = _grads("ref64", ins, weights, dlast_w)
    for name, a, e in [("out", out, out64), ("last", last, last64)] + [
        (k, grads[k], grads64[k]) for k in grads64
    ]:
        scale = e.abs().max().clamp_min(1.0)
        err = (a - e).abs().max()
        assert err <= 4e-4 * scale, f"{name}: max abs err {err:.3e} (scale {scale:.3e})"


def test_saved_states_tile_is_read_from_the_kernels():
    import importlib

    from vmunet.ops import _numba_scan

    op_module = importlib.import_module("vmunet.ops.selective_scan")  # the package re-exports the function
    assert not hasattr(op_module, "_CPU_TILE")  # no copy of the kernels' constant beside the op
    for L in (1, _numba_scan.TILE, _numba_scan.TILE + 1, 5 * _numba_scan.TILE - 1):
        assert op_module._n_states("cpu", True, L) == -(-L // _numba_scan.TILE)
    assert op_module._n_states("cpu", False, 100) == 0


def test_cross_op_fake_states_match_the_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vmunet.ops import _numba_scan
    from vmunet.ops.scan_orders import scan_index

    b, h, w, d, n, r = 1, 5, 7, 4, 2, 1
    args = (
        torch.randn(b, h * w, d), torch.randn(b, h * w, 4, r + 2 * n), torch.randn(4, d, r),
        -torch.rand(4 * d, n), torch.ones(4 * d), torch.zeros(4 * d), scan_index((h, w), 4),
    )  # fmt: skip
    op = torch.ops.vmunet.cross_selective_scan.default
    _, states = op(*args, True, True)
    with FakeTensorMode() as mode:
        _, fake_states = op(*(mode.from_tensor(t) for t in args), True, True)
    assert tuple(fake_states.shape) == tuple(states.shape)
    assert states.shape[2] == -(-h * w // _numba_scan.TILE)


def test_kernel_softplus_and_sigmoid_are_exact_to_a_few_ulp():
    """The kernels' own softplus (and its derivative, sigmoid) against torch in float64.

    torch's float32 softplus and sigmoid are themselves within ~2.5 ulp of float64 on this grid; the
    kernels' branch-free versions must stay within 3 ulp, including around torch's threshold (20),
    where softplus(x) rounds to x, and far into both tails.
    """
    import numpy as np
    from numba import njit

    from vmunet.ops import _numba_scan

    @njit
    def apply(x, sp, sig):
        for i in range(x.size):
            sp[i], sig[i] = _numba_scan._softplus_and_grad(x[i])

    g = torch.Generator().manual_seed(7)
    x = torch.cat(
        [
            torch.rand(200_000, generator=g) * 170 - 85,
            torch.randn(200_000, generator=g) * 3,
            torch.rand(20_000, generator=g) * 2e-3 - 1e-3,
            torch.tensor([0.0, -0.0, 19.999, 20.0, 20.0001, 40.0, -40.0, -86.0, 86.0]),
        ]
    ).to(torch.float32)
    xn = x.numpy()
    sp, sig = np.empty_like(xn), np.empty_like(xn)
    apply(xn, sp, sig)
    x64 = x.double()
    for name, got, want in [
        ("softplus", sp, torch.nn.functional.softplus(x64)),
        ("sigmoid", sig, torch.sigmoid(x64)),
    ]:
        ulp = torch.from_numpy(np.spacing(want.float().abs().numpy())).double()
        err = ((torch.from_numpy(got).double() - want).abs() / ulp).max().item()
        assert err <= 3.0, f"{name}: {err:.2f} ulp"


_EXP2_CHECK = """
import numpy as np
from numba import njit
from vmunet.ops import _numba_scan

@njit
def apply(x, out):
    for i in range(x.size):
        out[i] = _numba_scan._exp2(x[i])

rng = np.random.default_rng(3)
x = np.concatenate([rng.uniform(-125.0, 127.0, 400_000), rng.normal(0.0, 2.0, 100_000),
                    np.arange(-125, 128), [0.0, -0.0, 0.5, -0.5, 1e-7, -1e-7]]).astype(np.float32)
out = np.empty_like(x)
apply(x, out)
want = np.exp2(x.astype(np.float64))
ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
sat = np.empty(4, np.float32)
apply(np.array([200.0, 128.0, -200.0, -126.5], np.float32), sat)
print(_numba_scan._AVX512, float((np.abs(out - want) / ulp).max()), *map(float, sat))
"""


def _exp2_report(env: dict[str, str] | None) -> tuple[bool, float, list[float]]:
    import os
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _EXP2_CHECK], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})}, check=True,
    )  # fmt: skip
    flag, err, *sat = run.stdout.split()
    return flag == "True", float(err), [float(s) for s in sat]


@pytest.mark.parametrize("target", ["host", "generic"])
def test_exp2_is_within_two_ulp_and_saturates(target):
    """The kernels' decays are 2**x by ``_exp2``: within 2 ulp of float64 over its whole range, on both
    code paths (AVX-512: rint / ldexp; elsewhere: exponent bits), saturating at 2**127 above and
    staying positive and normal (2**-125) below, as the clamps promise."""
    env = {"NUMBA_CPU_NAME": "generic"} if target == "generic" else None
    avx512, err, sat = _exp2_report(env)
    if target == "generic":
        assert not avx512  # the portable target takes the bit-assembly path
    assert err <= 2.0, f"{target}: {err:.2f} ulp"
    assert sat[0] == sat[1] == 2.0**127
    assert sat[2] == sat[3] == 2.0**-125
