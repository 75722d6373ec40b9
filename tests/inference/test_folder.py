"""Folder segmentation with a real (tiny, random) checkpoint: geometry, formats, failures, resume, CLI."""

import csv
import hashlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from vmunet.cli.main import main
from vmunet.inference import Segmenter
from vmunet.inference.folder import collect_inputs


def _oblique_affine():
    # Rotation about two axes, anisotropic spacing, non-zero origin.
    a, b = np.deg2rad(20), np.deg2rad(-12)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.9, 0.7, 2.5])
    aff[:3, 3] = [-30.0, 12.5, 40.0]
    return aff


def _itk_volume(shape_zyx, seed):
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(-400, 500, size=shape_zyx).astype(np.int16))
    img.SetSpacing((0.8, 1.3, 3.0))
    img.SetOrigin((10.0, -20.0, 5.5))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, 0.0, s, 0.0, 1.0, 0.0, -s, 0.0, c))
    return img


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    nib.save(
        nib.Nifti1Image(rng.integers(-300, 400, size=(40, 36, 5)).astype(np.int16), _oblique_affine()),
        root / "ct_a.nii.gz",
    )
    sitk.WriteImage(_itk_volume((4, 30, 34), 1), str(root / "sub" / "ct_b.nrrd"))
    sitk.WriteImage(_itk_volume((3, 33, 28), 2), str(root / "sub" / "ct_c.mha"))
    Image.fromarray(rng.integers(0, 256, size=(50, 70), dtype=np.uint8)).save(root / "xray.png")
    tifffile.imwrite(root / "micro16.tif", rng.integers(0, 60000, size=(45, 66)).astype(np.uint16))
    return root


def _summary(out):
    with open(out / "summary.csv", newline="") as fh:
        return {r["file"].split("/")[-1]: r for r in csv.DictReader(fh)}


def test_geometry_and_format_round_trip(scans, ct_checkpoint, tmp_path):
    before = {p: _sha(p) for p in scans.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    seg = Segmenter(ct_checkpoint, device="cpu", batch_size=2)
    summary = seg.segment_folder([scans], out, probabilities=True, overlay=True, progress=False)
    assert summary.n_failed == 0 and summary.n_ok == 5, summary.rows

    # NIfTI, oblique affine: read back with nibabel itself.
    src = nib.load(scans / "ct_a.nii.gz")
    got = nib.load(out / "ct_a.nii.gz")
    assert got.shape == src.shape
    np.testing.assert_allclose(got.affine, src.affine, atol=1e-5)
    labels = np.asarray(got.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}

    # NRRD and MHA with a non-identity direction and anisotropic spacing: SimpleITK itself.
    for name in ("sub/ct_b.nrrd", "sub/ct_c.mha"):
        a, b = sitk.ReadImage(str(scans / name)), sitk.ReadImage(str(out / name))
        assert b.GetSize() == a.GetSize()
        np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-6)

    # PNG stays PNG, 16-bit TIFF stays TIFF, same shape.
    assert np.asarray(Image.open(out / "xray.png")).shape == (50, 70)
    assert tifffile.imread(out / "micro16.tif").shape == (45, 66)

    # Probabilities: (X, Y, Z, K) with the same affine, summing to one, argmax = labels.
    prob = nib.load(out / "probabilities" / "ct_a.nii.gz")
    p = np.asarray(prob.dataobj)
    assert p.shape == (*src.shape, 3) and p.dtype == np.float32
    np.testing.assert_allclose(prob.affine, src.affine, atol=1e-5)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(p.argmax(-1), labels)
    assert tifffile.imread(out / "probabilities" / "xray.tif").shape == (50, 70, 3)

    # Overlays are RGB PNGs; a volume shows several slices side by side.
    ov = np.asarray(Image.open(out / "overlays" / "sub" / "ct_b.png"))
    assert ov.ndim == 3 and ov.shape[2] == 3 and ov.shape[1] > 34
    assert np.asarray(Image.open(out / "overlays" / "xray.png")).shape == (50, 70, 3)

    # Summary: voxel counts and mL volumes from the written label maps.
    rows = _summary(out)
    r = rows["ct_a.nii.gz"]
    assert r["status"] == "ok" and r["shape"] == "40x36x5"
    counts = np.bincount(labels.ravel(), minlength=3)
    assert [int(r[f"voxels_{c}"]) for c in ("background", "liver", "kidney")] == counts.tolist()
    voxel_ml = abs(np.linalg.det(src.affine[:3, :3])) / 1000
    assert float(r["volume_ml_liver"]) == pytest.approx(counts[1] * voxel_ml, rel=1e-3, abs=1e-3)
    assert rows["xray.png"]["volume_ml_liver"] == ""

    # The inputs were not touched.
    assert {p: _sha(p) for p in scans.rglob("*") if p.is_file()} == before


def test_dicom_series_becomes_nifti_with_its_geometry(ct_checkpoint, tmp_path):
    series = tmp_path / "patient" / "series1"
    series.mkdir(parents=True)
    vol = np.random.default_rng(5).integers(-200, 300, size=(3, 20, 24)).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(3):
        sl = sitk.GetImageFromArray(vol[k])
        sl.SetSpacing((0.7, 0.9))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.1",
            "0020|000e": "1.2.826.0.1.1.2",
            "0020|0013": str(k + 1),
            "0020|0032": f"-5\\7\\{12 + 2.5 * k:g}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.9\\0.7",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"im{k}.dcm"))
        writer.Execute(sl)
    out = tmp_path / "out"
    seg = Segmenter(ct_checkpoint, device="cpu")
    summary = seg.segment_folder([tmp_path / "patient"], out, progress=False)
    assert summary.n_failed == 0 and summary.n_ok == 1, summary.rows
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    ref = reader.Execute()
    got = sitk.ReadImage(str(out / "series1.nii.gz"))
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-5)


def test_rgb_resize_checkpoint_png_and_jpeg(rgb_checkpoint, tmp_path):
    rng = np.random.default_rng(6)
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)).save(inp / "lesion1.png")
    Image.fromarray(rng.integers(0, 256, size=(77, 50, 3), dtype=np.uint8)).save(inp / "lesion2.jpg")
    out = tmp_path / "out"
    summary = Segmenter(rgb_checkpoint, device="cpu").segment_folder(inp, out, progress=False)
    assert summary.n_ok == 2
    assert np.asarray(Image.open(out / "lesion1.png")).shape == (90, 120)
    assert np.asarray(Image.open(out / "lesion2.png")).shape == (77, 50)  # JPEG input -> lossless PNG


def test_one_corrupt_file_does_not_stop_the_rest(ct_checkpoint, tmp_path, caplog):
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(7)
    for name in ("a", "c"):
        nib.save(
            nib.Nifti1Image(rng.normal(size=(33, 40, 2)).astype(np.float32), np.eye(4)), inp / f"{name}.nii"
        )
    (inp / "b.nii.gz").write_bytes(b"\x1f\x8b this is not a volume")
    (inp / "notes.docx").write_bytes(b"word")
    (inp / "dataset.json").write_text("{}")  # a side-car file, ignored
    nan = np.ones((32, 32, 2), np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), inp / "d_nan.nii.gz")
    out = tmp_path / "out"
    summary = Segmenter(ct_checkpoint, device="cpu").segment_folder(inp, out, progress=False)
    rows = _summary(out)
    assert set(rows) == {"a.nii", "b.nii.gz", "c.nii", "d_nan.nii.gz", "notes.docx"}
    assert summary.n_ok == 2 and summary.n_failed == 3
    assert (out / "a.nii").exists() and (out / "c.nii").exists() and not (out / "b.nii.gz").exists()
    assert "b.nii.gz" in rows["b.nii.gz"]["error"] and "cannot read" in rows["b.nii.gz"]["error"]
    assert "NaN" in rows["d_nan.nii.gz"]["error"]
    assert "unsupported file type" in rows["notes.docx"]["error"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3 and all("\n" not in m for m in errors)
    assert not list(out.rglob(".*tmp*"))  # no temporary leftovers


def test_resume_after_interruption_and_overwrite(ct_checkpoint, tmp_path, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(8)
    for k in range(3):
        nib.save(
            nib.Nifti1Image(rng.normal(size=(32, 32, 2)).astype(np.float32), np.eye(4)), inp / f"s{k}.nii.gz"
        )
    out = tmp_path / "out"
    seg = Segmenter(ct_checkpoint, device="cpu")

    # Interrupt (Ctrl-C) while the second file is being segmented.
    real_predict = seg.predict
    calls = []

    def interrupted(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_predict(*a, **k)

    monkeypatch.setattr(seg, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        seg.segment_folder(inp, out, progress=False)
    monkeypatch.setattr(seg, "predict", real_predict)
    assert (out / "s0.nii.gz").exists() and not (out / "s1.nii.gz").exists()
    assert not list(out.rglob(".*tmp*"))
    first = (out / "s0.nii.gz").stat().st_mtime_ns

    # Resume: the finished file is skipped (not rewritten), the others are done.
    summary = seg.segment_folder(inp, out, progress=False)
    assert [r["status"] for r in summary.rows] == ["skipped", "ok", "ok"]
    assert (out / "s0.nii.gz").stat().st_mtime_ns == first
    skipped = summary.rows[0]
    lab = np.asarray(nib.load(out / "s0.nii.gz").dataobj)
    assert int(skipped["voxels_liver"]) == int((lab == 1).sum())

    # Everything done: all skipped. --overwrite redoes all of them.
    assert [r["status"] for r in seg.segment_folder(inp, out, progress=False).rows] == ["skipped"] * 3
    summary = seg.segment_folder(inp, out, overwrite=True, progress=False)
    assert [r["status"] for r in summary.rows] == ["ok"] * 3
    assert (out / "s0.nii.gz").stat().st_mtime_ns != first


def test_tta_and_overlap_options_run_and_keep_shapes(ct_checkpoint):
    img = np.random.default_rng(9).integers(-200, 300, size=(70, 100)).astype(np.int16)
    base = Segmenter(ct_checkpoint, device="cpu", overlap=0.25).predict(img, return_probabilities=True)
    tta = Segmenter(ct_checkpoint, device="cpu", overlap=0.75, tta=True).predict(
        img, return_probabilities=True
    )
    assert base.labels.shape == tta.labels.shape == img.shape
    np.testing.assert_allclose(tta.probabilities.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(base.probabilities, tta.probabilities)  # a random net is not flip-equivariant


def test_cli_and_api_agree(scans, ct_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        ["segment", str(scans / "ct_a.nii.gz"), str(scans / "sub"), "--checkpoint", str(ct_checkpoint)]
        + ["--output", str(out), "--device", "cpu", "--batch-size", "3", "--overlap", "0.25", "--no-progress"]
    )
    assert rc == 0
    seg = Segmenter(ct_checkpoint, device="cpu", batch_size=3, overlap=0.25)
    for name, cli_path in [("ct_a.nii.gz", "ct_a.nii.gz"), ("sub/ct_b.nrrd", "ct_b.nrrd")]:
        api = seg.predict(scans / name).labels
        cli = sitk.GetArrayFromImage(sitk.ReadImage(str(out / cli_path))).transpose(2, 1, 0)
        np.testing.assert_array_equal(cli, api)
    assert "3 segmented" in capsys.readouterr().err


def test_cli_exit_codes(scans, ct_checkpoint, tmp_path, capsys):
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\nbroken")
    rc = main(["segment", str(tmp_path / "bad.nrrd"), "-c", str(ct_checkpoint), "-o", str(tmp_path / "o")])
    assert rc == 1
    rc = main(["segment", str(scans), "-c", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.pt" in err and "Traceback" not in err
    (tmp_path / "x.pt").write_bytes(b"junk")
    assert main(["segment", str(scans), "-c", str(tmp_path / "x.pt"), "-o", str(tmp_path / "o")]) == 2
    assert (
        main(["segment", str(tmp_path / "missing"), "-c", str(ct_checkpoint), "-o", str(tmp_path / "o")]) == 2
    )
    assert main(["segment", str(scans), "-c", str(ct_checkpoint), "-o", str(scans)]) == 2
    assert "input folder" in capsys.readouterr().err


def test_collect_inputs_mirrors_folders_and_skips_the_output(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "a" / "b" / "y.nii.gz").write_bytes(b"")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    (tmp_path / "a" / "out").mkdir()
    (tmp_path / "a" / "out" / "x.png").write_bytes(b"")
    items = collect_inputs([tmp_path / "a"], exclude=tmp_path / "a" / "out")
    assert [(i.path.name, str(i.rel_dir)) for i in items] == [("x.png", "."), ("y.nii.gz", "b")]
