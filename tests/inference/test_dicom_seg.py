"""DICOM SEG writer: segments, codes, references and frame placement, read back with highdicom and pydicom.

The source is a real image (a slab of nilearn's MNI152 T1 template) written as a multi-file MR
series whose file names and InstanceNumbers are shuffled. Two independent references:

* the fixture's own record of which slice of its volume went into which SOP instance (and the
  grey / white matter labels of that volume);
* a label map that is a pointwise function of the intensities (two thresholds): the frame of
  every referenced instance must equal that function of the instance's own pixels, read with
  pydicom, whatever the geometry (the slab is off-centre and non-square, so a flipped or
  transposed frame differs).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

import highdicom as hd  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

from vmunet.data.io import ImageData, read_image, write_image  # noqa: E402
from vmunet.errors import VmunetUserError  # noqa: E402
from vmunet.inference.dicom_seg import (  # noqa: E402
    DicomSegWriter,
    SegmentCode,
    dicom_seg_path,
    segment_code,
    write_dicom_seg,
    write_prediction_dicom_seg,
)
from vmunet.inference.spec import Prediction  # noqa: E402

from ._dicom_fixtures import AXIAL, CORONAL_OBLIQUE, mni_slab, write_dicom_series  # noqa: E402

NAMES = ["background", "grey_matter", "white_matter", "lesion"]  # "lesion" is empty in every case
ORIENTATIONS = {
    "axial": AXIAL,
    "coronal_oblique": CORONAL_OBLIQUE,
    "feet_first": np.diag([1.0, 1.0, -1.0]),  # slices written against the normal: read_image reverses them
}


@pytest.fixture(scope="module")
def slab():
    return mni_slab()


@pytest.fixture(scope="module")
def series_of(slab, tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    t1, _, spacing = slab
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = write_dicom_series(
                root / name, t1, spacing, direction=ORIENTATIONS[name], seed=len(made)
            )
        return made[name]

    return get


def _fixture_to_read_grid(volume: np.ndarray, series, img) -> np.ndarray:
    """Re-index a fixture volume onto read_image's grid through the physical slice positions."""
    m = np.asarray(img.direction) @ np.diag(img.spacing)
    out = np.empty_like(volume)
    for k in range(volume.shape[2]):
        pos = np.asarray(img.origin) + m[:, 2] * k
        j = int(np.argmin(np.linalg.norm(series.positions - pos, axis=1)))
        assert np.linalg.norm(series.positions[j] - pos) < 1e-3
        out[:, :, k] = volume[:, :, j]
    return out


def _thresholds(values: np.ndarray, t1: float, t2: float) -> np.ndarray:
    lab = np.zeros(values.shape, np.uint8)
    lab[values >= t1] = 1
    lab[values >= t2] = 2
    return lab


def _frames_by_pydicom(path):
    """(segment number, referenced SOP instance UID, ImagePositionPatient, frame) for every frame."""
    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    out = []
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        seg_no = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        pos = np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        out.append((seg_no, uid, pos, pixels[i]))
    return ds, out


# --------------------------------------------------------------------------- codes


def test_segment_codes():
    c = segment_code("spleen")
    assert (c.category.value, c.type.value, c.modifier, c.known) == ("91723000", "78961009", None, True)
    c = segment_code("kidney_left")
    assert (c.type.meaning, c.modifier.value, c.modifier.meaning) == ("Kidney", "7771000", "Left")
    c = segment_code("Right-Adrenal-Gland")
    assert (c.type.value, c.modifier.meaning) == ("23451007", "Right")
    c = segment_code("grey_matter")
    assert (c.category.meaning, c.type.value) == ("Tissue", "389081007")
    c = segment_code("Lesion")
    assert (c.category.value, c.type.value) == ("49755003", "52988006")
    c = segment_code("class_3")
    assert (c.category.value, c.type.value, c.known) == ("85756007", "85756007", False)
    own = SegmentCode(codes.SCT.AnatomicalStructure, codes.SCT.Liver)
    assert segment_code("class_3", {"class_3": own}) is own
    for name in ("aorta", "gallbladder", "liver", "pancreas", "stomach", "kidney_right"):
        assert segment_code(name).known and segment_code(name).category.meaning == "Anatomical Structure"


def test_dicom_seg_path():
    assert dicom_seg_path("out/a/ct_series.nii.gz").as_posix() == "out/a/ct_series_seg.dcm"


# --------------------------------------------------------------------------- the real labels


def test_segments_references_and_frames(slab, series_of, tmp_path):
    """Grey / white matter labels of the real template: checked against the fixture's own slice record."""
    _, truth, _ = slab
    series = series_of("axial")
    img = read_image(series.folder)
    labels = _fixture_to_read_grid(truth, series, img)
    out = write_dicom_seg(labels, series.folder, NAMES, tmp_path / "seg.dcm", model_name="vmunet3d_tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]  # no temporary file left behind

    ds, frames = _frames_by_pydicom(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    referenced = {
        str(r.ReferencedSOPInstanceUID) for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(series.sop_instance_uids)

    # one frame per (slice, class present on it), none for the empty class
    slice_of = series.slice_of()
    expected = {(v, k) for k in range(truth.shape[2]) for v in (1, 2) if (truth[:, :, k] == v).any()}
    assert {(s, slice_of[u]) for s, u, _, _ in frames} == expected
    assert len(frames) == len(expected)
    for seg_no, uid, pos, frame in frames:
        k = slice_of[uid]
        np.testing.assert_allclose(pos, series.positions[k], atol=1e-3)
        np.testing.assert_array_equal(frame, (truth[:, :, k].T == seg_no).astype(frame.dtype))

    seg = hd.seg.segread(out)
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2, 3]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == NAMES[1:]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    cats = [s.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning for s in seg.SegmentSequence]
    assert types == ["389081007", "389080008", "52988006"]
    assert cats == ["Tissue", "Tissue", "Morphologically Abnormal Structure"]
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmName == "vmunet" and "vmunet3d_tiny" in alg.AlgorithmParameters
    px = seg.get_pixels_by_source_instance(
        series.sop_instance_uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(px, np.moveaxis(truth, 2, 0).transpose(0, 2, 1))


# --------------------------------------------------------------------------- placement, every orientation


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_frames_match_their_source_instance(orientation, series_of, tmp_path):
    """A pointwise label of the intensities: each frame equals that label of its own instance's pixels."""
    series = series_of(orientation)
    img = read_image(series.folder)
    t1, t2 = np.percentile(img.array, [40, 75])
    labels = _thresholds(img.array, t1, t2)
    pred = Prediction(labels, None, img, tuple(NAMES))
    out = write_prediction_dicom_seg(pred, tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    assert int(seg.NumberOfFrames) == sum(
        int((labels[:, :, k] == v).any()) for k in range(12) for v in (1, 2)
    )

    checked = 0
    for f in series.files:
        src = pydicom.dcmread(str(f))
        values = src.pixel_array * float(src.RescaleSlope) + float(src.RescaleIntercept)
        expected = _thresholds(values, t1, t2)
        got = seg.get_pixels_by_source_instance(
            [src.SOPInstanceUID], combine_segments=True, assert_missing_frames_are_empty=True
        )[0]
        np.testing.assert_array_equal(got, expected)
        # the check can fail: neither flip of the frame is the frame
        assert not np.array_equal(expected, expected[::-1]) and not np.array_equal(
            expected, expected[:, ::-1]
        )
        checked += 1
    assert checked == 12

    # round trip on read_image's grid: segment k's frames stacked in read_image's slice order
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in img.meta["dicom_files"]]
    for k in (1, 2, 3):
        stack = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[k], assert_missing_frames_are_empty=True
        )
        np.testing.assert_array_equal(stack[..., 0].transpose(2, 1, 0), (labels == k).astype(stack.dtype))


def test_file_list_without_image_and_all_frames(series_of, tmp_path):
    """A list of files (no ImageData): the grid is built from the headers exactly as read_image builds it."""
    series = series_of("feet_first")
    img = read_image(series.folder)
    labels = _thresholds(img.array, *np.percentile(img.array, [40, 75]))
    by_name = sorted(series.files)
    assert by_name != series.files and by_name != series.files[::-1]  # names are not in slice order
    a = write_dicom_seg(labels, series.folder, NAMES, tmp_path / "a.dcm")
    b = write_dicom_seg(labels, by_name, NAMES, tmp_path / "b.dcm", omit_empty_frames=False)
    pa = hd.seg.segread(a).get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    pb = hd.seg.segread(b).get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    np.testing.assert_array_equal(pa, pb)
    assert int(pydicom.dcmread(str(b)).NumberOfFrames) == 12 * 3


def test_segmenter_prediction_to_seg(ct_checkpoint, slab, tmp_path):
    """A real (tiny, random-weight) checkpoint's prediction on the series, written in one call."""
    from vmunet.inference import Segmenter

    t1, _, spacing = slab
    series = write_dicom_series(tmp_path / "short", t1[:, :, 4:8], spacing, modality="CT")  # 4 slices: fast
    pred = Segmenter(ct_checkpoint, device="cpu").predict(series.folder)
    assert pred.labels.shape == (64, 48, 4)
    out = write_prediction_dicom_seg(
        pred, dicom_seg_path(tmp_path / "series.nii.gz"), model_name="vmunet_tiny"
    )
    assert out.name == "series_seg.dcm"
    seg = hd.seg.segread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "kidney"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence] == [
        "Liver",
        "Kidney",
    ]
    assert len(np.unique(pred.labels)) > 1
    truth = _fixture_to_read_grid(pred.labels, series, pred.image)  # identity for this axial series
    px = seg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    np.testing.assert_array_equal(px, np.moveaxis(truth, 2, 0).transpose(0, 2, 1))


def test_segment_folder_writer(ct_checkpoint, slab, tmp_path):
    """``segment_folder(..., writers=[DicomSegWriter()])``: a SEG beside the mask of each DICOM input only."""
    from vmunet.inference import Segmenter

    t1, _, spacing = slab
    series = write_dicom_series(tmp_path / "in" / "ct_series", t1[:, :, 2:5], spacing, modality="CT")
    write_image(tmp_path / "in" / "vol.nii.gz", t1[:, :, 2:5].astype(np.float32))
    out = tmp_path / "out"
    seg = Segmenter(ct_checkpoint, device="cpu")
    summary = seg.segment_folder(
        [tmp_path / "in"], out, progress=False, writers=[DicomSegWriter("vmunet_tiny")]
    )
    assert summary.n_ok == 2 and summary.n_failed == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "ct_series.nii.gz",
        "ct_series_seg.dcm",
        "summary.csv",
        "vol.nii.gz",
    ]
    mask = read_image(out / "ct_series.nii.gz").array
    dseg = hd.seg.segread(out / "ct_series_seg.dcm")
    px = dseg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    truth = _fixture_to_read_grid(mask, series, read_image(series.folder))
    np.testing.assert_array_equal(px, np.moveaxis(truth, 2, 0).transpose(0, 2, 1))
    assert dseg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters == (
        "model=vmunet_tiny"
    )
    again = seg.segment_folder(
        [tmp_path / "in"], out, progress=False, writers=[DicomSegWriter("vmunet_tiny")]
    )
    assert again.n_skipped == 2  # the SEG counts for resume


# --------------------------------------------------------------------------- bad input


def test_non_dicom_input_is_a_user_error(slab, series_of, tmp_path):
    t1, labels, spacing = slab
    nii = tmp_path / "t1.nii.gz"
    write_image(nii, t1.astype(np.float32), like=None)
    with pytest.raises(
        VmunetUserError, match=r"t1\.nii\.gz: a DICOM SEG needs DICOM .*got a nifti file"
    ) as e:
        write_dicom_seg(labels, nii, NAMES, tmp_path / "x.dcm")
    assert "\n" not in str(e.value)
    pred = Prediction(labels, None, read_image(nii), tuple(NAMES))
    with pytest.raises(VmunetUserError, match=r"t1\.nii\.gz"):
        write_prediction_dicom_seg(pred, tmp_path / "x.dcm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VmunetUserError, match="empty: .*holds no DICOM series"):
        write_dicom_seg(labels, empty, NAMES, tmp_path / "x.dcm")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(VmunetUserError, match=r"junk\.dcm"):
        write_dicom_seg(labels, [junk], NAMES, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_labels_that_do_not_fit(slab, series_of, tmp_path):
    _, labels, _ = slab
    series = series_of("axial")
    with pytest.raises(ValueError, match="labels: values 0..2"):
        write_dicom_seg(labels, series.folder, ["background", "grey_matter"], tmp_path / "x.dcm")
    with pytest.raises(ValueError, match=r"shape \(64, 48, 11\)"):
        write_dicom_seg(labels[:, :, :11], series.folder, NAMES, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match=r"shape \(48, 64, 12\)"):
        write_dicom_seg(labels.transpose(1, 0, 2), series.folder, NAMES, tmp_path / "x.dcm")
    # the geometry of another series (the coronal one) does not fit these instances
    other = read_image(series_of("coronal_oblique").folder)
    with pytest.raises(VmunetUserError, match="another folder"):
        write_dicom_seg(labels, series.folder, NAMES, tmp_path / "x.dcm", image=other)
    bare = ImageData(other.array, other.spacing, other.origin, other.direction, format="dicom")
    with pytest.raises(VmunetUserError, match="ImageOrientationPatient"):
        write_dicom_seg(labels, series.folder, NAMES, tmp_path / "x.dcm", image=bare)
    assert not list(tmp_path.iterdir())


def test_all_empty_label_map(series_of, tmp_path):
    """Nothing found: highdicom keeps every (empty) frame rather than an object without pixels."""
    series = series_of("axial")
    labels = np.zeros((64, 48, 12), np.uint8)
    seg = hd.seg.segread(write_dicom_seg(labels, series.folder, NAMES, tmp_path / "seg.dcm"))
    assert len(seg.SegmentSequence) == 3 and int(seg.NumberOfFrames) >= 12
    px = seg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    assert px.shape == (12, 48, 64) and not px.any()


# --------------------------------------------------------------------------- the command line


def test_cli_dicom_seg_writes_a_seg_readable_by_highdicom_and_pydicom(ct_checkpoint, slab, tmp_path):
    from vmunet.cli.main import main

    t1, _, spacing = slab
    series = write_dicom_series(tmp_path / "in" / "ct_series", t1[:, :, 3:6], spacing, modality="CT")
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "-c", str(ct_checkpoint), "-o", str(out), "--device", "cpu"]
    assert main([*argv, "--dicom-seg", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ct_series.nii.gz", "ct_series_seg.dcm", "summary.csv"]
    ds = pydicom.dcmread(out / "ct_series_seg.dcm")
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    referenced = {
        ref.ReferencedSOPInstanceUID
        for item in ds.ReferencedSeriesSequence
        for ref in item.ReferencedInstanceSequence
    }
    assert referenced == set(series.sop_instance_uids)
    dseg = hd.seg.segread(out / "ct_series_seg.dcm")
    assert [s.SegmentNumber for s in dseg.SegmentSequence] == [1, 2]
    mask = read_image(out / "ct_series.nii.gz").array
    px = dseg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    truth = _fixture_to_read_grid(mask, series, read_image(series.folder))
    np.testing.assert_array_equal(px, np.moveaxis(truth, 2, 0).transpose(0, 2, 1))


def test_cli_dicom_seg_on_a_nifti_input_is_one_line_exit_2(ct_checkpoint, slab, tmp_path, capsys):
    from vmunet.cli.main import main

    t1, _, spacing = slab
    write_image(tmp_path / "in" / "vol.nii.gz", t1[:, :, 2:5].astype(np.float32))
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "-c", str(ct_checkpoint), "-o", str(out), "--dicom-seg"]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dicom-seg" in err[0] and "vol.nii.gz" in err[0] and "nifti" in err[0], err
    assert not out.exists() or not list(out.iterdir())  # nothing segmented, nothing half-written
