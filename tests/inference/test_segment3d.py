"""3-D checkpoints through `vmunet segment`: geometry kept, padding, bad input, slice-wise 2-D, HD95 in mm.

The 3-D model here is a fixed 1x1x1 convolution whose class-1 logit minus class-0 logit is
``2 x - 1``: it labels a voxel 1 exactly where the windowed intensity is above 0.5, so the
expected label map is the thresholded input, computed without the segmenter.
"""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
import torch

from vmunet.cli.main import main
from vmunet.data import ImageData, read_image, write_image
from vmunet.errors import InputFileError
from vmunet.inference import Segmenter
from vmunet.models import save_checkpoint
from vmunet.models.registry import list_models, register_model


def _pipe3d_threshold3d(in_channels: int = 1, out_channels: int = 2) -> torch.nn.Module:
    net = torch.nn.Conv3d(in_channels, out_channels, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.5, -0.5]))
    return net


if "_pipe3d_threshold3d" not in list_models():
    register_model(_pipe3d_threshold3d)


def _checkpoint(path, roi=(16, 16, 8), spacing=(1.5, 1.5, 2.0)):
    save_checkpoint(
        path,
        _pipe3d_threshold3d(),
        "_pipe3d_threshold3d",
        arch_kwargs={"in_channels": 1, "out_channels": 2},
        inference={
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "input_size": list(roi),
            "spacing": list(spacing) if spacing else None,
            "resize": False,
            "normalization": {"kind": "window", "min": 0, "max": 100},
            "class_names": ["background", "box"],
            "activation": "softmax",
        },
    )
    return path


@pytest.fixture(scope="module")
def ckpt3d(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ck3d") / "thr3d.pt")


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _box_volume(shape=(40, 36, 14)):
    vol = np.full(shape, 10.0, np.float32)
    box = np.zeros(shape, bool)
    box[8:30, 10:28, 3:11] = True
    vol[box] = 90.0
    return vol, box


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_segment_keeps_geometry_in_nifti_and_nrrd_and_resumes(ckpt3d, tmp_path, capsys):
    vol, box = _box_volume()
    like = ImageData(
        vol, spacing=(0.8, 0.9, 2.5), origin=(12.5, -30.0, 41.0), direction=_rotation(30), format="nifti"
    )
    inp = tmp_path / "in"
    write_image(inp / "case_a.nii.gz", vol, like=like)
    write_image(inp / "case_b.nrrd", vol, like=like)
    out = tmp_path / "out"
    args = ["segment", str(inp), "-c", str(ckpt3d), "-o", str(out), "--no-progress"]
    assert main(args) == 0
    for name in ("case_a.nii.gz", "case_b.nrrd"):
        src, pred = read_image(inp / name), read_image(out / name)
        assert pred.array.shape == vol.shape
        np.testing.assert_allclose(pred.spacing, src.spacing, atol=1e-5)
        np.testing.assert_allclose(pred.origin, src.origin, atol=1e-4)
        np.testing.assert_allclose(pred.direction, src.direction, atol=1e-5)
        # resampled to 1.5 x 1.5 x 2 mm and back: the box comes back in place
        assert _dice(pred.array == 1, box) > 0.93
    capsys.readouterr()
    assert main(args) == 0
    assert "0 segmented, 2 skipped" in capsys.readouterr().err


def test_volume_smaller_than_the_roi_is_padded(tmp_path):
    ck = _checkpoint(tmp_path / "no_resample.pt", roi=(16, 16, 16), spacing=None)
    vol = np.random.default_rng(0).uniform(0, 100, (5, 6, 7)).astype(np.float32)
    pred = Segmenter(ck, device="cpu").predict(ImageData(vol, spacing=(1.0, 1.0, 1.0), format="nifti"))
    np.testing.assert_array_equal(pred.labels, (vol > 50.0).astype(np.uint8))


def test_flip_tta_runs_and_keeps_a_flip_invariant_answer(ckpt3d):
    vol, _ = _box_volume((20, 18, 9))
    img = ImageData(vol, spacing=(1.0, 1.0, 2.0), format="nifti")
    plain = Segmenter(ckpt3d, device="cpu").predict(img).labels
    tta = Segmenter(ckpt3d, device="cpu", tta=True).predict(img).labels
    np.testing.assert_array_equal(plain, tta)


def test_3d_checkpoint_given_a_2d_image_gets_one_message(ckpt3d, tmp_path, capsys, caplog):
    write_image(tmp_path / "in" / "photo.png", np.zeros((20, 20), np.uint8))
    with pytest.raises(InputFileError, match=r"photo.png.*2-D image.*3-D model"):
        Segmenter(ckpt3d, device="cpu").predict(tmp_path / "in" / "photo.png")
    code = main(
        ["segment", str(tmp_path / "in"), "-c", str(ckpt3d), "-o", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err + caplog.text
    assert code == 1 and "Traceback" not in err
    assert sum("photo.png: is a 2-D image" in line for line in caplog.text.splitlines()) == 1


def test_2d_checkpoint_still_segments_a_volume_slice_by_slice(ct_checkpoint):
    from vmunet.inference.strategies import PlanarStrategy

    seg = Segmenter(ct_checkpoint, device="cpu")
    assert isinstance(seg.strategy, PlanarStrategy)
    vol = np.random.default_rng(1).uniform(-200, 300, (40, 36, 2)).astype(np.float32)
    pred = seg.predict(ImageData(vol, spacing=(0.8, 0.8, 3.0), format="nifti"))
    assert pred.labels.shape == vol.shape and pred.axis == 2


def test_volume_without_spacing_is_named_and_treated_as_1mm(ckpt3d, tmp_path, caplog):
    vol, box = _box_volume((20, 18, 9))
    path = tmp_path / "nospacing.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.moveaxis(vol, -1, 0))  # TransUNet (Z, H, W)
    with caplog.at_level(logging.WARNING):
        pred = Segmenter(ckpt3d, device="cpu").predict(path)
    assert any("nospacing.h5" in r.getMessage() and "1 mm" in r.getMessage() for r in caplog.records)
    assert pred.labels.shape == vol.shape and _dice(pred.labels == 1, box) > 0.9


def test_evaluate_scores_3d_outputs_with_hd95_in_mm(tmp_path):
    # class 1: one voxel each, 2 slices apart along Z at 3 mm -> HD95 = 6 mm, Dice 0;
    # class 2: identical cubes -> Dice 1, HD95 0 mm.
    shape, like = (12, 12, 8), ImageData(np.zeros((12, 12, 8)), spacing=(1.0, 1.0, 3.0), format="nifti")
    pred, lab = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    lab[5, 5, 2], pred[5, 5, 4] = 1, 1
    lab[8:11, 1:4, 5:8] = pred[8:11, 1:4, 5:8] = 2
    write_image(tmp_path / "pred" / "c1.nii.gz", pred, like=like)
    write_image(tmp_path / "lab" / "c1.nii.gz", lab, like=like)
    out = tmp_path / "ev.json"
    labels = json.dumps({"1": "dot", "2": "cube"})
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "lab"), "--protocol"]
    assert main([*args, "synapse", "--hd95-units", "mm", "--labels", labels, "--output", str(out)]) == 0
    s = json.loads(out.read_text())
    per = s["summary"]["per_class"] if "summary" in s else s["per_class"]
    assert per["dot"]["hd95"]["mean"] == pytest.approx(6.0)
    assert per["dot"]["dice"]["mean"] == pytest.approx(0.0)
    assert per["cube"]["dice"]["mean"] == pytest.approx(1.0) and per["cube"]["hd95"]["mean"] == pytest.approx(
        0.0
    )
