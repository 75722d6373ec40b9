"""Weight mapping: own checkpoints, public VM-UNet checkpoints, VMamba ImageNet checkpoints.

State dicts are built from the public key names and shapes with random (distinct) tensors, so
each test can prove which source tensor every parameter of ours received.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from vmunet_public_reference import public_key_shapes, random_state_dict

import vmunet
from vmunet.errors import InputFileError
from vmunet.models import (
    CheckpointMismatchError,
    build_model_from_checkpoint,
    checkpoint_filter_fn,
    load_checkpoint,
    save_checkpoint,
)

TINY = {"depths": (1, 1, 1, 1), "depths_decoder": (1, 1, 1, 1), "d_state": 4}


def _tiny(**kw):
    return vmunet.create_model("vmunet_tiny", **kw)


def _vmamba_state_dict(depths=(2, 2, 5, 2), dims=16, d_state=4, seed=3):
    """A VMamba (v0) classification state dict: encoder keys, no decoder, plus norm / head."""
    shapes = public_key_shapes(
        in_chans=3,
        num_classes=1,
        depths=depths,
        depths_decoder=(0, 0, 0, 0),
        dims=dims,
        d_state=d_state,
        prefix="",
    )
    shapes = {k: v for k, v in shapes.items() if k.startswith(("patch_embed.", "layers."))}
    shapes.update(
        {
            "norm.weight": (dims * 8,),
            "norm.bias": (dims * 8,),
            "head.weight": (1000, dims * 8),
            "head.bias": (1000,),
        }
    )
    return {"model": random_state_dict(shapes, seed=seed)}


def test_public_checkpoint_each_parameter_gets_its_tensor():
    sd = random_state_dict(public_key_shapes(in_chans=3, num_classes=1, dims=16, **TINY), seed=7)
    model = _tiny()
    report = load_checkpoint(model, sd, strict=True)
    assert report.complete and report.kind == "VM-UNet (public)"
    ours = model.state_dict()
    assert len(ours) == len(sd)
    for key, value in sd.items():
        assert torch.equal(ours[key.removeprefix("vmunet.")], value), key


def test_public_training_checkpoint_file(tmp_path):
    # latest.pth of the public train.py: {"model_state_dict": ..., "epoch": ...}
    sd = random_state_dict(public_key_shapes(in_chans=3, num_classes=1, dims=16, **TINY), seed=8)
    path = tmp_path / "latest.pth"
    torch.save({"epoch": 3, "min_loss": 0.5, "model_state_dict": sd}, path)
    model = vmunet.create_model("vmunet_tiny", checkpoint=path, strict=True)
    assert torch.equal(model.final_conv.weight, sd["vmunet.final_conv.weight"])


def test_in_channels_1_sums_the_patch_embedding():
    sd = random_state_dict(public_key_shapes(in_chans=3, num_classes=1, dims=16, **TINY), seed=9)
    model = _tiny(in_channels=1)
    report = load_checkpoint(model, sd)
    w = sd["vmunet.patch_embed.proj.weight"]
    torch.testing.assert_close(model.patch_embed.proj.weight, w[:, 0:1] + w[:, 1:2] + w[:, 2:3])
    assert "patch_embed.proj.weight" in report.adapted and report.complete
    # and the result is what the public wrapper computes: conv of the image repeated 3 times
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(
        model.patch_embed.proj(x),
        torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), w, model.patch_embed.proj.bias, stride=4),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("in_channels", [2, 4])
def test_other_channel_mismatch_is_skipped_with_reason_or_strict_error(in_channels):
    sd = random_state_dict(public_key_shapes(in_chans=3, num_classes=1, dims=16, **TINY), seed=10)
    model = _tiny(in_channels=in_channels)
    before = model.patch_embed.proj.weight.clone()
    report = load_checkpoint(model, sd)
    assert (
        "shape (16, 3, 4, 4) in the checkpoint, the model has " in report.skipped["patch_embed.proj.weight"]
    )
    assert report.missing == ["patch_embed.proj.weight"]
    assert torch.equal(model.patch_embed.proj.weight, before)
    with pytest.raises(CheckpointMismatchError, match=r"patch_embed\.proj\.weight"):
        load_checkpoint(_tiny(in_channels=in_channels), sd, strict=True)


def test_class_count_mismatch_reported():
    sd = random_state_dict(public_key_shapes(in_chans=3, num_classes=9, dims=16, **TINY), seed=11)
    report = load_checkpoint(_tiny(out_channels=1), sd)
    assert set(report.skipped) == {"final_conv.weight", "final_conv.bias"}
    assert "(9, 4, 1, 1)" in report.skipped["final_conv.weight"]
    assert set(report.missing) == {"final_conv.weight", "final_conv.bias"}
    with pytest.raises(CheckpointMismatchError, match=r"final_conv\.weight.*\(9, 4, 1, 1\)"):
        load_checkpoint(_tiny(out_channels=1), sd, strict=True)


def test_vmamba_checkpoint_encoder_and_mirrored_decoder():
    ckpt = _vmamba_state_dict()
    src = ckpt["model"]
    model = _tiny()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_checkpoint(model, ckpt)
    assert report.kind == "VMamba (ImageNet)"
    ours = model.state_dict()
    for key in ours:
        if key.startswith(("patch_embed.", "layers.")):
            assert torch.equal(ours[key], src[key]), key  # encoder, as is
        elif key.startswith("layers_up.") and ".blocks." in key:
            stage, rest = key.split(".", 2)[1:]
            assert torch.equal(ours[key], src[f"layers.{3 - int(stage)}.{rest}"]), key  # mirrored
        else:  # patch expands, final expand and conv: not in an ImageNet checkpoint
            assert torch.equal(ours[key], init[key]), key
            assert key in report.missing
    # the classifier and the blocks our shallower stages lack are reported with the reason
    assert "classifier head" in report.skipped["head.weight"]
    assert "classifier head" in report.skipped["norm.bias"]
    assert "encoder stage 2 has no block 4" in report.skipped["layers.2.blocks.4.ln_1.weight"]
    assert "decoder stage 1 has no block 4" in report.skipped["layers_up.1.blocks.4.ln_1.weight"]
    # the encoder's patch merging is not copied into the decoder (no such layer there)
    assert not any(k.startswith("layers_up.") and "downsample" in k for k in report.loaded)
    with pytest.raises(
        CheckpointMismatchError, match=r"head\.weight.*model tensor\(s\) missing: layers_up\.1\.upsample"
    ):
        load_checkpoint(_tiny(), ckpt, strict=True)


def test_vmamba_into_paper_depths_loads_the_blocks_that_exist():
    # paper config (2,2,2,2)/(2,2,2,1) from a deeper encoder: decoder stage 3 has 1 block only
    ckpt = _vmamba_state_dict(depths=(2, 2, 5, 2), dims=16)
    model = vmunet.create_model("vmunet_small", dims=16, d_state=4)
    report = load_checkpoint(model, ckpt)
    assert "layers_up.3.blocks.0.ln_1.weight" in report.loaded
    assert "layers_up.3.blocks.1.ln_1.weight" in report.skipped
    assert torch.equal(
        model.layers_up[0].blocks[1].ln_1.weight, ckpt["model"]["layers.3.blocks.1.ln_1.weight"]
    )


def test_filter_returns_native_dict_unchanged():
    model = _tiny()
    sd = model.state_dict()
    out = checkpoint_filter_fn({"model": sd}, model)
    assert set(out) == set(sd) and all(out[k] is sd[k] for k in sd)
    wrapped = {f"module._orig_mod.{k}": v for k, v in sd.items()}  # DDP around a compiled model
    assert set(checkpoint_filter_fn(wrapped, model)) == set(sd)


def test_unknown_keys_are_skipped_not_matched():
    model = _tiny()
    sd = dict(model.state_dict())
    sd["decoder.extra.weight"] = torch.zeros(3)
    report = load_checkpoint(model, sd)
    assert report.skipped == {"decoder.extra.weight": "no parameter of this name in the model"}
    with pytest.raises(CheckpointMismatchError, match="decoder.extra.weight"):
        load_checkpoint(model, sd, strict=True)


def test_newer_vmamba_layout_is_named_not_mistaken_for_depth():
    # VMamba v2+ names its block parts norm / op / mlp: block 0 exists in our model, the name does not
    sd = {
        "layers.0.blocks.0.op.in_proj.weight": torch.zeros(64, 16),
        "layers.0.blocks.0.norm.weight": torch.ones(16),
    }
    report = load_checkpoint(_tiny(), {"model": sd})
    assert all("VMamba v2+ block layout" in why for why in report.skipped.values())
    assert len(report.skipped) == 4 and not report.loaded  # each also as its mirrored decoder copy


def test_own_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = _tiny(in_channels=1, out_channels=3).eval()
    path = save_checkpoint(
        tmp_path / "run" / "best.pt",
        model,
        "vmunet_tiny",
        epoch=4,
        inference={"input_size": [64, 64], "class_names": ["bg", "a", "b"]},
    )
    assert path.is_file() and not any(p.name.startswith(".") for p in path.parent.iterdir())
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "vmunet" and raw["arch"]["name"] == "vmunet_tiny" and raw["epoch"] == 4
    assert raw["arch"]["kwargs"]["in_channels"] == 1 and "scan_backend" not in raw["arch"]["kwargs"]
    assert raw["inference"]["activation"] == "softmax" and raw["inference"]["input_size"] == [64, 64]
    rebuilt, ckpt = build_model_from_checkpoint(path)
    assert not rebuilt.training and ckpt["epoch"] == 4
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    # create_model with our own checkpoint, strictly
    again = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=3, checkpoint=path, strict=True)
    assert torch.equal(again.final_conv.weight, model.final_conv.weight)


def test_build_from_public_checkpoint_says_what_to_do():
    sd = random_state_dict(public_key_shapes(in_chans=3, num_classes=1, dims=16, **TINY))
    with pytest.raises(InputFileError, match=r"not a vmunet checkpoint.*VM-UNet \(public\).*create_model"):
        build_model_from_checkpoint(sd)


def test_build_rejects_unknown_arch():
    with pytest.raises(InputFileError, match="'unet9' is not registered"):
        build_model_from_checkpoint(
            {"format": "vmunet", "arch": {"name": "unet9", "kwargs": {}}, "model": {}}
        )


def test_unreadable_files(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_checkpoint(_tiny(), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(_tiny(), bad)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": _tiny().state_dict(), "config": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(InputFileError, match="weights_only=True"):
        load_checkpoint(_tiny(), pickled)


def test_save_rejects_reserved_extra(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", _tiny(), "vmunet_tiny", format="mine")
