"""3-D training on the demo3d slabs (vmunet3d_tiny, a few steps), its checkpoint, `vmunet test` in 3-D."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vmunet.cli.main import main
from vmunet.config import load_config
from vmunet.errors import ConfigError
from vmunet.train import load_training_checkpoint

FAST = [
    "data.size=[32, 32, 16]",
    "data.samples_per_volume=4",
    "data.batch_size=2",
    "optim.lr=3e-2",
    "train.epochs=3",
    "train.val_every=3",
    "train.device=cpu",
    "train.log_every_steps=100",
    "scheduler.name=none",
    "eval.overlap=0.25",
    "eval.sw_batch_size=4",
]


@pytest.fixture(scope="module")
def demo3d(tmp_path_factory):
    from vmunet.data.demo3d import make_demo3d_data

    root = tmp_path_factory.mktemp("demo3d_data")
    make_demo3d_data(root)
    return root


@pytest.fixture(scope="module")
def trained(demo3d, tmp_path_factory):
    from vmunet.train import Trainer

    out = tmp_path_factory.mktemp("run3d")
    cfg = load_config("demo3d", overrides=[*FAST, f"data.root={demo3d}", f"output_dir={out}"])
    trainer = Trainer(cfg, out)
    before = trainer.validate()["val_dice"]
    summary = trainer.fit()
    return {"out": out, "before": before, "summary": summary, "cfg": cfg}


def test_3d_training_raises_validation_dice(trained):
    before, best = trained["before"], trained["summary"]["best_val_dice"]
    assert np.isfinite(before) and best > before + 0.1, (before, best)
    assert trained["summary"]["steps"] == 3 * (3 * 4 // 2)  # 3 epochs x 3 training slabs x 4 patches / 2


def test_3d_checkpoint_carries_the_inference_spec(trained):
    ckpt = load_training_checkpoint(trained["out"] / "best.pt")
    inf = ckpt["inference"]
    assert inf["spatial_dims"] == 3 and inf["input_size"] == [32, 32, 16]
    assert inf["spacing"] == [2.0, 2.0, 2.0]
    assert inf["normalization"] == {"kind": "window", "min": 0, "max": 255}
    assert inf["class_names"] == ["background", "grey_matter", "white_matter"]
    assert ckpt["arch"]["name"] == "vmunet3d_tiny" and ckpt["arch"]["kwargs"]["spatial_dims"] == 3


def test_vmunet_test_and_evaluate_agree_on_3d_volumes(trained, demo3d, tmp_path, capsys):
    from vmunet.metrics import evaluate_folders

    out = trained["out"]
    assert main(["test", str(out / "config.yaml"), "--checkpoint", str(out / "best.pt")]) == 0
    printed = capsys.readouterr().out
    assert "hd95_units=mm" in printed and "grey_matter" in printed
    res = json.loads((out / "best.test.json").read_text())
    # the same held-out slab through `vmunet segment` (files written and read back) and `evaluate`
    dl = json.loads((demo3d / "datalist.json").read_text())
    test_img = demo3d / dl["test"][0]["image"]
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "mni152_test0.nii.gz").write_bytes((demo3d / dl["test"][0]["label"]).read_bytes())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "mni152_test0.nii.gz").write_bytes(test_img.read_bytes())
    seg_out = tmp_path / "seg"
    args = ["segment", str(tmp_path / "in"), "-c", str(out / "best.pt"), "-o", str(seg_out), "--no-progress"]
    assert main([*args, "--overlap", "0.25", "--batch-size", "4"]) == 0
    ev = evaluate_folders(
        seg_out, labels, protocol="synapse", labels={1: "grey_matter", 2: "white_matter"}, hd95_units="mm"
    )
    dice_test = res["summary"]["mean"]["dice"] if "summary" in res else res["mean"]["dice"]
    assert ev.summary["mean"]["dice"] == pytest.approx(dice_test, abs=1e-6)


def test_3d_recipe_checks_the_patch_against_the_model(demo3d, tmp_path):
    from vmunet.train import Trainer

    cfg = load_config("demo3d", overrides=[*FAST, "data.size=[32, 32, 24]", f"data.root={demo3d}"])
    with pytest.raises(ConfigError, match=r"data.size.*multiple of \[32, 32, 16\]"):
        Trainer(cfg, tmp_path)
    with pytest.raises(ConfigError, match="data.size' expects three positive integers"):
        load_config("demo3d", overrides=["data.size=[32, 32]"])


def test_3d_patch_batches_reach_the_model_as_5d(demo3d):
    from vmunet.train.builders import build_split_dataset

    cfg = load_config("demo3d", overrides=[*FAST, f"data.root={demo3d}"])
    ds = build_split_dataset(cfg, "train", train=True)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert tuple(batch["image"].shape) == (2, 1, 32, 32, 16) and tuple(batch["label"].shape) == (
        2,
        1,
        32,
        32,
        16,
    )
