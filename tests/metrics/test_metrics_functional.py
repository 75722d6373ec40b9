"""Plain metric functions: hand-computed cases, agreement with medpy and MONAI, empty masks, layouts."""

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from vmunet.metrics import (
    compute_accuracy,
    compute_assd,
    compute_confusion,
    compute_dice,
    compute_hausdorff,
    compute_hd95,
    compute_iou,
    compute_per_case,
    compute_per_class,
    compute_sensitivity,
    compute_specificity,
    compute_surface_distances,
)

medpy_binary = pytest.importorskip("medpy.metric.binary")


def _square(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


# ---------------------------------------------------------------------------------------------- by hand
def test_square_vs_shifted_square_by_hand():
    # a: 3x3 square at rows 2-4, cols 2-4; b: the same shifted one column right.
    a = _square((8, 8), slice(2, 5), slice(2, 5))
    b = _square((8, 8), slice(2, 5), slice(3, 6))
    # overlap 6 pixels of 9 + 9
    assert compute_dice(a, b) == pytest.approx(12 / 18)
    assert compute_iou(a, b) == pytest.approx(6 / 12)
    tp, fp, fn, tn = compute_confusion(a, b)
    assert (tp, fp, fn, tn) == (6, 3, 3, 64 - 12)
    assert compute_sensitivity(a, b) == pytest.approx(6 / 9)
    assert compute_specificity(a, b) == pytest.approx(52 / 55)
    assert compute_accuracy(a, b) == pytest.approx(58 / 64)
    # Surfaces (cross erosion): the 8 border pixels of each square (the centre is interior).
    # Spacing (row 1.0, col 2.0). a -> b, in np.nonzero order of a's surface:
    # (2,2)->(2,3)=2, (2,3)=0, (2,4)=0, (3,2)->(3,3)=2, (3,4)->(2,4)=1, (4,2)->(4,3)=2, (4,3)=0, (4,4)=0
    # b -> a: (2,3)=0, (2,4)=0, (2,5)->(2,4)=2, (3,3)->(2,3)=1, (3,5)->(3,4)=2, (4,3)=0, (4,4)=0, (4,5)=2
    d_ab, d_ba = compute_surface_distances(a, b, spacing=(1.0, 2.0))
    np.testing.assert_allclose(d_ab, [2, 0, 0, 2, 1, 2, 0, 0])
    np.testing.assert_allclose(d_ba, [0, 0, 2, 1, 2, 0, 0, 2])
    # pooled: 8 zeros, 2 ones, 6 twos -> 95th percentile (index 14.25) = 2
    assert compute_hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(2.0)
    assert compute_hausdorff(a, b, spacing=(1.0, 2.0)) == pytest.approx(2.0)
    assert compute_assd(a, b, spacing=(1.0, 2.0)) == pytest.approx(14 / 16)
    assert compute_assd(a, b, spacing=(1.0, 2.0), mode="average") == pytest.approx((7 / 8 + 7 / 8) / 2)
    # unit spacing: every non-zero distance is 1
    assert compute_hd95(a, b) == pytest.approx(1.0)
    assert compute_hd95(torch.from_numpy(a), torch.from_numpy(b).int(), spacing=2.0) == pytest.approx(2.0)


def test_pooled_and_max_differ_by_hand():
    label = _square((10, 12), 5, 5)
    pred = label.copy()
    pred[5, 9] = True
    # pred -> label: [0, 4 * 0.5]; label -> pred: [0]
    # pooled: percentile([0, 0, 2], 95) = 0.9 * 2 = 1.8 ; max: max(percentile([0, 2], 95), 0) = 0.95 * 2 = 1.9
    assert compute_hd95(pred, label, spacing=(1.0, 0.5)) == pytest.approx(1.8)
    assert compute_hd95(pred, label, spacing=(1.0, 0.5), mode="max") == pytest.approx(1.9)
    assert compute_hausdorff(pred, label, spacing=(1.0, 0.5)) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------- references
def _random_mask(rng, shape, sigma):
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    mask = field > 0.3 * field.std()
    # sprinkle isolated pixels: irregular, several components, single-voxel surfaces
    mask[rng.random(shape) < 0.003] = True
    return mask


CASES = [((37, 51), (0.7, 1.9), 2.0), ((19, 26, 23), (0.76, 0.9, 3.0), 1.5)]


@pytest.mark.parametrize("shape,spacing,sigma", CASES)
def test_agrees_with_medpy_pooled(shape, spacing, sigma):
    rng = np.random.default_rng(len(shape))
    for _ in range(4):
        a, b = _random_mask(rng, shape, sigma), _random_mask(rng, shape, sigma)
        assert compute_hd95(a, b, spacing) == pytest.approx(
            medpy_binary.hd95(a, b, voxelspacing=spacing), rel=1e-6
        )
        assert compute_hausdorff(a, b, spacing) == pytest.approx(
            medpy_binary.hd(a, b, voxelspacing=spacing), rel=1e-6
        )
        assert compute_assd(a, b, spacing) == pytest.approx(
            medpy_binary.assd(a, b, voxelspacing=spacing), rel=1e-6
        )
        assert compute_dice(a, b) == pytest.approx(medpy_binary.dc(a, b), rel=1e-12)
        assert compute_iou(a, b) == pytest.approx(medpy_binary.jc(a, b), rel=1e-12)
        assert compute_sensitivity(a, b) == pytest.approx(medpy_binary.sensitivity(a, b), rel=1e-12)
        assert compute_specificity(a, b) == pytest.approx(medpy_binary.specificity(a, b), rel=1e-12)


@pytest.mark.parametrize("shape,spacing,sigma", CASES)
def test_agrees_with_monai_max(shape, spacing, sigma):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(10 + len(shape))
    for _ in range(4):
        a, b = _random_mask(rng, shape, sigma), _random_mask(rng, shape, sigma)
        ta = torch.from_numpy(a)[None, None].float()
        tb = torch.from_numpy(b)[None, None].float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref95 = compute_hausdorff_distance(
                ta, tb, include_background=True, percentile=95, spacing=spacing
            )
            ref = compute_hausdorff_distance(ta, tb, include_background=True, spacing=spacing)
            ref_asd = compute_average_surface_distance(
                ta, tb, include_background=True, symmetric=True, spacing=spacing
            )
        # MONAI returns float32; 1e-6 relative is within its rounding
        assert compute_hd95(a, b, spacing, mode="max") == pytest.approx(float(ref95), rel=1e-6)
        assert compute_hausdorff(a, b, spacing) == pytest.approx(float(ref), rel=1e-6)
        assert compute_assd(a, b, spacing) == pytest.approx(float(ref_asd), rel=1e-6)


def test_mask_touching_the_image_border_matches_medpy():
    rng = np.random.default_rng(3)
    a = _random_mask(rng, (16, 18, 9), 1.0)
    b = _random_mask(rng, (16, 18, 9), 1.0)
    a[0, :, :] = True
    b[:, -1, :] = True
    sp = (1.1, 0.6, 2.5)
    assert compute_hd95(a, b, sp) == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=sp), rel=1e-6)


# ---------------------------------------------------------------------------------------------- empty masks
EMPTY = np.zeros((6, 7), dtype=bool)
FULL = _square((6, 7), slice(1, 4), slice(2, 5))


@pytest.mark.parametrize(
    "pred,label,standard,synapse",
    [
        # (dice, iou, hd95, hd, assd) under each rule
        (FULL, FULL, (1, 1, 0, 0, 0), (1, 1, 0, 0, 0)),
        (FULL, EMPTY, (np.nan,) * 5, (1, 1, 0, 0, 0)),  # TransUNet: pred > 0, gt == 0 -> 1, 0
        (EMPTY, FULL, (0, 0, np.nan, np.nan, np.nan), (0, 0, 0, 0, 0)),  # pred empty -> 0, 0
        (EMPTY, EMPTY, (np.nan,) * 5, (0, 0, 0, 0, 0)),  # TransUNet's else branch: 0, 0
    ],
)
def test_empty_mask_rules(pred, label, standard, synapse):
    for rule, expected in (("standard", standard), ("synapse", synapse)):
        got = (
            compute_dice(pred, label, empty=rule),
            compute_iou(pred, label, empty=rule),
            compute_hd95(pred, label, empty=rule),
            compute_hausdorff(pred, label, empty=rule),
            compute_assd(pred, label, empty=rule),
        )
        np.testing.assert_array_equal(
            np.array(got, dtype=float), np.array(expected, dtype=float), err_msg=rule
        )


def test_sensitivity_specificity_edge_cases():
    assert np.isnan(compute_sensitivity(FULL, EMPTY))
    assert compute_sensitivity(EMPTY, FULL) == 0.0
    ones = np.ones((3, 3), bool)
    assert np.isnan(compute_specificity(ones, ones))
    assert compute_accuracy(EMPTY, EMPTY) == 1.0


# ---------------------------------------------------------------------------------------------- layouts
def test_per_class_labelmap_and_onehot_match_binary_calls():
    rng = np.random.default_rng(5)
    shape, sp = (14, 17, 9), (0.8, 1.2, 2.0)
    label = np.zeros(shape, np.int64)
    pred = np.zeros(shape, np.int64)
    for c in (1, 2, 3):
        label[_random_mask(rng, shape, 1.5)] = c
        pred[_random_mask(rng, shape, 1.5)] = c
    pred[pred == 3] = 0  # class 3 missing from the prediction
    metrics = ("dice", "iou", "hd95", "hd", "assd", "sensitivity", "specificity", "accuracy")
    res = compute_per_class(pred, label, classes=[1, 2, 3, 4], metrics=metrics, spacing=sp)
    np.testing.assert_array_equal(res["classes"], [1, 2, 3, 4])
    for i, c in enumerate([1, 2, 3, 4]):
        p, lab = pred == c, label == c
        np.testing.assert_allclose(res["dice"][i], compute_dice(p, lab), equal_nan=True)
        np.testing.assert_allclose(res["hd95"][i], compute_hd95(p, lab, sp), equal_nan=True)
        np.testing.assert_allclose(res["specificity"][i], compute_specificity(p, lab), equal_nan=True)
        np.testing.assert_allclose(res["accuracy"][i], compute_accuracy(p, lab), equal_nan=True)
        if p.any() and lab.any():
            assert res["hd95"][i] == pytest.approx(medpy_binary.hd95(p, lab, voxelspacing=sp), rel=1e-6)
    assert np.isnan(res["hd95"][2]) and res["dice"][2] == 0.0  # missed class: Dice 0, HD95 unscoreable
    assert np.isnan(res["dice"][3])  # class absent from both
    # default classes: the non-zero values present
    np.testing.assert_array_equal(compute_per_class(pred, label)["classes"], [1, 2, 3])
    # one-hot layout, torch tensors
    oh_p = torch.nn.functional.one_hot(torch.from_numpy(pred), 4).permute(3, 0, 1, 2)
    oh_l = torch.nn.functional.one_hot(torch.from_numpy(label), 4).permute(3, 0, 1, 2)
    res_oh = compute_per_class(oh_p, oh_l, metrics=metrics, spacing=sp, onehot=True)
    np.testing.assert_array_equal(res_oh["classes"], [1, 2, 3])
    for m in metrics:
        np.testing.assert_allclose(res_oh[m], res[m][:3], equal_nan=True)


def test_per_case_batch():
    rng = np.random.default_rng(7)
    label = rng.integers(0, 3, size=(3, 12, 13))
    pred = label.copy()
    pred[:, 3:6, 3:6] = 1
    spacings = [(1.0, 1.0), (0.5, 2.0), (3.0, 1.0)]
    res = compute_per_case(pred, label, classes=[1, 2], spacing=spacings)
    assert res["dice"].shape == (3, 2) and res["hd95"].shape == (3, 2)
    for b in range(3):
        one = compute_per_class(pred[b], label[b], classes=[1, 2], spacing=spacings[b])
        np.testing.assert_allclose(res["hd95"][b], one["hd95"])


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        compute_dice(np.ones((3, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="0/1"):
        compute_dice(np.full((3, 3), 0.7), np.ones((3, 3)))
    with pytest.raises(ValueError, match="mode"):
        compute_hd95(FULL, FULL, mode="mean")
    with pytest.raises(ValueError, match="empty"):
        compute_dice(FULL, FULL, empty="zero")
    with pytest.raises(ValueError, match="spacing"):
        compute_hd95(FULL, FULL, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="spacing"):
        compute_hd95(FULL, FULL, spacing=(1.0, -2.0))
    with pytest.raises(ValueError, match="integer label map"):
        compute_per_class(np.full((3, 3), 0.5), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="metrics"):
        compute_per_class(FULL, FULL, metrics=("dice", "hd99"))
