"""vmunet prepare on small fake downloads, augmentation geometry, demo data."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from vmunet.cli.main import main
from vmunet.data.augment import build_transforms
from vmunet.data.datasets import build_dataset
from vmunet.data.io import read_image, write_image
from vmunet.data.prepare import PrepareError, prepare_dataset

RNG = np.random.default_rng(0)
DIRS = {
    "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
}


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _fake_isic2017(root, n=3):
    for s, (di, dm) in DIRS.items():
        for i in range(n):
            c = f"ISIC_{s[:2]}{i:05d}"
            write_image(root / di / f"{c}.jpg", RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8))
            m = np.zeros((20, 24), np.uint8)
            m[5:15, 6:18] = 255
            write_image(root / dm / f"{c}_segmentation.png", m)


def test_prepare_isic_reports_every_problem_then_converts_and_skips(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _fake_isic2017(raw)
    tr_m = raw / DIRS["train"][1]
    (tr_m / "ISIC_tr00000_segmentation.png").unlink()  # missing mask
    write_image(tr_m / "ISIC_tr00077_segmentation.png", np.zeros((20, 24), np.uint8))  # orphan mask
    bad = np.zeros((20, 24), np.uint8)
    bad[0, 0] = 7
    write_image(tr_m / "ISIC_tr00001_segmentation.png", bad)  # bad value
    (raw / DIRS["val"][0] / "ISIC_va00000.jpg").write_bytes(b"\xff\xd8\xff garbage")  # corrupt
    write_image(raw / DIRS["test"][1] / "ISIC_te00002_segmentation.png", np.zeros((9, 9), np.uint8))  # shape
    before = _tree_digest(raw)
    with pytest.raises(PrepareError) as info:
        prepare_dataset("isic2017", raw, out, size=16)
    text = "\n".join(info.value.problems)
    for needle in (
        "ISIC_tr00000.jpg: no mask",
        "ISIC_tr00077_segmentation.png: mask without",
        "found [7]",
        "ISIC_va00000.jpg",
        "does not match",
        "split train has 2 pairs, ISIC 2017 has 2000",
    ):
        assert needle in text, needle
    assert not (out / "prepared.json").exists() and not list(out.rglob("*.npy"))
    assert _tree_digest(raw) == before

    # fix the download (keep a small subset: skip the count check)
    write_image(tr_m / "ISIC_tr00000_segmentation.png", np.zeros((20, 24), np.uint8))
    (tr_m / "ISIC_tr00077_segmentation.png").unlink()
    write_image(tr_m / "ISIC_tr00001_segmentation.png", np.zeros((20, 24), np.uint8))
    write_image(raw / DIRS["val"][0] / "ISIC_va00000.jpg", RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    write_image(raw / DIRS["test"][1] / "ISIC_te00002_segmentation.png", np.zeros((20, 24), np.uint8))
    before = _tree_digest(raw)
    msgs = []
    prepare_dataset("isic2017", raw, out, size=16, check_counts=False, progress=msgs.append)
    info = json.loads((out / "prepared.json").read_text())
    assert info["counts"] == {"train": 3, "val": 3, "test": 3}
    imgs = np.load(out / "train" / "images.npy", mmap_mode="r")
    labs = np.load(out / "train" / "labels.npy", mmap_mode="r")
    assert imgs.shape == (3, 16, 16, 3) and imgs.dtype == np.uint8 and set(np.unique(labs)) <= {0, 1}
    assert _tree_digest(raw) == before
    mtime = (out / "train" / "images.npy").stat().st_mtime_ns
    msgs.clear()
    prepare_dataset("isic2017", raw, out, size=16, check_counts=False, progress=msgs.append)
    assert (out / "train" / "images.npy").stat().st_mtime_ns == mtime
    assert sum("already prepared, skipped" in m for m in msgs) == 3

    # the prepared layout feeds the same dataset API
    ds = build_dataset("isic2017", out, "val", build_transforms("isic", 16, train=False))
    s = ds[0]
    assert s["image"].shape == (3, 16, 16) and s["label"].shape == (1, 16, 16)
    raw_mask = read_image(raw / DIRS["val"][1] / f"{s['case']}_segmentation.png").array
    import cv2

    expect = cv2.resize((raw_mask // 255).astype(np.uint8), (16, 16), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(s["label"][0].numpy(), expect)


def test_prepare_cli_one_line_error(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    code = main(["prepare", "isic2017", "--raw", str(raw), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "vmunet prepare: error:" in err and "Traceback" not in err
    code = main(["prepare", "synapse", "--raw", str(raw), "--output", str(raw / "inside")])
    assert code == 2 and "must not be inside" in capsys.readouterr().err


def test_prepare_synapse_raw(tmp_path):
    raw, out = tmp_path / "raw" / "Training", tmp_path / "out"
    (raw / "img").mkdir(parents=True)
    (raw / "label").mkdir(parents=True)
    hu = RNG.integers(-1000, 1000, (8, 7, 5)).astype(np.int16)
    lab = RNG.integers(0, 14, (8, 7, 5)).astype(np.uint8)
    for num in ("0005", "0030", "0034", "0001"):
        nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1])), str(raw / "img" / f"img{num}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.diag([0.8, 0.8, 2.5, 1])), str(raw / "label" / f"label{num}.nii.gz"))
    with pytest.raises(PrepareError) as info:
        prepare_dataset("synapse", tmp_path / "raw", out)
    assert len(info.value.problems) == 26  # 30 cases in the split, 4 present
    prepare_dataset("synapse", tmp_path / "raw", out, check_counts=False)
    info = json.loads((out / "prepared.json").read_text())
    assert info["slices"] == {"case0001": 5, "case0005": 5, "case0030": 5, "case0034": 5}
    assert np.load(out / "volumes" / "case0005_image.npy").shape == (5, 8, 7)  # slice-first
    ds = build_dataset("synapse", out, "train")
    direct = build_dataset("synapse", tmp_path / "raw", "val")  # val = case0030, case0034
    prepared_val = build_dataset("synapse", out, "val")
    assert len(direct) == len(prepared_val) == 10
    for k in range(10):
        a, b = direct[k], prepared_val[k]
        np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-6)
        np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())
    assert len(ds) == 5


# ------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("name", ["isic", "synapse", "light"])
def test_augment_same_geometry_for_image_and_mask(name):
    rng = np.random.default_rng(1)
    mask = np.zeros((40, 40), np.uint8)
    mask[5:22, 8:30] = 1
    mask[25:35, 3:12] = 1
    image = mask.astype(np.float32) * 200 + 10  # the image is the mask, so both must move together
    if name == "isic":
        image = np.repeat(image[..., None], 3, axis=-1)
    changed = 0
    for seed in range(12):
        t = build_transforms(
            name, 40, train=True, normalization={"kind": "none"}, seed=int(rng.integers(1e6))
        )
        out = t(image=image, mask=mask)
        img = out["image"] if out["image"].ndim == 2 else out["image"][..., 0]
        assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"])) <= {
            0,
            1,
        }  # nearest: no new values
        agree = ((img > 110) == (out["mask"] == 1)).mean()
        assert agree > 0.97, (seed, agree)
        changed += not np.array_equal(out["mask"], mask)
    assert changed >= 4  # the recipe really is random


def test_isic_rotation_angles_are_fresh_per_sample():
    import albumentations as A

    t = build_transforms("isic", 32, train=True, normalization={"kind": "none"}, seed=3)
    rot = next(x for x in t.transforms if isinstance(x, A.Rotate))
    assert tuple(rot.limit) == (0, 360) and rot.p == 0.5
    img = np.zeros((32, 32, 3), np.uint8)
    img[3:9, 4:20] = 255  # asymmetric
    outs = {t(image=img, mask=img[..., 0])["image"].tobytes() for _ in range(40)}
    # flips alone give at most 4 distinct outputs (x2 with a fixed angle); fresh angles give many
    assert len(outs) > 10


def test_eval_transform_is_resize_only():
    img = np.random.default_rng(0).integers(0, 255, (50, 60, 3)).astype(np.uint8)
    t = build_transforms("isic", [24, 32], train=False, normalization={"kind": "imagenet"})
    a, b = t(image=img, mask=np.zeros((50, 60), np.uint8)), t(image=img, mask=np.zeros((50, 60), np.uint8))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (24, 32, 3)
    with pytest.raises(ValueError, match="augmentation 'fancy'"):
        build_transforms("fancy", 8, True)
    with pytest.raises(ValueError, match="kind 'nope'"):
        build_transforms("isic", 8, True, normalization={"kind": "nope"})


# ------------------------------------------------------------------ normalisation


def test_normalize_intensity_against_hand_values():
    from vmunet.data.transforms import normalize_intensity

    x = np.array([[[255.0, 0.0, 128.0]]])
    got = normalize_intensity(x, {"kind": "imagenet"})
    expect = (np.array([255.0, 0.0, 128.0]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(got[0, 0], expect, rtol=1e-5)
    y = np.array([1.0, 2.0, 3.0, 0.0])
    np.testing.assert_allclose(
        normalize_intensity(y, {"kind": "zscore"}), (y - 1.5) / np.sqrt(1.25), rtol=1e-6
    )
    np.testing.assert_allclose(
        normalize_intensity(y, {"kind": "zscore", "nonzero": True}), (y - 2) / np.sqrt(2 / 3), rtol=1e-6
    )
    np.testing.assert_allclose(normalize_intensity(y, {"kind": "minmax"}), y / 3)
    assert normalize_intensity(y, {"kind": "window", "min": 1, "max": 2}).tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="unknown key"):
        normalize_intensity(y, {"kind": "window", "min": 1, "max": 2, "level": 3})
    with pytest.raises(ValueError, match="3 values"):
        normalize_intensity(np.zeros((2, 2)), {"kind": "meanstd", "mean": [1, 2, 3], "std": [1, 1, 1]})


# ------------------------------------------------------------------ demo data


def test_demo_data_from_nilearn(tmp_path):
    from vmunet.data.demo import make_demo_data, make_synthetic_lesions

    dl = make_demo_data(tmp_path / "demo", size=48, step=4)
    d = json.loads(dl.read_text())
    cases = {k: {e["case"] for e in d[k]} for k in ("training", "validation", "test")}
    assert all(cases.values())
    assert not (
        cases["training"] & cases["validation"]
        or cases["training"] & cases["test"]
        or cases["validation"] & cases["test"]
    )
    grey, white, classes = [], [], set()
    for e in d["training"]:
        img = read_image(dl.parent / e["image"]).array.astype(float)
        lab = read_image(dl.parent / e["label"]).array
        assert img.shape == lab.shape == (48, 48) and lab.dtype == np.uint8
        classes |= set(np.unique(lab).tolist())
        grey += img[lab == 1].tolist()
        white += img[lab == 2].tolist()
    assert classes == {0, 1, 2}
    assert np.mean(white) > np.mean(grey)  # T1: white matter is brighter than grey matter
    vol = read_image(dl.parent / d["volume"]["label"])
    assert vol.is_volume and set(np.unique(vol.array).tolist()) == {0, 1, 2}
    assert "MNI" in d["name"] and "ISIC" not in d["name"]
    mtime = dl.stat().st_mtime_ns
    assert make_demo_data(tmp_path / "demo", size=48, step=4).stat().st_mtime_ns == mtime  # rerun skips
    ds = build_dataset("datalist", dl.parent, "val")
    assert ds[0]["label"].max() <= 2

    root = make_synthetic_lesions(tmp_path / "les", n=10, size=32, seed=1)
    tr = build_dataset("isic", root, "train")
    assert len(tr) == 7 and set(tr[0]["label"].unique().tolist()) == {0, 1}


def _truncate_jpeg(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download cut off half-way


def test_prepare_skip_invalid_converts_every_good_pair_and_lists_the_rest(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _fake_isic2017(raw, n=5)
    bad_jpeg = raw / DIRS["train"][0] / "ISIC_tr00002.jpg"
    _truncate_jpeg(bad_jpeg)
    orphan = raw / DIRS["val"][0] / "ISIC_va00009.jpg"  # an image without its mask
    write_image(orphan, RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    # Default: strict. The truncated file is named, nothing is written, and no line claims a conversion.
    msgs = []
    with pytest.raises(PrepareError) as info:
        prepare_dataset("isic2017", raw, out, size=16, check_counts=False, progress=msgs.append)
    assert any("ISIC_tr00002.jpg" in p for p in info.value.problems)
    assert any("ISIC_va00009.jpg: no mask" in p for p in info.value.problems)
    assert not list(out.rglob("*.npy"))
    assert msgs and not any("convert" in m for m in msgs), msgs
    assert "checking 5 pairs" in msgs[0]

    # --skip-invalid through the CLI: every good pair converted, each skipped file listed with its reason.
    code = main(
        ["prepare", "isic2017", "--raw", str(raw), "--output", str(out), "--size", "16"]
        + ["--no-count-check", "--skip-invalid"]
    )
    console = capsys.readouterr().out
    assert code == 0
    assert "train: checking 5 pairs" in console and "train: converted 4, skipped 1" in console
    assert "val: converted 5, skipped 1" not in console and "val: converted 5" in console
    listed = (out / "skipped.txt").read_text().splitlines()
    assert len(listed) == 2
    assert any(line.startswith(str(bad_jpeg)) for line in listed)
    assert any(line.startswith(str(orphan)) and "no mask" in line for line in listed)
    for line in listed:
        assert f"skipped {line}" in console
    info = json.loads((out / "prepared.json").read_text())
    assert info["counts"] == {"train": 4, "val": 5, "test": 5}
    assert info["skipped_cases"] == {"train": ["ISIC_tr00002"]}
    ids = json.loads((out / "train" / "ids.json").read_text())
    assert "ISIC_tr00002" not in ids and len(ids) == 4
    imgs = np.load(out / "train" / "images.npy")
    assert imgs.shape == (4, 16, 16, 3)
    # each stored image is its own file's (not shifted by the skipped one)
    import cv2

    for k, case in enumerate(ids):
        src = read_image(raw / DIRS["train"][0] / f"{case}.jpg").array
        np.testing.assert_array_equal(imgs[k], cv2.resize(src, (16, 16), interpolation=cv2.INTER_LINEAR))
    # a second run finds everything done (the skipped case is remembered, not retried as new)
    msgs = []
    prepare_dataset(
        "isic2017", raw, out, size=16, check_counts=False, progress=msgs.append, skip_invalid=True
    )
    assert sum("already prepared, skipped" in m for m in msgs) == 3
    ds = build_dataset("isic2017", out, "train", build_transforms("isic", 16, train=False))
    assert len(ds) == 4


def test_prepare_synapse_skip_invalid_skips_a_broken_case(tmp_path):
    raw, out = tmp_path / "raw" / "Training", tmp_path / "out"
    (raw / "img").mkdir(parents=True)
    (raw / "label").mkdir(parents=True)
    hu = RNG.integers(-1000, 1000, (8, 7, 5)).astype(np.int16)
    lab = RNG.integers(0, 14, (8, 7, 5)).astype(np.uint8)
    for num in ("0005", "0030", "0034"):
        nib.save(nib.Nifti1Image(hu, np.eye(4)), str(raw / "img" / f"img{num}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(raw / "label" / f"label{num}.nii.gz"))
    nib.save(nib.Nifti1Image(lab[:4], np.eye(4)), str(raw / "label" / "label0034.nii.gz"))  # wrong shape
    msgs = []
    with pytest.raises(PrepareError, match="label shape") as info:
        prepare_dataset("synapse", tmp_path / "raw", out, check_counts=False, progress=msgs.append)
    # the lines and the error say what was written: two cases before the problem, no prepared.json
    assert msgs == [
        "case0005: checked and converted",
        "case0030: checked and converted",
        "case0034: checked, has a problem (not converted)",
    ]
    assert "2 case(s) converted before the first problem are kept" in str(info.value)
    assert not (out / "prepared.json").exists()
    msgs.clear()
    prepare_dataset(
        "synapse", tmp_path / "raw", out, check_counts=False, progress=msgs.append, skip_invalid=True
    )
    info = json.loads((out / "prepared.json").read_text())
    assert sorted(info["slices"]) == ["case0005", "case0030"]
    assert "label0034.nii.gz" in (out / "skipped.txt").read_text()
    assert msgs[0] == "2 case(s) already prepared, skipped" and "case0034: checked, skipped" in msgs
