"""Pure-PyTorch selective scan: exact, chunked, with an analytic backward.

The diagonal recurrence ``h[t] = a[t] * h[t-1] + x[t]`` is solved one chunk of time steps at a
time: inside a chunk by a Hillis-Steele doubling scan over (a, x) pairs (log2(chunk) steps of
whole-tensor arithmetic), across chunks by carrying the last state. Only products of decays
``a = exp(dt * A)`` appear, never their inverses, so nothing overflows for large negative
``A * dt`` (decays underflow to 0, which is the exact limit). The backward pass is the adjoint
recurrence ``g[t] = dh[t] + a[t+1] * g[t+1]``, solved by the same scan run backwards in time.

All functions here take the canonical internal layout (see ``vmunet.ops.selective_scan``):
u, delta (b, d, L); A (d, N); B, C (1 | b, G, N, 1 | L); D, delta_bias (d,) or None; z (b, d, L)
or None; all in one floating dtype, contiguous, no autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear_scan", "scan_forward", "scan_backward", "CHUNK"]

CHUNK = 64


def _doubling(a: torch.Tensor, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of a chunk along dim -2; returns (cumulative decay, states)."""
    a = a.clone()
    x = x.clone()
    T = a.shape[-2]
    k = 1
    while k < T:
        if not reverse:
            x[..., k:, :] = torch.addcmul(x[..., k:, :], a[..., k:, :], x[..., :-k, :])
            a[..., k:, :] = a[..., k:, :] * a[..., :-k, :]
        else:
            x[..., :-k, :] = torch.addcmul(x[..., :-k, :], a[..., :-k, :], x[..., k:, :])
            a[..., :-k, :] = a[..., :-k, :] * a[..., k:, :]
        k *= 2
    return a, x


def linear_scan(a: torch.Tensor, x: torch.Tensor, reverse: bool = False, chunk: int = CHUNK) -> torch.Tensor:
    """Solve ``h[t] = a[t] * h[t-1] + x[t]`` (or ``h[t] = a[t] * h[t+1] + x[t]`` when reverse) along dim -2.

    The state before the first step is zero. ``a`` and ``x`` have shape (..., L, N).
    """
    L = a.shape[-2]
    out = torch.empty_like(x)
    carry = None
    starts = list(range(0, L, chunk))
    if reverse:
        starts.reverse()
    for s in starts:
        e = min(s + chunk, L)
        acum, h = _doubling(a[..., s:e, :], x[..., s:e, :], reverse)
        if carry is not None:
            h.addcmul_(acum, carry.unsqueeze(-2))
        out[..., s:e, :] = h
        carry = h[..., 0, :] if reverse else h[..., -1, :]
    return out


def _per_channel(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(b, d, L[, N]) -> (b, G, d // G, L[, N]) view."""
    b, d = t.shape[:2]
    return t.view(b, groups, d // groups, *t.shape[2:])


def _bc_view(X: torch.Tensor) -> torch.Tensor:
    """(b', G, N, L') -> (b', G, 1, L', N) broadcast view."""
    return X.transpose(2, 3).unsqueeze(2)


def _reduce_to(P: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a per-channel (b, d, L, N) gradient down to the shape of B or C (b', G, N, L')."""
    groups = like.shape[1]
    r = _per_channel(P, groups).sum(2)  # (b, G, L, N)
    if like.shape[0] == 1 and r.shape[0] != 1:
        r = r.sum(0, keepdim=True)
    if like.shape[3] == 1 and r.shape[2] != 1:
        r = r.sum(2, keepdim=True)
    return r.transpose(2, 3).contiguous()


def _dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    return F.softplus(dt) if softplus else dt


def _states(u, dt, A, B):
    b, d, L = u.shape
    N = A.shape[1]
    decay = torch.exp(dt.unsqueeze(-1) * A[:, None, :])  # (b, d, L, N)
    drive = (_per_channel(dt * u, B.shape[1]).unsqueeze(-1) * _bc_view(B)).reshape(b, d, L, N)
    return decay, linear_scan(decay, drive)


def _readout(h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    b, d, L, _ = h.shape
    return (_per_channel(h, C.shape[1]) * _bc_view(C)).sum(-1).reshape(b, d, L)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool):
    """Returns (out, last_state) in the input dtype."""
    dt = _dt(delta, delta_bias, softplus)
    _, h = _states(u, dt, A, B)
    y = _readout(h, C)
    last = h[:, :, -1, :].clone()
    del h
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, last


def scan_backward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, dout, dlast):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); None where the input is None."""
    b, d, L = u.shape
    dt = _dt(delta, delta_bias, softplus)
    decay, h = _states(u, dt, A, B)
    dz = None
    if z is not None:
        y = _readout(h, C)
        if D is not None:
            y = y + u * D[:, None]
        sig = torch.sigmoid(z)
        dz = dout * y * sig * (1 + z * (1 - sig))
        dy = dout * (z * sig)
        del y
    else:
        dy = dout
    dD = (dy * u).sum((0, 2)) if D is not None else None
    du = dy * D[:, None] if D is not None else torch.zeros_like(u)
    dC = _reduce_to(dy.unsqueeze(-1) * h, C)
    # adjoint recurrence g[t] = dy[t] C[t] + a[t+1] g[t+1]
    dh = (_per_channel(dy, C.shape[1]).unsqueeze(-1) * _bc_view(C)).reshape(b, d, L, -1)
    if dlast is not None:
        dh[:, :, -1, :] += dlast
    a_next = torch.zeros_like(decay)
    a_next[:, :, :-1] = decay[:, :, 1:]
    g = linear_scan(a_next, dh, reverse=True)
    del a_next, dh
    # through h[t] = a[t] h[t-1] + dt u B
    h_prev = torch.zeros_like(h)
    h_prev[:, :, 1:] = h[:, :, :-1]
    del h
    w = g * h_prev * decay  # gradient w.r.t. dt * A
    del h_prev, decay
    ddt = (w * A[:, None, :]).sum(-1)
    dA = (w * dt.unsqueeze(-1)).sum((0, 2))
    del w
    gB = (_per_channel(g, B.shape[1]) * _bc_view(B)).sum(-1).reshape(b, d, L)
    du = du + gB * dt
    ddt = ddt + gB * u
    dB = _reduce_to(g * (dt * u).unsqueeze(-1), B)
    del g
    if softplus:
        pre = delta if delta_bias is None else delta + delta_bias[:, None]
        ddelta = ddt * torch.sigmoid(pre)
    else:
        ddelta = ddt
    dbias = ddelta.sum((0, 2)) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias
