"""The native 3-D VM-UNet: forward/backward, every parameter's gradient, shapes and sizes,
argument checks, the registered variants, scan backends; 2-D defaults left as they were."""

from __future__ import annotations

import pytest
import torch

import vmunet
from vmunet.models import VMUNet

TINY3D = {
    "spatial_dims": 3,
    "depths": (1, 1, 1, 1),
    "depths_decoder": (1, 1, 1, 1),
    "dims": 16,
    "d_state": 2,
}


def _tiny(**kw):
    return vmunet.create_model("vmunet3d_tiny", **kw)


@pytest.mark.parametrize("shape", [(1, 1, 32, 32, 16), (2, 1, 32, 64, 32)])
def test_forward_backward_shapes(shape):
    model = _tiny(out_channels=3).train()
    x = torch.randn(*shape)
    out = model(x)
    assert out.shape == (shape[0], 3, *shape[2:]) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().mean().backward()


def test_every_parameter_gets_a_gradient_and_no_nan():
    # timm's test_model_backward: drop_path 0 (a dropped branch legitimately gets no gradient); at
    # 64 x 64 x 32 the deepest grid is 2 x 2 x 4, so every tap of the 3x3x3 depthwise conv and
    # the state matrix A (scans longer than one step) matter
    model = _tiny(in_channels=2, out_channels=2, drop_path_rate=0.0).train()
    out = model(torch.randn(1, 2, 64, 64, 32))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_the_3d_layers_are_3d():
    model = _tiny(in_channels=1, out_channels=4)
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sd["patch_embed.proj.weight"] == (16, 1, 4, 4, 2)
    assert sd["layers.0.blocks.0.self_attention.conv3d.weight"] == (32, 1, 3, 3, 3)
    assert sd["layers.0.blocks.0.self_attention.x_proj_weight"][0] == 6
    assert sd["layers.0.downsample.reduction.weight"] == (32, 128)  # 8C -> 2C
    assert sd["layers_up.1.upsample.expand.weight"] == (8 * 64, 128)  # 2C -> 8C at C = 64
    assert sd["final_up.expand.weight"] == (4 * 4 * 2 * 4, 16)  # C -> prod(patch) * C/4
    assert sd["final_conv.weight"] == (4, 4, 1, 1, 1)
    assert not any("conv2d" in k for k in sd)
    assert model.patch_size == (4, 4, 2) and model.scan_directions == 6
    assert model.size_divisors == (32, 32, 16) and model.size_divisor == 32


def test_two_scan_directions_and_isotropic_patch():
    model = VMUNet(**TINY3D, in_channels=1, out_channels=2, scan_directions=2, patch_size=2)
    assert model.layers[0].blocks[0].self_attention.x_proj_weight.shape[0] == 2
    assert model.size_divisors == (16, 16, 16)
    assert model.config["patch_size"] == 2 and model.config["scan_directions"] == 2
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 32, 16)).shape == (1, 2, 16, 32, 16)


def test_scan_backends_agree_in_the_3d_model():
    model = _tiny().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    outs = {}
    with torch.no_grad():
        for backend in vmunet.ops.available_backends():
            if backend != "cuda":
                outs[backend] = model.set_scan_backend(backend)(x)
    assert "reference" in outs and len(outs) >= 2
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], rtol=1e-4, atol=1e-4, msg=backend)


def test_bad_input_rank_names_the_expected_layout():
    model = _tiny().eval()
    with pytest.raises(ValueError, match=r"spatial_dims=3\) expects a 5-D input .*height, width, depth.*2-D"):
        model(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize(
    "axis, name, size, fits",
    [(2, "height", 40, "32 or 64"), (3, "width", 20, "32"), (4, "depth", 24, "16 or 32")],
)
def test_bad_input_size_names_the_dimension_and_sizes_that_fit(axis, name, size, fits):
    model = _tiny().eval()
    shape = [1, 1, 32, 32, 16]
    shape[axis] = size
    with pytest.raises(ValueError, match=rf"{name} \(dim {axis}\) is {size}.*nearest sizes that fit: {fits}"):
        model(torch.randn(*shape))


def test_bad_input_channels():
    with pytest.raises(ValueError, match=r"2 channel\(s\).*in_channels=1"):
        _tiny(in_channels=1)(torch.randn(1, 2, 32, 32, 16))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 1}, r"spatial_dims must be 2 \(images\) or 3 \(volumes\), got 1"),
        ({"patch_size": (4, 4)}, r"patch_size must be None, an integer >= 1 or 3 integers"),
        ({"patch_size": 0}, r"patch_size must be None"),
        ({"scan_directions": 4}, r"scan_directions must be None or one of \(6, 2\) for spatial_dims=3"),
        ({"dims": 6}, r"dims must be a positive multiple of 4 \(the largest patch side\)"),
        ({"d_conv": 2}, r"d_conv must be odd"),
    ],
)
def test_bad_3d_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VMUNet(**{**TINY3D, **kwargs})


def test_bad_2d_arguments_for_the_new_options():
    with pytest.raises(ValueError, match=r"scan_directions must be None or one of \(4,\) for spatial_dims=2"):
        VMUNet(dims=16, scan_directions=6)
    with pytest.raises(ValueError, match=r"patch_size must be None, an integer >= 1 or 2 integers"):
        VMUNet(dims=16, patch_size=(4, 4, 2))


def test_2d_defaults_unchanged():
    with torch.device("meta"):
        model = VMUNet()
    assert model.patch_size == (4, 4) and model.scan_directions == 4
    assert model.size_divisor == 32 and model.size_divisors == (32, 32)
    assert tuple(model.patch_embed.proj.weight.shape) == (96, 3, 4, 4)


def test_registered_3d_variants():
    assert {"vmunet3d_small", "vmunet3d_tiny"} <= set(vmunet.list_models("vmunet3d_*"))
    assert vmunet.list_models("vmunet_*") == ["vmunet_base", "vmunet_small", "vmunet_tiny"]
    with torch.device("meta"):
        small = vmunet.create_model("vmunet3d_small")
    assert small.spatial_dims == 3 and (small.in_channels, small.out_channels) == (1, 9)
    # the size its docstring and the README state
    assert sum(p.numel() for p in small.parameters()) == 9_307_293
    assert small.pretrained_cfg["num_params"] == 9_307_293
    tiny = _tiny()
    assert tiny.spatial_dims == 3 and tiny.pretrained_cfg["input_size"] == (1, 32, 32, 32)
