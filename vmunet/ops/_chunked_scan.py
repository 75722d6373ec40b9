"""Chunked selective scan made of standard tensor ops only: the ``chunked`` backend, the one exports use.

The other backends run inside the custom op ``vmunet::selective_scan`` (numba, Triton) or a Python
loop over every time step; neither can be exported to a graph that another runtime runs. This one is
plain PyTorch (``exp``, ``sum``, ``cat``, ``stack``, ``cumsum``, ``where``, elementwise products)
differentiated by autograd, and no Python loop or branch depends on the sequence length L. ONNX
(opset 18, ONNX Runtime), TorchScript and pt2 graphs of the tiny 2-D and 3-D VM-UNets built with it
reproduce PyTorch's logits at any batch size and at other spatial sizes (tests/export): every size
derived from L is kept at 2 or more (padding by more than a chunk, no (n - 1)-step slices), because
``torch.export`` specialises sizes of 0 and 1 and would freeze or guard them.

The diagonal recurrence ``h[t] = exp(dt[t] A) h[t-1] + dt[t] u[t] B[t]`` is solved on three levels:

1. L is cut into ``ceil(L / CHUNK)`` chunks of ``CHUNK`` steps (the last one padded with dt = 0,
   i.e. decay 1 and drive 0, which leaves the state unchanged). Inside every chunk, all chunks at
   once, a loop of ``CHUNK`` steps (a constant, not L) gives each chunk's end state from a zero start.
2. The end states are carried from chunk to chunk by the same recurrence one level up: the decay of
   a whole chunk is ``exp(sum of dt A over the chunk)``, and the chunk sequence is itself chunked
   (``LEVELS`` times).
3. At the top, the few remaining steps are combined at once: ``h[i] = sum_{j <= i} exp(s[i, j]) x[j]``
   with ``s[i, j]`` the sum of the log-decays strictly after j up to i, formed as a cumulative sum of a
   masked matrix (Mamba-2's ``segsum``), not as a difference of two running totals, then masked to
   -inf above the diagonal: every exponent is <= 0 and nothing overflows in float32.

With the state entering every chunk known, a second pass of the chunk loop gives every state, which
is read out through C. Only decays (products of ``exp(<= 0)``) ever appear, never their inverses, so
large ``-A * dt`` underflows to the exact limit 0 instead of overflowing. Work is O(L) per (channel,
state) pair; the Python loops run ``2 * CHUNK`` steps per level, whatever L is.

Why not the quadratic "decay matrix per chunk" form (``exp(cumsum_i - cumsum_j)`` for every pair
(i, j) of a chunk, as Mamba-2's SSD): with A of shape (d, N) (Mamba-1, not Mamba-2's one scalar per
head) that matrix is (d, N, T, T) per chunk, O(L * T) work and memory instead of O(L).

A variant with one loop per level (states from a zero start, then ``local + exp(cumsum) * entering``,
no second pass) was tried and dropped: 3.4x slower in eager PyTorch at VM-UNet's stage 1 (L = 4096,
d = 768, N = 16), the full (L, b, d, N) state tensor is formed several times instead of read out
step by step.

Inputs are in the canonical internal layout of ``vmunet.ops.selective_scan``: u, delta, z (b, d, L);
A (d, N); B, C (1 | b, G, N, 1 | L); D, delta_bias (d,) or None; one floating dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["CHUNK", "LEVELS", "chunked_linear_scan", "selective_scan_chunked"]

#: time steps per chunk (each level unrolls 2 * CHUNK steps into an exported graph)
CHUNK = 32
#: chunk levels below the quadratic top: with CHUNK = 32 the top combines ceil(L / 1024) steps
LEVELS = 2

Tensor = torch.Tensor


def _to_chunks(t: Tensor, chunk: int) -> Tensor:
    """(L, ...) -> (chunk, n, ...) contiguous, zero-padded at the end of the sequence.

    The padding is always more than a chunk (n = ceil((L + 2) / chunk) + 1): no size derived from L is
    ever 0 or 1, the sizes ``torch.export`` specialises on, so a graph exported at any L keeps L
    dynamic. It costs one chunk per level.
    """
    length = t.shape[0]
    n = (length + 1 + 2 * chunk) // chunk  # = ceil((L + 2) / chunk) + 1, one floor division (>= 2)
    # F.pad, not cat with new_zeros: a pt2 program with a symbolic new_zeros size fails to load
    t = F.pad(t, (0, 0) * (t.dim() - 1) + (0, n * chunk - length))
    return t.reshape(n, chunk, *t.shape[1:]).transpose(0, 1).contiguous()


def _from_chunks(t: Tensor, length: int | torch.SymInt) -> Tensor:
    """(chunk, n, ...) -> (L, ...): the inverse of :func:`_to_chunks`, padding dropped."""
    chunk, n = t.shape[:2]
    return t.transpose(0, 1).reshape(n * chunk, *t.shape[2:])[:length]


def _shift(h: Tensor) -> Tensor:
    """(n, ...) -> (n, ...): the state entering each step (zero, then h[0], ..., h[n - 2]).

    Padded in front and cut to n, not ``cat([zeros, h[:-1]])``: no tensor of n - 1 steps is formed,
    a size that is 1 at some export sizes and would be specialised by ``torch.export``.
    """
    return F.pad(h, (0, 0) * (h.dim() - 1) + (1, 0))[: h.shape[0]]


def _quadratic(log_decay: Tensor, x: Tensor) -> Tensor:
    """All states of the recurrence over dim 0 at once: (n, ...) -> (n, ...); O(n^2) memory, n small."""
    n = x.shape[0]
    idx = torch.arange(n, device=x.device)
    extra = (1,) * (x.dim() - 1)
    after = (idx[:, None] > idx[None, :]).reshape(n, n, *extra)  # [k, j]: step k lies after j
    upto = (idx[:, None] >= idx[None, :]).reshape(n, n, *extra)  # [i, j]: j <= i
    z = torch.where(after, log_decay.unsqueeze(1), torch.zeros_like(log_decay).unsqueeze(1))
    seg = torch.cumsum(z, dim=0)  # seg[i, j] = sum of log_decay[k] for j < k <= i
    w = torch.exp(torch.where(upto, seg, torch.full_like(seg, float("-inf"))))
    return (w * x.unsqueeze(0)).sum(1)


def _chunk_states(
    log_decay: Tensor, decay: Tensor, x: Tensor, levels: int, chunk: int, readout: Any = None
) -> tuple[Tensor, Tensor]:
    """Every state of a chunked recurrence: log_decay, decay = exp(log_decay), x all (T, n, ...).

    Returns (stacked, last): ``readout(h_t, t)`` of every state h_t (the states themselves when
    ``readout`` is None), stacked along dim 0, and the state at the end of the last chunk.
    """
    # unbind, not x[t]: the backward of unbind is one stack, the backward of T indexings T full-size
    # zero-filled gradients
    decays, xs = decay.unbind(0), x.unbind(0)
    h = xs[0]
    for a_t, x_t in zip(decays[1:], xs[1:]):  # pass 1: each chunk's end state from a zero start
        h = a_t * h + x_t
    ends = _carried(log_decay.sum(0), h, levels - 1, chunk)  # the true end state of every chunk
    h = _shift(ends)
    outs = []
    for t, (a_t, x_t) in enumerate(zip(decays, xs)):  # pass 2: from the state entering each chunk
        h = a_t * h + x_t
        outs.append(h if readout is None else readout(h, t))
    return torch.stack(outs), h[-1]


def _carried(log_decay: Tensor, x: Tensor, levels: int, chunk: int) -> Tensor:
    """States of ``h[i] = exp(log_decay[i]) h[i-1] + x[i]`` over dim 0, h[-1] = 0: (n, ...) -> (n, ...)."""
    if levels <= 0:
        return _quadratic(log_decay, x)
    n = x.shape[0]
    ld = _to_chunks(log_decay, chunk)
    return _from_chunks(_chunk_states(ld, torch.exp(ld), _to_chunks(x, chunk), levels, chunk)[0], n)


def chunked_linear_scan(log_decay: Tensor, x: Tensor, chunk: int = CHUNK, levels: int = LEVELS) -> Tensor:
    """Solve ``h[t] = exp(log_decay[t]) * h[t-1] + x[t]`` along dim 0 from a zero state, in standard ops.

    Args:
        log_decay: (L, ...) log of the per-step decay (<= 0 for a stable recurrence; any real works,
            as long as the decays over whole chunks stay finite).
        x: (L, ...) drive, same shape as ``log_decay``.
        chunk: steps per chunk.
        levels: chunk levels before the quadratic top.

    Returns:
        (L, ...) every state.

    Example:
        >>> import torch
        >>> h = chunked_linear_scan(torch.full((5, 1), -0.5), torch.ones(5, 1), chunk=2)
        >>> torch.allclose(h[1], torch.exp(torch.tensor(-0.5)) + 1)
        True
    """
    length = x.shape[0]
    ld = _to_chunks(log_decay, chunk)
    return _from_chunks(_chunk_states(ld, torch.exp(ld), _to_chunks(x, chunk), levels, chunk)[0], length)


def _bc_chunks(X: Tensor, chunk: int) -> Tensor:
    """B or C (b', G, N, L') -> (T | 1, n | 1, b', G, 1, N), broadcastable against per-channel states."""
    tm = X.permute(3, 0, 1, 2)  # (L', b', G, N)
    tm = _to_chunks(tm, chunk) if X.shape[3] != 1 else tm.unsqueeze(0)
    return tm.unsqueeze(-2)


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int = CHUNK,
    levels: int = LEVELS,
) -> tuple[Tensor, Tensor]:
    """The selective scan in the canonical layout; differentiable by autograd. Returns (out, last_state).

    ``out`` (b, d, L) and ``last_state`` (b, d, N) are in the inputs' dtype (the caller casts to the
    compute dtype first). See :func:`vmunet.ops.selective_scan` for the meaning of the arguments.
    """
    b, d, length = u.shape
    n_state = A.shape[1]
    groups = B.shape[1]
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dt_c = _to_chunks(dt.permute(2, 0, 1), chunk)  # (T, n, b, d); padded steps have dt = 0
    u_c = _to_chunks(u.permute(2, 0, 1), chunk)
    steps, n = dt_c.shape[:2]
    log_decay = dt_c.unsqueeze(-1) * A  # (T, n, b, d, N)
    dtu = (dt_c * u_c).reshape(steps, n, b, groups, d // groups, 1)
    x = (dtu * _bc_chunks(B, chunk)).reshape(steps, n, b, d, n_state)
    c_c = _bc_chunks(C, chunk)  # (T | 1, n | 1, b', G, 1, N)
    c_t = c_c.unbind(0) if c_c.shape[0] != 1 else [c_c[0]] * steps

    def readout(h: Tensor, t: int) -> Tensor:  # y_t = sum_n C_t[n] h_t[n], per step: h is never stacked
        return (h.reshape(n, b, groups, d // groups, n_state) * c_t[t]).sum(-1).reshape(n, b, d)

    y, last = _chunk_states(log_decay, torch.exp(log_decay), x, levels, chunk, readout)
    # the padding (decay 1, drive 0) leaves the state of step L - 1 unchanged up to the end
    y = _from_chunks(y, length).permute(1, 2, 0)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, last
