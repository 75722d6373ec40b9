"""Segmenter on stand-in modules: channels, normalisation, bad inputs, bad checkpoints."""

import numpy as np
import pytest
import torch

from vmunet.data import ImageData, normalize_intensity
from vmunet.errors import InputFileError, VmunetUserError
from vmunet.inference import InferenceSpec, Segmenter


class Capture(torch.nn.Module):
    """Returns logits (x[:, :1] - 0.5, 0.5 - x[:, :1]) * 10 and keeps every input it saw."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return torch.cat([(0.5 - x[:, :1]) * 10, (x[:, :1] - 0.5) * 10], dim=1)


def _seg(in_channels=1, normalization=None, **kw):
    info = {
        "in_channels": in_channels,
        "out_channels": 2,
        "input_size": [32, 32],
        "normalization": normalization or {"kind": "none"},
    }
    net = Capture()
    return Segmenter(net, inference=info, device="cpu", **kw), net


def test_2d_labels_follow_the_normalised_threshold():
    seg, _ = _seg(normalization={"kind": "window", "min": 0, "max": 100})
    img = np.random.default_rng(0).integers(0, 100, size=(45, 70)).astype(np.uint8)
    pred = seg.predict(img)
    assert pred.labels.shape == img.shape and pred.labels.dtype == np.uint8
    # Label 1 exactly where the windowed value is above 0.5 (ties excluded).
    keep = img != 50
    np.testing.assert_array_equal(pred.labels[keep], (img[keep] > 50).astype(np.uint8))
    assert pred.class_names == ("background", "class_1")
    assert pred.voxel_counts()["class_1"] == int((pred.labels == 1).sum())


def test_volume_slices_are_normalised_one_by_one_like_training():
    seg, net = _seg(normalization={"kind": "zscore"}, batch_size=3, axis=1)
    vol = np.random.default_rng(1).normal(50, 20, size=(20, 7, 24)).astype(np.float32)
    vol[:, 3] += 100  # one slice far brighter: per-slice and whole-volume zscore differ
    pred = seg.predict(ImageData(vol, spacing=(1.0, 2.0, 3.0), format="nifti"), return_probabilities=True)
    assert pred.axis == 1 and pred.labels.shape == vol.shape
    seen = torch.cat(net.inputs)[:, 0].numpy()  # every slice the model saw, in order
    expected = np.stack([normalize_intensity(vol[:, k], {"kind": "zscore"}) for k in range(7)])
    np.testing.assert_allclose(seen[:, :20, :24], expected, atol=1e-5)
    assert pred.probabilities.shape == (*vol.shape, 2)
    np.testing.assert_allclose(pred.probabilities.sum(-1), 1.0, atol=1e-5)


def test_default_axis_is_the_axial_one_from_the_direction():
    seg, _ = _seg()
    vol = np.zeros((6, 8, 10), np.float32)
    d = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)  # array axis 0 runs along z
    pred = seg.predict(ImageData(vol, spacing=(2.0, 1.0, 1.0), direction=d, format="nrrd"))
    assert pred.axis == 0


def test_channel_conversion_and_wrong_channel_count():
    seg3, net3 = _seg(in_channels=3)
    gray = np.random.default_rng(2).random((32, 32)).astype(np.float32)
    seg3.predict(gray)
    x = net3.inputs[-1][0]
    assert x.shape[0] == 3 and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # repeated like training
    rgba = np.random.default_rng(3).random((32, 32, 4)).astype(np.float32)
    seg3.predict(rgba)
    np.testing.assert_allclose(net3.inputs[-1][0].numpy(), np.moveaxis(rgba[..., :3], -1, 0))
    two = np.zeros((32, 32, 2), np.float32)
    with pytest.raises(ValueError, match="2 channel.*expects 3"):
        seg3.predict(two, is_volume=False)
    seg5, _ = _seg(in_channels=5)
    with pytest.raises(InputFileError, match=r"x\.nii\.gz: image has 1 channel.*expects 5"):
        seg5.predict(ImageData(np.zeros((4, 4, 4)), format="nifti", path="x.nii.gz"))


def test_nan_and_empty_inputs_get_clear_messages(tmp_path):
    seg, _ = _seg()
    bad = np.ones((40, 40), np.float32)
    bad[3, 4] = np.nan
    bad[5, 6] = np.inf
    with pytest.raises(ValueError, match=r"1 NaN value\(s\) and 1 infinite"):
        seg.predict(bad)
    with pytest.raises(InputFileError, match="scan.nii.gz: .*NaN"):
        seg.predict(ImageData(np.full((4, 4, 4), np.nan), format="nifti", path=tmp_path / "scan.nii.gz"))
    with pytest.raises(ValueError, match="no pixels"):
        seg.predict(np.zeros((0, 5), np.float32))


def test_bad_arguments():
    net = Capture()
    info = {"in_channels": 1, "out_channels": 2}
    for kw, word in [
        ({"batch_size": 0}, "batch_size"),
        ({"overlap": 1.5}, "overlap"),
        ({"axis": 3}, "axis"),
        ({"device": "tpu"}, "device"),
        ({"probability_dtype": "float16"}, "probability_dtype"),
    ]:
        with pytest.raises(ValueError, match=word):
            Segmenter(net, inference=info, **kw)
    with pytest.raises(ValueError, match="inference"):
        Segmenter(net)
    if not torch.cuda.is_available():
        with pytest.raises(VmunetUserError, match="no CUDA"):
            Segmenter(net, inference=info, device="cuda")


def test_inference_spec_validation_names_the_key():
    with pytest.raises(VmunetUserError, match="inference.input_size"):
        InferenceSpec.from_dict({"in_channels": 1, "out_channels": 2, "input_size": [50, 64]})
    with pytest.raises(VmunetUserError, match="inference.spatial_dims"):
        InferenceSpec.from_dict({"in_channels": 1, "out_channels": 2, "spatial_dims": 4})
    with pytest.raises(VmunetUserError, match=r"inference.input_size must be the 3-D patch"):
        InferenceSpec.from_dict(
            {"in_channels": 1, "out_channels": 2, "spatial_dims": 3, "input_size": [32, 32]}
        )
    with pytest.raises(VmunetUserError, match=r"inference.spacing"):
        InferenceSpec.from_dict(
            {
                "in_channels": 1,
                "out_channels": 2,
                "spatial_dims": 3,
                "input_size": [8, 8, 8],
                "spacing": [1, 0, 1],
            }
        )
    with pytest.raises(VmunetUserError, match="inference.resize"):
        InferenceSpec.from_dict({"in_channels": 1, "out_channels": 1, "resize": True})
    spec = InferenceSpec.from_dict({"in_channels": 3, "out_channels": 1, "class_names": ["lesion"]})
    assert spec.activation == "sigmoid" and spec.class_names == ("background", "lesion")


def test_bad_checkpoints_are_one_line_user_errors(tmp_path):
    with pytest.raises(VmunetUserError, match="no such file"):
        Segmenter(tmp_path / "missing.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(VmunetUserError, match="not a vmunet checkpoint"):
        Segmenter(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VmunetUserError, match="junk.pt"):
        Segmenter(tmp_path / "junk.pt")
