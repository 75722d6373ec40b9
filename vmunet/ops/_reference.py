"""Sequential selective scan written from the recurrence: the ground truth for tests.

For every batch element b, channel c and state index n::

    dt[t]   = softplus(delta[b, c, t] + delta_bias[c])      (bias / softplus optional)
    h[t, n] = exp(dt[t] * A[c, n]) * h[t-1, n] + dt[t] * B[.., n, t] * u[b, c, t]
    y[t]    = sum_n C[.., n, t] * h[t, n] + D[c] * u[b, c, t]
    out[t]  = y[t] * silu(z[b, c, t])                       (z optional)

This follows the meaning of mamba-ssm's ``selective_scan_ref``
(state-spaces/mamba, mamba_ssm/ops/selective_scan_interface.py). The loop walks time with
``unbind`` so that autograd's backward is linear in L (indexing a tensor per step would
make every step's backward touch the whole tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["expand_bc", "selective_scan_reference"]


def expand_bc(X: torch.Tensor, batch: int, dim: int, length: int) -> torch.Tensor:
    """Return B or C as a (batch, dim, L, N) tensor (a broadcast view where possible).

    Accepts (dim, N) constant, (batch, N, L) shared, (batch, G, N, L) grouped and the
    broadcast canonical form (1 | batch, G, N, 1 | L) used internally.
    """
    if X.dim() == 2:  # (d, N): one row per channel, constant over time
        return X[None, :, None, :].expand(batch, dim, length, X.shape[-1])
    if X.dim() == 3:  # (b, N, L): one row shared by every channel
        X = X.unsqueeze(1)
    groups, n = X.shape[1], X.shape[2]
    # channel c belongs to group c // (dim // G)
    X = X.transpose(2, 3).unsqueeze(2)  # (b', G, 1, L', N)
    X = X.expand(batch, groups, dim // groups, length, n)
    return X.reshape(batch, dim, length, n)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential reference. Returns ``(out, last_state)``; out in u's dtype, last_state in the compute dtype.

    Differentiable through ordinary autograd. ``compute_dtype`` defaults to float64 for
    float64 inputs and float32 otherwise.
    """
    dtype_in = u.dtype
    if compute_dtype is None:
        compute_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    f = compute_dtype
    batch, dim, length = u.shape
    u = u.to(f)
    dt = delta.to(f)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A = A.to(f)
    Bf = expand_bc(B.to(f), batch, dim, length)
    Cf = expand_bc(C.to(f), batch, dim, length)
    decay = torch.exp(dt.unsqueeze(-1) * A[:, None, :])  # (b, d, L, N)
    drive = (dt * u).unsqueeze(-1) * Bf  # (b, d, L, N)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for a_t, x_t, c_t in zip(decay.unbind(2), drive.unbind(2), Cf.unbind(2)):
        h = a_t * h + x_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(f)[:, None]
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(dtype_in), h
