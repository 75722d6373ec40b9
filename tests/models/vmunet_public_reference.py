"""An independent, functional float64 VM-UNet forward written from the public code's description.

It reads a state dict keyed exactly as the public implementation (JCruan519/VM-UNet,
``models/vmunet/vmunet.py`` + ``vmamba.py``) names its parameters (``vmunet.layers.0.blocks.0.
self_attention.in_proj.weight`` ...), and computes the logits with explicit per-direction
loops, a sequential float64 scan and explicit strided pixel placement: nothing is shared with
``vmunet.nn`` / ``vmunet.ops``. Tests use it to prove that our network, given the same
tensors through ``load_checkpoint``, computes the public model's logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PREFIX = "vmunet."


def public_key_shapes(
    in_chans: int = 3,
    num_classes: int = 1,
    depths=(2, 2, 2, 2),
    depths_decoder=(2, 2, 2, 1),
    dims: int = 96,
    d_state: int = 16,
    prefix: str = PREFIX,
) -> dict[str, tuple[int, ...]]:
    """Every parameter of the public ``VMUNet`` with its shape (as its ``state_dict()`` lists it)."""
    n = len(depths)
    enc = [dims * 2**i for i in range(n)]
    dec = enc[::-1]
    out: dict[str, tuple[int, ...]] = {}

    def block(pre: str, c: int) -> None:
        d, r = 2 * c, math.ceil(c / 16)
        out.update(
            {
                f"{pre}.ln_1.weight": (c,),
                f"{pre}.ln_1.bias": (c,),
                f"{pre}.self_attention.x_proj_weight": (4, r + 2 * d_state, d),
                f"{pre}.self_attention.dt_projs_weight": (4, d, r),
                f"{pre}.self_attention.dt_projs_bias": (4, d),
                f"{pre}.self_attention.A_logs": (4 * d, d_state),
                f"{pre}.self_attention.Ds": (4 * d,),
                f"{pre}.self_attention.in_proj.weight": (2 * d, c),
                f"{pre}.self_attention.conv2d.weight": (d, 1, 3, 3),
                f"{pre}.self_attention.conv2d.bias": (d,),
                f"{pre}.self_attention.out_norm.weight": (d,),
                f"{pre}.self_attention.out_norm.bias": (d,),
                f"{pre}.self_attention.out_proj.weight": (c, d),
            }
        )

    out[f"{prefix}patch_embed.proj.weight"] = (enc[0], in_chans, 4, 4)
    out[f"{prefix}patch_embed.proj.bias"] = (enc[0],)
    out[f"{prefix}patch_embed.norm.weight"] = (enc[0],)
    out[f"{prefix}patch_embed.norm.bias"] = (enc[0],)
    for i in range(n):
        for j in range(depths[i]):
            block(f"{prefix}layers.{i}.blocks.{j}", enc[i])
        if i < n - 1:
            out[f"{prefix}layers.{i}.downsample.reduction.weight"] = (2 * enc[i], 4 * enc[i])
            out[f"{prefix}layers.{i}.downsample.norm.weight"] = (4 * enc[i],)
            out[f"{prefix}layers.{i}.downsample.norm.bias"] = (4 * enc[i],)
    for i in range(n):
        for j in range(depths_decoder[i]):
            block(f"{prefix}layers_up.{i}.blocks.{j}", dec[i])
        if i > 0:
            c = dec[i]
            out[f"{prefix}layers_up.{i}.upsample.expand.weight"] = (4 * c, 2 * c)
            out[f"{prefix}layers_up.{i}.upsample.norm.weight"] = (c,)
            out[f"{prefix}layers_up.{i}.upsample.norm.bias"] = (c,)
    out[f"{prefix}final_up.expand.weight"] = (4 * dec[-1], dec[-1])
    out[f"{prefix}final_up.norm.weight"] = (dec[-1] // 4,)
    out[f"{prefix}final_up.norm.bias"] = (dec[-1] // 4,)
    out[f"{prefix}final_conv.weight"] = (num_classes, dec[-1] // 4, 1, 1)
    out[f"{prefix}final_conv.bias"] = (num_classes,)
    return out


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of plausible scale for each key (every tensor distinct, so mix-ups show)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        t = torch.randn(shape, generator=g, dtype=torch.float32)
        if key.endswith("A_logs"):
            t = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)).expand(shape) + 0.1 * t
        elif key.endswith("dt_projs_bias"):
            t = -4.0 + 0.5 * t  # softplus(-4) ~ 0.018
        elif key.endswith("Ds"):
            t = 1.0 + 0.1 * t
        elif ("norm" in key or "ln_1" in key) and key.endswith("weight"):
            t = 1.0 + 0.1 * t
        elif key.endswith("bias"):
            t = 0.05 * t
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            t = t / math.sqrt(fan_in)
        sd[key] = t.contiguous()
    return sd


def _ln(x, sd, pre):
    return F.layer_norm(x, x.shape[-1:], sd[pre + ".weight"], sd[pre + ".bias"], eps=1e-5)


def _scan(u, dt, A, Bm, Cm, D, bias):
    # u, dt: (b, d, L); A: (d, N); Bm, Cm: (b, N, L); D, bias: (d,)
    dt = F.softplus(dt + bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * Bm[:, None, :, t]
        ys.append((h * Cm[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1) + D[:, None] * u


def _ss2d(x, sd, pre, d_state):
    b, hh, ww, _ = x.shape
    xz = x @ sd[pre + ".in_proj.weight"].T
    d = xz.shape[-1] // 2
    xi, z = xz[..., :d], xz[..., d:]
    xi = F.silu(
        F.conv2d(
            xi.permute(0, 3, 1, 2), sd[pre + ".conv2d.weight"], sd[pre + ".conv2d.bias"], padding=1, groups=d
        )
    )
    row = xi.reshape(b, d, hh * ww)
    col = xi.transpose(2, 3).reshape(b, d, hh * ww)
    seqs = [row, col, row.flip(-1), col.flip(-1)]
    r = sd[pre + ".dt_projs_weight"].shape[-1]
    merged = torch.zeros(b, d, hh, ww, dtype=x.dtype)
    for k in range(4):
        dbl = torch.einsum("cd,bdl->bcl", sd[pre + ".x_proj_weight"][k], seqs[k])
        dt = torch.einsum("dr,brl->bdl", sd[pre + ".dt_projs_weight"][k], dbl[:, :r])
        A = -torch.exp(sd[pre + ".A_logs"][k * d : (k + 1) * d])
        y = _scan(
            seqs[k],
            dt,
            A,
            dbl[:, r : r + d_state],
            dbl[:, r + d_state :],
            sd[pre + ".Ds"][k * d : (k + 1) * d],
            sd[pre + ".dt_projs_bias"][k],
        )
        if k >= 2:
            y = y.flip(-1)
        if k % 2 == 0:
            merged += y.reshape(b, d, hh, ww)
        else:
            merged += y.reshape(b, d, ww, hh).transpose(2, 3)
    y = _ln(merged.permute(0, 2, 3, 1), sd, pre + ".out_norm") * F.silu(z)
    return y @ sd[pre + ".out_proj.weight"].T


def _merge(x, sd, pre):
    parts = [x[:, dr::2, dc::2] for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1))]
    return _ln(torch.cat(parts, -1), sd, pre + ".norm") @ sd[pre + ".reduction.weight"].T


def _expand(x, sd, pre, s):
    y = x @ sd[pre + ".expand.weight"].T
    b, hh, ww, ch = y.shape
    c = ch // (s * s)
    out = torch.zeros(b, hh * s, ww * s, c, dtype=y.dtype)
    for p1 in range(s):
        for p2 in range(s):
            k = p1 * s + p2
            out[:, p1::s, p2::s, :] = y[..., k * c : (k + 1) * c]
    return _ln(out, sd, pre + ".norm")


def public_forward(sd_in, x, depths, depths_decoder, d_state, prefix: str = PREFIX) -> torch.Tensor:
    """Logits of the public VM-UNet (it returns sigmoid of these for one class), in float64."""
    sd = {k[len(prefix) :]: v.double() for k, v in sd_in.items()}
    x = x.double()
    if x.shape[1] == 1:  # the public wrapper repeats a 1-channel image to 3 channels
        x = x.repeat(1, 3, 1, 1)
    h = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4).permute(0, 2, 3, 1)
    h = _ln(h, sd, "patch_embed.norm")
    n = len(depths)
    skips = []
    for i in range(n):
        skips.append(h)
        for j in range(depths[i]):
            pre = f"layers.{i}.blocks.{j}"
            h = h + _ss2d(_ln(h, sd, pre + ".ln_1"), sd, pre + ".self_attention", d_state)
        if i < n - 1:
            h = _merge(h, sd, f"layers.{i}.downsample")
    for i in range(n):
        if i > 0:
            h = _expand(h + skips[-i], sd, f"layers_up.{i}.upsample", 2)
        for j in range(depths_decoder[i]):
            pre = f"layers_up.{i}.blocks.{j}"
            h = h + _ss2d(_ln(h, sd, pre + ".ln_1"), sd, pre + ".self_attention", d_state)
    h = _expand(h, sd, "final_up", 4).permute(0, 3, 1, 2)
    return F.conv2d(h, sd["final_conv.weight"], sd["final_conv.bias"])
