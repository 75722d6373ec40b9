"""Triton cross-scan and cross-merge for 2-D maps: one kernel each, no flipped / transposed copies.

``vmunet.ops.cross_scan`` dispatches here for CUDA tensors when triton imports (imported lazily, by
``vmunet.ops._backends.triton_cross_kernels``). The orders are those of ``cross_scan_2d``: for a
row-major position p = i * W + j its column-major position is q = j * H + i, and the four output
sequences hold x[p] at p, q, L - 1 - p and L - 1 - q. The scan reads each element of x once (any
strides, e.g. channels_last) and writes it to the four places; the merge reads the four places and
writes one sum per position, added in the same order as the torch function. Merge is the transpose
(adjoint) of scan, so each is the other's backward; both are ``torch.library`` custom ops, so
``torch.compile`` and ``torch.export`` see one op each.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["cross_merge_2d", "cross_scan_2d"]

_BLOCK = 256


@triton.jit
def _scan_kernel(x_ptr, out_ptr, C, H, W, sxb, sxc, sxh, sxw, BLOCK: tl.constexpr):
    bc = tl.program_id(0).to(tl.int64)
    b = bc // C
    c = bc % C
    L = H * W
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = p < L
    i = p // W
    j = p % W
    q = j * H + i
    v = tl.load(x_ptr + b * sxb + c * sxc + i * sxh + j * sxw, mask=m)
    seq = L * C  # elements per direction of one batch item
    base = out_ptr + b * 4 * seq + c * L
    tl.store(base + p, v, mask=m)
    tl.store(base + seq + q, v, mask=m)
    tl.store(base + 2 * seq + (L - 1 - p), v, mask=m)
    tl.store(base + 3 * seq + (L - 1 - q), v, mask=m)


@triton.jit
def _merge_kernel(y_ptr, out_ptr, C, H, W, BLOCK: tl.constexpr, F64: tl.constexpr):
    bc = tl.program_id(0).to(tl.int64)
    b = bc // C
    c = bc % C
    L = H * W
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = p < L
    q = (p % W) * H + p // W
    seq = L * C
    base = y_ptr + b * 4 * seq + c * L
    y0 = tl.load(base + p, mask=m)
    y1 = tl.load(base + seq + q, mask=m)
    y2 = tl.load(base + 2 * seq + (L - 1 - p), mask=m)
    y3 = tl.load(base + 3 * seq + (L - 1 - q), mask=m)
    if not F64:  # float64 stays float64; the others are summed in float32
        y0, y1, y2, y3 = y0.to(tl.float32), y1.to(tl.float32), y2.to(tl.float32), y3.to(tl.float32)
    tl.store(out_ptr + bc * L + p, (y0 + y2) + (y1 + y3), mask=m)


def _grid(b: int, c: int, length: int) -> tuple[int, int]:
    return (b * c, triton.cdiv(length, _BLOCK))


@torch.library.custom_op("vmunet::cross_scan_2d_triton", mutates_args=())
def _scan_op(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    out = x.new_empty((b, 4, c, h * w))
    if out.numel():
        _scan_kernel[_grid(b, c, h * w)](x, out, c, h, w, *x.stride(), BLOCK=_BLOCK)
    return out


@_scan_op.register_fake
def _scan_fake(x):
    b, c, h, w = x.shape
    return x.new_empty((b, 4, c, h * w))


@torch.library.custom_op("vmunet::cross_merge_2d_triton", mutates_args=())
def _merge_op(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    y = y.contiguous()
    b, _, c, length = y.shape
    out = y.new_empty((b, c, length))
    if out.numel():
        _merge_kernel[_grid(b, c, length)](y, out, c, H, W, BLOCK=_BLOCK, F64=y.dtype == torch.float64)
    return out


@_merge_op.register_fake
def _merge_fake(y, H, W):
    b, _, c, length = y.shape
    return y.new_empty((b, c, length))


def _scan_setup(ctx, inputs, output):
    ctx.hw = inputs[0].shape[2:]


def _scan_backward(ctx, grad):
    h, w = ctx.hw
    b, _, c, _ = grad.shape
    return _merge_op(grad, h, w).view(b, c, h, w)


def _merge_setup(ctx, inputs, output):
    ctx.hw = (inputs[1], inputs[2])


def _merge_backward(ctx, grad):
    h, w = ctx.hw
    b, c, _ = grad.shape
    return _scan_op(grad.reshape(b, c, h, w)), None, None


_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)
_merge_op.register_autograd(_merge_backward, setup_context=_merge_setup)


def cross_scan_2d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W), as ``vmunet.ops.cross_scan_2d`` (shape already checked)."""
    return _scan_op(x)


def cross_merge_2d(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, 4, C, H*W) -> (B, C, H*W), as ``vmunet.ops.cross_merge_2d`` (shape already checked)."""
    return _merge_op(y, int(H), int(W))
