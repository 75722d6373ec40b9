"""Datasets over the supported layouts, built in temporary folders."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

import vmunet.data.dataset_classes as dcmod
import vmunet.data.layouts.synapse as synmod
from vmunet.data.datasets import (
    PairedImageDataset,
    VolumeSliceDataset,
    VolumeSource,
    build_dataset,
    find_folder_pairs,
)
from vmunet.data.io import write_image
from vmunet.data.manifests import load_manifest, seeded_split
from vmunet.errors import InputFileError, VmunetUserError

RNG = np.random.default_rng(0)


def _rgb(h=12, w=10):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h=12, w=10):
    return (RNG.random((h, w)) > 0.5).astype(np.uint8) * 255


def _vmunet_layout(root, n=3, splits=("train", "val", "test")):
    for s in splits:
        for i in range(n):
            write_image(root / s / "images" / f"ISIC_{i:07d}.jpg", _rgb())
            write_image(root / s / "masks" / f"ISIC_{i:07d}_segmentation.png", _mask())


def test_vmunet_layout_pairs_by_name_and_binarises(tmp_path):
    _vmunet_layout(tmp_path)
    ds = build_dataset("isic", tmp_path, "val")
    assert len(ds) == 3
    s = ds[1]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 12, 10)
    assert s["label"].dtype == torch.int64 and s["label"].shape == (1, 12, 10)
    raw = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).open(
            tmp_path / "val" / "masks" / "ISIC_0000001_segmentation.png"
        )
    )
    np.testing.assert_array_equal(s["label"][0].numpy(), raw // 255)
    assert s["case"] == "ISIC_0000001"


def test_isic2017_challenge_layout(tmp_path):
    names = {
        "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    }
    for s, (di, dm) in names.items():
        for i in range(2 if s != "train" else 4):
            write_image(tmp_path / di / f"ISIC_{i:07d}.jpg", _rgb())
            write_image(tmp_path / di / f"ISIC_{i:07d}_superpixels.png", _rgb())  # must be ignored
            write_image(tmp_path / dm / f"ISIC_{i:07d}_segmentation.png", _mask())
    (tmp_path / names["train"][0] / "ISIC-2017_Training_Data_metadata.csv").write_text("id\n")
    assert len(build_dataset("isic2017", tmp_path, "train")) == 4
    assert len(build_dataset("isic2017", tmp_path, "validation")) == 2


def test_isic2018_seeded_split_is_disjoint_and_follows_rule(tmp_path):
    di, dm = tmp_path / "ISIC2018_Task1-2_Training_Input", tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    ids = [f"ISIC_{i:07d}" for i in range(20)]
    for c in ids:
        write_image(di / f"{c}.jpg", _rgb(8, 8))
        write_image(dm / f"{c}_segmentation.png", _mask(8, 8))
    got = {
        s: sorted(p.case for p in build_dataset("isic2018", tmp_path, s).pairs)
        for s in ("train", "val", "test")
    }
    assert [len(got[s]) for s in ("train", "val", "test")] == [14, 2, 4]
    assert set(got["train"]) | set(got["val"]) | set(got["test"]) == set(ids)
    # independent re-derivation of the documented rule
    perm = np.random.default_rng(42).permutation(20)
    assert got["test"] == sorted(ids[i] for i in perm[:4])
    assert got["val"] == sorted(ids[i] for i in perm[4:6])


def test_manifests():
    syn = load_manifest("synapse")
    assert len(syn["train"]) == 18 and len(syn["test"]) == 12 and not set(syn["train"]) & set(syn["test"])
    assert set(syn["val"]) <= set(syn["train"])
    assert sum(syn["train_slices"].values()) == 2211
    assert sorted(syn["btcv_to_synapse"].values()) == list(range(1, 9))
    s = seeded_split([str(i) for i in range(2594)], load_manifest("isic2018")["ratios"], 42)
    assert [len(s[k]) for k in ("train", "val", "test")] == [1817, 259, 518]
    assert load_manifest("isic2018")["counts"] == {"train": 1817, "val": 259, "test": 518}


def test_data_manifests_folder_matches_package():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for name in ("synapse", "isic2017", "isic2018"):
        assert json.loads((root / "data_manifests" / f"{name}.json").read_text()) == load_manifest(name)


# ------------------------------------------------------------------ bad input


def test_missing_mask_and_orphan_mask_named(tmp_path):
    _vmunet_layout(tmp_path, splits=("train",))
    (tmp_path / "train" / "masks" / "ISIC_0000001_segmentation.png").unlink()
    write_image(tmp_path / "train" / "masks" / "ISIC_0000099.png", _mask())
    with pytest.raises(InputFileError) as info:
        find_folder_pairs(tmp_path, "train")
    msg = str(info.value)
    assert "ISIC_0000001.jpg" in msg and "ISIC_0000099.png" in msg and "2 unpaired" in msg


def test_bad_mask_values_and_shape_mismatch(tmp_path):
    _vmunet_layout(tmp_path, splits=("train",))
    m = _mask()
    m[0, 0] = 128
    write_image(tmp_path / "train" / "masks" / "ISIC_0000000_segmentation.png", m)
    write_image(tmp_path / "train" / "masks" / "ISIC_0000002_segmentation.png", _mask(5, 5))
    ds = build_dataset("isic", tmp_path, "train")
    with pytest.raises(InputFileError, match=r"ISIC_0000000_segmentation.png.*0 or 255.*128"):
        ds[0]
    with pytest.raises(InputFileError, match=r"ISIC_0000002_segmentation.png.*does not match"):
        ds[2]


def test_empty_folder_and_unknown_layout(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir(parents=True)
    with pytest.raises(InputFileError, match="no images"):
        build_dataset("folder", tmp_path, "train")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(InputFileError, match="no Synapse layout"):
        build_dataset("synapse", other, "train")
    with pytest.raises(VmunetUserError, match="unknown"):
        build_dataset("kaggle", other, "train")


# ------------------------------------------------------------------ Synapse


def _btcv(root, cases, shape=(8, 9, 6)):
    vols = {}
    for c in cases:
        num = c[4:]
        hu = RNG.integers(-1000, 1000, shape).astype(np.int16)
        lab = RNG.integers(0, 14, shape).astype(np.uint8)
        lab[..., 0] = 0  # an empty slice
        nib.save(nib.Nifti1Image(hu, np.diag([0.7, 0.7, 3.0, 1.0])), str(root / "img" / f"img{num}.nii.gz"))
        nib.save(
            nib.Nifti1Image(lab, np.diag([0.7, 0.7, 3.0, 1.0])), str(root / "label" / f"label{num}.nii.gz")
        )
        vols[c] = (hu, lab)
    return vols


# BTCV raw -> TransUNet class, written out by hand from the published organ order
# (1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen, 8 stomach).
HAND_MAP = {1: 7, 2: 4, 3: 3, 4: 2, 5: 0, 6: 5, 7: 8, 8: 1, 9: 0, 10: 0, 11: 6, 12: 0, 13: 0}


def test_synapse_raw_missing_cases_are_listed(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "label").mkdir()
    _btcv(tmp_path, ["case0005", "case0006"])
    with pytest.raises(InputFileError, match=r"28 BTCV file\(s\) missing.*img0007.nii.gz"):
        build_dataset("synapse", tmp_path, "train")  # 14 of the 16 training cases absent


def test_synapse_raw_mapping_and_window(tmp_path, monkeypatch):
    (tmp_path / "img").mkdir()
    (tmp_path / "label").mkdir()
    m = load_manifest("synapse")
    monkeypatch.setattr(
        synmod, "_synapse_split_cases", lambda split: {"train": ["case0005"], "test": ["case0001"]}[split]
    )
    vols = _btcv(tmp_path, ["case0005", "case0001"])
    ds = build_dataset("synapse", tmp_path, "train")
    assert len(ds) == 6
    hu, lab = vols["case0005"]
    s = ds[3]
    expect_img = (np.clip(hu[..., 3].astype(np.float64), -125, 275) + 125) / 400
    np.testing.assert_allclose(s["image"][0].numpy(), expect_img, atol=1e-6)
    expect_lab = np.vectorize(lambda v: HAND_MAP.get(int(v), 0))(lab[..., 3])
    np.testing.assert_array_equal(s["label"][0].numpy(), expect_lab)
    assert m["class_names"][1] == "aorta"
    vol = build_dataset("synapse", tmp_path, "test", volumes=True)[0]
    assert vol["image"].shape == (1, 8, 9, 6) and vol["spacing"] == pytest.approx((0.7, 0.7, 3.0))


def test_synapse_transunet_layout(tmp_path):
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "test_vol_h5").mkdir()
    img = RNG.random((3, 8, 8)).astype(np.float32)
    lab = RNG.integers(0, 9, (3, 8, 8)).astype(np.float32)
    for k in range(3):
        np.savez(tmp_path / "train_npz" / f"case0005_slice{k:03d}.npz", image=img[k], label=lab[k])
        np.savez(
            tmp_path / "train_npz" / f"case0030_slice{k:03d}.npz", image=img[k], label=lab[k]
        )  # val case
    with h5py.File(tmp_path / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f.create_dataset("image", data=img)
        f.create_dataset("label", data=lab)
    tr = build_dataset("synapse", tmp_path, "train")
    assert len(tr) == 3 and {p.case.split("_")[0] for p in tr.pairs} == {"case0005"}
    assert len(build_dataset("synapse", tmp_path, "val")) == 3
    s = tr[2]
    np.testing.assert_array_equal(s["image"][0].numpy(), img[2])
    np.testing.assert_array_equal(s["label"][0].numpy(), lab[2])
    with pytest.raises(InputFileError, match="11 volume"):
        build_dataset("synapse", tmp_path, "test")  # 11 of the 12 test cases are absent


# ------------------------------------------------------------------ slice dataset


def test_slice_dataset_caches_volumes_and_subsamples_empty(tmp_path, monkeypatch):
    srcs = []
    for v in range(2):
        img = RNG.random((6, 5, 10)).astype(np.float32)
        lab = np.zeros((6, 5, 10), np.uint8)
        lab[1:3, 1:3, 2:4] = 1
        write_image(tmp_path / f"v{v}.nii.gz", img)
        write_image(tmp_path / f"v{v}_seg.nii.gz", lab)
        srcs.append(VolumeSource(tmp_path / f"v{v}.nii.gz", tmp_path / f"v{v}_seg.nii.gz", f"v{v}"))
    calls = []
    real = dcmod.read_image
    monkeypatch.setattr(dcmod, "read_image", lambda p, key=None: calls.append(p) or real(p, key=key))
    ds = VolumeSliceDataset(srcs, axis=2)
    assert len(ds) == 20
    for i in range(len(ds)):
        ds[i]
    assert len(calls) == 4  # image + label of each volume, once
    ds0 = VolumeSliceDataset(srcs, axis=2, empty_fraction=0.0)
    assert len(ds0) == 4 and all(ds0[i]["label"].sum() > 0 for i in range(4))
    ds1 = VolumeSliceDataset(srcs, axis=0)
    assert len(ds1) == 12 and ds1[0]["image"].shape == (1, 5, 10)


# ------------------------------------------------------------------ datalist and nnU-Net


def test_datalist_json(tmp_path):
    entries = []
    for i in range(3):
        write_image(tmp_path / "img" / f"c{i}.png", _rgb(6, 6))
        write_image(tmp_path / "lab" / f"c{i}.png", RNG.integers(0, 3, (6, 6)).astype(np.uint8))
        entries.append({"image": f"img/c{i}.png", "label": f"lab/c{i}.png"})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": entries[:2], "validation": entries[2:]}))
    ds = build_dataset("datalist", tmp_path, "train", num_classes=3)
    assert len(ds) == 2 and ds[0]["case"] == "c0" and ds[0]["label"].max() <= 2
    with pytest.raises(InputFileError, match="no 'test' list"):
        build_dataset("datalist", tmp_path, "test")


def test_nnunet_raw_layout(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i in range(5):
        write_image(
            tmp_path / "imagesTr" / f"brain_{i:03d}_0000.nii.gz", RNG.random((6, 6, 4)).astype(np.float32)
        )
        write_image(
            tmp_path / "labelsTr" / f"brain_{i:03d}.nii.gz", RNG.integers(0, 3, (6, 6, 4)).astype(np.uint8)
        )
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1"},
                "labels": {"background": 0, "a": 1, "b": 2},
                "numTraining": 5,
                "file_ending": ".nii.gz",
            }
        )
    )
    tr = build_dataset("nnunet", tmp_path, "train")
    va = build_dataset("nnunet", tmp_path, "val")
    assert len(tr) == 4 * 4 and len(va) == 1 * 4  # slices of 4 / 1 volumes
    (tmp_path / "labelsTr" / "brain_002.nii.gz").unlink()
    with pytest.raises(InputFileError, match="brain_002.nii.gz missing"):
        build_dataset("nnunet", tmp_path, "train")


def test_paired_dataset_channels(tmp_path):
    write_image(tmp_path / "images" / "a.png", RNG.integers(0, 255, (6, 6), dtype=np.uint8))
    write_image(tmp_path / "masks" / "a.png", RNG.integers(0, 2, (6, 6), dtype=np.uint8))
    ds = PairedImageDataset(find_folder_pairs(tmp_path), channels=3, label_mode="index", num_classes=2)
    assert ds[0]["image"].shape == (3, 6, 6)
