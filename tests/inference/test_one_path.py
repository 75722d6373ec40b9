"""One inference path: settings from the checkpoint reach segmentation, and `vmunet test` agrees with
`vmunet segment` + `vmunet evaluate` on the same scans."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


def test_checkpoint_trained_with_threshold_0_3_segments_at_0_3(tmp_path):
    from _trainkit import OracleNet, SquaresDataset, make_trainer

    from vmunet.inference import Segmenter
    from vmunet.train.checkpoint import load_training_checkpoint

    trainer = make_trainer(
        tmp_path,
        [
            "model.name=_trainkit:OracleNet",
            "model.out_channels=1",
            "data.size=[32, 32]",
            "data.normalization={kind: none}",
            "eval.threshold=0.3",
            "train.epochs=1",
            "train.val_every=1",
            "train.max_steps_per_epoch=1",
            "scheduler.t_max=1",
        ],
        train_ds=SquaresDataset(4, classes=2, seed=1),
    )
    trainer.fit()
    ckpt = load_training_checkpoint(tmp_path / "best.pt")
    assert ckpt["inference"]["threshold"] == 0.3
    model = OracleNet(1, 1)
    model.load_state_dict(ckpt["model"])
    offset = float(model.offset.detach())

    # Pixel values whose sigmoid probability sweeps 0.05 .. 0.95 (OracleNet's logit is x - offset).
    p = np.linspace(0.05, 0.95, 32 * 32).reshape(32, 32)
    image = (offset + np.log(p / (1 - p))).astype(np.float32)
    seg = Segmenter(model, device="cpu", inference=ckpt["inference"])
    assert seg.threshold == 0.3
    pred = seg.predict(image, return_probabilities=True)
    probs = pred.probabilities[..., 0]
    np.testing.assert_allclose(probs, p, atol=1e-4)  # independent: the sigmoid by hand
    np.testing.assert_array_equal(pred.labels, (p >= 0.3).astype(np.uint8))
    assert ((p >= 0.3) & (p < 0.5)).sum() > 100  # pixels that only the trained threshold calls foreground
    # An explicit threshold still wins over the checkpoint's.
    at_half = Segmenter(model, device="cpu", inference=ckpt["inference"], threshold=0.5).predict(image)
    np.testing.assert_array_equal(at_half.labels, (p >= 0.5).astype(np.uint8))


def test_overlap_comes_from_the_checkpoint(ct_checkpoint):
    from vmunet.inference import Segmenter
    from vmunet.models import build_model_from_checkpoint

    model, ckpt = build_model_from_checkpoint(str(ct_checkpoint))
    info = {**ckpt["inference"], "overlap": 0.25}
    seg = Segmenter(model, device="cpu", inference=info)
    assert seg.overlap == 0.25 and seg.strategy.inferer.overlap == 0.25
    assert Segmenter(model, device="cpu", inference=info, overlap=0.75).strategy.inferer.overlap == 0.75


def test_demo_test_scores_equal_the_segmentation_scores(tmp_path):
    # Quick mode trains two steps; its numbers mean nothing, but the two scorings of the same
    # held-out scans must agree case by case, and HD95 is in mm (the NIfTI slices' spacing).
    from vmunet.demo import run_demo

    summary = run_demo(tmp_path / "demo", quick=True, device="cpu", progress=False)
    assert summary.hd95_unit == "mm"
    assert abs(summary.test_mean_dice - summary.segment_mean_dice) <= 0.005
    test = json.loads(Path(summary.files["test_json"]).read_text())
    evaluated = json.loads(Path(summary.files["evaluation_json"]).read_text())
    assert test["settings"]["hd95_units"] == evaluated["settings"]["hd95_units"] == "mm"

    def by_case(csv_path):
        import csv

        with open(csv_path, newline="") as f:
            return {(r["case"], r["class_name"]): (r["dice"], r["hd95"]) for r in csv.DictReader(f)}

    a, b = by_case(summary.files["test_csv"]), by_case(summary.files["evaluation_csv"])
    assert set(a) == set(b) and len(a) == 2 * summary.n_test
    for key in a:
        np.testing.assert_allclose(
            np.array(a[key], float), np.array(b[key], float), rtol=1e-9, err_msg=str(key)
        )
    printed = summary.format()
    assert "HD95 in mm" in printed


def test_validation_goes_through_the_inferer(tmp_path, monkeypatch):
    from _trainkit import make_trainer

    from vmunet.inference.inferers import WholeImageInferer

    calls = []
    original = WholeImageInferer.logits

    def spy(self, x, network):
        calls.append(tuple(x.shape))
        return original(self, x, network)

    monkeypatch.setattr(WholeImageInferer, "logits", spy)
    trainer = make_trainer(tmp_path, ["train.epochs=1", "train.val_every=1", "scheduler.t_max=1"])
    res = trainer.validate()
    assert calls and np.isfinite(res["val_dice"])
    torch.manual_seed(0)


@pytest.mark.parametrize("units", ["png"])
def test_standard_protocol_names_pixels_when_the_file_has_no_spacing(tmp_path, units):
    from vmunet.data import write_image
    from vmunet.metrics import evaluate_folders

    lab = np.zeros((20, 20), np.uint8)
    lab[5:15, 5:15] = 1
    pred = np.roll(lab, 3, axis=0)
    write_image(tmp_path / "p" / "a.png", pred)
    write_image(tmp_path / "l" / "a.png", lab)
    res = evaluate_folders(tmp_path / "p", tmp_path / "l", progress=False)
    assert res.settings["hd95_units"] == "pixel"
    assert "hd95 px mean" in res.format_table()
    assert res.rows[0]["hd95"] == pytest.approx(3.0)  # a 3-pixel shift, by hand
