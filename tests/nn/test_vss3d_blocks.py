"""SS3D, the 3-D VSS block and the 3-D patch layers: against explicit float64 loops and hand cases."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vmunet import ops
from vmunet.nn import (
    SS3D,
    FinalPatchExpand3D,
    PatchEmbed3D,
    PatchExpand3D,
    PatchMerging3D,
    VSSBlock,
    VSSStage,
    VSSUpStage,
    pixel_shuffle_last,
)

# the float64 scan recurrence and LayerNorm of the independent public-code reference
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from vmunet_public_reference import _ln, _scan  # noqa: E402


def _orders(H, W, D, k):
    """Memory positions visited by each direction, built with nested loops (slowest axis first)."""
    size = {"h": H, "w": W, "d": D}
    names = ("hwd", "dhw", "wdh")[: k // 2]
    fwd = []
    for name in names:
        seq = []
        for idx in itertools.product(*(range(size[a]) for a in name)):
            pos = dict(zip(name, idx))
            seq.append(pos["h"] * W * D + pos["w"] * D + pos["d"])
        fwd.append(seq)
    return fwd + [s[::-1] for s in fwd]


def _ss3d_reference(x, sd, d_state, k):
    """SS3D in float64: projections, depthwise conv, K explicit orders, scan loop, scatter-merge."""
    b, hh, ww, dd, _ = x.shape
    L = hh * ww * dd
    xz = x @ sd["in_proj.weight"].T
    d = xz.shape[-1] // 2
    xi, z = xz[..., :d], xz[..., d:]
    xi = F.silu(
        F.conv3d(xi.permute(0, 4, 1, 2, 3), sd["conv3d.weight"], sd["conv3d.bias"], padding=1, groups=d)
    )
    flat = xi.reshape(b, d, L)
    r = sd["dt_projs_weight"].shape[-1]
    merged = torch.zeros(b, d, L, dtype=x.dtype)
    for j, order in enumerate(_orders(hh, ww, dd, k)):
        idx = torch.tensor(order)
        seq = flat[:, :, idx]
        dbl = torch.einsum("cd,bdl->bcl", sd["x_proj_weight"][j], seq)
        dt = torch.einsum("dr,brl->bdl", sd["dt_projs_weight"][j], dbl[:, :r])
        A = -torch.exp(sd["A_logs"][j * d : (j + 1) * d])
        y = _scan(
            seq,
            dt,
            A,
            dbl[:, r : r + d_state],
            dbl[:, r + d_state :],
            sd["Ds"][j * d : (j + 1) * d],
            sd["dt_projs_bias"][j],
        )
        merged[:, :, idx] += y
    y = _ln(merged.transpose(1, 2).reshape(b, hh, ww, dd, d), sd, "out_norm") * F.silu(z)
    return y @ sd["out_proj.weight"].T


@pytest.mark.parametrize("k", [6, 2])
def test_ss3d_matches_float64_reference(k):
    ss3d = SS3D(d_model=8, d_state=3, scan_directions=k).eval()
    with torch.no_grad():  # move parameters off their init so every term matters
        for p in ss3d.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 2, 4, 8)
    with torch.no_grad():
        ours = ss3d(x)
    sd = {key: v.double() for key, v in ss3d.state_dict().items()}
    ref = _ss3d_reference(x.double(), sd, 3, k)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-5)


def test_ss3d_parameters_are_stacked_per_direction():
    ss3d = SS3D(d_model=16, d_state=4)
    d_inner, r = 32, 1
    shapes = {name: tuple(p.shape) for name, p in ss3d.named_parameters()}
    assert shapes["x_proj_weight"] == (6, r + 8, d_inner)
    assert shapes["dt_projs_weight"] == (6, d_inner, r)
    assert shapes["dt_projs_bias"] == (6, d_inner)
    assert shapes["A_logs"] == (6 * d_inner, 4) and shapes["Ds"] == (6 * d_inner,)
    assert shapes["conv3d.weight"] == (d_inner, 1, 3, 3, 3)  # depthwise Conv3d
    assert "conv2d.weight" not in shapes
    assert SS3D(d_model=16, d_state=4, scan_directions=2).x_proj_weight.shape[0] == 2


@pytest.mark.parametrize("backend", [b for b in ops.available_backends() if b != "cuda"])
def test_ss3d_every_scan_backend_agrees_with_reference(backend):
    torch.manual_seed(0)
    ss3d = SS3D(d_model=8, d_state=2, scan_backend="reference")
    x = torch.randn(1, 4, 2, 3, 8, requires_grad=True)
    ref = ss3d(x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    ss3d.scan_backend = backend
    out = ss3d(x)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_ss_bad_arguments_name_the_argument():
    with pytest.raises(
        ValueError, match=r"scan_directions must be one of \(6, 2\) for spatial_dims=3, got 4"
    ):
        SS3D(d_model=8, scan_directions=4)
    with pytest.raises(ValueError, match=r"spatial_dims must be 2 or 3, got 1"):
        VSSBlock(d_model=8, spatial_dims=1)


def test_vss3d_block_and_stages_shapes_and_gradients():
    block = VSSBlock(d_model=8, d_state=2, spatial_dims=3)
    x = torch.randn(1, 4, 4, 2, 8, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    down = VSSStage(dim=8, depth=1, downsample=True, spatial_dims=3, d_state=2)
    assert down(torch.randn(1, 4, 4, 2, 8)).shape == (1, 2, 2, 1, 16)
    up = VSSUpStage(dim=8, depth=1, upsample=True, spatial_dims=3, d_state=2)
    assert up(torch.randn(1, 2, 2, 1, 16)).shape == (1, 4, 4, 2, 8)


def test_pixel_shuffle_last_3d_against_loops():
    s = (2, 3, 1)
    c = 2
    x = torch.randn(1, 2, 2, 3, 6 * c)
    out = pixel_shuffle_last(x, s)
    assert out.shape == (1, 4, 6, 3, c)
    for h, w, d in itertools.product(range(4), range(6), range(3)):
        (h0, p0), (w0, p1), (d0, p2) = divmod(h, 2), divmod(w, 3), divmod(d, 1)
        k = (p0 * 3 + p1) * 1 + p2  # channel read as (s_0, s_1, s_2, c), c fastest
        torch.testing.assert_close(out[0, h, w, d], x[0, h0, w0, d0, k * c : (k + 1) * c])


def test_patch_merging_3d_concatenation_order():
    merge = PatchMerging3D(dim=1)
    assert merge.norm.normalized_shape == (8,) and merge.reduction.weight.shape == (2, 8)
    merge.norm = torch.nn.Identity()
    merge.reduction = torch.nn.Identity()  # expose the concatenated 8C vector
    x = torch.arange(1.0, 9.0).view(1, 2, 2, 2, 1)  # value 1 + 4h + 2w + d
    # first axis's offset fastest: (h, w, d) = 000, 100, 010, 110, 001, 101, 011, 111
    order = [1 + 4 * h + 2 * w + d for d in (0, 1) for w in (0, 1) for h in (0, 1)]
    assert merge(x)[0, 0, 0, 0].tolist() == order


def test_patch_expand_3d_shapes_and_norm():
    up = PatchExpand3D(dim=8)
    assert up.expand.weight.shape == (64, 16) and up.norm.normalized_shape == (8,)
    assert up(torch.randn(2, 3, 5, 1, 16)).shape == (2, 6, 10, 2, 8)
    final = FinalPatchExpand3D(dim=16, dim_scale=(4, 4, 2))
    assert final.expand.weight.shape == (4 * 4 * 2 * 4, 16) and final.norm.normalized_shape == (4,)
    assert final(torch.randn(1, 2, 3, 1, 16)).shape == (1, 8, 12, 2, 4)


def test_patch_embed_3d_is_a_strided_conv_then_layernorm():
    embed = PatchEmbed3D(patch_size=(4, 4, 2), in_channels=2, embed_dim=8)
    assert embed.proj.kernel_size == (4, 4, 2) and embed.proj.stride == (4, 4, 2)
    x = torch.randn(1, 2, 8, 12, 6)
    ref = F.conv3d(x, embed.proj.weight, embed.proj.bias, stride=(4, 4, 2)).permute(0, 2, 3, 4, 1)
    ref = F.layer_norm(ref, (8,), embed.norm.weight, embed.norm.bias, eps=1e-5)
    torch.testing.assert_close(embed(x), ref)
