"""Pure-PyTorch selective scan: exact, with an analytic backward, runs on any device.

The diagonal recurrence ``h[t] = a[t] * h[t-1] + x[t]`` is solved by a loop over time on a
time-major layout (L, b, d, N), each step one fused ``addcmul`` written in place into a
preallocated output, vectorised over (b, d, N). Measured on the 2-core CPU this beat a chunked
doubling (Hillis-Steele) scan by ~40x: the doubling scan allocates a fresh temporary per step and
per chunk, and on CPU those allocations (page faults) dominate. Only products of decays
``a = exp(dt * A)`` appear, never their inverses, so nothing overflows for large negative
``A * dt`` (decays underflow to 0, the exact limit). The backward pass is the adjoint recurrence
``g[t] = dh[t] + a[t+1] * g[t+1]``, solved by the same loop run backwards in time.

All functions here take the canonical internal layout (see ``vmunet.ops.selective_scan``):
u, delta (b, d, L); A (d, N); B, C (1 | b, G, N, 1 | L); D, delta_bias (d,) or None; z (b, d, L)
or None; all in one floating dtype, contiguous, no autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear_scan", "scan_forward", "scan_backward"]


def linear_scan(a: torch.Tensor, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Solve a diagonal linear recurrence along dim 0, starting from a zero state.

    Forward: ``h[t] = a[t] * h[t-1] + x[t]``. Reverse (the adjoint): ``g[t] = x[t] + a[t+1] * g[t+1]``.
    ``a`` and ``x`` have shape (L, ...) (``a`` may broadcast against ``x``).
    """
    L = x.shape[0]
    out = torch.empty_like(x)
    if not reverse:
        out[0] = x[0]
        for t in range(1, L):
            torch.addcmul(x[t], a[t], out[t - 1], out=out[t])
    else:
        out[L - 1] = x[L - 1]
        for t in range(L - 2, -1, -1):
            torch.addcmul(x[t], a[t + 1], out[t + 1], out=out[t])
    return out


def _per_channel(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(L, b, d[, N]) -> (L, b, G, d // G[, N]) view."""
    L, b, d = t.shape[:3]
    return t.view(L, b, groups, d // groups, *t.shape[3:])


def _bc_view(X: torch.Tensor) -> torch.Tensor:
    """(b', G, N, L') -> (L', b', G, 1, N) broadcast view."""
    return X.permute(3, 0, 1, 2).unsqueeze(3)


def _reduce_to(P: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a per-channel (L, b, d, N) gradient down to the shape of B or C (b', G, N, L')."""
    groups = like.shape[1]
    r = _per_channel(P, groups).sum(3)  # (L, b, G, N)
    if like.shape[0] == 1 and r.shape[1] != 1:
        r = r.sum(1, keepdim=True)
    if like.shape[3] == 1 and r.shape[0] != 1:
        r = r.sum(0, keepdim=True)
    return r.permute(1, 2, 3, 0).contiguous()


def _tm(t: torch.Tensor) -> torch.Tensor:
    """(b, d, L) -> time-major (L, b, d), contiguous."""
    return t.permute(2, 0, 1).contiguous()


def _bm(t: torch.Tensor) -> torch.Tensor:
    """time-major (L, b, d) -> (b, d, L), contiguous."""
    return t.permute(1, 2, 0).contiguous()


def _dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    return F.softplus(dt) if softplus else dt


def _states(u_tm, dt_tm, A, B):
    L, b, d = u_tm.shape
    N = A.shape[1]
    decay = torch.exp(dt_tm.unsqueeze(-1) * A)  # (L, b, d, N)
    drive = (_per_channel(dt_tm * u_tm, B.shape[1]).unsqueeze(-1) * _bc_view(B)).reshape(L, b, d, N)
    return decay, linear_scan(decay, drive)


def _readout(h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    L, b, d, _ = h.shape
    return (_per_channel(h, C.shape[1]) * _bc_view(C)).sum(-1).reshape(L, b, d)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool):
    """Returns (out, last_state) in the input dtype."""
    dt = _dt(delta, delta_bias, softplus)
    _, h = _states(_tm(u), _tm(dt), A, B)
    y = _bm(_readout(h, C))
    last = h[-1].clone()
    del h
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, last


def scan_backward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, dout, dlast):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); None where the input is None."""
    dt = _dt(delta, delta_bias, softplus)
    u_tm, dt_tm = _tm(u), _tm(dt)
    L, b, d = u_tm.shape
    decay, h = _states(u_tm, dt_tm, A, B)
    dz = None
    if z is not None:
        y = _bm(_readout(h, C))
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
    dy_tm = _tm(dy)
    dC = _reduce_to(dy_tm.unsqueeze(-1) * h, C)
    # adjoint recurrence g[t] = dy[t] C[t] + a[t+1] g[t+1]
    dh = (_per_channel(dy_tm, C.shape[1]).unsqueeze(-1) * _bc_view(C)).reshape(L, b, d, -1)
    if dlast is not None:
        dh[-1] += dlast
    g = linear_scan(decay, dh, reverse=True)
    del dh
    # through h[t] = a[t] h[t-1] + dt u B: w = dL/d(dt * A) = g[t] * h[t-1] * a[t]
    w = torch.zeros_like(h)
    torch.mul(h[:-1], decay[1:], out=w[1:])
    del h, decay
    w.mul_(g)
    ddt = (w * A).sum(-1)
    dA = (w * dt_tm.unsqueeze(-1)).sum((0, 1))
    del w
    gB = (_per_channel(g, B.shape[1]) * _bc_view(B)).sum(-1).reshape(L, b, d)
    du = du + _bm(gB * dt_tm)
    ddt = ddt + gB * u_tm
    dB = _reduce_to(g * (dt_tm * u_tm).unsqueeze(-1), B)
    del g
    ddt = _bm(ddt)
    if softplus:
        pre = delta if delta_bias is None else delta + delta_bias[:, None]
        ddelta = ddt * torch.sigmoid(pre)
    else:
        ddelta = ddt
    dbias = ddelta.sum((0, 2)) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias
