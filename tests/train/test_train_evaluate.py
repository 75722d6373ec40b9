"""`vmunet test`: protocol numbers for a model whose predictions we control, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _trainkit import OracleNet

from vmunet.cli.main import main
from vmunet.data import write_image
from vmunet.train.checkpoint import save_training_checkpoint


def _oracle_checkpoint(path: Path, out_channels: int) -> Path:
    return save_training_checkpoint(
        path,
        {
            "format": "vmunet",
            "arch": {
                "name": "_trainkit:OracleNet",
                "kwargs": {"in_channels": 1, "out_channels": out_channels},
            },
            "model": OracleNet(1, out_channels).state_dict(),
            "inference": {
                "out_channels": out_channels,
                "activation": "sigmoid" if out_channels == 1 else "softmax",
            },
        },
    )


def _folder(root: Path, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
    for i, (img, msk) in enumerate(zip(images, masks)):
        write_image(root / "test" / "images" / f"c{i}.png", img.astype(np.uint8))
        write_image(root / "test" / "masks" / f"c{i}.png", msk.astype(np.uint8))


def _yaml(tmp_path: Path, root: Path, protocol: str, out_channels: int) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(
        f"""
model: {{name: "_trainkit:OracleNet", in_channels: 1, out_channels: {out_channels}}}
data: {{kind: folder, root: "{root}", size: [16, 16], augmentation: none, normalization: {{kind: none}},
        batch_size: 2, num_workers: 0}}
eval: {{protocol: {protocol}}}
"""
    )
    return p


def test_vmunet_test_isic_protocol_matches_hand_computed_confusion(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = [rng.choice([20, 100, 150, 230], size=(16, 16)) for _ in range(3)]
    masks = [np.where(rng.random((16, 16)) < 0.4, 255, 0) for _ in range(3)]
    _folder(tmp_path / "data", images, masks)
    ckpt = _oracle_checkpoint(tmp_path / "run" / "best.pt", 1)
    cfg = _yaml(tmp_path, tmp_path / "data", "isic", 1)

    assert main(["test", str(cfg), "--checkpoint", str(ckpt)]) == 0
    printed = capsys.readouterr().out

    pred = np.concatenate([(im > 127.5).ravel() for im in images])
    true = np.concatenate([(m > 0).ravel() for m in masks])
    tp, fp = np.sum(pred & true), np.sum(pred & ~true)
    fn, tn = np.sum(~pred & true), np.sum(~pred & ~true)
    expected = {
        "dsc": 2 * tp / (2 * tp + fp + fn),
        "miou": tp / (tp + fp + fn),
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
    }
    summary = json.loads((tmp_path / "run" / "best.test.json").read_text())
    pooled = summary["summary"]["pooled"]
    for key, value in expected.items():
        assert pooled[key] == pytest.approx(value, abs=1e-9), key
        assert f"{value:.4f}" in printed, key
    assert (tmp_path / "run" / "best.test.csv").is_file()


def test_standard_protocol_multiclass_per_case_dice(tmp_path):
    from vmunet.config import load_config
    from vmunet.train.evaluate import test_checkpoint

    # Pixel values 0 / 100 / 200 -> OracleNet predicts classes 0 / 1 / 2; labels differ on purpose.
    rng = np.random.default_rng(1)
    images = [rng.choice([0, 100, 200], size=(16, 16)) for _ in range(2)]
    masks = [np.where(rng.random((16, 16)) < 0.8, im // 100, rng.integers(0, 3, (16, 16))) for im in images]
    _folder(tmp_path / "data", images, masks)
    ckpt = _oracle_checkpoint(tmp_path / "run" / "best.pt", 3)
    cfg = load_config(_yaml(tmp_path, tmp_path / "data", "standard", 3))
    res = test_checkpoint(cfg, ckpt, device="cpu")
    per_class = res["summary"]["summary"]["per_class"]
    for c, name in ((1, "class_1"), (2, "class_2")):
        dices = []
        for im, m in zip(images, masks):
            p, g = im // 100 == c, m == c
            dices.append(2 * np.sum(p & g) / (np.sum(p) + np.sum(g)))
        assert per_class[name]["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-9)


def test_checkpoint_that_does_not_fit_the_config_is_a_clear_error(tmp_path, capsys):
    _folder(tmp_path / "data", [np.zeros((16, 16))], [np.zeros((16, 16))])
    ckpt = _oracle_checkpoint(tmp_path / "run" / "best.pt", 3)
    cfg = _yaml(tmp_path, tmp_path / "data", "isic", 1)
    assert main(["test", str(cfg), "--checkpoint", str(ckpt)]) == 2
    assert "3 output channel(s) but the config's model.out_channels is 1" in capsys.readouterr().err
    torch.manual_seed(0)


def test_synapse_protocol_scores_whole_volumes_slice_by_slice(tmp_path):
    from vmunet.config import load_config
    from vmunet.train.evaluate import synapse_paper_labels, test_checkpoint

    rng = np.random.default_rng(2)
    entries = []
    vols, labs = [], []
    for i in range(2):
        vol = rng.choice([0, 100, 200], size=(16, 16, 5)).astype(np.float32)
        lab = np.where(rng.random(vol.shape) < 0.85, vol // 100, rng.integers(0, 3, vol.shape)).astype(
            np.uint8
        )
        write_image(tmp_path / "data" / f"img{i}.nii.gz", vol)
        write_image(tmp_path / "data" / f"lab{i}.nii.gz", lab)
        entries.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"})
        vols.append(vol)
        labs.append(lab)
    (tmp_path / "data" / "datalist.json").write_text(json.dumps({"test": entries}))
    ckpt = _oracle_checkpoint(tmp_path / "run" / "best.pt", 3)
    cfg = load_config(
        None,
        [
            "model.name=_trainkit:OracleNet",
            "model.in_channels=1",
            "model.out_channels=3",
            "data.kind=datalist",
            f"data.root={tmp_path / 'data'}",
            "data.size=[16, 16]",
            "data.normalization={kind: none}",
            "data.class_names=[bg, low, high]",
            "eval.protocol=synapse",
        ],
    )
    res = test_checkpoint(cfg, ckpt, device="cpu")
    per_class = res["summary"]["summary"]["per_class"]
    for c, name in ((1, "low"), (2, "high")):
        dices = [
            2 * np.sum((v // 100 == c) & (g == c)) / (np.sum(v // 100 == c) + np.sum(g == c))
            for v, g in zip(vols, labs)
        ]
        assert per_class[name]["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-9)
    # Slices resized to another network size come back at the volume's own size.
    model = OracleNet(1, 3)
    out = synapse_paper_labels(model, vols[0][None], (32, 32), "softmax", torch.device("cpu"), batch_size=2)
    assert out.shape == vols[0].shape
    assert np.mean(out == vols[0] // 100) > 0.6
