"""Protocols: ISIC pooled confusion by hand, Synapse on three synthetic volumes, standard NaN rule."""

import math

import numpy as np
import pytest

from vmunet.metrics import SYNAPSE_CLASSES, isic_protocol, standard_protocol, synapse_protocol

medpy_binary = pytest.importorskip("medpy.metric.binary")


# ---------------------------------------------------------------------------------------------- ISIC
def test_isic_pooled_numbers_by_hand():
    # image 1: 4 lesion pixels; pred >= 0.5 on 3 of them (one exactly 0.5), misses one (0.49),
    # and one false positive (0.7). TP 3, FP 1, FN 1, TN 11.
    label1 = np.zeros((4, 4), np.uint8)
    label1[1:3, 1:3] = 255  # stored 0/255 like the ISIC PNGs
    pred1 = np.zeros((4, 4), np.float32)
    pred1[1, 1], pred1[1, 2], pred1[2, 1], pred1[2, 2] = 0.9, 0.5, 0.8, 0.49
    pred1[0, 3] = 0.7
    # image 2: no lesion; two false positives. TP 0, FP 2, FN 0, TN 14.
    label2 = np.zeros((4, 4), np.uint8)
    pred2 = np.zeros((4, 4), np.float32)
    pred2[3, 0] = pred2[3, 1] = 0.95
    res = isic_protocol([pred1, pred2], [label1, label2], case_names=["a", "b"])
    tp, fp, fn, tn = 3, 3, 1, 25
    assert res.summary["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    pooled = res.summary["pooled"]
    assert pooled["miou"] == pytest.approx(3 / 7)
    assert pooled["dsc"] == pytest.approx(6 / 10)
    assert pooled["accuracy"] == pytest.approx(28 / 32)
    assert pooled["sensitivity"] == pytest.approx(3 / 4)
    assert pooled["specificity"] == pytest.approx(25 / 28)
    # per-image rows: Dice of image 1 = 6 / 8, image 2 unscoreable (no lesion)
    rows = {r["case"]: r for r in res.rows}
    assert rows["a"]["dice"] == pytest.approx(6 / 8)
    assert math.isnan(rows["b"]["dice"])


def test_isic_absent_class_does_not_crash():
    # The public code's sklearn confusion matrix is 1 x 1 here and indexing [0, 1] crashes.
    empty = [np.zeros((3, 3))]
    res = isic_protocol(empty, empty)
    pooled = res.summary["pooled"]
    assert pooled["accuracy"] == 1.0 and pooled["specificity"] == 1.0
    assert math.isnan(pooled["dsc"]) and math.isnan(pooled["miou"]) and math.isnan(pooled["sensitivity"])
    pooled0 = isic_protocol(empty, empty, zero_division=0.0).summary["pooled"]
    assert pooled0["dsc"] == 0.0 and pooled0["sensitivity"] == 0.0  # the public code's guard value
    full = [np.ones((3, 3))]
    pooled = isic_protocol(full, full).summary["pooled"]
    assert pooled["dsc"] == 1.0 and math.isnan(pooled["specificity"])


def test_isic_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probabilities"):
        isic_protocol([np.full((2, 2), 1.5)], [np.zeros((2, 2))])


# ---------------------------------------------------------------------------------------------- Synapse
def _transunet_percase(pred, gt):
    """Independent reference: the logic of TransUNet utils.calculate_metric_percase, with medpy."""
    if pred.sum() > 0 and gt.sum() > 0:
        return medpy_binary.dc(pred, gt), medpy_binary.hd95(pred, gt)
    if pred.sum() > 0 and gt.sum() == 0:
        return 1, 0
    return 0, 0


def _box(vol, c, lo, hi):
    vol[tuple(slice(a, b) for a, b in zip(lo, hi))] = c


def _synthetic_synapse():
    shape = (30, 22, 12)
    labels, preds = [], []
    for case in range(3):
        lab = np.zeros(shape, np.uint8)
        for c in range(1, 9):
            if case == 1 and c == 2:
                continue  # organ 2 absent from the label of case 1
            x = 1 + (c - 1) % 4 * 7  # room for a 2-voxel shift without touching the next organ
            y = 1 + (c - 1) // 4 * 10
            _box(lab, c, (x, y, 2), (x + 4, y + 6, 8))
        pred = np.zeros_like(lab)
        for c in range(1, 9):
            if case == 2 and c == 3:
                continue  # organ 3 missed by the prediction of case 2
            m = lab == c
            if case == 1 and c == 2:
                m = np.zeros_like(m)
                _box(m, True, (6, 1, 2), (8, 4, 5))  # predicted although absent: Dice 1, HD95 0
            shift = (case + c) % 3  # 0, 1 or 2 voxels along axis 0
            pred[np.roll(m, shift, axis=0)] = c
        labels.append(lab)
        preds.append(pred)
    return preds, labels


def test_synapse_protocol_on_three_volumes():
    preds, labels = _synthetic_synapse()
    res = synapse_protocol(preds, labels, case_names=["v1", "v2", "v3"])
    assert res.classes == SYNAPSE_CLASSES
    # reference: the public aggregation (sum over cases / n, then mean over organs)
    ref = np.zeros((8, 2))
    for p, lab in zip(preds, labels):
        ref += np.array([_transunet_percase(p == c, lab == c) for c in range(1, 9)], dtype=float)
    ref /= 3
    for i, name in enumerate(SYNAPSE_CLASSES.values()):
        assert res.summary["per_class"][name]["dice"]["mean"] == pytest.approx(ref[i, 0], rel=1e-9)
        assert res.summary["per_class"][name]["hd95"]["mean"] == pytest.approx(ref[i, 1], rel=1e-6)
    assert res.summary["mean"]["dice"] == pytest.approx(ref[:, 0].mean(), rel=1e-9)
    assert res.summary["mean"]["hd95"] == pytest.approx(ref[:, 1].mean(), rel=1e-6)
    rows = {(r["case"], r["class_id"]): r for r in res.rows}
    # known answers by hand: a 4x6x6 box shifted by one voxel: Dice 2*(3*6*6)/(2*4*6*6) = 0.75
    assert rows[("v1", 1)]["dice"] == pytest.approx(0.75)  # case 0, organ 1: shift 1
    assert rows[("v1", 2)]["dice"] == pytest.approx(0.5)  # shift 2: 2*(2*36)/(2*144)
    assert rows[("v1", 3)]["dice"] == 1.0 and rows[("v1", 3)]["hd95"] == 0.0  # shift 0
    assert (rows[("v2", 2)]["dice"], rows[("v2", 2)]["hd95"]) == (1.0, 0.0)  # absent but predicted
    assert (rows[("v3", 3)]["dice"], rows[("v3", 3)]["hd95"]) == (0.0, 0.0)  # missed
    assert res.settings["hd95_units"] == "voxel"


def test_synapse_protocol_in_mm():
    preds, labels = _synthetic_synapse()
    sp = [(0.8, 0.8, 3.0), (0.7, 0.7, 2.5), (0.9, 0.9, 5.0)]
    res = synapse_protocol(preds, labels, spacings=sp, hd95_units="mm")
    rows = {(r["case"], r["class_id"]): r for r in res.rows}
    expected = medpy_binary.hd95(preds[0] == 1, labels[0] == 1, voxelspacing=sp[0])
    assert rows[("case0000", 1)]["hd95"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="spacings"):
        synapse_protocol(preds, labels, hd95_units="mm")


# ---------------------------------------------------------------------------------------------- standard
def test_standard_protocol_nan_rule_and_counts():
    lab = np.zeros((10, 10), np.uint8)
    lab[2:6, 2:6] = 1
    lab[7:9, 7:9] = 2
    good = lab.copy()
    missed = lab.copy()
    missed[missed == 2] = 0  # class 2 missed -> Dice 0, HD95 NaN
    no_class2 = lab.copy()
    no_class2[no_class2 == 2] = 0  # class 2 absent from label and prediction -> both NaN
    res = standard_protocol(
        [good, missed, no_class2], [lab, lab, no_class2], spacings=[(0.5, 0.5)] * 3, case_names=list("abc")
    )
    dice2 = res.summary["per_class"]["2"]["dice"]
    assert dice2["n"] == 2 and dice2["n_nan"] == 1 and dice2["mean"] == pytest.approx(0.5)
    assert dice2["std"] == pytest.approx(0.5)
    hd2 = res.summary["per_class"]["2"]["hd95"]
    assert hd2["n"] == 1 and hd2["n_nan"] == 2 and hd2["mean"] == 0.0
    assert res.summary["per_class"]["1"]["dice"]["mean"] == 1.0
    assert res.summary["mean"]["dice"] == pytest.approx((1.0 + 0.5) / 2)
    rows = {(r["case"], r["class_id"]): r for r in res.rows}
    assert math.isnan(rows[("c", 2)]["dice"]) and math.isnan(rows[("b", 2)]["hd95"])


def test_standard_protocol_hd95_in_spacing_units_and_names():
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 1
    b = np.roll(a, 1, axis=1)
    res = standard_protocol([b], [a], spacings=[(1.0, 2.0)], classes={1: "lesion"})
    assert res.summary["per_class"]["lesion"]["hd95"]["mean"] == pytest.approx(2.0)
    csv_text = res.csv_text().splitlines()
    assert csv_text[0] == "case,class_id,class_name,dice,hd95"
    assert csv_text[1].startswith("case0000,1,lesion,0.666")
