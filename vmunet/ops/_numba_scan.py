"""Numba-compiled selective scan for CPU: exact, multi-threaded, with forward and backward kernels.

Design (measured on a 2-core x86_64; see benchmarks/selective_scan.py):

- Work is split into blocks of up to ``LANES`` channels that share the same B and C rows (same
  group). Inside a block the channels are SIMD lanes: the state is a local (N, LANES) array (a
  narrower block's extra lanes hold zeros, which stay zero), and each time step updates every
  (n, lane) with element-wise arithmetic that LLVM vectorises. Blocks run in parallel (``prange``);
  no two blocks write the same output, so there are no races.
- The forward computes a tile's decays exp(dt A) in a loop of their own before the recurrence: fused,
  the loop needed more constants than there are vector registers and LLVM reloaded them on every
  iteration (measured 1.25x on the whole forward at stage 1).
- ``exp`` is a float32 range-reduced polynomial (max error about 1 ulp in [-87, 88]) written with
  plain arithmetic plus a bit-cast for 2**k, so it vectorises without SVML. Arguments are clamped to
  [-87, 88]: below, the decay is < 2e-38 instead of a subnormal (harmless); above, it saturates at
  ~1.6e38 instead of inf (only reachable with positive A).
- Time is cut into tiles of ``TILE`` steps. When gradients are needed the forward kernel also saves
  the state before each tile (checkpoints, (b, ceil(L / TILE), N, d)) and the backward starts from
  them; without them (or when it needs y, for dz) the backward kernel first runs the forward
  recurrence of its block, keeping those checkpoints. Then, tile by tile backwards
  in time, it recomputes the tile's states from its checkpoint (keeping h[t-1] and exp(dt A) in a
  (TILE, N, LANES) buffer that stays in L2) and runs the adjoint recurrence over the tile. Gradients
  of B and C are summed per block into small partial buffers and reduced afterwards (no races); dA
  is kept per batch element and summed afterwards.
- Vectorisation (check with ``inspect_asm``): lane loops must stay affine. Time loops count up (a
  ``range(T - 1, -1, -1)`` index made numba's negative-index wraparound non-foldable and LLVM
  emitted scalar code), and the backward's scratch sits in flat arrays with a compile-time lane
  stride so that no runtime overlap checks are needed.
- dt = softplus(delta + delta_bias) and its derivative are computed inside the kernels, on each tile
  as it is loaded (softplus with a branch-free log1p, ~2 ulp like ``exp``), so no full-size PyTorch
  pass runs before or after them; D is folded into the store loops, and the sums for dD and
  d delta_bias are kept per lane. Only z (out * silu(z)) is applied by PyTorch around the kernels.
  The kernels see one signature (float32, C-contiguous).
- Tiles are copied in and out of the (b, d, L) arrays ``_R`` = 8 channels at a time (8 rows read
  side by side, 8 adjacent lanes written per step), which measured ~1.6x faster than one channel at
  a time on arrays that do not fit in cache.
- The backward kernel allows reassociation (``fastmath={"reassoc", "contract"}``) so the sums over
  lanes for dB/dC vectorise; the forward kernel only allows fused multiply-add contraction. Neither
  assumes "no NaN/inf" and no approximate library functions are used. ``_softplus_and_grad`` is
  inlined into the tile loaders, which never allow reassociation: under it, LLVM may fold log1p's
  rounding compensation e - ((1 + e) - 1) to zero.
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

__all__ = ["scan_forward", "scan_backward", "cross_scan_forward", "cross_scan_backward", "LANES"]

LANES = 64
TILE = 32  # time steps per tile: the backward's (TILE, N, LANES) buffers stay in L2
# lane loops run over all V = LANES lanes (a compile-time trip count), narrower blocks padded with
# inert zero lanes
V = LANES
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


@njit(inline="always", cache=True)
def _log1p01(e):
    # log(1 + e) for e in [0, 1]: s = 1 + e rounded, c = e - (s - 1) its rounding error (exact, as
    # s - 1 is), log(1 + e) = log(s) + c / s. log(s) for s in [1, 2]: s = 2**k m with m in
    # [sqrt(1/2), sqrt(2)), log(m) = f - f**2 / 2 + f**3 P(f), f = m - 1 (Cephes logf coefficients),
    # k ln 2 split in two parts as in Cephes. ~1 ulp; branch-free, so it vectorises.
    s = np.float32(1.0) + e
    c = e - (s - np.float32(1.0))
    big = s > np.float32(1.41421356237)
    kf = np.float32(1.0) if big else np.float32(0.0)
    f = (s * np.float32(0.5) if big else s) - np.float32(1.0)
    z = f * f
    p = np.float32(7.0376836292e-2)
    p = p * f + np.float32(-1.1514610310e-1)
    p = p * f + np.float32(1.1676998740e-1)
    p = p * f + np.float32(-1.2420140846e-1)
    p = p * f + np.float32(1.4249322787e-1)
    p = p * f + np.float32(-1.6668057665e-1)
    p = p * f + np.float32(2.0000714765e-1)
    p = p * f + np.float32(-2.4999993993e-1)
    p = p * f + np.float32(3.3333331174e-1)
    y = f * (z * p) + kf * np.float32(-2.12194440e-4)
    y = y - np.float32(0.5) * z
    return (f + y) + kf * np.float32(0.693359375) + c / s


@njit(inline="always", cache=True)
def _softplus_and_grad(x):
    # softplus(x) = max(x, 0) + log(1 + exp(-|x|)) and its derivative sigmoid(x), from one exp. Above
    # x = 20 this rounds to x and 1, as torch's softplus (threshold 20) returns.
    e = _exp(-abs(x))
    sp = (x if x > np.float32(0.0) else np.float32(0.0)) + _log1p01(e)
    r = np.float32(1.0) / (np.float32(1.0) + e)
    return sp, (r if x >= np.float32(0.0) else e * r)


_KW = dict(error_model="numpy", cache=True)

# Tiles move between the (b, d, L) arrays and the (T, V) tiles _R channels at a time: _R rows read
# (or written) side by side, each sequentially in time, and _R adjacent tile lanes written (or read)
# per step. Measured ~1.6x faster than one channel at a time at stage 1 (arrays out of cache).
_R = 8


@njit(inline="always", cache=True)
def _finish_tile(bias, softplus, D, c0, W, T, dtt, xt, yt):
    """In place on loaded (T, V) tiles of delta and u: dtt = softplus(delta + bias) (or delta + bias),
    xt = dt * u, yt = D * u, for the block's channels c0 .. c0 + W of bias and D. Inlined into the
    loaders (IR inlining: it runs under their fastmath flags, which never allow reassociation)."""
    for t in range(T):  # contiguous lanes: vectorised
        o = t * V
        if softplus:
            for w in range(W):
                v, _ = _softplus_and_grad(dtt[o + w] + bias[c0 + w])
                x = xt[o + w]
                dtt[o + w] = v
                xt[o + w] = v * x
                yt[o + w] = D[c0 + w] * x
        else:
            for w in range(W):
                v = dtt[o + w] + bias[c0 + w]
                x = xt[o + w]
                dtt[o + w] = v
                xt[o + w] = v * x
                yt[o + w] = D[c0 + w] * x


@njit(fastmath=_FM_FWD, **_KW)
def _load_tile(u, delta, bias, softplus, D, bi, c0, W, t0, T, dtt, xt, yt):
    """Time steps [t0, t0 + T) of one block as (T, V) tiles, lanes innermost (lanes >= W untouched):
    dtt = dt = softplus(delta + bias) (or delta + bias), xt = dt * u, and yt = D * u, the output's
    skip term, which ``_fwd_tile`` adds C . h to (D: zeros when absent)."""
    W8 = W - W % _R
    for w0 in range(0, W8, _R):
        for t in range(T):
            o = t * V + w0
            for k in range(_R):
                dtt[o + k] = delta[bi, c0 + w0 + k, t0 + t]
                xt[o + k] = u[bi, c0 + w0 + k, t0 + t]
    for w in range(W8, W):
        for t in range(T):
            dtt[t * V + w] = delta[bi, c0 + w, t0 + t]
            xt[t * V + w] = u[bi, c0 + w, t0 + t]
    _finish_tile(bias, softplus, D, c0, W, T, dtt, xt, yt)


@njit(fastmath=_FM_FWD, **_KW)
def _fwd_tile(Bt, Ct, bB, gB, bC, gC, t0, T, N, dtt, xt, Ab, h, yt, want_y, ea):
    """Advance the state h (N, V) over one tile; C . h is added to yt (T, V) when want_y. ea: scratch
    for the tile's decays exp(dt A), (T, N, V). All V lanes run (a compile-time trip count: no
    runtime overlap checks); lanes past the block's width hold zeros and stay zero."""
    varB = Bt.shape[2] > 1
    varC = Ct.shape[2] > 1
    # the decays first, in a loop of their own: the recurrence loop then holds few enough constants
    # for the registers (fused, LLVM reloaded exp's constants every iteration); measured 1.4x on this
    # loop alone
    for t in range(T):
        ot = t * V
        for n in range(N):
            o = n * V
            oe = (t * N + n) * V
            for w in range(V):
                ea[oe + w] = _exp(dtt[ot + w] * Ab[o + w])
    for t in range(T):
        tb = t0 + t if varB else 0
        tc = t0 + t if varC else 0
        ot = t * V
        for n in range(N):
            bn = Bt[bB, gB, tb, n]
            o = n * V
            oe = (t * N + n) * V
            if want_y:
                cn = Ct[bC, gC, tc, n]
                for w in range(V):
                    hn = ea[oe + w] * h[o + w] + xt[ot + w] * bn
                    h[o + w] = hn
                    yt[ot + w] += hn * cn
            else:
                for w in range(V):
                    h[o + w] = ea[oe + w] * h[o + w] + xt[ot + w] * bn


# The backward keeps its scratch in three flat arrays with a compile-time lane stride V = LANES, so
# that every access in a lane loop is "base + constant offset + w": LLVM then proves the loops free of
# overlap without runtime checks (with one array per quantity it gave up and emitted scalar code).
_TT = 7  # per-step rows of the (T, _TT, V) tile: dt, x = dt*u, u, dy, s (-> du), q (-> d dt),
# d dt / d delta (sigmoid(delta + bias) with softplus, else 1)
_ST = 5  # per-state rows of the (N, _ST, V) state: A, h, g, dA, ga


@njit(fastmath=_FM_FWD, **_KW)
def _load_tile_bwd(u, delta, LV, softplus, dy, bi, c0, W, t0, T, TT):
    """TT rows of steps [t0, t0 + T): dt, dt * u, u, dy and d dt / d delta; LV[:V]: the block's bias."""
    W8 = W - W % _R
    for w0 in range(0, W8, _R):
        for t in range(T):
            o = t * _TT * V + w0
            for k in range(_R):
                TT[o + k] = delta[bi, c0 + w0 + k, t0 + t]
                TT[o + 2 * V + k] = u[bi, c0 + w0 + k, t0 + t]
                TT[o + 3 * V + k] = dy[bi, c0 + w0 + k, t0 + t]
    for w in range(W8, W):
        for t in range(T):
            o = t * _TT * V + w
            TT[o] = delta[bi, c0 + w, t0 + t]
            TT[o + 2 * V] = u[bi, c0 + w, t0 + t]
            TT[o + 3 * V] = dy[bi, c0 + w, t0 + t]
    for t in range(T):  # contiguous lanes: vectorised (padding lanes get u = 0, hence x = 0: inert)
        ot = t * _TT * V
        if softplus:
            for w in range(V):
                v, g = _softplus_and_grad(TT[ot + w] + LV[w])
                TT[ot + w] = v
                TT[ot + V + w] = v * TT[ot + 2 * V + w]
                TT[ot + 6 * V + w] = g
        else:
            for w in range(V):
                v = TT[ot + w] + LV[w]
                TT[ot + w] = v
                TT[ot + V + w] = v * TT[ot + 2 * V + w]
                TT[ot + 6 * V + w] = 1.0


@njit(fastmath=_FM_BWD, **_KW)
def _recompute_tile(Bt, Ct, bB, gB, bC, gC, t0, T, N, TT, ST, HA, dCp):
    """Forward over one tile from the state h in ST, keeping h[t-1] and exp(dt A) in HA (T, N, 2, V);
    adds dC[t, n] = sum_w dy[t, w] h[t, n, w] into dCp (L', N)."""
    varB = Bt.shape[2] > 1
    varC = Ct.shape[2] > 1
    for t in range(T):
        tb = t0 + t if varB else 0
        tc = t0 + t if varC else 0
        ot = t * _TT * V
        for n in range(N):
            bn = Bt[bB, gB, tb, n]
            o = n * _ST * V
            oh = (t * N + n) * 2 * V
            sC = np.float32(0.0)
            for w in range(V):
                a = _exp(TT[ot + w] * ST[o + w])
                hv = ST[o + V + w]
                HA[oh + w] = hv
                HA[oh + V + w] = a
                hn = a * hv + TT[ot + V + w] * bn
                ST[o + V + w] = hn
                sC += TT[ot + 3 * V + w] * hn
            dCp[tc, n] += sC


@njit(fastmath=_FM_BWD, **_KW)
def _adjoint_tile(Bt, Ct, bB, gB, bC, gC, t0, T, N, TT, ST, HA, dBp):
    """Adjoint recurrence backwards over one tile. ST's g rows hold dL/dh[t] * exp(dt A) from step t + 1;
    on return TT's s rows hold du and q rows d(dt); ST's dA rows and dBp (L', N) accumulate."""
    varB = Bt.shape[2] > 1
    varC = Ct.shape[2] > 1
    for tt in range(T):
        # t counts down; max() tells LLVM the offsets are >= 0, so numba's negative-index wraparound
        # folds away and the lane loops stay affine (vectorisable)
        t = max(T - 1 - tt, 0)
        tb = t0 + t if varB else 0
        tc = t0 + t if varC else 0
        ot = t * _TT * V
        for w in range(V):
            TT[ot + 4 * V + w] = 0.0
            TT[ot + 5 * V + w] = 0.0
        for n in range(N):
            bn = Bt[bB, gB, tb, n]
            cn = Ct[bC, gC, tc, n]
            o = n * _ST * V
            oh = (t * N + n) * 2 * V
            sB = np.float32(0.0)
            for w in range(V):
                gg = ST[o + 2 * V + w] + TT[ot + 3 * V + w] * cn  # dL/dh[t, n]
                a = HA[oh + V + w]
                ga = gg * HA[oh + w] * a  # dL/d(dt * A)
                TT[ot + 4 * V + w] += gg * bn  # sum_n dL/dx[t] with x = dt * u
                TT[ot + 5 * V + w] += ga * ST[o + w]
                ST[o + 3 * V + w] += ga * TT[ot + w]
                ST[o + 2 * V + w] = gg * a
                sB += gg * TT[ot + V + w]
            dBp[tb, n] += sB
        for w in range(V):
            sw = TT[ot + 4 * V + w]
            TT[ot + 5 * V + w] += sw * TT[ot + 2 * V + w]
            TT[ot + 4 * V + w] = sw * TT[ot + w]


@njit(fastmath=_FM_BWD, **_KW)
def _store_grads(du, ddelta, TT, LV, bi, c0, W, t0, T):
    """du (+ D dy) and d delta of steps [t0, t0 + T) from TT to (b, d, L); sums of dy * u (-> dD) and
    d delta (-> d bias) per lane into LV's rows 2 and 3 (LV rows 0, 1: the block's bias and D)."""
    for t in range(T):  # contiguous lanes: vectorised
        ot = t * _TT * V
        for w in range(V):
            dyw = TT[ot + 3 * V + w]
            g = TT[ot + 5 * V + w] * TT[ot + 6 * V + w]
            TT[ot + 4 * V + w] += dyw * LV[V + w]
            TT[ot + 5 * V + w] = g
            LV[2 * V + w] += dyw * TT[ot + 2 * V + w]
            LV[3 * V + w] += g
    W8 = W - W % _R
    for w0 in range(0, W8, _R):
        for t in range(T):
            o = t * _TT * V + w0
            for k in range(_R):
                du[bi, c0 + w0 + k, t0 + t] = TT[o + 4 * V + k]
                ddelta[bi, c0 + w0 + k, t0 + t] = TT[o + 5 * V + k]
    for w in range(W8, W):
        for t in range(T):
            o = t * _TT * V + w
            du[bi, c0 + w, t0 + t] = TT[o + 4 * V]
            ddelta[bi, c0 + w, t0 + t] = TT[o + 5 * V]


@njit(fastmath=_FM_FWD, **_KW)
def _store_y(y, yt, bi, c0, W, t0, T):
    """y[bi, c0 + w, t0 + t] = yt[t, w] for w < W: the (T, V) tile back to the (b, d, L) layout."""
    W8 = W - W % _R
    for w0 in range(0, W8, _R):
        for t in range(T):
            o = t * V + w0
            for k in range(_R):
                y[bi, c0 + w0 + k, t0 + t] = yt[o + k]
    for w in range(W8, W):
        for t in range(T):
            y[bi, c0 + w, t0 + t] = yt[t * V + w]


@njit(**_KW)
def _block(i, blk_b, blk_c, blk_w, d, Bt, Ct):
    """Block i's batch element, first channel and width, and where its B and C rows are:
    (bi, c0, W, bB, gB, bC, gC)."""
    bi = blk_b[i]
    c0 = blk_c[i]
    bB = bi if Bt.shape[0] > 1 else 0
    bC = bi if Ct.shape[0] > 1 else 0
    return bi, c0, blk_w[i], bB, c0 // (d // Bt.shape[1]), bC, c0 // (d // Ct.shape[1])


@njit(**_KW)
def _fwd_scratch(A, c0, W):
    """A block's forward scratch: (T, V) tiles dtt, xt, yt; the decays ea (T, N, V); A and the state
    h as (N, V). Lanes >= W hold zeros and stay zero (inert)."""
    N = A.shape[1]
    TV = TILE * V
    Ab = np.zeros(N * V, np.float32)
    for w in range(W):
        for n in range(N):
            Ab[n * V + w] = A[c0 + w, n]
    ea = np.empty(TV * N, np.float32)
    return (
        np.zeros(TV, np.float32),
        np.zeros(TV, np.float32),
        np.zeros(TV, np.float32),
        ea,
        Ab,
        np.zeros(N * V, np.float32),
    )


@njit(parallel=True, fastmath=_FM_FWD, **_KW)
def _forward_kernel(u, delta, bias, softplus, A, Bt, Ct, D, y, last, ck, want_ck, blk_b, blk_c, blk_w):
    d = u.shape[1]
    L = u.shape[2]
    N = A.shape[1]
    for i in prange(blk_b.shape[0]):
        bi, c0, W, bB, gB, bC, gC = _block(i, blk_b, blk_c, blk_w, d, Bt, Ct)
        dtt, xt, yt, ea, Ab, h = _fwd_scratch(A, c0, W)
        for t0 in range(0, L, TILE):
            T = min(TILE, L - t0)
            if want_ck:  # the state before each tile, for the backward (saves its forward pass)
                k = t0 // TILE
                for n in range(N):
                    for w in range(W):
                        ck[bi, k, n, c0 + w] = h[n * V + w]
            _load_tile(u, delta, bias, softplus, D, bi, c0, W, t0, T, dtt, xt, yt)
            _fwd_tile(Bt, Ct, bB, gB, bC, gC, t0, T, N, dtt, xt, Ab, h, yt, True, ea)
            _store_y(y, yt, bi, c0, W, t0, T)
        for n in range(N):
            for w in range(W):
                last[bi, c0 + w, n] = h[n * V + w]


@njit(parallel=True, fastmath=_FM_BWD, **_KW)
def _backward_kernel(
    u, delta, bias, softplus, A, Bt, Ct, D, dy, dlast, y, du, ddelta, dA_part, dB_part, dC_part,
    dD_part, dbias_part, blk_b, blk_c, blk_w, want_y, ckin, has_ck,
):  # fmt: skip
    d = u.shape[1]
    L = u.shape[2]
    N = A.shape[1]
    ntile = (L + TILE - 1) // TILE
    for i in prange(blk_b.shape[0]):
        bi, c0, W, bB, gB, bC, gC = _block(i, blk_b, blk_c, blk_w, d, Bt, Ct)
        NV = N * V
        dtt, xt, yt, ea, Ab, h = _fwd_scratch(A, c0, W)  # for pass 1
        ck = np.empty(0 if has_ck else ntile * NV, np.float32)  # state before each tile (checkpoints)
        TT = np.zeros(TILE * _TT * V, np.float32)  # padding lanes w >= W stay zero: inert
        ST = np.zeros(N * _ST * V, np.float32)
        HA = np.empty(TILE * N * 2 * V, np.float32)
        LV = np.zeros(4 * V, np.float32)  # per lane: bias, D, sum dy * u, sum d delta
        for w in range(W):
            LV[w] = bias[c0 + w]
            LV[V + w] = D[c0 + w]
            for n in range(N):
                ST[n * _ST * V + w] = A[c0 + w, n]
                ST[(n * _ST + 2) * V + w] = dlast[bi, c0 + w, n]
        # pass 1: forward, keeping one state per tile (and y when the caller needs it); skipped when
        # the forward saved the checkpoints and y is not needed
        for k in range(ntile if (want_y or not has_ck) else 0):
            t0 = k * TILE
            T = min(TILE, L - t0)
            if not has_ck:
                ck[k * NV : (k + 1) * NV] = h
            _load_tile(u, delta, bias, softplus, D, bi, c0, W, t0, T, dtt, xt, yt)
            _fwd_tile(Bt, Ct, bB, gB, bC, gC, t0, T, N, dtt, xt, Ab, h, yt, want_y, ea)
            if want_y:
                _store_y(y, yt, bi, c0, W, t0, T)
        # pass 2: tiles in reverse; recompute the tile's states from its checkpoint, then the adjoint
        for k in range(ntile - 1, -1, -1):
            t0 = k * TILE
            T = min(TILE, L - t0)
            if has_ck:
                for n in range(N):
                    for w in range(W):
                        ST[(n * _ST + 1) * V + w] = ckin[bi, k, n, c0 + w]
            else:
                for n in range(N):
                    for w in range(W):
                        ST[(n * _ST + 1) * V + w] = ck[k * NV + n * V + w]
            _load_tile_bwd(u, delta, LV, softplus, dy, bi, c0, W, t0, T, TT)
            _recompute_tile(Bt, Ct, bB, gB, bC, gC, t0, T, N, TT, ST, HA, dC_part[i])
            _adjoint_tile(Bt, Ct, bB, gB, bC, gC, t0, T, N, TT, ST, HA, dB_part[i])
            _store_grads(du, ddelta, TT, LV, bi, c0, W, t0, T)
        for w in range(W):
            dD_part[bi, c0 + w] = LV[2 * V + w]
            dbias_part[bi, c0 + w] = LV[3 * V + w]
        for n in range(N):
            for w in range(W):
                dA_part[bi, c0 + w, n] = ST[(n * _ST + 3) * V + w]


# ------------------------------------------------------------------- fused cross-scan kernels
# The direction-aware ("cross") kernels run all K scan directions of SS2D / SS3D on the un-scanned
# feature map. Everything is channels-last: u (b, L, d) in row-major (memory) order, delta (b, K, L, d)
# and B, C (b, K, L, N) computed per position in that order, and direction k reads step t at the
# row-major position p = idx[k, t] (vmunet.ops.scan_orders). A step's tile row is then one contiguous
# run of lanes whatever the direction. Work items are (batch, direction, channel block); each writes
# its own direction's partial output y_k (b, K, L, d) at the row-major positions, summed over k
# afterwards (no two items write the same element). The recurrences reuse the tile kernels above,
# with one tile of B and C rows gathered into a (1, 1, TILE, N) buffer (so they see t0 = 0).


@njit(fastmath=_FM_FWD, **_KW)
def _xload_bc(Bm, Cm, bi, k, idx, t0, T, N, Bt, Ct):
    for t in range(T):
        p = idx[k, t0 + t]
        for n in range(N):
            Bt[0, 0, t, n] = Bm[bi, k, p, n]
            Ct[0, 0, t, n] = Cm[bi, k, p, n]


@njit(fastmath=_FM_FWD, **_KW)
def _xload_tile(u, delta, bias, softplus, D, bi, k, c0, kc0, W, idx, t0, T, dtt, xt, yt):
    """As ``_load_tile``, reading step t of direction k at position idx[k, t0 + t] (channels-last)."""
    for t in range(T):
        p = idx[k, t0 + t]
        o = t * V
        for w in range(W):
            dtt[o + w] = delta[bi, k, p, c0 + w]
            xt[o + w] = u[bi, p, c0 + w]
    _finish_tile(bias, softplus, D, kc0, W, T, dtt, xt, yt)


@njit(parallel=True, fastmath=_FM_FWD, **_KW)
def _xforward_kernel(
    u, delta, bias, softplus, A, Bm, Cm, D, idx, yk, y, ck, want_ck, blk_b, blk_k, blk_c, blk_w
):  # fmt: skip
    L = u.shape[1]
    d = u.shape[2]
    N = A.shape[1]
    for i in prange(blk_b.shape[0]):
        bi = blk_b[i]
        k = blk_k[i]
        c0 = blk_c[i]
        W = blk_w[i]
        kc0 = k * d + c0
        dtt, xt, yt, ea, Ab, h = _fwd_scratch(A, kc0, W)
        Bt = np.zeros((1, 1, TILE, N), np.float32)
        Ct = np.zeros((1, 1, TILE, N), np.float32)
        for t0 in range(0, L, TILE):
            T = min(TILE, L - t0)
            if want_ck:
                kt = t0 // TILE
                for n in range(N):
                    for w in range(W):
                        ck[bi, k, kt, n, c0 + w] = h[n * V + w]
            _xload_bc(Bm, Cm, bi, k, idx, t0, T, N, Bt, Ct)
            _xload_tile(u, delta, bias, softplus, D, bi, k, c0, kc0, W, idx, t0, T, dtt, xt, yt)
            _fwd_tile(Bt, Ct, 0, 0, 0, 0, 0, T, N, dtt, xt, Ab, h, yt, True, ea)
            for t in range(T):
                p = idx[k, t0 + t]
                o = t * V
                for w in range(W):
                    yk[bi, k, p, c0 + w] = yt[o + w]
    _sum_directions(yk, y)


@njit(parallel=True, fastmath=_FM_FWD, **_KW)
def _sum_directions(yk, y):
    """y[b, p, :] = sum_k yk[b, k, p, :], in parallel over (b, rows of positions): one pass."""
    b, K, L, d = yk.shape
    rows = 64
    nr = (L + rows - 1) // rows
    for j in prange(b * nr):
        bi = j // nr
        p0 = (j % nr) * rows
        for p in range(p0, min(p0 + rows, L)):
            for c in range(d):
                y[bi, p, c] = yk[bi, 0, p, c]
            for k in range(1, K):
                for c in range(d):
                    y[bi, p, c] += yk[bi, k, p, c]


@njit(fastmath=_FM_FWD, **_KW)
def _xload_tile_bwd(u, delta, LV, softplus, dy, bi, k, c0, W, idx, t0, T, TT):
    for t in range(T):
        p = idx[k, t0 + t]
        o = t * _TT * V
        for w in range(W):
            TT[o + w] = delta[bi, k, p, c0 + w]
            TT[o + 2 * V + w] = u[bi, p, c0 + w]
            TT[o + 3 * V + w] = dy[bi, p, c0 + w]
    for t in range(T):
        ot = t * _TT * V
        if softplus:
            for w in range(V):
                v, g = _softplus_and_grad(TT[ot + w] + LV[w])
                TT[ot + w] = v
                TT[ot + V + w] = v * TT[ot + 2 * V + w]
                TT[ot + 6 * V + w] = g
        else:
            for w in range(V):
                v = TT[ot + w] + LV[w]
                TT[ot + w] = v
                TT[ot + V + w] = v * TT[ot + 2 * V + w]
                TT[ot + 6 * V + w] = 1.0


@njit(parallel=True, fastmath=_FM_BWD, **_KW)
def _xbackward_kernel(
    u, delta, bias, softplus, A, Bm, Cm, D, idx, dy, ckin, duk, ddelta, dA_part, dB_part, dC_part,
    dD_part, dbias_part, du, blk_b, blk_k, blk_c, blk_w,
):  # fmt: skip
    L = u.shape[1]
    d = u.shape[2]
    N = A.shape[1]
    ntile = (L + TILE - 1) // TILE
    for i in prange(blk_b.shape[0]):
        bi = blk_b[i]
        k = blk_k[i]
        c0 = blk_c[i]
        W = blk_w[i]
        kc0 = k * d + c0
        TT = np.zeros(TILE * _TT * V, np.float32)
        ST = np.zeros(N * _ST * V, np.float32)  # g rows: dL/d last state = 0
        HA = np.empty(TILE * N * 2 * V, np.float32)
        LV = np.zeros(4 * V, np.float32)
        Bt = np.zeros((1, 1, TILE, N), np.float32)
        Ct = np.zeros((1, 1, TILE, N), np.float32)
        dBt = np.zeros((TILE, N), np.float32)
        dCt = np.zeros((TILE, N), np.float32)
        for w in range(W):
            LV[w] = bias[kc0 + w]
            LV[V + w] = D[kc0 + w]
            for n in range(N):
                ST[n * _ST * V + w] = A[kc0 + w, n]
        for kt in range(ntile - 1, -1, -1):
            t0 = kt * TILE
            T = min(TILE, L - t0)
            for n in range(N):
                for w in range(W):
                    ST[(n * _ST + 1) * V + w] = ckin[bi, k, kt, n, c0 + w]
            _xload_bc(Bm, Cm, bi, k, idx, t0, T, N, Bt, Ct)
            _xload_tile_bwd(u, delta, LV, softplus, dy, bi, k, c0, W, idx, t0, T, TT)
            dBt[:] = 0.0
            dCt[:] = 0.0
            _recompute_tile(Bt, Ct, 0, 0, 0, 0, 0, T, N, TT, ST, HA, dCt)
            _adjoint_tile(Bt, Ct, 0, 0, 0, 0, 0, T, N, TT, ST, HA, dBt)
            for t in range(T):  # as _store_grads, to the channels-last positions
                ot = t * _TT * V
                for w in range(V):
                    dyw = TT[ot + 3 * V + w]
                    g = TT[ot + 5 * V + w] * TT[ot + 6 * V + w]
                    TT[ot + 4 * V + w] += dyw * LV[V + w]
                    TT[ot + 5 * V + w] = g
                    LV[2 * V + w] += dyw * TT[ot + 2 * V + w]
                    LV[3 * V + w] += g
            for t in range(T):
                p = idx[k, t0 + t]
                ot = t * _TT * V
                for w in range(W):
                    duk[bi, k, p, c0 + w] = TT[ot + 4 * V + w]
                    ddelta[bi, k, p, c0 + w] = TT[ot + 5 * V + w]
                for n in range(N):
                    dB_part[i, p, n] = dBt[t, n]
                    dC_part[i, p, n] = dCt[t, n]
        for w in range(W):
            dD_part[bi, kc0 + w] = LV[2 * V + w]
            dbias_part[bi, kc0 + w] = LV[3 * V + w]
        for n in range(N):
            for w in range(W):
                dA_part[bi, kc0 + w, n] = ST[(n * _ST + 3) * V + w]
    _sum_directions(duk, du)


def _xblocks(batch: int, K: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Work items (batch, direction, channel block of <= LANES channels), batch slowest, then direction."""
    nb = -(-dim // LANES)
    width = -(-dim // nb)
    starts = np.arange(0, dim, width, dtype=np.int64)
    widths = np.minimum(width, dim - starts)
    nc = starts.shape[0]
    blk_b = np.repeat(np.arange(batch, dtype=np.int64), K * nc)
    blk_k = np.tile(np.repeat(np.arange(K, dtype=np.int64), nc), batch)
    return blk_b, blk_k, np.tile(starts, batch * K), np.tile(widths, batch * K)


def cross_scan_forward(u, delta, A, Bm, Cm, D, delta_bias, idx, softplus: bool, save_states: bool = False):
    """Fused K-direction scan, channels-last (see the section comment above).

    u (b, L, d); delta (b, K, L, d); A (K * d, N); Bm, Cm (b, K, L, N); D, delta_bias (K * d,);
    idx (K, L) int64 row-major positions. Returns y = sum_k y_k, (b, L, d), and the state before every
    tile, (b, K, ceil(L / TILE), N, d) (empty without ``save_states``)."""
    u, delta, A, Bm, Cm, D, delta_bias = _f32(u, delta, A, Bm, Cm, D, delta_bias)
    b, L, d = u.shape
    K = delta.shape[1]
    N = A.shape[1]
    yk = u.new_empty(b, K, L, d)
    y = torch.empty_like(u)
    ck = u.new_empty(b, K, -(-L // TILE), N, d) if save_states else u.new_empty(1, 1, 1, 1, 1)
    _xforward_kernel(
        _np(u), _np(delta), _np(delta_bias), bool(softplus), _np(A), _np(Bm), _np(Cm), _np(D),
        _np(idx), yk.numpy(), y.numpy(), ck.numpy(), save_states, *_xblocks(b, K, d)
    )  # fmt: skip
    return y, (ck if save_states else u.new_empty((0,)))


def cross_scan_backward(u, delta, A, Bm, Cm, D, delta_bias, idx, softplus: bool, dy, states):
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias) of ``cross_scan_forward`` from dL/dy and its
    saved states."""
    u, delta, A, Bm, Cm, D, delta_bias, dy, states = _f32(u, delta, A, Bm, Cm, D, delta_bias, dy, states)
    b, L, d = u.shape
    K = delta.shape[1]
    N = A.shape[1]
    blocks = _xblocks(b, K, d)
    nblk = blocks[0].shape[0]
    duk = u.new_empty(b, K, L, d)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dA_part = u.new_empty(b, K * d, N)
    dB_part = u.new_empty(nblk, L, N)
    dC_part = u.new_empty(nblk, L, N)
    dD_part = u.new_empty(b, K * d)
    dbias_part = u.new_empty(b, K * d)
    _xbackward_kernel(
        _np(u), _np(delta), _np(delta_bias), bool(softplus), _np(A), _np(Bm), _np(Cm), _np(D), _np(idx),
        _np(dy), _np(states), duk.numpy(), ddelta.numpy(), dA_part.numpy(), dB_part.numpy(),
        dC_part.numpy(), dD_part.numpy(), dbias_part.numpy(), du.numpy(), *blocks,
    )  # fmt: skip
    dB = dB_part.view(b, K, -1, L, N).sum(2)
    dC = dC_part.view(b, K, -1, L, N).sum(2)
    return du, ddelta, dA_part.sum(0), dB, dC, dD_part.sum(0), dbias_part.sum(0)


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


def _f32(*ts):
    return [None if t is None else t.detach().to(torch.float32).contiguous() for t in ts]


def _bias(delta_bias, d: int) -> np.ndarray:
    return _np(delta_bias) if delta_bias is not None else np.zeros(d, np.float32)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, save_states: bool = False):
    """Canonical-layout forward (see vmunet.ops._torch_scan); returns (out, last_state) in float32, and
    with ``save_states`` also the state before every tile, (b, ceil(L / TILE), N, d), which
    ``scan_backward`` takes as ``states`` to skip its own forward pass."""
    u, delta, A, B, C, D, z, delta_bias = _f32(u, delta, A, B, C, D, z, delta_bias)
    b, d, L = u.shape
    N = A.shape[1]
    Bt = B.transpose(2, 3).contiguous()
    Ct = C.transpose(2, 3).contiguous()
    y = torch.empty_like(u)
    last = u.new_empty(b, d, N)
    blocks = _blocks(b, d, B.shape[1], C.shape[1])
    Dn = _np(D) if D is not None else np.zeros(d, np.float32)  # absent D: zeros, no branch in kernels
    ck = u.new_empty(b, -(-L // TILE), N, d) if save_states else u.new_empty(1, 1, 1, 1)
    _forward_kernel(
        _np(u), _np(delta), _bias(delta_bias, d), bool(softplus), _np(A), _np(Bt), _np(Ct), Dn,
        y.numpy(), last.numpy(), ck.numpy(), save_states, *blocks
    )  # fmt: skip
    if z is not None:
        y.mul_(F.silu(z))
    return (y, last, ck) if save_states else (y, last)


def _reduce_parts(part: torch.Tensor, like: torch.Tensor, blk_b, blk_c, dim: int) -> torch.Tensor:
    """Sum per-block partial gradients (nblk, L', N) into the canonical (b', G, N, L') shape."""
    bsz, groups, n, length = like.shape
    gidx = torch.from_numpy(blk_c // (dim // groups))
    bidx = torch.from_numpy(blk_b) if bsz > 1 else torch.zeros_like(gidx)
    out = part.new_zeros(bsz * groups, length, n)
    out.index_add_(0, bidx * groups + gidx, part)
    return out.view(bsz, groups, length, n).transpose(2, 3).contiguous()


def scan_backward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, dout, dlast, states=None):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in float32; None for absent inputs.
    ``states``: the tile checkpoints from ``scan_forward(..., save_states=True)``, or None."""
    u, delta, A, B, C, D, z, delta_bias, dout, dlast = _f32(u, delta, A, B, C, D, z, delta_bias, dout, dlast)
    b, d, L = u.shape
    N = A.shape[1]
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
    y = torch.empty_like(u) if z is not None else u.new_empty(1, 1, 1)  # y only feeds dz
    du = torch.empty_like(u)
    ddelta = torch.empty_like(u)
    dA_part = u.new_empty(b, d, N)
    dB_part = u.new_zeros(nblk, B.shape[3], N)
    dC_part = u.new_zeros(nblk, C.shape[3], N)
    dD_part = u.new_zeros(b, d)
    dbias_part = u.new_zeros(b, d)
    Dn = _np(D) if D is not None else np.zeros(d, np.float32)  # absent D: zeros, no branch in kernels
    has_ck = states is not None and states.numel() > 0
    ck = _np(states.to(torch.float32)) if has_ck else np.zeros((1, 1, 1, 1), np.float32)
    _backward_kernel(
        _np(u), _np(delta), _bias(delta_bias, d), bool(softplus), _np(A), _np(Bt), _np(Ct), Dn,
        _np(dy), _np(dlast), y.numpy(), du.numpy(), ddelta.numpy(), dA_part.numpy(),
        dB_part.numpy(), dC_part.numpy(), dD_part.numpy(), dbias_part.numpy(), blk_b, blk_c, blk_w,
        z is not None, ck, has_ck,
    )  # fmt: skip
    dD = dD_part.sum(0) if D is not None else None
    dz = None
    if z is not None:  # y already includes D * u
        dz = dout * y * sig * (1 + z * (1 - sig))
    dbias = dbias_part.sum(0) if delta_bias is not None else None
    dA = dA_part.sum(0)
    dB = _reduce_parts(dB_part, B, blk_b, blk_c, d)
    dC = _reduce_parts(dC_part, C, blk_b, blk_c, d)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def set_num_threads(n: int) -> None:
    """Set numba's thread count for the kernels (defaults to all cores)."""
    numba.set_num_threads(n)
