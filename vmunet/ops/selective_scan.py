"""The one selective-scan entry point and its ``torch.library`` custom op.

``selective_scan`` validates and canonicalises its inputs, picks a backend (see
``vmunet.ops.resolve_backend``) and runs it. Backends:

- ``"triton"``: Triton forward and backward kernels (``_triton_scan.py``), for CUDA tensors; the
  automatic choice there. Inputs are read in their own dtype (float32, bfloat16, float16) and
  computed in float32. Under ``TRITON_INTERPRET=1`` it also runs on CPU tensors (slowly; for tests).
- ``"cuda"``: mamba-ssm's ``selective_scan_fn`` (CUDA kernel), for CUDA tensors.
- ``"cpu"``: numba-compiled forward and backward kernels (exact, multi-threaded).
- ``"chunked"``: the scan in standard tensor ops only (``_chunked_scan.py``), differentiated by
  autograd and never inside a custom op, so ONNX / TorchScript / ``torch.export`` graphs can hold
  it (``vmunet export`` builds models with it); float32 (float64 stays float64); any device.
- ``"torch"``: chunked pure-PyTorch scan with an analytic backward; runs on any device.
- ``"reference"``: the sequential loop, differentiated by autograd; ground truth for tests.

The "triton", "cpu" and "torch" backends run inside the custom ops ``vmunet::selective_scan`` and
``vmunet::selective_scan_backward``, so ``torch.compile(fullgraph=True)`` and ``torch.export``
see a single op. Under compilation every backend goes through the op; in eager mode the
"cuda" backend calls mamba-ssm directly (keeping its fused backward) and "reference" runs as
plain autograd.
"""

from __future__ import annotations

from typing import Any

import torch

from vmunet.ops import _torch_scan
from vmunet.ops._backends import (
    mamba_selective_scan_fn,
    numba_kernels,
    resolve_backend,
    triton_kernels,
)
from vmunet.ops._chunked_scan import selective_scan_chunked
from vmunet.ops._reference import selective_scan_reference

__all__ = [
    "selective_scan",
    "cross_selective_scan",
    "cross_selective_scan_gated",
    "cross_selective_scan_packed",
]

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------- validation
def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_bc(name: str, X: Tensor, batch: int, dim: int, n: int, length: int) -> None:
    expected = (
        f"{name} must be ({dim}, {n}) = (dim, N) constant, ({batch}, {n}, {length}) = (batch, N, L) shared, "
        f"or ({batch}, G, {n}, {length}) = (batch, G, N, L) grouped with dim % G == 0"
    )
    if X.dim() == 2:
        if tuple(X.shape) != (dim, n):
            raise ValueError(f"selective_scan: {expected}; got {_shape(X)}")
    elif X.dim() == 3:
        if tuple(X.shape) != (batch, n, length):
            raise ValueError(f"selective_scan: {expected}; got {_shape(X)}")
    elif X.dim() == 4:
        b_, g, n_, l_ = X.shape
        if (b_, n_, l_) != (batch, n, length) or g < 1:
            raise ValueError(f"selective_scan: {expected}; got {_shape(X)}")
        if dim % g != 0:
            raise ValueError(
                f"selective_scan: {name} has G = {g} groups but dim = {dim} is not divisible by G; {expected}"
            )
    else:
        raise ValueError(f"selective_scan: {expected}; got a {X.dim()}-D tensor {_shape(X)}")


def _validate(u, delta, A, B, C, D, z, delta_bias) -> None:
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise ValueError(f"selective_scan: {name} must be real; complex tensors are not supported")
        if not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got a {u.dim()}-D tensor {_shape(u)}")
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError(f"selective_scan: u must have L >= 1 time steps, got {_shape(u)}")
    if tuple(delta.shape) != tuple(u.shape):
        raise ValueError(
            f"selective_scan: delta must be (batch, dim, L) = {_shape(u)} like u, got {_shape(delta)}"
        )
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim, N) with dim = {dim}, got {_shape(A)}")
    n = A.shape[1]
    _check_bc("B", B, batch, dim, n, length)
    _check_bc("C", C, batch, dim, n, length)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim,) = ({dim},), got {_shape(t)}")
    if z is not None and tuple(z.shape) != tuple(u.shape):
        raise ValueError(f"selective_scan: z must be (batch, dim, L) = {_shape(u)} like u, got {_shape(z)}")
    devices = {name: t.device for name, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise ValueError(f"selective_scan: all tensors must be on one device, got {listing}")


def _canonical_bc(X: Tensor, dim: int) -> Tensor:
    """(d, N) -> (1, d, N, 1); (b, N, L) -> (b, 1, N, L); (b, G, N, L) unchanged."""
    if X.dim() == 2:
        return X.reshape(1, dim, X.shape[1], 1)
    if X.dim() == 3:
        return X.unsqueeze(1)
    return X


# --------------------------------------------------------------------------------------- custom op
def _kernels(backend: str):
    if backend == "cpu":
        mod, why = numba_kernels()
        if mod is None:  # resolve_backend already checked; this is a safety net
            raise RuntimeError(why)
        return mod.scan_forward, mod.scan_backward
    if backend == "triton":
        mod, why = triton_kernels()
        if mod is None:
            raise RuntimeError(why)
        return mod.scan_forward, mod.scan_backward
    if backend == "cuda":
        return _cuda_forward, _torch_scan.scan_backward
    if backend == "reference":
        return _reference_forward, _torch_scan.scan_backward
    return _torch_scan.scan_forward, _torch_scan.scan_backward


def _reference_forward(u, delta, A, B, C, D, z, delta_bias, softplus):
    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, softplus, compute_dtype=u.dtype)


def _cuda_forward(u, delta, A, B, C, D, z, delta_bias, softplus):
    fn, _ = mamba_selective_scan_fn()
    b, _, length = u.shape
    # mamba-ssm wants grouped B/C at full (batch, G, N, L); expand the broadcast canonical form.
    B = B.expand(b, B.shape[1], B.shape[2], length).contiguous()
    C = C.expand(b, C.shape[1], C.shape[2], length).contiguous()
    with torch.no_grad():
        out, last = fn(u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state=True)
    return out, last


def _state_step(backend: str) -> int:
    """Time steps between two saved states of ``backend``'s forward, read from its kernel module.

    "cpu": ``_numba_scan.TILE``, "triton": ``_triton_scan.CHUNK``; with save_states their forward
    also returns the state before every tile / chunk, (b, ceil(L / step), N, d), and their backward
    starts from those instead of a forward pass. The constant lives only in the kernel file (numba's
    on-disk cache does not see edits in other files), so where that module cannot be imported the
    count is unknown: the same RuntimeError the real op would raise, also from the fake
    implementation (``resolve_backend`` refuses such a backend before either runs).
    """
    mod, why = numba_kernels() if backend == "cpu" else triton_kernels()
    if mod is None:
        raise RuntimeError(why)
    return mod.TILE if backend == "cpu" else mod.CHUNK


def _n_states(backend: str, save_states: bool, length: int) -> int:
    """How many states the forward of ``backend`` saves for a scan of ``length`` steps (0: none)."""
    if not save_states or backend not in ("cpu", "triton"):
        return 0
    return -(-length // _state_step(backend))


def _state_dtype(backend: str, u: Tensor) -> torch.dtype:
    # "triton" reads bfloat16 / float16 inputs as they are and keeps its state in float32; the other
    # backends see inputs already cast to their compute dtype
    return torch.float32 if backend == "triton" else u.dtype


@torch.library.custom_op(
    "vmunet::selective_scan",
    mutates_args=(),
    schema="(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
    "Tensor? delta_bias, bool delta_softplus, str backend, bool save_states=False) "
    "-> (Tensor, Tensor, Tensor)",
)
def _scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, save_states=False):
    fwd, _ = _kernels(backend)
    if _n_states(backend, save_states, u.shape[2]):
        return fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states=True)
    out, last = fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out, last, u.new_empty((0,))


@_scan_op.register_fake
def _scan_op_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, save_states=False):
    k = _n_states(backend, save_states, u.shape[2])
    f = _state_dtype(backend, u)
    states = u.new_empty(u.shape[0], k, A.shape[1], u.shape[1], dtype=f) if k else u.new_empty((0,))
    return torch.empty_like(u), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=f), states


@torch.library.custom_op(
    "vmunet::selective_scan_backward",
    mutates_args=(),
    schema="(Tensor dout, Tensor? dlast, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
    "Tensor? z, Tensor? delta_bias, bool delta_softplus, str backend, Tensor? states=None) -> Tensor[]",
)
def _scan_backward_op(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, states=None):
    _, bwd = _kernels(backend)
    if states is not None and states.numel() > 0:
        grads = bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, dlast, states=states)
    else:
        grads = bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, dlast)
    # optional inputs get an empty placeholder (custom ops cannot return None)
    return [g if g is not None else u.new_empty((0,)) for g in grads]


@_scan_backward_op.register_fake
def _scan_backward_fake(
    dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, states=None
):
    ins = (u, delta, A, B, C, D, z, delta_bias)
    return [torch.empty_like(t) if t is not None else u.new_empty((0,)) for t in ins]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, *rest = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.mark_non_differentiable(output[2])
    # unused outputs (the last state, the saved states) get None, not a zero-filled gradient (the
    # "cpu" states are (b, ceil(L / TILE), N, d): 6 MB zeroed per call at VM-UNet's stage 1); every backend
    # takes dlast=None as zero
    ctx.set_materialize_grads(False)
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend


def _backward(ctx, dout, dlast, _dstates):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    dout = dout.contiguous() if dout is not None else torch.zeros_like(u)
    if dlast is not None:
        dlast = dlast.contiguous()
    grads = _scan_backward_op(
        dout, dlast, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.backend, states
    )
    optional = (None, None, None, None, None, D, z, delta_bias)
    grads = [None if (opt is None and i >= 5) else g for i, (g, opt) in enumerate(zip(grads, optional))]
    return (*grads, None, None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------- public API
def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba's selective scan (S6), with mamba-ssm's ``selective_scan_fn`` argument meanings.

    For batch b, channel c, state n and time t (``g`` = the group of channel c, ``c // (dim // G)``)::

        dt      = softplus(delta[b, c, t] + delta_bias[c])     # bias and softplus optional
        h[n]    = exp(dt * A[c, n]) * h[n] + dt * B[b, g, n, t] * u[b, c, t]
        y       = sum_n C[b, g, n, t] * h[n] + D[c] * u[b, c, t]
        out     = y * silu(z[b, c, t])                        # when z is given

    Computation runs in float32 whatever the input dtype (float64 inputs stay float64 on the
    "torch" and "reference" backends); ``out`` is cast back to u's dtype, ``last_state`` is float32
    (float64 for those float64 runs). The gradient also flows through ``last_state``.

    Args:
        u: input, (batch, dim, L).
        delta: time steps before bias/softplus, (batch, dim, L).
        A: state matrix, (dim, N), real (typically negative).
        B: input matrix: (dim, N) constant, (batch, N, L) shared, or (batch, G, N, L) grouped
            (dim divisible by G).
        C: output matrix, same forms as B.
        D: skip connection, (dim,).
        z: gate, (batch, dim, L); the output is multiplied by ``silu(z)``.
        delta_bias: added to delta before softplus, (dim,).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state h at t = L - 1, (batch, dim, N).
        backend: "triton", "cuda", "cpu", "chunked", "torch", "reference", or None / "auto" for the
            automatic choice (see ``resolve_backend``; env var ``VMUNET_SCAN_BACKEND`` overrides it).

    Returns:
        ``out`` (batch, dim, L) in u's dtype, or ``(out, last_state)`` when ``return_last_state``.

    Raises:
        ValueError: a wrong shape, rank, dtype or device (the message names the argument and the
            expected shape), or an unknown backend name.
        ScanBackendUnavailableError: the named backend cannot run here.

    Example:
        >>> import torch
        >>> from vmunet.ops import selective_scan
        >>> b, d, L, N = 1, 8, 32, 4
        >>> u, delta = torch.randn(b, d, L), torch.randn(b, d, L)
        >>> A = -torch.rand(d, N)
        >>> B, C = torch.randn(b, 2, N, L), torch.randn(b, 2, N, L)   # G = 2 groups
        >>> out = selective_scan(u, delta, A, B, C, D=torch.ones(d), delta_softplus=True, backend="torch")
        >>> out.shape
        torch.Size([1, 8, 32])
    """
    _validate(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u)
    compiling = torch.compiler.is_compiling()

    if name == "reference" and not compiling:
        out, last = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return (out, last) if return_last_state else out

    if name == "cuda" and not compiling:
        fn, _ = mamba_selective_scan_fn()
        res = fn(
            u.contiguous(),
            delta.contiguous(),
            A.contiguous().float(),
            B.contiguous(),
            C.contiguous(),
            D.contiguous().float() if D is not None else None,
            z.contiguous() if z is not None else None,
            delta_bias.contiguous().float() if delta_bias is not None else None,
            delta_softplus,
            return_last_state,
        )
        return res

    f64 = ("chunked", "torch", "reference")
    f = torch.float64 if (u.dtype == torch.float64 and name in f64) else torch.float32
    dim = u.shape[1]
    # "triton" reads float32 / bfloat16 / float16 as they are (float64 is cast to float32)
    keep = (torch.float32, torch.bfloat16, torch.float16) if name == "triton" else ()

    def prep(t: Any) -> Any:
        if t is None:
            return None
        return (t if t.dtype in keep else t.to(f)).contiguous()

    args = (
        prep(u),
        prep(delta),
        prep(A),
        prep(_canonical_bc(B, dim)),
        prep(_canonical_bc(C, dim)),
        prep(D),
        prep(z),
        prep(delta_bias),
        bool(delta_softplus),
    )
    if name == "chunked":  # plain tensor ops, traced as they are: never the custom op
        out, last = selective_scan_chunked(*args)
    else:
        tensors = (u, delta, A, B, C, D, z, delta_bias)
        save_states = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        out, last, _ = _scan_op(*args, name, save_states)
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


# --------------------------------------------------------------------------- fused cross-scan + scan
# The op takes x_proj's output as it comes, xd (b, L, K, R + 2N): each direction's time-step
# columns, B and C at the row-major positions. With dt_weight (K, d, R) the kernels expand the R
# columns to delta = xd[..., :R] @ dt_weight[k].T themselves (dt_proj folded in: no (b, K, L, d) delta
# in memory); with an empty dt_weight the first R = d columns are delta.
@torch.library.custom_op(
    "vmunet::cross_selective_scan",
    mutates_args=(),
    schema="(Tensor u, Tensor xd, Tensor dt_weight, Tensor A, Tensor D, Tensor delta_bias, Tensor index, "
    "bool delta_softplus, bool save_states) -> (Tensor, Tensor)",
)
def _cross_op(u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, save_states):
    mod, why = numba_kernels()
    if mod is None:
        raise RuntimeError(why)
    return mod.cross_scan_forward(u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, save_states)


@_cross_op.register_fake
def _cross_op_fake(u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, save_states):
    b, L, d = u.shape
    if save_states:
        k = _n_states("cpu", True, L)  # the state before every tile, per direction
        states = u.new_empty(b, index.shape[0], k, A.shape[1], d, dtype=torch.float32)
    else:
        states = u.new_empty((0,), dtype=torch.float32)
    return u.new_empty(b, L, d, dtype=torch.float32), states


@torch.library.custom_op(
    "vmunet::cross_selective_scan_backward",
    mutates_args=(),
    schema="(Tensor dy, Tensor u, Tensor xd, Tensor dt_weight, Tensor A, Tensor D, Tensor delta_bias, "
    "Tensor index, bool delta_softplus, Tensor states) -> Tensor[]",
)
def _cross_backward_op(dy, u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, states):
    mod, why = numba_kernels()
    if mod is None:
        raise RuntimeError(why)
    du, dxd, dw, dA, dD, dbias = mod.cross_scan_backward(
        u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, dy, states
    )
    if dw is None:  # no dt_weight: an empty placeholder
        dw = torch.zeros_like(dt_weight, dtype=torch.float32)
    return [du, dxd, dw, dA, dD, dbias]


@_cross_backward_op.register_fake
def _cross_backward_fake(dy, u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, states):
    return [torch.empty_like(t, dtype=torch.float32) for t in (u, xd, dt_weight, A, D, delta_bias)]


def _cross_setup_context(ctx, inputs, output):
    u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, _ = inputs
    ctx.save_for_backward(u, xd, dt_weight, A, D, delta_bias, index, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else autograd fills a zero "gradient" of the saved states
    ctx.delta_softplus = delta_softplus


def _cross_backward(ctx, dy, _dstates):
    u, xd, dt_weight, A, D, delta_bias, index, states = ctx.saved_tensors
    if states.numel() == 0:
        raise RuntimeError("cross_selective_scan: backward without saved states (save_states=False)")
    dy = dy.contiguous() if dy is not None else torch.zeros_like(u, dtype=torch.float32)
    grads = _cross_backward_op(dy, u, xd, dt_weight, A, D, delta_bias, index, ctx.delta_softplus, states)
    return (*grads, None, None, None)


_cross_op.register_autograd(_cross_backward, setup_context=_cross_setup_context)


@torch.library.custom_op(
    "vmunet::cross_selective_scan_gated",
    mutates_args=(),
    schema="(Tensor u, Tensor xd, Tensor dt_weight, Tensor A, Tensor D, Tensor delta_bias, Tensor index, "
    "bool delta_softplus, Tensor xz, Tensor norm_weight, Tensor norm_bias, float eps) -> Tensor",
)
def _cross_gated_op(
    u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, xz, norm_weight, norm_bias, eps
):
    mod, why = numba_kernels()
    if mod is None:
        raise RuntimeError(why)
    return mod.cross_scan_forward_gated(
        u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, xz, norm_weight, norm_bias, eps
    )


@_cross_gated_op.register_fake
def _cross_gated_fake(
    u, xd, dt_weight, A, D, delta_bias, index, delta_softplus, xz, norm_weight, norm_bias, eps
):
    return u.new_empty(u.shape, dtype=torch.float32)


def _check_cpu(fn: str, tensors: dict[str, Tensor], want: dict[str, tuple[int, ...]] | None = None) -> None:
    """Each tensor on the CPU and, where ``want`` names one, of that shape; else a ValueError naming it."""
    for name, t in tensors.items():
        if want is not None and name in want and tuple(t.shape) != want[name]:
            raise ValueError(f"{fn}: {name} must be {want[name]}, got {_shape(t)}")
        if t.device.type != "cpu":
            raise ValueError(f"{fn}: {name} must be a CPU tensor, got one on {t.device}")


def _check_packed(u, x_dbl, dt_weight, A, D, delta_bias, index, fn: str) -> None:
    if u.dim() != 3 or index.dim() != 2 or x_dbl.dim() != 4:
        raise ValueError(
            f"{fn}: u must be (batch, L, d), x_dbl (batch, L, K, R + 2N) and index (K, L); "
            f"got {_shape(u)}, {_shape(x_dbl)} and {_shape(index)}"
        )
    b, L, d = u.shape
    K = index.shape[0]
    n = A.shape[-1]
    r = d if dt_weight is None else dt_weight.shape[-1]
    want = {"u": (b, L, d), "x_dbl": (b, L, K, r + 2 * n), "A": (K * d, n), "D": (K * d,)}
    want.update({"delta_bias": (K * d,), "index": (K, L)})
    got = {"u": u, "x_dbl": x_dbl, "A": A, "D": D, "delta_bias": delta_bias, "index": index}
    if dt_weight is not None:
        want["dt_weight"] = (K, d, r)
        got["dt_weight"] = dt_weight
    _check_cpu(fn, got, want)


# dt ranks above this are expanded by one matmul before the op instead of inside its kernels: the
# kernels' cost grows with the rank, a matmul's hardly (measured crossover between ranks 24 and 48,
# benchmarks/RESULTS.md)
_KERNEL_RANK_MAX = 32


def _dt_inputs(u: Tensor, x_dbl: Tensor, dt_weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """(xd, dt_weight) for the op: x_dbl with its rank-R columns as they are, or (large R, or no
    weight) delta itself in the first d columns; the weight empty in the latter case."""
    if dt_weight is None:
        return x_dbl, u.new_empty((0,))
    r = dt_weight.shape[-1]
    if r <= _KERNEL_RANK_MAX:
        return x_dbl, dt_weight
    delta = torch.einsum("blkr,kdr->blkd", x_dbl[..., :r], dt_weight.to(x_dbl.dtype))
    return torch.cat([delta, x_dbl[..., r:]], dim=3), u.new_empty((0,))


def _run_cross(u, xd, dt_weight, A, D, delta_bias, index, delta_softplus) -> Tensor:
    def prep(t: Tensor) -> Tensor:
        return t.to(torch.float32).contiguous()

    tensors = (u, xd, dt_weight, A, D, delta_bias)
    save_states = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    y, _ = _cross_op(
        *(prep(t) for t in tensors), index.to(torch.int64).contiguous(), bool(delta_softplus), save_states
    )
    return y


def cross_selective_scan_packed(
    u: Tensor,
    x_dbl: Tensor,
    dt_weight: Tensor | None,
    A: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    index: Tensor,
    delta_softplus: bool = True,
) -> Tensor:
    """:func:`cross_selective_scan` on x_proj's packed output, with dt_proj folded into the kernels.

    SSND's fused path: the per-position projections of all K directions stay in the one tensor
    x_proj writes, and the time steps are expanded from rank R to d channels inside the scan, so
    neither the (batch, K, L, d) delta nor separate B and C copies are ever made.

    Args:
        u: input, (batch, L, d), shared by all directions.
        x_dbl: (batch, L, K, R + 2 * N): per position and direction, the R time-step inputs of
            dt_proj (or, without ``dt_weight``, R = d columns of delta itself), then B (N), then C (N).
        dt_weight: dt_proj's weight, (K, d, R): delta[k] = x_dbl[:, :, k, :R] @ dt_weight[k].T; or
            None (x_dbl's first d columns are delta).
        A: (K * d, N), direction-major (rows k * d + c).
        D: skip connection, (K * d,).
        delta_bias: (K * d,).
        index: (K, L) int64 row-major positions read by each direction.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        (batch, L, d) float32, as :func:`cross_selective_scan`.

    Example:
        >>> import torch
        >>> from vmunet.ops import cross_selective_scan_packed
        >>> from vmunet.ops.scan_orders import scan_index
        >>> b, h, w, d, n, r = 1, 2, 3, 4, 2, 1
        >>> y = cross_selective_scan_packed(torch.randn(b, h * w, d), torch.randn(b, h * w, 4, r + 2 * n),
        ...     torch.randn(4, d, r), -torch.rand(4 * d, n), torch.ones(4 * d), torch.zeros(4 * d),
        ...     scan_index((h, w), 4))
        >>> y.shape
        torch.Size([1, 6, 4])
    """
    _check_packed(u, x_dbl, dt_weight, A, D, delta_bias, index, "cross_selective_scan_packed")
    xd, w = _dt_inputs(u, x_dbl, dt_weight)
    return _run_cross(u, xd, w, A, D, delta_bias, index, delta_softplus)


def cross_selective_scan_gated(
    u: Tensor,
    x_dbl: Tensor,
    dt_weight: Tensor | None,
    A: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    index: Tensor,
    xz: Tensor,
    norm: torch.nn.LayerNorm,
    delta_softplus: bool = True,
) -> Tensor:
    """:func:`cross_selective_scan_packed` and SSND's output gate in one op, for inference.

    Returns ``norm(y) * silu(z)`` with y the merged scan output and z = ``xz[..., d:]``, the second
    half of in_proj's output, computed in one pass after the scan (no gradients: it raises when
    one would be needed; training takes the unfused gate).

    Args:
        u, x_dbl, dt_weight, A, D, delta_bias, index, delta_softplus: as
            :func:`cross_selective_scan_packed`.
        xz: in_proj's output, (batch, L, 2 * d).
        norm: the LayerNorm over d channels (with its affine weight and bias).

    Returns:
        (batch, L, d) float32.

    Example:
        >>> import torch
        >>> from vmunet.ops import cross_selective_scan_gated
        >>> from vmunet.ops.scan_orders import scan_index
        >>> b, h, w, d, n, r = 1, 2, 3, 4, 2, 1
        >>> with torch.no_grad():
        ...     y = cross_selective_scan_gated(torch.randn(b, h * w, d),
        ...         torch.randn(b, h * w, 4, r + 2 * n), torch.randn(4, d, r), -torch.rand(4 * d, n),
        ...         torch.ones(4 * d), torch.zeros(4 * d), scan_index((h, w), 4),
        ...         torch.randn(b, h * w, 2 * d), torch.nn.LayerNorm(d))
        >>> y.shape
        torch.Size([1, 6, 4])
    """
    fn = "cross_selective_scan_gated"
    _check_packed(u, x_dbl, dt_weight, A, D, delta_bias, index, fn)
    b, L, d = u.shape
    if tuple(xz.shape) != (b, L, 2 * d):
        raise ValueError(f"{fn}: xz must be {(b, L, 2 * d)}, got {_shape(xz)}")
    if norm.weight is None or norm.bias is None or tuple(norm.normalized_shape) != (d,):
        raise ValueError(f"{fn}: norm must be an affine LayerNorm over {d} channels")
    tensors = [u, x_dbl, A, D, delta_bias, xz, norm.weight, norm.bias]
    if dt_weight is not None:
        tensors.append(dt_weight)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(f"{fn}: inference only; gradients need cross_selective_scan_packed and the gate")
    _check_cpu(fn, {"xz": xz, "norm": norm.weight})

    def prep(t: Tensor) -> Tensor:
        return t.to(torch.float32).contiguous()

    xd, w = _dt_inputs(u, x_dbl, dt_weight)
    return _cross_gated_op(
        prep(u), prep(xd), prep(w), prep(A), prep(D), prep(delta_bias), index.to(torch.int64).contiguous(),
        bool(delta_softplus), prep(xz), prep(norm.weight), prep(norm.bias), float(norm.eps),
    )  # fmt: skip


def cross_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    index: Tensor,
    delta_softplus: bool = True,
) -> Tensor:
    """Cross-scan, selective scan of every direction and cross-merge in one pass ("cpu" kernels).

    Equals ``merge(selective_scan(scan(u), ...))`` with the K orders given by ``index`` (see
    :func:`vmunet.ops.scan_orders.scan_index`: direction k reads the row-major position
    ``index[k, t]`` at step t), without materialising the scanned copies. All tensors are
    channels-last in row-major (memory) order and computed in float32; CPU only. (SSND calls
    :func:`cross_selective_scan_packed`, which takes x_proj's output without repacking it.)

    Args:
        u: input, (batch, L, d), shared by all directions.
        delta: time steps before bias / softplus, (batch, K, L, d), at the row-major positions.
        A: (K * d, N), direction-major (rows k * d + c).
        B: (batch, K, L, N), at the row-major positions.
        C: (batch, K, L, N).
        D: skip connection, (K * d,).
        delta_bias: (K * d,).
        index: (K, L) int64 row-major positions read by each direction.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        (batch, L, d) float32: the sum over the K directions of each direction's output at its
        row-major position.

    Example:
        >>> import torch
        >>> from vmunet.ops import cross_selective_scan
        >>> from vmunet.ops.scan_orders import scan_index
        >>> b, h, w, d, n = 1, 2, 3, 4, 2
        >>> idx = scan_index((h, w), 4)
        >>> y = cross_selective_scan(torch.randn(b, h * w, d), torch.randn(b, 4, h * w, d),
        ...     -torch.rand(4 * d, n), torch.randn(b, 4, h * w, n), torch.randn(b, 4, h * w, n),
        ...     torch.ones(4 * d), torch.zeros(4 * d), idx)
        >>> y.shape
        torch.Size([1, 6, 4])
    """
    if u.dim() != 3 or index.dim() != 2:
        raise ValueError(
            f"cross_selective_scan: u must be (batch, L, d) and index (K, L); "
            f"got {_shape(u)} and {_shape(index)}"
        )
    b, L, d = u.shape
    K = index.shape[0]
    n = A.shape[-1]
    want = {"u": (b, L, d), "delta": (b, K, L, d), "A": (K * d, n), "B": (b, K, L, n), "C": (b, K, L, n)}
    want.update({"D": (K * d,), "delta_bias": (K * d,), "index": (K, L)})
    got = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "delta_bias": delta_bias, "index": index}
    _check_cpu("cross_selective_scan", got, want)
    f32 = torch.float32
    xd = torch.cat([delta.to(f32), B.to(f32), C.to(f32)], dim=3).transpose(1, 2)  # (b, L, K, d + 2N)
    return _run_cross(u, xd, u.new_empty((0,)), A, D, delta_bias, index, delta_softplus)
