"""VM-UNet: the shared model tests, the reference's parameter counts, argument checks, the
equivalence with an independent float64 forward of the public code, stored-logit regression."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_test_base import ModelTestBase
from vmunet_public_reference import public_forward, public_key_shapes, random_state_dict

import vmunet
from vmunet.models import VMUNet, load_checkpoint

DATA = Path(__file__).resolve().parents[1] / "data_files"
TINY = {"depths": (1, 1, 1, 1), "depths_decoder": (1, 1, 1, 1), "d_state": 4}


class TestVMUNetTiny(ModelTestBase):
    model_name = "vmunet_tiny"


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, depths, depths_decoder, expected",
    [
        # counted from the public code (JCruan519/VM-UNet) at input_channels=3, num_classes=1
        ("vmunet_small", (2, 2, 2, 2), (2, 2, 2, 1), 27_427_561),
        ("vmunet_base", (2, 2, 9, 2), (2, 9, 2, 2), 44_273_833),
    ],
)
def test_parameter_count_matches_reference(name, depths, depths_decoder, expected):
    with torch.device("meta"):
        model = vmunet.create_model(name, in_channels=3, out_channels=1)
        direct = VMUNet(in_channels=3, out_channels=1, depths=depths, depths_decoder=depths_decoder)
    assert _count(model) == expected
    assert _count(direct) == expected


def test_parameter_count_equals_public_key_shapes():
    # Every public parameter exists in ours with its shape, and nothing else (small config).
    shapes = public_key_shapes(in_chans=3, num_classes=4, dims=16, prefix="", **TINY)
    model = vmunet.create_model("vmunet_tiny", out_channels=4)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == shapes


def test_paper_config_is_the_default():
    with torch.device("meta"):
        model = VMUNet()
    assert model.depths == (2, 2, 2, 2) and model.depths_decoder == (2, 2, 2, 1)
    assert model.dims == (96, 192, 384, 768)


def test_list_models_and_unknown_name():
    assert {"vmunet_small", "vmunet_base", "vmunet_tiny"} <= set(vmunet.list_models())
    with pytest.raises(
        ValueError, match=r"unknown model name 'vmunet_smal'.*did you mean 'vmunet_small'.*vmunet_base"
    ):
        vmunet.create_model("vmunet_smal")


def test_overrides_reach_the_constructor():
    model = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=5, d_state=2)
    assert model.in_channels == 1 and model.out_channels == 5
    assert model.layers[0].blocks[0].self_attention.d_state == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 4}, r"spatial_dims must be 2 \(images\) or 3 \(volumes\), got 4"),
        ({"in_channels": 0}, r"in_channels must be an integer >= 1"),
        ({"out_channels": 2.5}, r"out_channels must be an integer >= 1"),
        ({"depths": (1, 1, 1)}, r"depths_decoder must have as many stages as depths \(3\)"),
        ({"depths": (1, -1, 1, 1)}, r"depths must hold integers >= 0"),
        ({"dims": 18}, r"dims must be a positive multiple of 4"),
        ({"dims": (16, 32, 48, 128)}, r"dims must double"),
        ({"d_state": 0}, r"d_state must be an integer >= 1"),
        ({"drop_path_rate": 1.5}, r"drop_path_rate must be a number in \[0, 1\)"),
        ({"ssm_ratio": -1}, r"ssm_ratio must be a number > 0"),
        ({"dt_rank": "big"}, r"dt_rank must be an integer >= 1"),
        ({"scan_backend": "gpu"}, r"scan_backend must be None \(automatic\) or one of"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    args = {**TINY, "dims": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        VMUNet(**args)


def test_stochastic_depth_rises_over_encoder_and_mirrors_over_decoder():
    model = VMUNet(depths=(2, 2, 2, 2), depths_decoder=(2, 2, 2, 1), dims=16, d_state=2, drop_path_rate=0.2)
    enc = [b.drop_path for stage in model.layers for b in stage.blocks]
    dec = [b.drop_path for stage in model.layers_up for b in stage.blocks]
    enc_p = [getattr(m, "drop_prob", 0.0) for m in enc]
    dec_p = [getattr(m, "drop_prob", 0.0) for m in dec]
    assert enc_p == pytest.approx([0.2 * i / 7 for i in range(8)])
    assert dec_p == pytest.approx([0.2 * i / 6 for i in range(7)][::-1])


@pytest.mark.parametrize("in_channels", [3, 1])
def test_public_checkpoint_gives_public_logits(in_channels):
    """Our network, loaded with a public-format state dict, computes the public model's logits.

    The reference is an independent float64 functional forward (explicit scan loop, explicit
    direction handling and pixel placement). For ``in_channels=1`` the public wrapper repeats
    the image to 3 channels; our model sums the patch-embedding weights instead.
    """
    sd = random_state_dict(public_key_shapes(in_chans=3, num_classes=2, dims=16, **TINY), seed=1)
    model = vmunet.create_model("vmunet_tiny", in_channels=in_channels, out_channels=2).eval()
    report = load_checkpoint(model, sd, strict=True)
    assert report.kind == "VM-UNet (public)"
    x = torch.randn(2, in_channels, 32, 64)
    with torch.no_grad():
        ours = model(x)
    ref = public_forward(sd, x, TINY["depths"], TINY["depths_decoder"], TINY["d_state"])
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


def test_scan_backends_agree_in_the_model():
    model = vmunet.create_model("vmunet_tiny").eval()
    x = torch.randn(1, 3, 32, 32)
    outs = {}
    with torch.no_grad():
        for backend in vmunet.ops.available_backends():
            if backend == "cuda":
                continue
            outs[backend] = model.set_scan_backend(backend)(x)
    assert "reference" in outs and len(outs) >= 2
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], rtol=1e-4, atol=1e-4, msg=backend)


def test_stored_logits_regression():
    """Logits stored by scripts/make_model_regression.py (reference scan backend) still come out."""
    stored = torch.load(DATA / "model_vmunet_tiny_logits.pt", weights_only=True)
    torch.manual_seed(stored["seed"])
    model = vmunet.create_model("vmunet_tiny", **stored["kwargs"]).eval()
    with torch.no_grad():
        ref = model.set_scan_backend("reference")(stored["input"])
        fast = model.set_scan_backend(None)(stored["input"])
    torch.testing.assert_close(ref, stored["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, stored["logits"], rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_matches_plain():
    torch.manual_seed(5)
    plain = vmunet.create_model("vmunet_tiny", drop_path_rate=0.0)
    ckpt = vmunet.create_model("vmunet_tiny", drop_path_rate=0.0, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 32, 32)
    for m in (plain, ckpt):
        m(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.cuda
def test_gpu_matches_cpu_reference():
    # mamba-ssm's kernel where it is installed, else the pure-PyTorch scan on the GPU
    gpu_backend = (
        "cuda" if "cuda" in vmunet.ops.available_backends(torch.zeros(1, device="cuda")) else "torch"
    )
    model = vmunet.create_model("vmunet_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cpu = model.set_scan_backend("reference")(x)
        gpu = model.to("cuda").set_scan_backend(gpu_backend)(x.to("cuda"))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
