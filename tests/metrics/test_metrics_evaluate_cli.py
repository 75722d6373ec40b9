"""``vmunet evaluate`` / evaluate_folders on temporary folders with a corrupt file and a shape mismatch."""

import csv
import json
import math

import numpy as np
import pytest

from vmunet.cli.main import main
from vmunet.data import ImageData, write_image
from vmunet.metrics import compute_per_class, evaluate_folders

medpy_binary = pytest.importorskip("medpy.metric.binary")

SPACING = (0.8, 0.7, 2.5)


def _volume(seed):
    rng = np.random.default_rng(seed)
    lab = np.zeros((16, 18, 8), np.uint8)
    lab[3:10, 4:12, 2:6] = 1
    lab[11:15, 2:7, 1:7] = 2
    pred = np.roll(lab, int(rng.integers(1, 3)), axis=0)
    return pred, lab


@pytest.fixture()
def folders(tmp_path):
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "label"
    like = ImageData(np.zeros((16, 18, 8)), spacing=SPACING, format="nifti")
    cases = {}
    for i in range(3):
        pred, lab = _volume(i)
        write_image(label_dir / f"case{i}.nii.gz", lab, like=like)
        write_image(pred_dir / f"case{i}.nii.gz", pred, like=like)
        cases[f"case{i}"] = (pred, lab)
    # a corrupt prediction, a shape mismatch, and a label without a prediction
    write_image(label_dir / "corrupt.nii.gz", cases["case0"][1], like=like)
    (pred_dir / "corrupt.nii.gz").write_bytes(b"this is not a NIfTI file")
    write_image(label_dir / "mismatch.nii.gz", cases["case0"][1], like=like)
    write_image(pred_dir / "mismatch.nii.gz", cases["case0"][0][:, :, :5], like=like)
    write_image(label_dir / "lonely.nii.gz", cases["case0"][1], like=like)
    return pred_dir, label_dir, cases


def test_cli_scores_good_cases_and_reports_the_bad_ones(folders, tmp_path, capsys, caplog):
    pred_dir, label_dir, cases = folders
    before = sorted(p.name for p in pred_dir.iterdir()) + sorted(p.name for p in label_dir.iterdir())
    out = tmp_path / "results" / "eval.json"
    rc = main(["evaluate", "--pred", str(pred_dir), "--label", str(label_dir), "--output", str(out)])
    assert rc == 1  # some cases were skipped
    printed = capsys.readouterr()
    assert "skipped 3 case(s)" in printed.out
    # one line per problem, naming the file
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("corrupt.nii.gz" in w and "cannot read" in w for w in warnings)
    assert any("mismatch.nii.gz" in w and "shape" in w for w in warnings)
    assert any("lonely.nii.gz" in w and "no prediction" in w for w in warnings)
    # the inputs are untouched
    after = sorted(p.name for p in pred_dir.iterdir()) + sorted(p.name for p in label_dir.iterdir())
    assert before == after

    summary = json.loads(out.read_text())
    assert summary["n_scored"] == 3 and summary["n_skipped"] == 3
    assert summary["skipped_by_reason"] == {"unreadable": 1, "shape_mismatch": 1, "missing_prediction": 1}
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2
    # values: spacing taken from the label header; HD95 against medpy
    for row in rows:
        pred, lab = cases[row["case"]]
        c = int(row["class_id"])
        ref = medpy_binary.hd95(pred == c, lab == c, voxelspacing=SPACING)
        assert float(row["hd95"]) == pytest.approx(ref, rel=1e-5)
        assert float(row["dice"]) == pytest.approx(medpy_binary.dc(pred == c, lab == c))
    dice_1 = [float(r["dice"]) for r in rows if r["class_id"] == "1"]
    assert summary["summary"]["per_class"]["1"]["dice"]["mean"] == pytest.approx(np.mean(dice_1))
    assert not list(out.parent.glob(".*"))  # no temporary files left behind


def test_cli_synapse_protocol_with_labels_json(folders, tmp_path):
    pred_dir, label_dir, cases = folders
    names = tmp_path / "dataset.json"
    names.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    out = tmp_path / "syn"
    rc = main(
        ["evaluate", "--pred", str(pred_dir), "--label", str(label_dir), "--protocol", "synapse"]
        + ["--labels", str(names), "--output", str(out), "--no-progress"]
    )
    assert rc == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == {"1": "liver", "2": "spleen"}
    assert summary["settings"]["hd95_units"] == "voxel"
    pred, lab = cases["case1"]
    ref = medpy_binary.hd95(pred == 2, lab == 2)  # voxels, like the papers
    with open(out / "per_case.csv", newline="") as fh:
        rows = {(r["case"], r["class_name"]): r for r in csv.DictReader(fh)}
    assert float(rows[("case1", "spleen")]["hd95"]) == pytest.approx(ref, rel=1e-6)


def test_isic_folder_with_segmentation_suffix(tmp_path):
    pred_dir, label_dir = tmp_path / "p", tmp_path / "l"
    lab = np.zeros((6, 6), np.uint8)
    lab[1:4, 1:4] = 255
    prob = np.zeros((6, 6), np.uint8)
    prob[1:4, 1:3] = 200  # 200 / 255 >= 0.5
    prob[5, 5] = 100  # 100 / 255 < 0.5
    write_image(label_dir / "ISIC_0001_segmentation.png", lab)
    write_image(pred_dir / "ISIC_0001.png", prob)
    write_image(
        label_dir / "ISIC_0002_segmentation.png", (np.zeros((6, 6, 3)) + [0, 255, 0]).astype(np.uint8)
    )  # colour
    write_image(pred_dir / "ISIC_0002.png", prob)
    res = evaluate_folders(pred_dir, label_dir, protocol="isic", progress=False)
    assert res.n_scored == 1 and res.skipped[0]["kind"] == "invalid_values"
    assert res.summary["confusion"] == {"tp": 6, "fp": 0, "fn": 3, "tn": 27}
    assert res.summary["pooled"]["dsc"] == pytest.approx(12 / 15)


def test_standard_folder_of_png_masks_reads_255_as_foreground(tmp_path):
    pred_dir, label_dir = tmp_path / "p", tmp_path / "l"
    lab = np.zeros((8, 8), np.uint8)
    lab[2:5, 2:5] = 255
    write_image(label_dir / "a.png", lab)
    write_image(pred_dir / "a.png", np.roll(lab, 1, axis=1))
    res = evaluate_folders(pred_dir, label_dir, progress=False)
    assert list(res.classes) == [1]
    ref = compute_per_class(np.roll(lab, 1, axis=1) > 0, lab > 0, classes=[1])
    assert res.rows[0]["dice"] == pytest.approx(ref["dice"][0])


def test_user_errors_exit_2(tmp_path, capsys):
    rc = main(["evaluate", "--pred", str(tmp_path / "nope"), "--label", str(tmp_path)])
    assert rc == 2
    assert "--pred" in capsys.readouterr().err
    (tmp_path / "p").mkdir()
    rc = main(["evaluate", "--pred", str(tmp_path / "p"), "--label", str(tmp_path), "--labels", "{bad json"])
    assert rc == 2


def test_non_integer_label_is_skipped(tmp_path):
    pred_dir, label_dir = tmp_path / "p", tmp_path / "l"
    pred_dir.mkdir()
    label_dir.mkdir()
    np.save(label_dir / "x.npy", np.full((4, 4), 0.5))
    np.save(pred_dir / "x.npy", np.zeros((4, 4), np.uint8))
    res = evaluate_folders(pred_dir, label_dir, progress=False)
    assert res.n_scored == 0 and "non-integer" in res.skipped[0]["reason"]
    assert "x.npy" in res.skipped[0]["file"]
    assert math.isnan(res.summary["mean"]["dice"])
