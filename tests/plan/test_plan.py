"""vmunet plan: fingerprint vs numpy, planning rules, checks, and plan -> train -> segment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures import make_ct_dataset, make_mni_dataset, write_case  # noqa: E402

from vmunet.cli.main import main  # noqa: E402
from vmunet.config.loader import load_config  # noqa: E402
from vmunet.plan import plan_dataset  # noqa: E402
from vmunet.plan.fingerprint import fingerprint_dataset  # noqa: E402
from vmunet.plan.planner import kfold_splits, target_spacing  # noqa: E402


@pytest.fixture()
def ct(tmp_path):
    return make_ct_dataset(tmp_path / "Dataset002_Gen")


def _read(p):
    img = nib.load(str(p))
    return np.asanyarray(img.dataobj), img.header.get_zooms()


def test_fingerprint_matches_numpy(ct):
    fp = fingerprint_dataset(ct, workers=2)
    imgs = sorted((ct / "imagesTr").glob("*.nii.gz"))
    labs = sorted((ct / "labelsTr").glob("*.nii.gz"))
    fg, counts, spacings = [], {}, []
    for i, lab in zip(imgs, labs, strict=True):
        a, sp = _read(i)
        lab_a, _ = _read(lab)
        fg.append(a[lab_a > 0].astype(np.float64))  # < 10 000 foreground voxels: every one is sampled
        spacings.append(sp)
        for v, n in zip(*np.unique(lab_a, return_counts=True), strict=True):
            counts[str(int(v))] = counts.get(str(int(v)), 0) + int(n)
    fg = np.concatenate(fg)
    got = fp["dataset"]["intensity"][0]
    assert got["mean"] == pytest.approx(fg.mean())
    assert got["std"] == pytest.approx(fg.std())
    assert got["percentile_00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert got["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert fp["dataset"]["class_voxels"] == counts
    assert fp["dataset"]["median_spacing"] == pytest.approx(np.median(np.array(spacings), 0))
    assert [c["shape"] for c in fp["cases"]] == [list(_read(i)[0].shape) for i in imgs]
    assert all(c["label_values"] == [0, 1, 2] for c in fp["cases"])
    assert {c["orientation"] for c in fp["cases"]} == {"LPS"} or len(fp["dataset"]["orientations"]) == 1


def test_target_spacing_anisotropic_rule():
    # hand-computed: median (1, 1, 5); axis 2 is 5x coarser and has 20 voxels vs 200 -> 10th percentile
    spacings = np.array([[1, 1, 4], [1, 1, 5], [1, 1, 6], [1, 1, 3.0]])
    shapes = np.array([[200, 200, 20]] * 4, dtype=float)
    sp, why = target_spacing(spacings, shapes)
    assert sp == pytest.approx([1, 1, np.percentile([4, 5, 6, 3], 10)])
    assert "10th percentile" in why
    iso, _ = target_spacing(np.array([[1, 1, 1.5], [1, 1, 2.0]]), np.array([[100, 100, 80]] * 2, float))
    assert iso == pytest.approx([1, 1, 1.75])


def test_kfold_is_a_partition_and_seeded():
    ids = [f"c{i}" for i in range(12)]
    folds = kfold_splits(ids)
    assert len(folds) == 5
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == sorted(ids)
    assert all(
        set(f["train"]).isdisjoint(f["val"]) and set(f["train"]) | set(f["val"]) == set(ids) for f in folds
    )
    assert kfold_splits(list(reversed(ids))) == folds


def test_plan_ct_recipe_loads_and_fingerprint_is_reused(ct, tmp_path, monkeypatch):
    out = tmp_path / "plans" / "gen.yaml"
    path, summary = plan_dataset(ct, out, memory_gb=4, dims=3)
    text = path.read_text()
    cfg = load_config(path)
    fp = json.loads((out.parent / "fingerprint.json").read_text())
    inten = fp["dataset"]["intensity"][0]
    assert cfg.data.spatial_dims == 3 and cfg.model.name == "vmunet3d_tiny"
    assert cfg.data.normalization["kind"] == "ct"
    assert cfg.data.normalization["min"] == pytest.approx(inten["percentile_00_5"], abs=1e-3)
    assert cfg.data.normalization["std"] == pytest.approx(inten["std"], abs=1e-3)
    assert all(s % d == 0 for s, d in zip(cfg.data.size, (32, 32, 16), strict=True))
    assert "# CT: clip" in text and "# --dims 3" in text
    dl = json.loads((out.parent / "datalist.json").read_text())
    assert {e["case"] for e in dl["validation"]} == set(fp["splits"][0]["val"])
    assert not {e["case"] for e in dl["training"]} & {e["case"] for e in dl["validation"]}
    # a second plan with other options must not read the scans again
    import vmunet.data.io as io

    monkeypatch.setattr(io, "read_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read again")))
    path2, summary2 = plan_dataset(ct, out, memory_gb=4, dims=2, fold=1)
    assert summary2["fingerprint_reused"] and load_config(path2).data.spatial_dims == 2


def test_own_splits_are_used(ct, tmp_path):
    (ct / "splits_final.json").write_text(
        json.dumps([{"train": ["gen_000", "gen_001", "gen_002"], "val": ["gen_003", "gen_004"]}])
    )
    plan_dataset(ct, tmp_path / "p" / "r.yaml", memory_gb=2)
    dl = json.loads((tmp_path / "p" / "datalist.json").read_text())
    assert [e["case"] for e in dl["validation"]] == ["gen_003", "gen_004"]
    assert "splits_final.json" in (tmp_path / "p" / "r.yaml").read_text()


def _cli(*args) -> int:
    return main(["plan", *map(str, args)])


def test_bad_inputs_one_line_exit_2(tmp_path, capsys, ct):
    out = tmp_path / "o" / "r.yaml"
    (tmp_path / "nothing").mkdir()
    assert _cli(tmp_path / "nothing", "--output", out) == 2
    assert "none of the layouts" in capsys.readouterr().err
    # dataset.json without keys
    bad = tmp_path / "Dataset003_Bad"
    bad.mkdir()
    (bad / "dataset.json").write_text(json.dumps({"name": "x"}))
    assert _cli(bad, "--output", out) == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "labels" in err and "Traceback" not in err
    # float labels, a label value not declared, a geometry mismatch, a 4-D image with one channel declared
    rng = np.random.default_rng(1)
    write_case(
        ct,
        "gen_100",
        rng.normal(size=(8, 8, 6)).astype(np.float32),
        np.full((8, 8, 6), 0.5, np.float32),
        (1, 1, 1),
    )
    write_case(ct, "gen_101", np.zeros((8, 8, 6), np.int16), np.full((8, 8, 6), 7, np.uint8), (1, 1, 1))
    write_case(ct, "gen_102", np.zeros((8, 8, 6), np.int16), np.zeros((8, 8, 5), np.uint8), (1, 1, 1))
    write_case(ct, "gen_103", np.zeros((8, 8, 6, 2), np.int16), np.zeros((8, 8, 6), np.uint8), (1, 1, 1))
    assert _cli(ct, "--output", out) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "gen_100.nii.gz: label holds non-integer values" in err
    assert "gen_101.nii.gz: label values [7] are not in dataset.json" in err
    assert "gen_102.nii.gz: shape" in err
    assert "gen_103_0000.nii.gz: 4-D image with 2 channel(s)" in err
    assert not out.exists()
    # --skip-invalid plans from the good cases and lists the bad ones
    assert _cli(ct, "--output", out, "--skip-invalid", "--memory-gb", "2") == 0
    text = out.read_text()
    assert "skipped (--skip-invalid)" in text and "gen_101" in text
    fp = json.loads((out.parent / "fingerprint.json").read_text())
    assert {c["case"] for c in fp["cases"]} == {f"gen_{i:03d}" for i in range(5)}


def test_plan_train_segment_on_real_mni152(tmp_path, capsys):
    """The real MNI152 template as an nnU-Net raw data set: three commands, labels on each input's grid."""
    data = make_mni_dataset(tmp_path / "Dataset001_MNI", tmp_path / "work")
    recipe = tmp_path / "plans" / "mni.yaml"
    assert _cli(data, "--output", recipe, "--memory-gb", "2") == 0
    cfg = load_config(recipe)
    assert cfg.data.spatial_dims == 3 and cfg.data.spacing == [2.0, 2.0, 2.0]  # the template is at 2 mm
    assert cfg.data.normalization == {"kind": "zscore"}  # T1: per-image z-score
    rc = main(
        [
            "train",
            str(recipe),
            "--device",
            "cpu",
            "--set",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
            "data.samples_per_volume=1",
            "data.num_workers=0",
        ]
    )
    assert rc == 0
    ckpt = Path(cfg.output_dir) / "best.pt"
    assert ckpt.is_file()
    seg = tmp_path / "seg"
    assert main(["segment", str(data / "imagesTs"), "-c", str(ckpt), "-o", str(seg), "--device", "cpu"]) == 0
    for src in (data / "imagesTs").glob("*.nii.gz"):
        a, b = nib.load(str(src)), nib.load(str(seg / src.name))
        assert a.shape == b.shape and np.allclose(a.affine, b.affine)
        assert set(np.unique(np.asanyarray(b.dataobj))) <= {0, 1, 2}


def test_ct_normalisation_2d_and_3d_agree_with_numpy():
    from vmunet.data.transforms import normalize_intensity
    from vmunet.data.volumes3d import intensity_transform

    x = np.random.default_rng(0).normal(0, 500, (6, 5, 4)).astype(np.float32)
    spec = {"kind": "ct", "min": -200.0, "max": 300.0, "mean": 40.0, "std": 80.0}
    want = (np.clip(x.astype(np.float64), -200, 300) - 40) / 80
    np.testing.assert_allclose(normalize_intensity(x, spec), want, rtol=1e-5, atol=1e-5)
    out = intensity_transform(spec)({"image": x[None].copy()})["image"]
    np.testing.assert_allclose(np.asarray(out)[0], want, rtol=1e-5, atol=1e-5)
