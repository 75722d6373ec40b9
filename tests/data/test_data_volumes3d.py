"""3-D training data: resampling, window, padding, pos/neg patches, cache, missing spacing, demo3d split."""

from __future__ import annotations

import json
import logging

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

import vmunet.data.volumes3d as v3
from vmunet.data.dataset_classes import VolumeSource
from vmunet.data.io import ImageData, write_image
from vmunet.data.volumes3d import PatchDataset, VolumeSpec, WholeVolumeDataset
from vmunet.errors import InputFileError

RNG = np.random.default_rng(0)


def _volume(tmp_path, name, shape, spacing, box=None):
    img = RNG.uniform(-300, 400, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    if box is not None:
        lab[box] = 1
    like = ImageData(img, spacing=spacing, format="nifti")
    write_image(tmp_path / f"{name}.nii.gz", img, like=like)
    write_image(tmp_path / f"{name}_seg.nii.gz", lab, like=like)
    return VolumeSource(tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz", name), img, lab


def test_whole_volume_resampled_to_target_spacing_and_windowed(tmp_path):
    src, img, _ = _volume(tmp_path, "a", (21, 17, 7), (1.0, 1.0, 3.0), np.s_[4:10, 4:10, 1:4])
    spec = VolumeSpec(
        roi_size=(8, 8, 8), spacing=(2.0, 2.0, 2.0), normalization={"kind": "window", "min": -175, "max": 250}
    )
    item = WholeVolumeDataset([src], spec)[0]
    # the span between the first and last voxel centres is kept (MONAI Spacing):
    # X 20 mm -> 11 centres 2 mm apart, Y 16 mm -> 9, Z 6 x 3 mm = 18 mm -> 10
    assert tuple(item["image"].shape) == (1, 11, 9, 10) and tuple(item["label"].shape) == (1, 11, 9, 10)
    assert item["spacing"].tolist() == [2.0, 2.0, 2.0]
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert set(np.unique(item["label"].numpy())) == {0, 1}
    # without resampling, the window alone: (clip(x, -175, 250) + 175) / 425
    same = WholeVolumeDataset(
        [src], VolumeSpec(roi_size=(8, 8, 8), normalization={"kind": "window", "min": -175, "max": 250})
    )[0]
    expect = (np.clip(img.astype(np.float64), -175, 250) + 175) / 425
    np.testing.assert_allclose(same["image"][0].numpy(), expect, atol=1e-5)


def test_volume_smaller_than_roi_is_padded(tmp_path):
    src, _, _ = _volume(tmp_path, "small", (8, 6, 4), (1.0, 1.0, 1.0), np.s_[2:5, 2:4, 1:3])
    ds = PatchDataset([src], VolumeSpec(roi_size=(16, 16, 16), samples_per_volume=2, augmentation="none"))
    assert len(ds) == 2
    s = ds[0]
    assert tuple(s["image"].shape) == (1, 16, 16, 16) and tuple(s["label"].shape) == (1, 16, 16, 16)
    assert s["label"].dtype == torch.int64 and int(s["label"].sum()) == 3 * 2 * 2


def test_positive_only_patches_always_hold_foreground(tmp_path):
    src, _, _ = _volume(tmp_path, "fg", (40, 40, 30), (1.0, 1.0, 1.0), np.s_[30:33, 5:8, 20:22])
    ds = PatchDataset([src], VolumeSpec(roi_size=(6, 6, 6), pos=1.0, neg=0.0, samples_per_volume=12))
    assert all(int(ds[i]["label"].sum()) > 0 for i in range(len(ds)))
    # the label occupies 18 of 48,000 voxels: background-only patches are drawn with pos 0
    neg = PatchDataset([src], VolumeSpec(roi_size=(6, 6, 6), pos=0.0, neg=1.0, samples_per_volume=12))
    assert sum(int(neg[i]["label"].sum()) > 0 for i in range(len(neg))) <= 2


def test_cache_decodes_each_volume_once(tmp_path, monkeypatch):
    srcs = [
        _volume(tmp_path, f"v{i}", (12, 12, 8), (1.0, 1.0, 2.0), np.s_[3:6, 3:6, 2:4])[0] for i in range(2)
    ]
    calls = []
    real = v3.read_image
    monkeypatch.setattr(v3, "read_image", lambda p, key=None: calls.append(str(p)) or real(p, key=key))
    ds = PatchDataset(srcs, VolumeSpec(roi_size=(8, 8, 8), samples_per_volume=3))
    for _epoch in range(2):
        for i in range(len(ds)):
            ds[i]
    assert len(calls) == 4  # image + label of each volume, once for both epochs


def test_volume_without_spacing_is_named_and_treated_as_1mm(tmp_path, caplog):
    path = tmp_path / "nospacing.h5"
    with h5py.File(path, "w") as f:  # TransUNet layout (Z, H, W): no voxel size stored
        f.create_dataset("image", data=RNG.uniform(0, 1, (5, 9, 7)).astype(np.float32))
        f.create_dataset("label", data=np.ones((5, 9, 7), np.uint8))
    src = VolumeSource(path, path, "nospacing", "image", "label")
    with caplog.at_level(logging.WARNING):
        item = WholeVolumeDataset([src], VolumeSpec(roi_size=(8, 8, 8), spacing=(1.0, 1.0, 1.0)))[0]
    assert any("nospacing.h5" in r.getMessage() and "1 mm" in r.getMessage() for r in caplog.records)
    assert tuple(item["image"].shape) == (1, 9, 7, 5)  # unchanged: 1 mm -> 1 mm


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="roi_size"):
        VolumeSpec(roi_size=(8, 8))
    with pytest.raises(ValueError, match="spacing"):
        VolumeSpec(roi_size=(8, 8, 8), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="augmentation"):
        VolumeSpec(roi_size=(8, 8, 8), augmentation="isic")
    with pytest.raises(ValueError, match="pos and neg"):
        VolumeSpec(roi_size=(8, 8, 8), pos=0, neg=0)


def test_training_volume_without_label_is_refused(tmp_path):
    src, _, _ = _volume(tmp_path, "nolab", (8, 8, 8), (1.0, 1.0, 1.0))
    with pytest.raises(InputFileError, match="needs a label"):
        PatchDataset([VolumeSource(src.image, None, "nolab")], VolumeSpec(roi_size=(8, 8, 8)))


@pytest.fixture(scope="session")
def demo3d_root(tmp_path_factory):
    from vmunet.data.demo3d import make_demo3d_data

    root = tmp_path_factory.mktemp("demo3d")
    make_demo3d_data(root)
    return root


def test_demo3d_slabs_share_no_voxel_and_keep_the_template_geometry(demo3d_root):
    dl = json.loads((demo3d_root / "datalist.json").read_text())
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    slabs = sorted(dl["slabs"], key=lambda s: s["z"][0])
    for a, b in zip(slabs, slabs[1:]):
        assert b["z"][0] - a["z"][1] >= 2  # a gap of >= 2 slices (4 mm) that no set holds
    # world z of the first voxel of each slab: 2 mm per slice from one origin (independent: nibabel)
    z_world = {}
    for split in ("training", "validation", "test"):
        for e in dl[split]:
            im = nib.load(str(demo3d_root / e["image"]))
            lab = nib.load(str(demo3d_root / e["label"]))
            np.testing.assert_allclose(im.affine, lab.affine)
            np.testing.assert_allclose(np.abs(np.diag(im.affine)[:3]), [2.0, 2.0, 2.0])
            z_world[e["case"]] = float(im.affine[2, 3])
            assert set(np.unique(np.asanyarray(lab.dataobj))) <= {0, 1, 2}
    z0 = {s["case"]: s["z"][0] for s in slabs}
    base = {c: z_world[c] - 2.0 * z0[c] for c in z0}
    assert max(base.values()) - min(base.values()) < 1e-6
