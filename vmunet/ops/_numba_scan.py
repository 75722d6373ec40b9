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
  stride so that no runtime overlap checks are needed. Every index read from an array or passed in
  (positions, block starts, batch) is clamped with ``max(., 0)`` before it is used: otherwise the
  wraparound select turns a contiguous row copy into a gather (measured 6x slower).
- The direction-aware kernels and the backward's recompute take the decays as 2**(dt * A log2 e)
  (``_exp2``: rint / ldexp, single ``vrndscaleps`` / ``vscalefps`` instructions with AVX-512, the
  exponent bits assembled by hand elsewhere; ~1 ulp), which needs no Cody-Waite reduction and few
  enough constants to sit inside the recurrence loop.
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
from numba.core import cgutils, types
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


def _host_has_avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512F (then ``llvm.ldexp`` / ``llvm.rint`` become
    single ``vscalefps`` / ``vrndscaleps`` instructions; elsewhere ``_exp2`` assembles 2**k from bits)."""
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:  # a portable target was asked for
        return "+avx512f" in (numba.config.CPU_FEATURES or "")
    try:
        from llvmlite import binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001 - feature probing only picks the faster of two exact paths
        return False


_AVX512 = _host_has_avx512()
LOG2E = np.float32(1.4426950408889634)


@intrinsic
def _rint_f32(typingctx, x):
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.rint.f32")
        return builder.call(fn, [args[0]])

    return sig, codegen


@intrinsic
def _ldexp_f32(typingctx, x, k):
    sig = types.float32(types.float32, types.float32)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType(), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ldexp.f32.i32")
        return builder.call(fn, [args[0], builder.fptosi(args[1], ir.IntType(32))])

    return sig, codegen


# 2**r on [-1/2, 1/2], degree 6 with p(0) = 1: coefficients of r**1 .. r**6 fitted for this module
# (minimax relative error, a linear program over 4001 points, rounded to float32); evaluated in
# float32 by Horner's rule its error is <= 1.5 * 2**-24 (tests/ops/test_numba_tiling.py checks it)
_P2 = (
    0.6931471824645996,
    0.2402263730764389,
    0.05550365149974823,
    0.009620018303394318,
    0.0013389581581577659,
    0.00014902520342729986,
)


@njit(inline="always", cache=True)
def _exp2(x):
    # 2**x = 2**k * 2**r, k = rint(x), |r| <= 1/2; clamped to [-125, 127] (below: < 3e-38 instead of
    # a subnormal; above: saturates at ~1.7e38, as ``_exp`` does). ~1 ulp; the decays exp(dt A) are
    # 2**(dt * A log2(e)), so the Cody-Waite reduction of ``_exp`` is not needed.
    x = min(max(x, np.float32(-125.0)), np.float32(127.0))
    if _AVX512:
        kf = _rint_f32(x)
    else:
        kf = (x + np.float32(12582912.0)) - np.float32(12582912.0)
    r = x - kf
    p = np.float32(_P2[5])
    p = p * r + np.float32(_P2[4])
    p = p * r + np.float32(_P2[3])
    p = p * r + np.float32(_P2[2])
    p = p * r + np.float32(_P2[1])
    p = p * r + np.float32(_P2[0])
    p = p * r + np.float32(1.0)
    if _AVX512:
        return _ldexp_f32(p, kf)
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
    c0 = max(c0, 0)  # see _xload_dt
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
_ST = 5  # per-state rows of the (N, _ST, V) state: A, h, g, dA, A log2(e) (the decays' exponent)


@njit(inline="always", cache=True)
def _finish_tile_bwd(LV, softplus, T, TT):
    """In place on a loaded backward tile (rows dt before bias, u): dt = softplus(delta + bias) (or
    delta + bias), x = dt * u and d dt / d delta; LV[:V] holds the block's bias. Contiguous lanes:
    vectorised (padding lanes get u = 0, hence x = 0: inert). Inlined into both loaders (under their
    fastmath flags, as ``_finish_tile``)."""
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


@njit(inline="always", cache=True)
def _finish_grads(TT, LV, T):
    """In place on a tile after the adjoint: du += D dy, d delta = d(dt) * d dt / d delta; the sums
    of dy * u (-> dD) and of d delta (-> d bias) per lane into LV's rows 2 and 3 (rows 0, 1: the
    block's bias and D). Inlined into both backward kernels."""
    for t in range(T):  # contiguous lanes: vectorised
        ot = t * _TT * V
        for w in range(V):
            dyw = TT[ot + 3 * V + w]
            g = TT[ot + 5 * V + w] * TT[ot + 6 * V + w]
            TT[ot + 4 * V + w] += dyw * LV[V + w]
            TT[ot + 5 * V + w] = g
            LV[2 * V + w] += dyw * TT[ot + 2 * V + w]
            LV[3 * V + w] += g


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
    _finish_tile_bwd(LV, softplus, T, TT)


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
                a = _exp2(TT[ot + w] * ST[o + 4 * V + w])
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
    _finish_grads(TT, LV, T)
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
                ST[(n * _ST + 4) * V + w] = A[c0 + w, n] * LOG2E
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
# feature map. Everything is channels-last: u (b, L, d) in row-major (memory) order, and the
# per-position projections xd (b, L, K, R + 2N) of every direction in that order: R columns of the
# time step (the low-rank dt_proj input, R = dt_rank, expanded to d channels by the kernels with the
# (K, R, d) weight wdt; or R = d columns holding delta itself), then B (N) and C (N): x_proj's output
# as it comes, no copies. Direction k reads step t at the row-major position p = idx[k, t]
# (vmunet.ops.scan_orders), so a step's tile row is one contiguous run of lanes whatever the
# direction. Forward work items are (batch, direction group, channel block): a group is a direction
# and its reverse (k, k + K/2), run one after the other into the group's partial output ybuf
# (b, K/2, L, d) at the row-major positions, summed over groups afterwards; no two items write the
# same element. The decays are 2**(dt * A log2 e) (``_exp2``), fused into the recurrence loop. The
# backward's items are (batch, direction, channel block) and reuse the tile kernels above, with one
# tile of B and C rows gathered into a (1, 1, TILE, N) buffer (so they see t0 = 0).


@njit(fastmath=_FM_FWD, **_KW)
def _xload_dt(xd, wt, lowrank, bi, k, c0, W, p, R, row, o):
    """The time step before bias of position p, direction k, for lanes [0, W): into row[o : o + V]."""
    # max(., 0): a runtime index LLVM cannot prove non-negative gets numba's negative-index
    # wraparound, a select per element that turns the lane loop into a gather (measured 6x slower)
    bi, k, c0, p, o, R = max(bi, 0), max(k, 0), max(c0, 0), max(p, 0), max(o, 0), max(R, 0)
    if lowrank:  # delta = xd[..., :R] @ wdt[k] (lanes >= W: zero weights, so zeros)
        for w in range(V):
            row[o + w] = 0.0
        for j in range(R):
            s = xd[bi, p, k, j]
            for w in range(V):
                row[o + w] += s * wt[j * V + w]
    else:
        for w in range(W):
            row[o + w] = xd[bi, p, k, c0 + w]


@njit(fastmath=_FM_FWD, **_KW)
def _xload_bc(xd, bi, k, idx, t0, T, N, Bt, Ct):
    R = max(xd.shape[3] - 2 * N, 0)
    bi, k = max(bi, 0), max(k, 0)  # see _xload_dt
    for t in range(T):
        p = max(idx[k, t0 + t], 0)
        for n in range(N):
            Bt[0, 0, t, n] = xd[bi, p, k, R + n]
        for n in range(N):
            Ct[0, 0, t, n] = xd[bi, p, k, R + N + n]


@njit(fastmath=_FM_FWD, **_KW)
def _xfwd_tile(Bt, Ct, T, N, dtt, xt, A2, h, yt):
    """As ``_fwd_tile`` with the decays 2**(dt A log2 e) computed in the recurrence loop (``_exp2`` needs
    few enough constants for the registers); A2 = A log2(e) as (N, V)."""
    for t in range(T):
        ot = t * V
        for n in range(N):
            bn = Bt[0, 0, t, n]
            cn = Ct[0, 0, t, n]
            o = n * V
            for w in range(V):
                hn = _exp2(dtt[ot + w] * A2[o + w]) * h[o + w] + xt[ot + w] * bn
                h[o + w] = hn
                yt[ot + w] += hn * cn


@njit(parallel=True, fastmath=_FM_FWD, **_KW)
def _xforward_kernel(
    u, xd, wdt, lowrank, bias, softplus, A, D, idx, ybuf, ck, want_ck, blk_b, blk_g, blk_c, blk_w
):  # fmt: skip
    L = u.shape[1]
    d = u.shape[2]
    N = A.shape[1]
    G = ybuf.shape[1]
    K = idx.shape[0]
    R = xd.shape[3] - 2 * N
    for i in prange(blk_b.shape[0]):
        bi = max(blk_b[i], 0)  # max(., 0): see _xload_dt
        g = max(blk_g[i], 0)
        c0 = max(blk_c[i], 0)
        W = blk_w[i]
        dtt = np.zeros(TILE * V, np.float32)
        xt = np.zeros(TILE * V, np.float32)
        yt = np.zeros(TILE * V, np.float32)
        A2 = np.zeros(N * V, np.float32)
        h = np.zeros(N * V, np.float32)
        wt = np.zeros(R * V if lowrank else 1, np.float32)
        Bt = np.zeros((1, 1, TILE, N), np.float32)
        Ct = np.zeros((1, 1, TILE, N), np.float32)
        for k in range(g, K, G):  # the group's directions, one after the other
            first = k == g
            kc0 = max(k * d + c0, 0)
            for w in range(W):
                for n in range(N):
                    A2[n * V + w] = A[kc0 + w, n] * LOG2E
                    h[n * V + w] = 0.0
                if lowrank:
                    for j in range(R):
                        wt[j * V + w] = wdt[k, j, c0 + w]
            for t0 in range(0, L, TILE):
                T = min(TILE, L - t0)
                if want_ck:
                    kt = max(t0 // TILE, 0)
                    for n in range(N):
                        for w in range(W):
                            ck[bi, k, kt, n, c0 + w] = h[n * V + w]
                _xload_bc(xd, bi, k, idx, t0, T, N, Bt, Ct)
                for t in range(T):
                    p = max(idx[k, t0 + t], 0)
                    for w in range(W):
                        xt[t * V + w] = u[bi, p, c0 + w]
                    _xload_dt(xd, wt, lowrank, bi, k, c0, W, p, R, dtt, t * V)
                _finish_tile(bias, softplus, D, kc0, W, T, dtt, xt, yt)
                _xfwd_tile(Bt, Ct, T, N, dtt, xt, A2, h, yt)
                for t in range(T):
                    p = max(idx[k, t0 + t], 0)
                    o = t * V
                    if first:
                        for w in range(W):
                            ybuf[bi, g, p, c0 + w] = yt[o + w]
                    else:
                        for w in range(W):
                            ybuf[bi, g, p, c0 + w] += yt[o + w]


@njit(parallel=True, fastmath=_FM_FWD, **_KW)
def _sum_directions(yk, y):
    """y[b, p, :] = sum_k yk[b, k, p, :], in parallel over (b, rows of positions): one pass."""
    b, K, L, d = yk.shape
    rows = 64
    nr = (L + rows - 1) // rows
    for j in prange(b * nr):
        bi = max(j // nr, 0)  # max(., 0): see _xload_dt
        p0 = max((j % nr) * rows, 0)
        for p in range(p0, min(p0 + rows, L)):
            for c in range(d):
                y[bi, p, c] = yk[bi, 0, p, c]
            for k in range(1, K):
                for c in range(d):
                    y[bi, p, c] += yk[bi, k, p, c]


@njit(parallel=True, fastmath=_FM_FWD, **_KW)
def _gate_epilogue(ybuf, xz, weight, bias, eps, out):
    """SSND's output gate, for inference: out[b, p] = LayerNorm(sum_g ybuf[b, g, p]) * silu(z[b, p]) with
    z = xz[b, p, d:] (in_proj's second half), in one pass over positions instead of the sum, the norm,
    the SiLU and the product as four. Mean and variance in two passes over the row (float32)."""
    b, G, L, d = ybuf.shape
    rows = 16
    nr = (L + rows - 1) // rows
    for j in prange(b * nr):
        bi = max(j // nr, 0)  # max(., 0): see _xload_dt
        p0 = max((j % nr) * rows, 0)
        row = np.empty(d, np.float32)
        for p in range(p0, min(p0 + rows, L)):
            for c in range(d):
                row[c] = ybuf[bi, 0, p, c]
            for g in range(1, G):
                for c in range(d):
                    row[c] += ybuf[bi, g, p, c]
            m = np.float32(0.0)
            for c in range(d):
                m += row[c]
            m = m / np.float32(d)
            v = np.float32(0.0)
            for c in range(d):
                e = row[c] - m
                v += e * e
            rstd = np.float32(1.0) / np.sqrt(v / np.float32(d) + eps)
            for c in range(d):
                zc = xz[bi, p, d + c]
                gate = zc / (np.float32(1.0) + _exp(-zc))
                out[bi, p, c] = ((row[c] - m) * rstd * weight[c] + bias[c]) * gate


@njit(fastmath=_FM_FWD, **_KW)
def _xload_tile_bwd(u, xd, wt, lowrank, R, LV, softplus, dy, bi, k, c0, W, idx, t0, T, TT):
    """As ``_load_tile_bwd``, reading step t of direction k at position idx[k, t0 + t] (channels-last)."""
    bi, k, c0 = max(bi, 0), max(k, 0), max(c0, 0)  # see _xload_dt
    for t in range(T):
        p = max(idx[k, t0 + t], 0)
        o = t * _TT * V
        _xload_dt(xd, wt, lowrank, bi, k, c0, W, p, R, TT, o)
        for w in range(W):
            TT[o + 2 * V + w] = u[bi, p, c0 + w]
            TT[o + 3 * V + w] = dy[bi, p, c0 + w]
    _finish_tile_bwd(LV, softplus, T, TT)


@njit(parallel=True, fastmath=_FM_BWD, **_KW)
def _xbackward_kernel(
    u, xd, wdt, lowrank, bias, softplus, A, D, idx, dy, ckin, dubuf, P, ddel, dW_part, dA_part, dD_part,
    dbias_part, blk_b, blk_g, blk_c, blk_w, blk_j, nthreads,
):  # fmt: skip
    """Items (batch, direction pair, channel block) as in the forward, item i on thread i % nthreads
    (the 256 KB recompute buffer is allocated once per thread). du of the pair goes to dubuf
    (b, K/2, L, d); per channel block j, P (b, K, blocks, L, R' + 2N) gets d(dt inputs) = ddelta @
    wdt[k] reduced over the block's lanes (R' = R columns; none without wdt), then dB, dC; dt_proj's
    weight gradient goes to dW_part (b, K, R, d). Without wdt, ddelta itself goes to ddel (b, K, L, d)."""
    L = u.shape[1]
    d = u.shape[2]
    N = A.shape[1]
    G = dubuf.shape[1]
    K = idx.shape[0]
    R = max(xd.shape[3] - 2 * N, 0)
    RP = R if lowrank else 0
    ntile = (L + TILE - 1) // TILE
    nit = blk_b.shape[0]
    nth = max(min(nthreads, nit), 1)
    for th in prange(nth):  # items th, th + nth, ...: the 256 KB recompute buffer once per thread
        HA = np.empty(TILE * N * 2 * V, np.float32)
        for i in range(th, nit, nth):
            bi = max(blk_b[i], 0)  # max(., 0): see _xload_dt
            g = max(blk_g[i], 0)
            c0 = max(blk_c[i], 0)
            W = blk_w[i]
            j0 = max(blk_j[i], 0)
            TT = np.zeros(TILE * _TT * V, np.float32)
            ST = np.zeros(N * _ST * V, np.float32)
            LV = np.zeros(4 * V, np.float32)
            wt = np.zeros(R * V if lowrank else 1, np.float32)
            dWt = np.zeros(R * V if lowrank else 1, np.float32)
            Bt = np.zeros((1, 1, TILE, N), np.float32)
            Ct = np.zeros((1, 1, TILE, N), np.float32)
            dBt = np.zeros((TILE, N), np.float32)
            dCt = np.zeros((TILE, N), np.float32)
            for k in range(g, K, G):  # the pair's directions, one after the other
                first = k == g
                kc0 = max(k * d + c0, 0)
                for w in range(V):
                    for r4 in range(2, 4):
                        LV[r4 * V + w] = 0.0
                    for n in range(N):
                        ST[(n * _ST + 2) * V + w] = 0.0  # dL/d last state = 0
                        ST[(n * _ST + 3) * V + w] = 0.0
                for w in range(W):
                    LV[w] = bias[kc0 + w]
                    LV[V + w] = D[kc0 + w]
                    for n in range(N):
                        ST[n * _ST * V + w] = A[kc0 + w, n]
                        ST[(n * _ST + 4) * V + w] = A[kc0 + w, n] * LOG2E
                    if lowrank:
                        for j in range(R):
                            wt[j * V + w] = wdt[k, j, c0 + w]
                if lowrank:
                    dWt[:] = 0.0
                for kk in range(ntile):  # tiles in reverse, counted up (see _adjoint_tile)
                    kt = max(ntile - 1 - kk, 0)
                    t0 = kt * TILE
                    T = min(TILE, L - t0)
                    for n in range(N):
                        for w in range(W):
                            ST[(n * _ST + 1) * V + w] = ckin[bi, k, kt, n, c0 + w]
                    _xload_bc(xd, bi, k, idx, t0, T, N, Bt, Ct)
                    _xload_tile_bwd(u, xd, wt, lowrank, R, LV, softplus, dy, bi, k, c0, W, idx, t0, T, TT)
                    dBt[:] = 0.0
                    dCt[:] = 0.0
                    _recompute_tile(Bt, Ct, 0, 0, 0, 0, 0, T, N, TT, ST, HA, dCt)
                    _adjoint_tile(Bt, Ct, 0, 0, 0, 0, 0, T, N, TT, ST, HA, dBt)
                    _finish_grads(TT, LV, T)
                    for t in range(T):
                        p = max(idx[k, t0 + t], 0)
                        ot = t * _TT * V
                        if first:
                            for w in range(W):
                                dubuf[bi, g, p, c0 + w] = TT[ot + 4 * V + w]
                        else:
                            for w in range(W):
                                dubuf[bi, g, p, c0 + w] += TT[ot + 4 * V + w]
                        if lowrank:  # delta = dts @ wt: d dts (summed over this block's lanes), d wt
                            for j in range(R):
                                sj = np.float32(0.0)
                                for w in range(V):
                                    sj += TT[ot + 5 * V + w] * wt[j * V + w]
                                P[bi, k, j0, p, j] = sj
                                xj = xd[bi, p, k, j]
                                for w in range(V):
                                    dWt[j * V + w] += TT[ot + 5 * V + w] * xj
                        else:
                            for w in range(W):
                                ddel[bi, k, p, c0 + w] = TT[ot + 5 * V + w]
                        for n in range(N):
                            P[bi, k, j0, p, RP + n] = dBt[t, n]
                        for n in range(N):
                            P[bi, k, j0, p, RP + N + n] = dCt[t, n]
                for w in range(W):
                    dD_part[bi, kc0 + w] = LV[2 * V + w]
                    dbias_part[bi, kc0 + w] = LV[3 * V + w]
                    for n in range(N):
                        dA_part[bi, kc0 + w, n] = ST[(n * _ST + 3) * V + w]
                    if lowrank:
                        for j in range(R):
                            dW_part[bi, k, j, c0 + w] = dWt[j * V + w]


def _xblocks(batch: int, groups: int, dim: int) -> tuple[np.ndarray, ...]:
    """Work items (batch, direction group, channel block of <= LANES channels), batch slowest, then
    group: (batch, group, first channel, width, block number)."""
    nb = -(-dim // LANES)
    width = -(-dim // nb)
    starts = np.arange(0, dim, width, dtype=np.int64)
    widths = np.minimum(width, dim - starts)
    nc = starts.shape[0]
    blk_b = np.repeat(np.arange(batch, dtype=np.int64), groups * nc)
    blk_g = np.tile(np.repeat(np.arange(groups, dtype=np.int64), nc), batch)
    blk_j = np.tile(np.arange(nc, dtype=np.int64), batch * groups)
    return blk_b, blk_g, np.tile(starts, batch * groups), np.tile(widths, batch * groups), blk_j


def _dt_weight(wdt, like: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """(low-rank?, the (K, R, d) float32 weight the kernels read) from dt_proj's (K, d, R) or None."""
    if wdt is None or wdt.numel() == 0:
        return False, like.new_zeros(1, 1, 1)
    return True, wdt.detach().to(torch.float32).transpose(1, 2).contiguous()


def cross_scan_forward(u, xd, wdt, A, D, delta_bias, idx, softplus: bool, save_states: bool = False):
    """Fused K-direction scan, channels-last (see the section comment above).

    u (b, L, d); xd (b, L, K, R + 2N): the time-step columns, B, C of each direction; wdt (K, d, R),
    delta = xd[..., :R] @ wdt[k].T, or None (R == d: xd[..., :d] is delta); A (K * d, N); D,
    delta_bias (K * d,); idx (K, L) int64 row-major positions. Returns y = sum_k y_k, (b, L, d), and
    the state before every tile, (b, K, ceil(L / TILE), N, d) (empty without ``save_states``)."""
    u, xd, A, D, delta_bias = _f32(u, xd, A, D, delta_bias)
    b, L, d = u.shape
    K = idx.shape[0]
    N = A.shape[1]
    lowrank, wt = _dt_weight(wdt, u)
    groups = K // 2 if K % 2 == 0 else K
    ybuf = u.new_empty(b, groups, L, d)
    ck = u.new_empty(b, K, -(-L // TILE), N, d) if save_states else u.new_empty(1, 1, 1, 1, 1)
    _xforward_kernel(
        _np(u), _np(xd), wt.numpy(), lowrank, _np(delta_bias), bool(softplus), _np(A), _np(D), _np(idx),
        ybuf.numpy(), ck.numpy(), save_states, *_xblocks(b, groups, d)[:4]
    )  # fmt: skip
    if groups == 1:
        y = ybuf[:, 0]
    else:
        y = u.new_empty(b, L, d)
        _sum_directions(ybuf.numpy(), y.numpy())
    return y, (ck if save_states else u.new_empty((0,)))


def cross_scan_forward_gated(u, xd, wdt, A, D, delta_bias, idx, softplus: bool, xz, weight, bias, eps: float):
    """``cross_scan_forward`` followed by SSND's gate, LayerNorm(y) * silu(xz[..., d:]), fused (inference).

    xz: in_proj's output (b, L, 2d); weight, bias: the LayerNorm's (d,). Returns (b, L, d) float32."""
    u, xd, A, D, delta_bias, xz, weight, bias = _f32(u, xd, A, D, delta_bias, xz, weight, bias)
    b, L, d = u.shape
    K = idx.shape[0]
    lowrank, wt = _dt_weight(wdt, u)
    groups = K // 2 if K % 2 == 0 else K
    ybuf = u.new_empty(b, groups, L, d)
    ck = u.new_empty(1, 1, 1, 1, 1)
    _xforward_kernel(
        _np(u), _np(xd), wt.numpy(), lowrank, _np(delta_bias), bool(softplus), _np(A), _np(D), _np(idx),
        ybuf.numpy(), ck.numpy(), False, *_xblocks(b, groups, d)[:4]
    )  # fmt: skip
    out = u.new_empty(b, L, d)
    _gate_epilogue(ybuf.numpy(), _np(xz), _np(weight), _np(bias), np.float32(eps), out.numpy())
    return out


def cross_scan_backward(u, xd, wdt, A, D, delta_bias, idx, softplus: bool, dy, states):
    """Gradients (du, dxd, dwdt, dA, dD, ddelta_bias) of ``cross_scan_forward`` from dL/dy and its
    saved states; dwdt is None without wdt."""
    u, xd, A, D, delta_bias, dy, states = _f32(u, xd, A, D, delta_bias, dy, states)
    b, L, d = u.shape
    K = idx.shape[0]
    N = A.shape[1]
    c = xd.shape[3]
    R = c - 2 * N
    lowrank, wt = _dt_weight(wdt, u)
    groups = K // 2 if K % 2 == 0 else K
    blocks = _xblocks(b, groups, d)
    nb = int(blocks[4].max()) + 1
    dubuf = u.new_empty(b, groups, L, d)
    P = u.new_empty(b, K, nb, L, (R if lowrank else 0) + 2 * N)
    ddel = u.new_empty(1, 1, 1, 1) if lowrank else u.new_empty(b, K, L, d)
    dW_part = u.new_empty(b, K, R, d) if lowrank else u.new_empty(1, 1, 1, 1)
    dA_part = u.new_empty(b, K * d, N)
    dD_part = u.new_empty(b, K * d)
    dbias_part = u.new_empty(b, K * d)
    _xbackward_kernel(
        _np(u), _np(xd), wt.numpy(), lowrank, _np(delta_bias), bool(softplus), _np(A), _np(D), _np(idx),
        _np(dy), _np(states), dubuf.numpy(), P.numpy(), ddel.numpy(), dW_part.numpy(), dA_part.numpy(),
        dD_part.numpy(), dbias_part.numpy(), *blocks, numba.get_num_threads(),
    )  # fmt: skip
    if groups == 1:
        du = dubuf[:, 0]
    else:
        du = u.new_empty(b, L, d)
        _sum_directions(dubuf.numpy(), du.numpy())
    dxd = P[:, :, 0] if nb == 1 else P.sum(2)  # (b, K, L, R' + 2N)
    if not lowrank:
        dxd = torch.cat([ddel, dxd], dim=3)
    dxd = dxd.transpose(1, 2).contiguous()  # (b, L, K, c)
    dwdt = dW_part.sum(0).transpose(1, 2) if lowrank else None  # (K, d, R)
    return du, dxd, dwdt, dA_part.sum(0), dD_part.sum(0), dbias_part.sum(0)


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
