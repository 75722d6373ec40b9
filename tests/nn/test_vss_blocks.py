"""SS2D, the VSS block, patch layers, DropPath: against hand-computed cases and a float64 reference."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vmunet import ops
from vmunet.nn import (
    SS2D,
    DropPath,
    FinalPatchExpand2D,
    PatchEmbed2D,
    PatchExpand2D,
    PatchMerging2D,
    VSSBlock,
    pixel_shuffle_last,
)

# the independent float64 functional forward of the public code lives beside the model tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from vmunet_public_reference import _ss2d  # noqa: E402


@pytest.mark.parametrize("h, w", [(5, 7), (4, 4)])
def test_ss2d_matches_float64_reference(h, w):
    """Four directions, x_proj / dt_proj per direction, scan, merge: vs explicit float64 loops."""
    ss2d = SS2D(d_model=8, d_state=3).eval()
    with torch.no_grad():  # move parameters off their init so every term matters
        for p in ss2d.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, h, w, 8)
    with torch.no_grad():
        ours = ss2d(x)
    sd = {f"s.{k}": v.double() for k, v in ss2d.state_dict().items()}
    ref = _ss2d(x.double(), sd, "s", 3)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-5)


def test_ss2d_initialisation_is_mambas():
    d_model, n = 32, 16
    ss2d = SS2D(d_model=d_model, d_state=n, dt_min=0.001, dt_max=0.1)
    d_inner, r = 2 * d_model, math.ceil(d_model / 16)
    assert (ss2d.d_inner, ss2d.dt_rank) == (d_inner, r)
    assert ss2d.x_proj_weight.shape == (4, r + 2 * n, d_inner)
    assert ss2d.dt_projs_weight.shape == (4, d_inner, r)
    assert ss2d.A_logs.shape == (4 * d_inner, n) and ss2d.Ds.shape == (4 * d_inner,)
    # A = -[1..N] in every row, D = 1
    torch.testing.assert_close(-torch.exp(ss2d.A_logs), -torch.arange(1, n + 1.0).expand(4 * d_inner, n))
    assert torch.equal(ss2d.Ds, torch.ones(4 * d_inner))
    # softplus(dt bias) is the initial dt: log-uniform within [dt_min, dt_max]
    dt = F.softplus(ss2d.dt_projs_bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert 0.004 < torch.exp(torch.log(dt).mean()) < 0.025  # geometric mean ~ 0.01
    bound = r**-0.5
    assert ss2d.dt_projs_weight.abs().max() <= bound and ss2d.dt_projs_weight.abs().max() > 0.5 * bound
    assert ss2d.x_proj_weight.abs().max() <= d_inner**-0.5
    assert ss2d.A_logs._no_weight_decay and ss2d.Ds._no_weight_decay
    assert ss2d.out_norm.eps == 1e-5


def test_ss2d_passes_its_backend_to_selective_scan(monkeypatch):
    seen = []
    real = ops.selective_scan

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "selective_scan", spy)
    SS2D(d_model=8, d_state=2, scan_backend="reference")(torch.randn(1, 4, 4, 8))
    assert seen[0]["backend"] == "reference" and seen[0]["delta_softplus"] is True
    assert seen[0]["delta_bias"].dtype == torch.float32


def test_vss_block_is_a_residual_around_ss2d():
    block = VSSBlock(d_model=8, d_state=2)
    assert block.ln_1.eps == 1e-5  # what the public VSSM passes down (not the block's 1e-6 default)
    x = torch.randn(1, 4, 4, 8)
    with torch.no_grad():
        block.self_attention.out_proj.weight.zero_()
        assert torch.equal(block(x), x)


def test_pixel_shuffle_last_hand_case():
    x = torch.arange(8.0).view(1, 1, 1, 8)  # channels read as (row, col, c) with c fastest
    out = pixel_shuffle_last(x, 2)
    assert out.shape == (1, 2, 2, 2)
    assert out[0, :, :, 0].tolist() == [[0.0, 2.0], [4.0, 6.0]]
    assert out[0, :, :, 1].tolist() == [[1.0, 3.0], [5.0, 7.0]]


def test_patch_merging_concatenation_order():
    merge = PatchMerging2D(dim=1)
    merge.norm = torch.nn.Identity()
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0], [0.0, 0.0, 0.0, 0.0]]))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 2, 1)  # a=1 b=2 / c=3 d=4
    # order (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col) = a, c, b, d
    assert merge(x)[0, 0, 0, 0].item() == 1 + 10 * 3 + 100 * 2 + 1000 * 4


def test_patch_expand_shapes_and_norm():
    up = PatchExpand2D(dim=8)
    assert up.expand.weight.shape == (32, 16) and up.norm.normalized_shape == (8,)
    assert up(torch.randn(2, 3, 5, 16)).shape == (2, 6, 10, 8)
    final = FinalPatchExpand2D(dim=16)
    assert final.expand.weight.shape == (64, 16) and final.norm.normalized_shape == (4,)
    assert final(torch.randn(1, 2, 3, 16)).shape == (1, 8, 12, 4)


def test_patch_embed_is_a_strided_conv_then_layernorm():
    embed = PatchEmbed2D(patch_size=4, in_channels=2, embed_dim=8)
    x = torch.randn(1, 2, 8, 12)
    ref = F.conv2d(x, embed.proj.weight, embed.proj.bias, stride=4).permute(0, 2, 3, 1)
    ref = F.layer_norm(ref, (8,), embed.norm.weight, embed.norm.bias, eps=1e-5)
    torch.testing.assert_close(embed(x), ref)


def test_drop_path_semantics():
    x = torch.ones(4000, 3, 2)
    dp = DropPath(0.25)
    assert torch.equal(dp.eval()(x), x)
    out = dp.train()(x)
    per_sample = out[:, 0, 0]
    assert set(per_sample.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    assert (out == out[:, :1, :1]).all()  # the whole sample is kept or dropped
    assert abs((per_sample == 0).float().mean().item() - 0.25) < 0.03
    assert abs(out.mean().item() - 1.0) < 0.05  # unbiased
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)
