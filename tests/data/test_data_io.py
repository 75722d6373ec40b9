"""Round trips through read_image / write_image keep values and geometry."""

from __future__ import annotations

import gzip

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from vmunet.data.io import (
    ImageData,
    affine_to_lps,
    case_name,
    is_supported,
    lps_to_affine,
    read_image,
    split_extension,
    write_image,
)
from vmunet.errors import InputFileError


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _oblique_affine() -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = _rotation(0.2, -0.35, 0.5) @ np.diag([0.7, 0.9, 2.5])
    aff[:3, 3] = [12.5, -30.0, 44.0]
    return aff


def _no_tmp_left(folder) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"


# ------------------------------------------------------------------ NIfTI


def test_nifti_oblique_round_trip_matches_simpleitk(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(5, 6, 7)).astype(np.float32)
    aff = _oblique_affine()
    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(arr, aff), str(src))

    img = read_image(src)
    assert img.format == "nifti" and img.is_volume
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    # Independent reference: SimpleITK reading the same file reports LPS geometry.
    ref = sitk.ReadImage(str(src))
    np.testing.assert_allclose(img.spacing, ref.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(img.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.direction.ravel(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(img.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))

    mask = (arr > 0).astype(np.uint8)
    out = write_image(tmp_path / "mask.nii.gz", mask, like=img)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), mask)
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    _no_tmp_left(tmp_path)


def test_nifti_uncompressed_and_2d(tmp_path):
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    like = ImageData(arr, spacing=(0.5, 2.0), origin=(3.0, -4.0), format="nifti")
    p = write_image(tmp_path / "slice.nii", arr, like=like)
    img = read_image(p)
    np.testing.assert_array_equal(img.array, arr)
    assert img.array.dtype == np.int16
    assert not img.is_volume
    np.testing.assert_allclose(img.spacing, (0.5, 2.0))
    np.testing.assert_allclose(img.origin, (3.0, -4.0))


# ------------------------------------------------------------------ ITK formats


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".mhd"])
def test_itk_non_identity_direction_anisotropic(tmp_path, ext):
    rng = np.random.default_rng(1)
    arr_zyx = rng.integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16)
    ref = sitk.GetImageFromArray(arr_zyx)
    ref.SetSpacing((0.6, 1.1, 3.0))
    ref.SetOrigin((-10.0, 20.0, 5.5))
    ref.SetDirection(tuple(_rotation(0.3, 0.1, -0.4).ravel()))
    src = tmp_path / f"src{ext}"
    sitk.WriteImage(ref, str(src))

    img = read_image(src)
    assert img.array.shape == (6, 5, 4)  # (x, y, z)
    np.testing.assert_array_equal(img.array, arr_zyx.transpose(2, 1, 0))
    np.testing.assert_allclose(img.spacing, ref.GetSpacing())
    np.testing.assert_allclose(img.origin, ref.GetOrigin())
    np.testing.assert_allclose(img.direction.ravel(), ref.GetDirection(), atol=1e-12)

    out = write_image(tmp_path / f"out{ext}", img.array, like=img)
    back = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr_zyx)
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing())
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin())
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-12)
    assert sitk.GetArrayFromImage(back).dtype == np.int16
    _no_tmp_left(tmp_path)


def test_cross_format_geometry_nifti_to_nrrd_and_back(tmp_path):
    aff = _oblique_affine()
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    src = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(arr, aff), str(src))
    img = read_image(src)
    nrrd = read_image(write_image(tmp_path / "b.nrrd", img.array, like=img))
    np.testing.assert_allclose(nrrd.affine, aff, atol=1e-5)
    nii = read_image(write_image(tmp_path / "c.nii.gz", nrrd.array, like=nrrd))
    np.testing.assert_allclose(nii.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(nii.array, arr)


def test_lps_affine_helpers_are_inverse():
    aff = _oblique_affine()
    sp, org, d = affine_to_lps(aff)
    np.testing.assert_allclose(lps_to_affine(sp, org, d), aff, atol=1e-12)


def test_dicom_series_folder(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.integers(0, 2000, size=(3, 8, 10)).astype(np.int16)  # (z, y, x)
    folder = tmp_path / "series"
    folder.mkdir()
    spacing = (0.8, 0.6, 2.0)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.shape[0]):
        sl = sitk.GetImageFromArray(vol[k])
        sl.SetSpacing(spacing[:2])
        pos = (1.0, 2.0, 3.0 + k * spacing[2])
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.3.4"),
            ("0020|000e", "1.2.3.4.5"),
            ("0020|0013", str(k + 1)),
            ("0020|0032", "\\".join(f"{v:g}" for v in pos)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0018|0050", f"{spacing[2]:g}"),
            ("0028|0030", f"{spacing[1]:g}\\{spacing[0]:g}"),
        ]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    assert is_supported(folder)
    img = read_image(folder)
    assert img.format == "dicom" and img.is_volume
    assert img.array.shape == (10, 8, 3)
    np.testing.assert_array_equal(img.array, vol.transpose(2, 1, 0))
    np.testing.assert_allclose(img.spacing, spacing, atol=1e-6)
    np.testing.assert_allclose(img.origin, (1.0, 2.0, 3.0), atol=1e-6)
    # A DICOM series is written back as NIfTI with the same geometry.
    out = read_image(write_image(tmp_path / "seg.nii.gz", (img.array > 1000).astype(np.uint8), like=img))
    np.testing.assert_allclose(out.spacing, spacing, atol=1e-5)
    np.testing.assert_allclose(out.origin, (1.0, 2.0, 3.0), atol=1e-5)
    with pytest.raises(ValueError, match="cannot write"):
        write_image(tmp_path / "x.dcm", img.array, like=img)


# ------------------------------------------------------------------ pictures


def test_png_rgb_and_mask(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    p = write_image(tmp_path / "x.png", rgb)
    img = read_image(p)
    assert img.format == "png" and not img.is_volume
    np.testing.assert_array_equal(img.array, rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), rgb)  # independent decoder
    mask = (rng.random((7, 9)) > 0.5).astype(np.uint8) * 255
    m = read_image(write_image(tmp_path / "m.png", mask))
    assert m.array.dtype == np.uint8 and m.array.shape == (7, 9)
    np.testing.assert_array_equal(m.array, mask)


def test_png_16bit(tmp_path):
    arr = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    img = read_image(write_image(tmp_path / "d.png", arr))
    assert img.array.dtype == np.uint16
    np.testing.assert_array_equal(img.array, arr)


def test_tiff_16bit(tmp_path):
    arr = np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000
    p = tmp_path / "t.tif"
    tifffile.imwrite(str(p), arr)
    img = read_image(p)
    assert img.array.dtype == np.uint16
    np.testing.assert_array_equal(img.array, arr)
    back = read_image(write_image(tmp_path / "u.tiff", img.array))
    np.testing.assert_array_equal(back.array, arr)


def test_jpeg_and_bmp(tmp_path):
    rgb = np.full((8, 8, 3), 128, np.uint8)
    j = read_image(write_image(tmp_path / "a.jpg", rgb))
    assert j.format == "jpeg" and j.array.shape == (8, 8, 3)
    assert np.abs(j.array.astype(int) - 128).max() <= 2  # lossy, flat colour survives
    b = read_image(write_image(tmp_path / "a.bmp", rgb))
    np.testing.assert_array_equal(b.array, rgb)
    with pytest.raises(ValueError, match="uint8"):
        write_image(tmp_path / "f.jpg", rgb.astype(np.float32))


# ------------------------------------------------------------------ TransUNet files


def test_npz_slice(tmp_path):
    rng = np.random.default_rng(4)
    image = rng.random((12, 10)).astype(np.float32)
    label = rng.integers(0, 9, (12, 10)).astype(np.float32)
    p = tmp_path / "case0005_slice000.npz"
    np.savez(p, image=image, label=label)  # as the TransUNet preprocessing writes them
    img = read_image(p)
    np.testing.assert_array_equal(img.array, image)
    np.testing.assert_array_equal(read_image(p, key="label").array, label)
    q = write_image(tmp_path / "w.npz", image, label=label)
    with np.load(q) as z:
        np.testing.assert_array_equal(z["image"], image)
        np.testing.assert_array_equal(z["label"], label)
    with pytest.raises(InputFileError, match="no array named 'mask'"):
        read_image(p, key="mask")


def test_h5_volume_is_slice_last(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.random((4, 6, 5)).astype(np.float32)  # (Z, H, W) on disk
    label = rng.integers(0, 9, (4, 6, 5)).astype(np.float32)
    p = tmp_path / "case0001.npy.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)
    img = read_image(p)
    assert img.is_volume and img.array.shape == (6, 5, 4)
    np.testing.assert_array_equal(img.array[..., 2], image[2])
    lab = read_image(p, key="label")
    np.testing.assert_array_equal(lab.array[..., 3], label[3])
    q = write_image(tmp_path / "out.npy.h5", img.array, label=lab.array)
    with h5py.File(q, "r") as f:
        np.testing.assert_array_equal(f["image"][()], image)
        np.testing.assert_array_equal(f["label"][()], label)


# ------------------------------------------------------------------ names and bad files


def test_names():
    assert split_extension("a/img0001.nii.gz") == ("img0001", ".nii.gz")
    assert case_name("case0001.npy.h5") == "case0001"
    assert case_name("ISIC_0000000.JPG") == "ISIC_0000000"
    assert case_name("scan.v2.nrrd") == "scan.v2"
    assert is_supported("x.nii.gz") and is_supported("x.TIFF") and not is_supported("x.txt")


def test_missing_empty_unsupported(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        read_image(tmp_path / "nope.nii.gz")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty"):
        read_image(empty)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputFileError, match="unsupported"):
        read_image(txt)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputFileError, match="no DICOM"):
        read_image(tmp_path / "emptydir")


@pytest.mark.parametrize("ext", [".nii.gz", ".png", ".jpg", ".nrrd", ".npz", ".npy.h5", ".tif"])
def test_truncated_files(tmp_path, ext):
    rng = np.random.default_rng(6)
    arr = rng.integers(0, 255, (64, 64, 3) if ext == ".jpg" else (64, 64, 8), dtype=np.uint8)
    if ext in (".png", ".tif"):
        arr = arr[..., 0]
    good = write_image(tmp_path / f"good{ext}", arr, compress=False)
    data = good.read_bytes()
    bad = tmp_path / f"bad{ext}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError) as info:
        read_image(bad)
    assert str(bad) in str(info.value)


def test_garbage_nifti(tmp_path):
    p = tmp_path / "junk.nii.gz"
    p.write_bytes(gzip.compress(b"not a nifti header at all" * 3))
    with pytest.raises(InputFileError, match="junk.nii.gz"):
        read_image(p)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.float64))
    assert list(tmp_path.iterdir()) == []
