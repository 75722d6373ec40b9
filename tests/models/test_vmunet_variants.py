"""VMUNet's optional arguments patch_size and full_res_skip: defaults keep the public architecture."""

from __future__ import annotations

import pytest
import torch

import vmunet
from vmunet.models import build_model_from_checkpoint, save_checkpoint


def test_defaults_are_the_public_architecture():
    small = vmunet.create_model("vmunet_small")
    assert small.config["patch_size"] == 4 and small.config["full_res_skip"] == 0
    assert not any(k.startswith(("skip_stem", "skip_fuse")) for k in small.state_dict())
    assert small.patch_embed.proj.stride == (4, 4) and small.final_conv.in_channels == 96 // 4
    assert sum(p.numel() for p in small.parameters()) == 27_427_561  # the public count (default_cfgs)


@pytest.mark.parametrize("patch_size, divisor", [(2, 16), (4, 32)])
def test_patch_size_sets_stride_expansion_and_divisor(patch_size, divisor):
    m = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=3, patch_size=patch_size).eval()
    assert m.size_divisor == divisor and m.patch_embed.proj.stride == (patch_size, patch_size)
    assert tuple(m.final_up.dim_scale) == (patch_size, patch_size)
    assert m.final_conv.in_channels == 16 // patch_size
    with torch.no_grad():
        assert m(torch.randn(1, 1, 64, 32)).shape == (1, 3, 64, 32)
    if divisor == 16:  # 48 = 3 x 16: fits patch 2, not patch 4
        with torch.no_grad():
            assert m(torch.randn(1, 1, 32, 48)).shape == (1, 3, 32, 48)
    else:
        with pytest.raises(ValueError, match="not a multiple of 32"):
            m(torch.randn(1, 1, 32, 48))


def test_full_res_skip_reaches_the_head_and_trains():
    m = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=3, full_res_skip=8, drop_path_rate=0.0)
    assert m.final_conv.in_channels == 8 and m.skip_stem[0].in_channels == 1
    x = torch.randn(2, 1, 64, 64, requires_grad=True)
    out = m(x)
    assert out.shape == (2, 3, 64, 64)
    out[0, :, 10, 10].sum().backward()
    # full resolution: the logit at (10, 10) depends on its own pixel's 5x5 neighbourhood through two
    # 3x3 convs (and a 3x3 fuse), beyond what the patch embedding sees
    assert x.grad[0, 0, 10, 10] != 0 and x.grad[0, 0, 8, 12] != 0
    m.zero_grad()
    m(torch.randn(2, 1, 64, 64)).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_variant_checkpoint_round_trip(tmp_path):
    m = vmunet.create_model(
        "vmunet_tiny", in_channels=1, out_channels=3, full_res_skip=8, patch_size=2
    ).eval()
    path = save_checkpoint(tmp_path / "v.pt", m, "vmunet_tiny")
    rebuilt, ckpt = build_model_from_checkpoint(path)
    assert ckpt["arch"]["kwargs"]["full_res_skip"] == 8 and ckpt["arch"]["kwargs"]["patch_size"] == 2
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": 0}, "patch_size must be None, an integer >= 1"),
        ({"full_res_skip": -1}, "full_res_skip must be an integer >= 0"),
        ({"patch_size": 3}, r"dims must be a positive multiple of 3 \(the largest patch side\), got 16"),
    ],
)
def test_bad_variant_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vmunet.create_model("vmunet_tiny", **kwargs)


def test_full_res_skip_builds_conv3d_layers_in_3d():
    m = vmunet.create_model("vmunet3d_tiny", full_res_skip=4).eval()
    assert isinstance(m.skip_stem[0], torch.nn.Conv3d) and m.final_conv.in_channels == 4
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (1, 2, 32, 32, 16) and torch.isfinite(y).all()
