"""Numba-compiled selective scan for CPU: exact, multi-threaded, with forward and backward kernels.

Design (measured on a 2-core x86_64; see benchmarks/selective_scan.py):

- Work is split into blocks of up to ``LANES`` channels that share the same B and C rows (same
  group). Inside a block the channels are SIMD lanes: the state is a local (N, W) array, and each
  time step updates every (n, lane) with element-wise arithmetic that LLVM vectorises. Blocks run in
  parallel (``prange``); no two blocks write the same output, so there are no races.
- ``exp`` is a float32 range-reduced polynomial (max error about 1 ulp in [-87, 88]) written with
  plain arithmetic plus a bit-cast for 2**k, so it vectorises without SVML. Arguments are clamped to
  [-87, 88]: below, the decay is < 2e-38 instead of a subnormal (harmless); above, it saturates at
  ~1.6e38 instead of inf (only reachable with positive A).
- The backward kernel reruns the forward recurrence of its block, keeping that block's states
  ((L + 1) x N x W floats, e.g. 16 MiB at L = 4096, N = 16, W = 64), then runs the adjoint
  recurrence backwards in time. Gradients of B and C are summed per block into small partial
  buffers and reduced afterwards (no races); dA is kept per batch element and summed afterwards.
- delta_bias, softplus, D and z are element-wise on (b, d, L) and handled by PyTorch around the
  kernels, so the kernels only see one signature (float32, C-contiguous).
- The backward kernel allows reassociation (``fastmath={"reassoc", "contract"}``) so the sums over
  lanes for dB/dC vectorise; the forward kernel only allows fused multiply-add contraction. Neither
  assumes "no NaN/inf" and no approximate library functions are used.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

__all__ = ["scan_forward", "scan_backward", "LANES"]

LANES = 64
_FM_FWD = {"contract"}
_FM_BWD = {"contract", "reassoc"}


@intrinsic
def _bits_to_f32(typingctx, x):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", cache=True)
def _exp(x):
    # Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2; minimax polynomial for e**r (Cephes expf
    # coefficients); 2**k assembled from exponent bits. ~1 ulp on [-87, 88].
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    kf = (x * np.float32(1.4426950408889634) + np.float32(12582912.0)) - np.float32(12582912.0)
    r = x - kf * np.float32(0.693359375)
    r = r + kf * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _bits_to_f32((np.int32(kf) + np.int32(127)) << np.int32(23))


@njit(fastmath=_FM_FWD, error_model="numpy", cache=True)
def _load_block(u, dt, A, bi, c0, W, ub, dtb, xb, Ab):
    L = u.shape[2]
    N = A.shape[1]
    for w in range(W):
        for t in range(L):
            v = dt[bi, c0 + w, t]
            x = u[bi, c0 + w, t]
            ub[t * W + w] = x
            dtb[t * W + w] = v
            xb[t * W + w] = v * x
        for n in range(N):
            Ab[n * W + w] = A[c0 + w, n]


@njit(fastmath=_FM_FWD, error_model="numpy", cache=True)
def _forward_block(Bt, Ct, bi, c0, W, L, N, d, dtb, xb, Ab, h, acc, y, hs, keep):
    """Run the recurrence for one block; writes y (b, d, L); keeps states in hs when keep."""
    gB = c0 // (d // Bt.shape[1])
    gC = c0 // (d // Ct.shape[1])
    bB = bi if Bt.shape[0] > 1 else 0
    bC = bi if Ct.shape[0] > 1 else 0
    varB = Bt.shape[2] > 1
    varC = Ct.shape[2] > 1
    NW = N * W
    for k in range(NW):
        h[k] = 0.0
        if keep:
            hs[k] = 0.0
    for t in range(L):
        tb = t if varB else 0
        tc = t if varC else 0
        ot = t * W
        for w in range(W):
            acc[w] = 0.0
        for n in range(N):
            bn = Bt[bB, gB, tb, n]
            cn = Ct[bC, gC, tc, n]
            o = n * W
            for w in range(W):
                hn = _exp(dtb[ot + w] * Ab[o + w]) * h[o + w] + xb[ot + w] * bn
                h[o + w] = hn
                acc[w] += hn * cn
        if keep:
            off = (t + 1) * NW
            for k in range(NW):
                hs[off + k] = h[k]
        for w in range(W):
            y[bi, c0 + w, t] = acc[w]


@njit(parallel=True, fastmath=_FM_FWD, error_model="numpy", cache=True)
def _forward_kernel(u, dt, A, Bt, Ct, y, last, blk_b, blk_c, blk_w):
    d = u.shape[1]
    L = u.shape[2]
    N = A.shape[1]
    for i in prange(blk_b.shape[0]):
        bi = blk_b[i]
        c0 = blk_c[i]
        W = blk_w[i]
        ub = np.empty(L * W, np.float32)
        dtb = np.empty(L * W, np.float32)
        xb = np.empty(L * W, np.float32)
        Ab = np.empty(N * W, np.float32)
        h = np.empty(N * W, np.float32)
        acc = np.empty(W, np.float32)
        hs = np.empty(1, np.float32)
        _load_block(u, dt, A, bi, c0, W, ub, dtb, xb, Ab)
        _forward_block(Bt, Ct, bi, c0, W, L, N, d, dtb, xb, Ab, h, acc, y, hs, False)
        for n in range(N):
            for w in range(W):
                last[bi, c0 + w, n] = h[n * W + w]


@njit(fastmath=_FM_BWD, error_model="numpy", cache=True)
def _backward_block(
    Bt, Ct, dy, dlast, i, bi, c0, W, L, N, d, ub, dtb, xb, Ab, hs, g, dA_acc, du_acc, ddt_acc, dyb,
    du, ddt, dA_part, dB_part, dC_part,
):  # fmt: skip
    gB = c0 // (d // Bt.shape[1])
    gC = c0 // (d // Ct.shape[1])
    bB = bi if Bt.shape[0] > 1 else 0
    bC = bi if Ct.shape[0] > 1 else 0
    varB = Bt.shape[2] > 1
    varC = Ct.shape[2] > 1
    NW = N * W
    for w in range(W):
        for t in range(L):
            dyb[t * W + w] = dy[bi, c0 + w, t]
        for n in range(N):
            g[n * W + w] = dlast[bi, c0 + w, n]
    for k in range(NW):
        dA_acc[k] = 0.0
    for t in range(L - 1, -1, -1):
        tb = t if varB else 0
        tc = t if varC else 0
        ot = t * W
        for w in range(W):
            du_acc[w] = 0.0
            ddt_acc[w] = 0.0
        hcur_off = (t + 1) * NW
        hprev_off = t * NW
        for n in range(N):
            bn = Bt[bB, gB, tb, n]
            cn = Ct[bC, gC, tc, n]
            o = n * W
            sB = np.float32(0.0)
            sC = np.float32(0.0)
            for w in range(W):
                dyw = dyb[ot + w]
                dtw = dtb[ot + w]
                gg = g[o + w] + dyw * cn  # dL/dh[t]
                a = _exp(dtw * Ab[o + w])
                sC += dyw * hs[hcur_off + o + w]
                sB += gg * xb[ot + w]
                du_acc[w] += gg * dtw * bn
                ga = gg * hs[hprev_off + o + w] * a  # dL/d(dt * A)
                ddt_acc[w] += gg * ub[ot + w] * bn + ga * Ab[o + w]
                dA_acc[o + w] += ga * dtw
                g[o + w] = gg * a
            dB_part[i, tb, n] += sB
            dC_part[i, tc, n] += sC
        for w in range(W):
            du[bi, c0 + w, t] = du_acc[w]
            ddt[bi, c0 + w, t] = ddt_acc[w]
    for n in range(N):
        for w in range(W):
            dA_part[bi, c0 + w, n] = dA_acc[n * W + w]


@njit(parallel=True, fastmath=_FM_BWD, error_model="numpy", cache=True)
def _backward_kernel(
    u, dt, A, Bt, Ct, dy, dlast, y, du, ddt, dA_part, dB_part, dC_part, blk_b, blk_c, blk_w
):  # fmt: skip
    d = u.shape[1]
    L = u.shape[2]
    N = A.shape[1]
    for i in prange(blk_b.shape[0]):
        bi = blk_b[i]
        c0 = blk_c[i]
        W = blk_w[i]
        ub = np.empty(L * W, np.float32)
        dtb = np.empty(L * W, np.float32)
        xb = np.empty(L * W, np.float32)
        Ab = np.empty(N * W, np.float32)
        h = np.empty(N * W, np.float32)
        acc = np.empty(W, np.float32)
        hs = np.empty((L + 1) * N * W, np.float32)
        _load_block(u, dt, A, bi, c0, W, ub, dtb, xb, Ab)
        _forward_block(Bt, Ct, bi, c0, W, L, N, d, dtb, xb, Ab, h, acc, y, hs, True)
        g = np.empty(N * W, np.float32)
        dA_acc = np.empty(N * W, np.float32)
        du_acc = np.empty(W, np.float32)
        ddt_acc = np.empty(W, np.float32)
        dyb = np.empty(L * W, np.float32)
        _backward_block(
            Bt, Ct, dy, dlast, i, bi, c0, W, L, N, d, ub, dtb, xb, Ab, hs, g, dA_acc, du_acc, ddt_acc,
            dyb, du, ddt, dA_part, dB_part, dC_part,
        )  # fmt: skip


# --------------------------------------------------------------------------------------- wrappers
def _blocks(batch: int, dim: int, gb: int, gc: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks of <= LANES channels that share one B group and one C group, for every batch element."""
    span = math.gcd(dim // gb, dim // gc)  # channels [k*span, (k+1)*span) share B and C rows
    nb = -(-span // LANES)
    width = -(-span // nb)
    starts, widths = [], []
    for base in range(0, dim, span):
        for s in range(base, base + span, width):
            starts.append(s)
            widths.append(min(width, base + span - s))
    nblk = len(starts)
    blk_b = np.repeat(np.arange(batch, dtype=np.int64), nblk)
    blk_c = np.tile(np.asarray(starts, dtype=np.int64), batch)
    blk_w = np.tile(np.asarray(widths, dtype=np.int64), batch)
    return blk_b, blk_c, blk_w


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _dt(delta, delta_bias, softplus):
    pre = delta if delta_bias is None else delta + delta_bias[:, None]
    return pre, (F.softplus(pre) if softplus else pre)


def _f32(*ts):
    return [None if t is None else t.detach().to(torch.float32).contiguous() for t in ts]


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool):
    """Canonical-layout forward (see vmunet.ops._torch_scan); returns (out, last_state) in float32."""
    u, delta, A, B, C, D, z, delta_bias = _f32(u, delta, A, B, C, D, z, delta_bias)
    b, d, L = u.shape
    N = A.shape[1]
    _, dt = _dt(delta, delta_bias, softplus)
    Bt = B.transpose(2, 3).contiguous()
    Ct = C.transpose(2, 3).contiguous()
    y = torch.empty_like(u)
    last = u.new_empty(b, d, N)
    blocks = _blocks(b, d, B.shape[1], C.shape[1])
    _forward_kernel(_np(u), _np(dt), _np(A), _np(Bt), _np(Ct), y.numpy(), last.numpy(), *blocks)
    if D is not None:
        y.add_(u * D[:, None])
    if z is not None:
        y.mul_(F.silu(z))
    return y, last


def _reduce_parts(part: torch.Tensor, like: torch.Tensor, blk_b, blk_c, dim: int) -> torch.Tensor:
    """Sum per-block partial gradients (nblk, L', N) into the canonical (b', G, N, L') shape."""
    bsz, groups, n, length = like.shape
    gidx = torch.from_numpy(blk_c // (dim // groups))
    bidx = torch.from_numpy(blk_b) if bsz > 1 else torch.zeros_like(gidx)
    out = part.new_zeros(bsz * groups, length, n)
    out.index_add_(0, bidx * groups + gidx, part)
    return out.view(bsz, groups, length, n).transpose(2, 3).contiguous()


def scan_backward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, dout, dlast):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in float32; None for absent inputs."""
    u, delta, A, B, C, D, z, delta_bias, dout, dlast = _f32(u, delta, A, B, C, D, z, delta_bias, dout, dlast)
    b, d, L = u.shape
    N = A.shape[1]
    pre, dt = _dt(delta, delta_bias, softplus)
    if z is not None:
        sig = torch.sigmoid(z)
        dy = dout * (z * sig)
    else:
        dy = dout
    if dlast is None:
        dlast = u.new_zeros(b, d, N)
    Bt = B.transpose(2, 3).contiguous()
    Ct = C.transpose(2, 3).contiguous()
    blk_b, blk_c, blk_w = _blocks(b, d, B.shape[1], C.shape[1])
    nblk = blk_b.shape[0]
    y = torch.empty_like(u)
    du = torch.empty_like(u)
    ddt = torch.empty_like(u)
    dA_part = u.new_empty(b, d, N)
    dB_part = u.new_zeros(nblk, B.shape[3], N)
    dC_part = u.new_zeros(nblk, C.shape[3], N)
    _backward_kernel(
        _np(u), _np(dt), _np(A), _np(Bt), _np(Ct), _np(dy), _np(dlast), y.numpy(), du.numpy(),
        ddt.numpy(), dA_part.numpy(), dB_part.numpy(), dC_part.numpy(), blk_b, blk_c, blk_w,
    )  # fmt: skip
    dz = None
    dD = None
    if D is not None:
        dD = (dy * u).sum((0, 2))
        du.add_(dy * D[:, None])
    if z is not None:
        y_full = y + u * D[:, None] if D is not None else y
        dz = dout * y_full * sig * (1 + z * (1 - sig))
    ddelta = ddt * torch.sigmoid(pre) if softplus else ddt
    dbias = ddelta.sum((0, 2)) if delta_bias is not None else None
    dA = dA_part.sum(0)
    dB = _reduce_parts(dB_part, B, blk_b, blk_c, d)
    dC = _reduce_parts(dC_part, C, blk_b, blk_c, d)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def set_num_threads(n: int) -> None:
    """Set numba's thread count for the kernels (defaults to all cores)."""
    numba.set_num_threads(n)
