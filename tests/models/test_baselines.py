"""MONAI baselines in the registry: names, MONAI's own outputs, checks, checkpoints, end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import vmunet
from vmunet.errors import ConfigError, InputFileError
from vmunet.models import (
    MonaiBaseline,
    build_model_from_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

NAMES = [
    "monai_basicunet_2d",
    "monai_basicunet_3d",
    "monai_segresnet_2d",
    "monai_segresnet_3d",
    "monai_swinunetr_2d",
    "monai_swinunetr_3d",
]
# Small constructor arguments (MONAI's own names) and the smallest input each one takes.
SMALL = {
    "basicunet": ({"features": (4, 4, 8, 8, 16, 4)}, 32),
    "segresnet": ({"init_filters": 4, "num_groups": 2, "norm": ("GROUP", {"num_groups": 2})}, 16),
    # SwinUNETR: sizes multiples of 32; at 32 its bottleneck is 1 voxel (InstanceNorm refuses that)
    "swinunetr": ({"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}, 64),
}
DIVISOR = {"basicunet": 16, "segresnet": 8, "swinunetr": 32}
MONAI_CLASS = {"basicunet": "BasicUNet", "segresnet": "SegResNet", "swinunetr": "SwinUNETR"}


def _family(name: str) -> str:
    return name.split("_")[1]


def _small(name: str, **kw) -> MonaiBaseline:
    args, _ = SMALL[_family(name)]
    return vmunet.create_model(name, **{**args, **kw})


def _input(name: str, batch: int = 1, channels: int = 1) -> torch.Tensor:
    dims = int(name[-2])
    size = SMALL[_family(name)][1]
    if dims == 3 and _family(name) != "swinunetr":
        return torch.randn(batch, channels, size, size, size // 2 if size >= 32 else size)
    return torch.randn(batch, channels, *([size] * dims))


def test_registered_names_follow_one_convention():
    assert vmunet.list_models("monai_*") == NAMES
    for name in NAMES:
        family, dims = name.split("_")[1], name.split("_")[2]
        assert family in MONAI_CLASS and dims in ("2d", "3d")


def test_importing_vmunet_models_does_not_import_monai():
    code = (
        "import sys, vmunet, vmunet.models; names = vmunet.list_models('monai_*');"
        "assert len(names) == 6, names; print('monai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_is_a_leaf():
    # DESIGN.md: the registry knows names and builders; loading lives in checkpoint.py.
    import ast
    from pathlib import Path

    src = Path(vmunet.models.registry.__file__).read_text()
    imported = {
        (node.module or "") for node in ast.walk(ast.parse(src)) if isinstance(node, ast.ImportFrom)
    } | {a.name for node in ast.walk(ast.parse(src)) if isinstance(node, ast.Import) for a in node.names}
    assert not any("checkpoint" in m or "vmunet" in m or m.startswith(".") for m in imported), imported


@pytest.mark.parametrize("name", NAMES)
def test_attributes_the_trainer_and_inference_read(name):
    model = _small(name, in_channels=1, out_channels=3)
    dims = int(name[-2])
    assert model.spatial_dims == dims
    assert model.in_channels == 1 and model.out_channels == 3
    assert model.size_divisor == DIVISOR[_family(name)]
    assert model.size_divisors == (DIVISOR[_family(name)],) * dims
    assert model.config["in_channels"] == 1 and model.config["out_channels"] == 3


@pytest.mark.parametrize("name", NAMES)
def test_same_logits_as_monai_network(name):
    # The independent reference: MONAI's class built directly with the same arguments and weights.
    from monai.networks import nets

    model = _small(name, in_channels=1, out_channels=3).eval()
    args, _ = SMALL[_family(name)]
    ref = getattr(nets, MONAI_CLASS[_family(name)])(
        spatial_dims=int(name[-2]), in_channels=1, out_channels=3, **args
    ).eval()
    ref.load_state_dict({k[len("net.") :]: v for k, v in model.state_dict().items()})
    x = _input(name)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 3, *x.shape[2:])
        torch.testing.assert_close(out, ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["monai_basicunet_2d", "monai_segresnet_2d", "monai_swinunetr_2d"])
def test_trains_every_parameter_gets_a_gradient(name):
    model = _small(name, in_channels=1, out_channels=2).train()
    model(_input(name, batch=2)).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["monai_basicunet_2d", "monai_swinunetr_3d"])
def test_bad_input_size_names_the_dimension(name):
    model = _small(name, in_channels=1, out_channels=2)
    x = _input(name)
    bad = list(x.shape)
    bad[-1] += 2
    msg = rf"width \(dim {len(bad) - 1}\) is {bad[-1]}, which is not a multiple"
    with pytest.raises(ValueError, match=msg):
        model(torch.zeros(bad))
    with pytest.raises(ValueError, match="channel"):
        model(torch.zeros(x.shape[0], 2, *x.shape[2:]))
    with pytest.raises(ValueError, match=f"expects a {x.dim()}-D input"):
        model(torch.zeros(x.shape[1:]))


def test_bad_arguments_fail_in_the_builder():
    with pytest.raises(ValueError, match="spatial_dims is fixed by the name 'monai_basicunet_2d'"):
        vmunet.create_model("monai_basicunet_2d", spatial_dims=3)
    with pytest.raises(ValueError, match="scan_backend applies to VM-UNet only"):
        vmunet.create_model("monai_segresnet_2d", scan_backend="torch")
    with pytest.raises(ValueError, match=r"monai_basicunet_2d: \['no_such_argument'\] not accepted by"):
        vmunet.create_model("monai_basicunet_2d", no_such_argument=1)
    with pytest.raises(ValueError, match=r"VM-UNet arguments.*set model.overrides=\{\}"):
        vmunet.create_model("monai_basicunet_2d", depths=(2, 2, 2, 2), depths_decoder=(2, 2, 2, 1))
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1"):
        vmunet.create_model("monai_basicunet_2d", in_channels=0)


@pytest.mark.parametrize("name", ["monai_basicunet_2d", "monai_segresnet_3d", "monai_swinunetr_2d"])
def test_checkpoint_in_vmunet_format_rebuilds_the_same_model(name, tmp_path):
    model = _small(name, in_channels=1, out_channels=3).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, name, inference={"input_size": [64, 64]})
    ckpt = read_checkpoint(path)  # weights_only=True: the arch kwargs are plain types
    assert ckpt["format"] == "vmunet" and ckpt["arch"]["name"] == name
    assert ckpt["inference"]["spatial_dims"] == int(name[-2])
    rebuilt, _ = build_model_from_checkpoint(path)
    assert isinstance(rebuilt, MonaiBaseline) and not rebuilt.training
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_bare_monai_state_dict_loads_and_mismatches_are_reported():
    src = _small("monai_basicunet_2d", in_channels=1, out_channels=2)
    dst = _small("monai_basicunet_2d", in_channels=1, out_channels=2)
    bare = {k[len("net.") :]: v for k, v in src.state_dict().items()}
    report = load_checkpoint(dst, bare, strict=True)
    assert report.complete
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    other = _small("monai_basicunet_2d", in_channels=1, out_channels=5)
    report = load_checkpoint(other, bare)
    assert set(report.skipped) == {"net.final_conv.weight", "net.final_conv.bias"}
    assert "shape" in report.skipped["net.final_conv.weight"]


def test_vmamba_or_vmunet_weights_are_refused_with_a_clear_error():
    vm = vmunet.create_model("vmunet_tiny").state_dict()
    public = {f"vmunet.{k}": v for k, v in vm.items()}
    with pytest.raises(InputFileError, match="baselines have no pretrained weights"):
        load_checkpoint(_small("monai_basicunet_2d"), public)


def test_config_pretrained_is_an_error_for_a_baseline(tmp_path):
    from vmunet.config import load_config
    from vmunet.train.builders import build_model

    weights = tmp_path / "vmamba.pth"
    torch.save({"model": {}}, weights)
    cfg = load_config(
        "demo", ["model.name=monai_basicunet_2d", "model.overrides={}", f"model.pretrained={weights}"]
    )
    with pytest.raises(ConfigError, match="key 'model.pretrained': monai_basicunet_2d is a MONAI baseline"):
        build_model(cfg)


@pytest.mark.parametrize("recipe", ["demo", "isic17", "isic18", "synapse"])
@pytest.mark.parametrize("name", ["monai_basicunet_2d", "monai_segresnet_2d", "monai_swinunetr_2d"])
def test_every_2d_recipe_builds_each_baseline(recipe, name):
    from vmunet.config import load_config
    from vmunet.train.builders import build_model

    # The recipes' model.overrides are VM-UNet arguments: a clear error, then cleared.
    with pytest.raises(ConfigError, match=r"set model.overrides=\{\}"):
        build_model(load_config(recipe, [f"model.name={name}"]))
    cfg = load_config(recipe, [f"model.name={name}", "model.overrides={}"])
    model, arch = build_model(cfg)
    assert arch["name"] == name and arch["kwargs"] == model.config
    assert (model.in_channels, model.out_channels) == (cfg.model.in_channels, cfg.model.out_channels)
    assert all(s % model.size_divisor == 0 for s in cfg.data.size)


@pytest.mark.parametrize(
    "name, extra",
    [
        ("monai_basicunet_2d", ["model.overrides.features=[4, 4, 8, 8, 16, 4]"]),
        ("monai_segresnet_2d", ["model.overrides.blocks_down=[1, 1, 1, 1]"]),
        ("monai_swinunetr_2d", ["model.overrides.feature_size=12", "data.size=[64, 64]"]),
    ],
)
def test_baseline_trains_tests_and_segments(name, extra, tmp_path):
    # The demo's whole chain (vmunet train / test / segment / evaluate) with --set model.name=...
    from vmunet.demo import run_demo

    s = run_demo(
        tmp_path / "demo",
        quick=True,
        device="cpu",
        overrides=[f"model.name={name}", "model.overrides={}", *extra],
        progress=False,
    )
    ckpt = read_checkpoint(s.checkpoint)
    assert ckpt["arch"]["name"] == name and ckpt["format"] == "vmunet"
    assert 0.0 <= s.test_mean_dice <= 1.0 and 0.0 <= s.segment_mean_dice <= 1.0
    assert s.n_test_scans > 0 and len(list(s.segmentation_dir.glob("*.nii.gz"))) == s.n_test_scans
