"""The full-resolution features of the 3-D VM-UNet must be able to tell more than two classes apart.

Regression for the demo3d run in which ``vmunet3d_tiny`` (then dims 8, patch (4, 4, 2)) never
predicted white matter: the final patch expansion left dims / 4 = 2 channels per voxel and its
LayerNorm maps any 2-vector to +-(1, -1) (zero mean, unit variance), one bit per voxel, so the 1x1x1
head saw a single scalar feature, saturated at +-1.
"""

from __future__ import annotations

import pytest
import torch

import vmunet
from vmunet.models import VMUNet


def _normalised_final_features(model: VMUNet, x: torch.Tensor) -> torch.Tensor:
    """The final expansion's LayerNorm output without its affine, one row per voxel (float64)."""
    seen = {}
    handle = model.final_up.register_forward_hook(lambda mod, inp, out: seen.__setitem__("f", out))
    with torch.no_grad():
        model(x)
    handle.remove()
    norm = model.final_up.norm
    f = (seen["f"] - norm.bias) / norm.weight
    return f.reshape(-1, f.shape[-1]).double()


def test_layernorm_over_two_channels_is_one_bit():
    # the hand-derived fact the check rests on: zero mean leaves (z, -z), unit variance |z| ~= 1
    # unless the two inputs differ by less than ~sqrt(eps)
    torch.manual_seed(0)
    z = torch.nn.functional.layer_norm(torch.randn(1000, 2, dtype=torch.float64), (2,))
    assert torch.allclose(z[:, 0], -z[:, 1])
    assert (z.abs() > 0.99).float().mean() > 0.95


def test_tiny_3d_full_resolution_features_span_more_than_a_line():
    torch.manual_seed(0)
    model = vmunet.create_model("vmunet3d_tiny", out_channels=3).eval()
    f = _normalised_final_features(model, torch.randn(1, 1, 32, 32, 16))
    assert f.shape[1] >= 3
    # LayerNorm rows have zero mean, so their rank is at most C - 1; with 2 channels it was 1
    assert torch.linalg.matrix_rank(f - f.mean(0)) >= 2
    # and they are not saturated to a few points
    assert torch.unique((f * 100).round(), dim=0).shape[0] > 100


def test_3d_widths_that_collapse_the_final_features_are_refused():
    with pytest.raises(ValueError, match="dims"):
        VMUNet(spatial_dims=3, in_channels=1, out_channels=3, dims=8, patch_size=(4, 4, 2))
    with pytest.raises(ValueError, match="dims"):
        VMUNet(spatial_dims=3, in_channels=1, out_channels=3, dims=4, patch_size=2)
    # dims 8 with a 2-voxel patch leaves 4 channels: allowed
    net = VMUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        dims=8,
        patch_size=2,
        depths=(1, 1, 1, 1),
        depths_decoder=(1, 1, 1, 1),
        d_state=2,
    )
    assert net.final_up.out_dim == 4
