"""Triton selective scan for CUDA tensors (and for CPU tensors under Triton's interpreter, for tests).

Imported only on first use of the "triton" backend (``vmunet.ops._backends.triton_kernels``), never by
``import vmunet``. Design (the shape of flash-linear-attention's ``fused_recurrent`` kernels: one
program per (batch, block of channels), the recurrence walked step by step; written here for the
selective scan's own layout):

- Grid: (batch, blocks of ``BLOCK_D`` channels). Blocks never straddle a group of a time-varying B
  or C, so each program reads one (N,) row of B and of C per step, shared by its channels; a
  time-constant B or C ((dim, N) form) is loaded once, per channel, before the loop.
- The state h, (BLOCK_D, N), lives in registers; every step computes ``dt = softplus(delta + bias)``,
  ``exp(dt * A)``, the update and the read-out ``sum_n C h`` in float32, whatever the input dtypes
  (each load is cast to float32; each store casts to its tensor's dtype).
- Each step's inputs are loaded one step ahead (the loop carries them), so their memory latency
  overlaps the previous step's arithmetic instead of adding to the recurrence's critical path.
- Time is cut into chunks of ``CHUNK`` steps (this module's constant; the dispatch in
  ``vmunet.ops.selective_scan`` reads it from here). When gradients are needed the forward also
  stores the state before each chunk, (batch, ceil(L / CHUNK), N, dim).
- The backward walks the chunks from last to first. For each chunk it recomputes the states from
  the chunk's saved state, keeping h[t-1] for every step in a small per-program scratch buffer
  (CHUNK x N x BLOCK_D floats, cache-resident; a barrier before and after reading it back, as the
  compiler may lay the tile out differently for the store and the load), then walks the chunk
  backwards with an explicit reversed index ``t = t1 - 1 - i``, running the adjoint recurrence
  ``g[t] = dy[t] C[t] + a[t+1] g[t+1]`` (``tl.associative_scan(reverse=True)`` is not used).
  dA, dD, d delta_bias and the time-constant dB / dC are summed per program in float32 registers
  and stored once; a time-varying dB / dC is summed over the program's channels each step and
  stored per program, then those partial rows are summed over the programs of a group (and the
  batch where B broadcasts) by torch. No atomics, so results do not depend on scheduling.
- softplus uses ``log(s) * e / (s - 1)`` with ``s = 1 + e`` for log1p(e) (exact to a few ulp, also
  where e is tiny) and is the identity above 20, as torch's softplus.

Functions take the canonical layout of ``vmunet.ops.selective_scan``: u, delta, z (b, d, L);
A (d, N); B, C (1 | b, G, N, 1 | L); D, delta_bias (d,) or None; contiguous; any float dtype.
Offsets that grow with the batch are int64.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["CHUNK", "INTERPRET", "scan_forward", "scan_backward"]

#: time steps per chunk: with saved states the forward also returns the state before every chunk,
#: (b, ceil(L / CHUNK), N, d); the custom op's fake implementation reads the count from here
CHUNK = 16

#: whether the kernels were defined under Triton's interpreter (TRITON_INTERPRET=1 at import)
INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"


@triton.jit
def _softplus(x):
    e = tl.exp(tl.minimum(x, 20.0))
    s = 1.0 + e
    lp = tl.where(s == 1.0, e, tl.log(s) * (e / (s - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _fwd_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    last_ptr,
    states_ptr,
    dim,
    L,
    N,
    sBb,
    sBg,
    sBn,
    sBl,
    cpgB,
    sCb,
    sCg,
    sCn,
    sCl,
    cpgC,
    cpg,
    nblk,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    B_TIME: tl.constexpr,
    C_TIME: tl.constexpr,
    SAVE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    grp = pid // nblk
    offs = (pid % nblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs < cpg
    c = grp * cpg + offs
    c0 = grp * cpg
    n = tl.arange(0, BLOCK_N)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + c[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + c, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=mask_d, other=0.0).to(tl.float32)
    row = pid_b * dim * L + c.to(tl.int64) * L
    if B_TIME:
        b_row = B_ptr + pid_b * sBb + (c0 // cpgB) * sBg + n * sBn
    else:
        Bt = tl.load(
            B_ptr + pid_b * sBb + (c // cpgB)[:, None] * sBg + n[None, :] * sBn, mask=mask_dn, other=0.0
        ).to(tl.float32)
    if C_TIME:
        c_row = C_ptr + pid_b * sCb + (c0 // cpgC) * sCg + n * sCn
    else:
        Ct = tl.load(
            C_ptr + pid_b * sCb + (c // cpgC)[:, None] * sCg + n[None, :] * sCn, mask=mask_dn, other=0.0
        ).to(tl.float32)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    n_chunks = tl.cdiv(L, CHUNK)
    # each step's inputs are loaded one step ahead (p_*), so their latency overlaps the step before
    p_u = tl.load(u_ptr + row, mask=mask_d, other=0.0)
    p_dt = tl.load(dt_ptr + row, mask=mask_d, other=0.0)
    if B_TIME:
        p_B = tl.load(b_row, mask=mask_n, other=0.0)
    if C_TIME:
        p_C = tl.load(c_row, mask=mask_n, other=0.0)
    if HAS_Z:
        p_z = tl.load(z_ptr + row, mask=mask_d, other=0.0)
    for k in range(0, n_chunks):
        if SAVE:
            st = states_ptr + ((pid_b * n_chunks + k) * N + n[None, :]) * dim + c[:, None]
            tl.store(st, h, mask=mask_dn)
        t0 = k * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        for t in range(t0, t1):
            x_u = p_u.to(tl.float32)
            x_dt = p_dt.to(tl.float32)
            if B_TIME:
                Bt = p_B.to(tl.float32)[None, :]
            if C_TIME:
                Ct = p_C.to(tl.float32)[None, :]
            if HAS_Z:
                zz = p_z.to(tl.float32)
            tn = t + 1  # (vector comparisons: the masks must be int1 tensors, also in the interpreter)
            md = mask_d & (offs * 0 + tn < L)
            mn = mask_n & (n * 0 + tn < L)
            p_u = tl.load(u_ptr + row + tn, mask=md, other=0.0)
            p_dt = tl.load(dt_ptr + row + tn, mask=md, other=0.0)
            if B_TIME:
                p_B = tl.load(b_row + tn * sBl, mask=mn, other=0.0)
            if C_TIME:
                p_C = tl.load(c_row + tn * sCl, mask=mn, other=0.0)
            if HAS_Z:
                p_z = tl.load(z_ptr + row + tn, mask=md, other=0.0)
            if HAS_BIAS:
                x_dt = x_dt + bias
            if SOFTPLUS:
                x_dt = _softplus(x_dt)
            h = tl.exp(x_dt[:, None] * A) * h + (x_dt * x_u)[:, None] * Bt
            y = tl.sum(h * Ct, axis=1)
            if HAS_D:
                y = y + Dv * x_u
            if HAS_Z:
                y = y * zz * _sigmoid(zz)
            tl.store(out_ptr + row + t, y, mask=mask_d)
    tl.store(last_ptr + (pid_b * dim + c[:, None]) * N + n[None, :], h, mask=mask_dn)


@triton.jit
def _bwd_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    dout_ptr,
    dlast_ptr,
    states_ptr,
    scratch_ptr,
    du_ptr,
    ddt_ptr,
    dz_ptr,
    dA_ptr,
    dD_ptr,
    dbias_ptr,
    dB_ptr,
    dC_ptr,
    dim,
    L,
    N,
    sBb,
    sBg,
    sBn,
    sBl,
    cpgB,
    sCb,
    sCg,
    sCn,
    sCl,
    cpgC,
    cpg,
    nblk,
    nprog,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    B_TIME: tl.constexpr,
    C_TIME: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    grp = pid // nblk
    lane = tl.arange(0, BLOCK_D)
    offs = (pid % nblk) * BLOCK_D + lane
    mask_d = offs < cpg
    c = grp * cpg + offs
    c0 = grp * cpg
    n = tl.arange(0, BLOCK_N)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + c[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + c, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=mask_d, other=0.0).to(tl.float32)
    row = pid_b * dim * L + c.to(tl.int64) * L
    prog = pid_b * nprog + pid
    if B_TIME:
        b_row = B_ptr + pid_b * sBb + (c0 // cpgB) * sBg + n * sBn
        dB_row = dB_ptr + (prog * N + n) * L
    else:
        Bt = tl.load(
            B_ptr + pid_b * sBb + (c // cpgB)[:, None] * sBg + n[None, :] * sBn, mask=mask_dn, other=0.0
        ).to(tl.float32)
        dB_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if C_TIME:
        c_row = C_ptr + pid_b * sCb + (c0 // cpgC) * sCg + n * sCn
        dC_row = dC_ptr + (prog * N + n) * L
    else:
        Ct = tl.load(
            C_ptr + pid_b * sCb + (c // cpgC)[:, None] * sCg + n[None, :] * sCn, mask=mask_dn, other=0.0
        ).to(tl.float32)
        dC_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dn_offs = (pid_b * dim + c[:, None]) * N + n[None, :]
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    scr = scratch_ptr + prog * (CHUNK * BLOCK_N * BLOCK_D) + n[None, :] * BLOCK_D + lane[:, None]
    n_chunks = tl.cdiv(L, CHUNK)
    for kk in range(0, n_chunks):
        k = n_chunks - 1 - kk
        t0 = k * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        st = states_ptr + ((pid_b * n_chunks + k) * N + n[None, :]) * dim + c[:, None]
        h = tl.load(st, mask=mask_dn, other=0.0)
        # recompute the chunk's states, keeping h[t-1] for each step (inputs loaded one step ahead)
        p_u = tl.load(u_ptr + row + t0, mask=mask_d, other=0.0)
        p_dt = tl.load(dt_ptr + row + t0, mask=mask_d, other=0.0)
        if B_TIME:
            p_B = tl.load(b_row + t0 * sBl, mask=mask_n, other=0.0)
        for t in range(t0, t1):
            tl.store(scr + (t - t0) * (BLOCK_N * BLOCK_D), h)
            x_u = p_u.to(tl.float32)
            x_dt = p_dt.to(tl.float32)
            if B_TIME:
                Bt = p_B.to(tl.float32)[None, :]
            tn = t + 1
            md = mask_d & (lane * 0 + tn < t1)
            p_u = tl.load(u_ptr + row + tn, mask=md, other=0.0)
            p_dt = tl.load(dt_ptr + row + tn, mask=md, other=0.0)
            if B_TIME:
                p_B = tl.load(b_row + tn * sBl, mask=mask_n & (n * 0 + tn < t1), other=0.0)
            if HAS_BIAS:
                x_dt = x_dt + bias
            if SOFTPLUS:
                x_dt = _softplus(x_dt)
            h = tl.exp(x_dt[:, None] * A) * h + (x_dt * x_u)[:, None] * Bt
        # walk the chunk backwards, t = t1 - 1, ..., t0 (inputs loaded one step ahead, at t - 1)
        tl.debug_barrier()  # the scratch rows written above are read back below
        t_last = t1 - 1
        p_hp = tl.load(scr + (t_last - t0) * (BLOCK_N * BLOCK_D))
        p_u = tl.load(u_ptr + row + t_last, mask=mask_d, other=0.0)
        p_dt = tl.load(dt_ptr + row + t_last, mask=mask_d, other=0.0)
        p_dy = tl.load(dout_ptr + row + t_last, mask=mask_d, other=0.0)
        if B_TIME:
            p_B = tl.load(b_row + t_last * sBl, mask=mask_n, other=0.0)
        if C_TIME:
            p_C = tl.load(c_row + t_last * sCl, mask=mask_n, other=0.0)
        if HAS_Z:
            p_z = tl.load(z_ptr + row + t_last, mask=mask_d, other=0.0)
        for i in range(0, t1 - t0):
            t = t1 - 1 - i
            hp = p_hp
            x_u = p_u.to(tl.float32)
            pre = p_dt.to(tl.float32)
            dy = p_dy.to(tl.float32)
            if B_TIME:
                Bt = p_B.to(tl.float32)[None, :]
            if C_TIME:
                Ct = p_C.to(tl.float32)[None, :]
            if HAS_Z:
                zz = p_z.to(tl.float32)
            tp = t - 1
            md = mask_d & (lane * 0 + tp >= t0)
            mn = mask_n & (n * 0 + tp >= t0)
            p_hp = tl.load(scr + (tp - t0) * (BLOCK_N * BLOCK_D), mask=md[:, None] & mn[None, :], other=0.0)
            p_u = tl.load(u_ptr + row + tp, mask=md, other=0.0)
            p_dt = tl.load(dt_ptr + row + tp, mask=md, other=0.0)
            p_dy = tl.load(dout_ptr + row + tp, mask=md, other=0.0)
            if B_TIME:
                p_B = tl.load(b_row + tp * sBl, mask=mn, other=0.0)
            if C_TIME:
                p_C = tl.load(c_row + tp * sCl, mask=mn, other=0.0)
            if HAS_Z:
                p_z = tl.load(z_ptr + row + tp, mask=md, other=0.0)
            if HAS_BIAS:
                pre = pre + bias
            if SOFTPLUS:
                x_dt = _softplus(pre)
            else:
                x_dt = pre
            a = tl.exp(x_dt[:, None] * A)
            h = a * hp + (x_dt * x_u)[:, None] * Bt
            if HAS_Z:
                y = tl.sum(h * Ct, axis=1)
                if HAS_D:
                    y = y + Dv * x_u
                sig = _sigmoid(zz)
                tl.store(dz_ptr + row + t, dy * y * sig * (1.0 + zz * (1.0 - sig)), mask=mask_d)
                dy = dy * zz * sig
            if HAS_D:
                dD_acc += dy * x_u
                du = dy * Dv
            else:
                du = tl.zeros([BLOCK_D], dtype=tl.float32)
            dCt = dy[:, None] * h
            if C_TIME:
                tl.store(dC_row + t, tl.sum(dCt, axis=0), mask=mask_n)
            else:
                dC_acc += dCt
            g = carry + dy[:, None] * Ct
            w = g * hp * a
            ddt = tl.sum(w * A, axis=1)
            dA_acc += w * x_dt[:, None]
            gB = tl.sum(g * Bt, axis=1)
            du += gB * x_dt
            ddt += gB * x_u
            dBt = g * (x_dt * x_u)[:, None]
            if B_TIME:
                tl.store(dB_row + t, tl.sum(dBt, axis=0), mask=mask_n)
            else:
                dB_acc += dBt
            carry = a * g
            if SOFTPLUS:
                ddt = ddt * _sigmoid(pre)
            if HAS_BIAS:
                dbias_acc += ddt
            tl.store(du_ptr + row + t, du, mask=mask_d)
            tl.store(ddt_ptr + row + t, ddt, mask=mask_d)
        tl.debug_barrier()  # the next chunk overwrites the scratch rows read above
    tl.store(dA_ptr + dn_offs, dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + c, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + c, dbias_acc, mask=mask_d)
    if not B_TIME:
        tl.store(dB_ptr + dn_offs, dB_acc, mask=mask_dn)
    if not C_TIME:
        tl.store(dC_ptr + dn_offs, dC_acc, mask=mask_dn)


# ------------------------------------------------------------------------------------------ wrappers
def _bc_args(X: torch.Tensor, dim: int) -> tuple[bool, list[int]]:
    """(time-varying?, [batch stride, group stride, n stride, time stride, channels per group])."""
    varying = X.shape[3] > 1
    return varying, [
        X.stride(0) if X.shape[0] > 1 else 0,
        X.stride(1),
        X.stride(2),
        X.stride(3) if varying else 0,
        dim // X.shape[1],
    ]


def _layout(u: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(channels per grid group, blocks per group, BLOCK_D, BLOCK_N, num_warps)."""
    b, dim, _ = u.shape
    gb = B.shape[1] if B.shape[3] > 1 else 1
    gc = C.shape[1] if C.shape[3] > 1 else 1
    groups = gb * gc // math.gcd(gb, gc)  # blocks must not straddle a time-varying group
    cpg = dim // groups
    block_n = triton.next_power_of_2(B.shape[2])
    block_d = min(triton.next_power_of_2(cpg), 32)
    if u.device.type == "cuda":
        # a latency-bound loop: prefer more, narrower programs until the GPU has a few per SM
        sms = torch.cuda.get_device_properties(u.device).multi_processor_count
        while block_d > 4 and b * groups * triton.cdiv(cpg, block_d) < 4 * sms:
            block_d //= 2
    else:
        block_d = min(block_d, 8)
    num_warps = max(1, min(4, block_d * block_n // 128))
    return cpg, triton.cdiv(cpg, block_d), block_d, block_n, num_warps


def _dummy(u: torch.Tensor) -> torch.Tensor:
    return u.new_empty((1,), dtype=torch.float32)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, save_states: bool = False):
    """Returns (out in u's dtype, last_state float32[, states (b, chunks, N, d) float32])."""
    b, dim, length = u.shape
    N = A.shape[1]
    cpg, nblk, block_d, block_n, num_warps = _layout(u, B, C)
    b_time, b_args = _bc_args(B, dim)
    c_time, c_args = _bc_args(C, dim)
    out = torch.empty_like(u)
    last = u.new_empty((b, dim, N), dtype=torch.float32)
    k = triton.cdiv(length, CHUNK)
    states = u.new_empty((b, k, N, dim), dtype=torch.float32) if save_states else _dummy(u)
    dmy = _dummy(u)
    grid = (b, (dim // cpg) * nblk)
    _fwd_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else dmy, z if z is not None else dmy,
        delta_bias if delta_bias is not None else dmy,
        out, last, states, dim, length, N, *b_args, *c_args, cpg, nblk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(softplus), B_TIME=b_time, C_TIME=c_time, SAVE=bool(save_states),
        BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=CHUNK, num_warps=num_warps,
    )  # fmt: skip
    return (out, last, states) if save_states else (out, last)


def _reduce_bc(part: torch.Tensor, X: torch.Tensor, b: int, dim: int, groups: int, nblk: int) -> torch.Tensor:
    """Sum the kernel's partial dB / dC rows to X's shape (b', G, N, L')."""
    G, N = X.shape[1], X.shape[2]
    if X.shape[3] > 1:  # part: (b, groups * nblk, N, L), one row per program
        r = part.view(b, groups, nblk, N, -1).sum(2)
        r = r.view(b, G, groups // G, N, -1).sum(2)
    else:  # part: (b, d, N), one row per channel
        r = part.view(b, G, dim // G, N).sum(2).unsqueeze(-1)
    if X.shape[0] == 1 and b != 1:
        r = r.sum(0, keepdim=True)
    return r.to(X.dtype)


def scan_backward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, dout, dlast, states=None):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each in its input's dtype; None where
    the input is None."""
    b, dim, length = u.shape
    N = A.shape[1]
    if states is None or states.numel() == 0:
        states = scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, save_states=True)[2]
    cpg, nblk, block_d, block_n, num_warps = _layout(u, B, C)
    groups = dim // cpg
    nprog = groups * nblk
    b_time, b_args = _bc_args(B, dim)
    c_time, c_args = _bc_args(C, dim)
    f32 = torch.float32
    du = torch.empty_like(u)
    ddt = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = u.new_empty((b, dim, N), dtype=f32)
    dD = u.new_empty((b, dim), dtype=f32) if D is not None else None
    dbias = u.new_empty((b, dim), dtype=f32) if delta_bias is not None else None

    def part(time: bool) -> torch.Tensor:
        return u.new_empty((b, nprog, N, length) if time else (b, dim, N), dtype=f32)

    dBp, dCp = part(b_time), part(c_time)
    scratch = u.new_empty((b * nprog * CHUNK * block_n * block_d,), dtype=f32)
    dmy = _dummy(u)

    def opt(t):
        return t if t is not None else dmy

    _bwd_kernel[(b, nprog)](
        u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), dout, opt(dlast), states, scratch,
        du, ddt, opt(dz), dA, opt(dD), opt(dbias), dBp, dCp,
        dim, length, N, *b_args, *c_args, cpg, nblk, nprog,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(softplus), B_TIME=b_time, C_TIME=c_time, HAS_DLAST=dlast is not None,
        BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=CHUNK, num_warps=num_warps,
    )  # fmt: skip
    dB = _reduce_bc(dBp, B, b, dim, groups, nblk)
    dC = _reduce_bc(dCp, C, b, dim, groups, nblk)
    return (
        du,
        ddt,
        dA.sum(0).to(A.dtype),
        dB,
        dC,
        dD.sum(0).to(D.dtype) if D is not None else None,
        dz,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
    )
