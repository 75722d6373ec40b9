"""Read and write medical and natural images while keeping their geometry.

One reader, :func:`read_image`, and one writer, :func:`write_image`, cover
NIfTI (nibabel), NRRD / MHA / MHD and DICOM series (SimpleITK), PNG / JPEG /
BMP (Pillow, the decoder scikit-image uses), TIFF (tifffile, 16-bit kept), and
TransUNet's preprocessed Synapse files: ``.npz`` slices and ``.npy.h5``
volumes (h5py), each holding the keys ``image`` and ``label``.

Conventions (see ``docs/contracts.md``):

* Volumes are indexed ``(X, Y, Z)`` = ``(i, j, k)``, the NIfTI/ITK index order.
  SimpleITK's ``(z, y, x)`` arrays are transposed on read and back on write.
  TransUNet ``.npy.h5`` volumes are stored ``(Z, H, W)`` on disk and are
  returned as ``(H, W, Z)`` so that ``array[..., k]`` is the same 2-D slice as
  the matching ``.npz`` file.
* 2-D pictures are ``(H, W)`` or ``(H, W, C)`` with unit spacing.
* ``spacing``, ``origin`` and ``direction`` follow ITK's **LPS** convention for
  every format, so a NIfTI read here reports the same geometry as SimpleITK
  reading the same file. ``affine`` is the NIfTI-style **RAS** 4x4 matrix
  (``affine = diag(-1, -1, 1, 1) @ [[direction * spacing, origin], [0, 1]]``);
  for NIfTI files it is the file's own affine, untouched.

Example:
    >>> from vmunet.data.io import read_image, write_image
    >>> img = read_image("ct.nii.gz")  # doctest: +SKIP
    >>> mask = (img.array > 0).astype("uint8")  # doctest: +SKIP
    >>> write_image("mask.nrrd", mask, like=img)  # same spacing/origin/direction  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import locale
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.errors import InputFileError
from vmunet.utils.io import atomic_path

__all__ = [
    "ImageData",
    "read_image",
    "write_image",
    "is_supported",
    "case_name",
    "spacing_is_known",
    "split_extension",
    "image_format",
    "SUPPORTED_EXTENSIONS",
    "VOLUME_FORMATS",
    "lps_to_affine",
    "affine_to_lps",
]

logger = logging.getLogger(__name__)

# Longest first: split_extension() matches compound suffixes before simple ones.
_FORMAT_OF: dict[str, str] = {
    ".npy.h5": "h5",
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mhd",
    ".dcm": "dicom",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npz": "npz",
    ".h5": "h5",
    ".hdf5": "h5",
    ".npy": "npy",
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(sorted(_FORMAT_OF, key=len, reverse=True))
"""File extensions :func:`read_image` understands (a folder of DICOM files is also accepted)."""

VOLUME_FORMATS = frozenset({"nifti", "nrrd", "mha", "mhd", "dicom", "h5"})
"""Formats whose arrays are in physical index order with a real geometry."""

_ITK_FORMATS = frozenset({"nrrd", "mha", "mhd", "dicom"})
_PIL_FORMATS = frozenset({"png", "jpeg", "bmp"})
_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])


@dataclass
class ImageData:
    """An image array with its geometry.

    Attributes:
        array: the pixel data. Volumes ``(X, Y, Z[, C])``; pictures ``(H, W[, C])``.
        spacing: physical size of a voxel along each spatial axis (mm).
        origin: physical position of the first voxel (LPS, mm).
        direction: ``ndim x ndim`` matrix whose columns are the axis directions (LPS).
        affine: NIfTI-style RAS 4x4 voxel-to-world matrix, or ``None`` for pictures.
        format: short format name (``"nifti"``, ``"nrrd"``, ``"mha"``, ``"mhd"``,
            ``"dicom"``, ``"png"``, ``"jpeg"``, ``"bmp"``, ``"tiff"``, ``"npz"``,
            ``"h5"``, ``"npy"``).
        path: where it was read from.
        meta: anything else worth keeping (NIfTI header, keys of an npz, ...).

    Example:
        >>> import numpy as np
        >>> img = ImageData(np.zeros((4, 5, 6)), spacing=(1.0, 1.0, 2.5), format="nifti")
        >>> img.is_volume, img.spatial_shape
        (True, (4, 5, 6))
    """

    array: np.ndarray
    spacing: tuple[float, ...] = ()
    origin: tuple[float, ...] = ()
    direction: np.ndarray | None = None
    affine: np.ndarray | None = None
    format: str = ""
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        nd = self.spatial_ndim
        if not self.spacing:
            self.spacing = (1.0,) * nd
        if not self.origin:
            self.origin = (0.0,) * len(self.spacing)
        if self.direction is None:
            self.direction = np.eye(len(self.spacing))
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64)
        if self.affine is None and self.format in VOLUME_FORMATS and len(self.spacing) == 3:
            self.affine = lps_to_affine(self.spacing, self.origin, self.direction)

    @property
    def is_volume(self) -> bool:
        """True for 3-D medical volumes (spatial axes ``X, Y, Z``)."""
        return self.format in VOLUME_FORMATS and len(self.spacing) == 3

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        if self.spacing:
            return len(self.spacing)
        if self.format in VOLUME_FORMATS:
            return min(self.array.ndim, 3)
        return 2

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes only (channels left out)."""
        return tuple(int(s) for s in self.array.shape[: self.spatial_ndim])


# --------------------------------------------------------------------------- geometry


def lps_to_affine(spacing, origin, direction) -> np.ndarray:
    """Build a NIfTI (RAS) 4x4 affine from ITK (LPS) spacing, origin and direction (3-D)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_FLIP @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_FLIP @ np.asarray(origin, dtype=np.float64)
    return affine


def affine_to_lps(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """Split a NIfTI (RAS) 4x4 affine into ITK (LPS) spacing, origin and direction.

    Spacing is the length of each column of the 3x3 part; the direction is the
    normalised columns (a sheared affine keeps its shear in the direction).
    """
    affine = np.asarray(affine, dtype=np.float64)
    m = _LPS_FLIP @ affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    spacing = np.where(spacing == 0, 1.0, spacing)
    direction = m / spacing
    origin = _LPS_FLIP @ affine[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), direction


# --------------------------------------------------------------------------- names


def split_extension(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Split ``path``'s file name into (stem, extension), knowing compound suffixes.

    Example:
        >>> split_extension("data/img0001.nii.gz")
        ('img0001', '.nii.gz')
        >>> split_extension("case0001.npy.h5")
        ('case0001', '.npy.h5')
    """
    name = Path(path).name
    lower = name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else (name, "")


def case_name(path: str | os.PathLike[str]) -> str:
    """The case identifier of a file: its name without (compound) extension.

    Example:
        >>> case_name("/data/labels/label0001.nii.gz")
        'label0001'
    """
    return split_extension(path)[0]


@contextlib.contextmanager
def _keep_locale():
    """Restore the C locale settings after a call into GDCM.

    SimpleITK's DICOM (GDCM) readers switch the process's LC_CTYPE to "C",
    which silently turns Python's default text encoding into ASCII for the
    rest of the process (seen breaking torch.compile's template loading).
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, saved)


def _is_dicom_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    try:
        import SimpleITK as sitk

        with _keep_locale():
            return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    except Exception:  # pragma: no cover - defensive
        return False


def image_format(path: str | os.PathLike[str]) -> str | None:
    """The format name :func:`read_image` would use for ``path``, or ``None`` if unsupported."""
    p = Path(path)
    if p.is_dir():
        return "dicom" if _is_dicom_folder(p) else None
    ext = split_extension(p)[1].lower()
    return _FORMAT_OF.get(ext)


def is_supported(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has a readable extension, or is a folder holding a DICOM series."""
    return image_format(path) is not None


# --------------------------------------------------------------------------- readers


# Formats that store no pixel / voxel size: scores on them are in pixels, volumes are treated as 1 mm.
_NO_SPACING_FORMATS = frozenset({"h5", "npy", "npz", "png", "jpeg", "bmp", "tiff"})


def spacing_is_known(img: Any) -> bool:
    """Whether an :class:`ImageData` carries real physical pixel / voxel sizes (mm).

    Pictures (PNG, JPEG, BMP, TIFF), HDF5 and NumPy files store none; a NIfTI header whose
    ``pixdim`` is zero on a spatial axis has none either.

    Example:
        >>> spacing_is_known(ImageData(np.zeros((4, 4)), format="png"))
        False
    """
    if getattr(img, "format", "") in _NO_SPACING_FORMATS:
        return False
    hdr = (getattr(img, "meta", None) or {}).get("nifti_header")
    if hdr is not None:
        nd = len(getattr(img, "spacing", ()) or ()) or 3
        try:
            pixdim = [float(v) for v in hdr["pixdim"][1 : 1 + nd]]
        except (KeyError, TypeError, ValueError):
            return True
        return all(v > 0 for v in pixdim)
    return True


def read_image(path: str | os.PathLike[str], key: str | None = None) -> ImageData:
    """Read an image or volume with its geometry.

    Args:
        path: a file in one of :data:`SUPPORTED_EXTENSIONS`, or a folder holding
            one DICOM series (the largest series is used when there are several).
        key: for ``.npz`` / ``.h5`` files, the array to read (default ``"image"``;
            ``"label"`` for the mask).

    Returns:
        An :class:`ImageData`.

    Raises:
        InputFileError: the path is missing, empty, truncated, corrupt or of an
            unsupported type; the message names the file and the reader's reason.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file or folder")
    fmt = image_format(p)
    if fmt is None:
        if p.is_dir():
            raise InputFileError(p, "folder holds no DICOM series (expected a folder of .dcm files)")
        raise InputFileError(
            p, f"unsupported file type; expected one of {', '.join(sorted(SUPPORTED_EXTENSIONS))}"
        )
    if p.is_file() and p.stat().st_size == 0:
        raise InputFileError(p, "file is empty (0 bytes)")
    try:
        if fmt == "nifti":
            out = _read_nifti(p)
        elif fmt in _ITK_FORMATS:
            out = _read_itk(p, fmt)
        elif fmt in _PIL_FORMATS:
            out = _read_pil(p, fmt)
        elif fmt == "tiff":
            out = _read_tiff(p)
        elif fmt == "npz":
            out = _read_npz(p, key)
        elif fmt == "h5":
            out = _read_h5(p, key)
        else:  # npy
            arr = np.load(p, allow_pickle=False)
            out = ImageData(arr, format="npy", meta={})
    except InputFileError:
        raise
    except Exception as exc:  # the library's own reason goes into the message
        raise InputFileError(p, f"cannot read as {fmt}: {type(exc).__name__}: {exc}") from exc
    if out.array.size == 0:
        raise InputFileError(p, f"image has no pixels (shape {out.array.shape})")
    out.path = p
    return out


def _read_nifti(p: Path) -> ImageData:
    import nibabel as nib

    img = nib.load(str(p))
    # asanyarray keeps the stored dtype when there is no scaling (uint8 masks stay uint8).
    arr = np.asanyarray(img.dataobj)
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing, origin, direction = affine_to_lps(affine)
    nd = 3 if arr.ndim >= 3 else arr.ndim
    if nd < 3:
        spacing, origin, direction = spacing[:nd], origin[:nd], direction[:nd, :nd]
    return ImageData(
        arr,
        spacing=spacing,
        origin=origin,
        direction=direction,
        affine=affine,
        format="nifti",
        meta={"nifti_header": img.header.copy()},
    )


def _read_itk(p: Path, fmt: str) -> ImageData:
    import SimpleITK as sitk

    meta: dict[str, Any] = {}
    if p.is_dir():
        img = _read_dicom_series(p, meta)
        fmt = "dicom"
    else:
        with _keep_locale():
            img = sitk.ReadImage(str(p))
    arr = sitk.GetArrayFromImage(img)
    nd = img.GetDimension()
    ncomp = img.GetNumberOfComponentsPerPixel()
    # SimpleITK returns (z, y, x[, c]); reverse the spatial axes to (x, y, z[, c]).
    axes = tuple(range(nd - 1, -1, -1)) + ((nd,) if ncomp > 1 else ())
    arr = np.ascontiguousarray(arr.transpose(axes))
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(nd, nd)
    for k in img.GetMetaDataKeys() if hasattr(img, "GetMetaDataKeys") else ():
        try:
            meta.setdefault("itk_metadata", {})[k] = img.GetMetaData(k)
        except Exception:  # pragma: no cover - binary tags
            pass
    return ImageData(
        arr,
        spacing=img.GetSpacing(),
        origin=img.GetOrigin(),
        direction=direction,
        format=fmt,
        meta=meta,
    )


def _read_dicom_series(folder: Path, meta: dict[str, Any]):
    with _keep_locale():
        return _read_dicom_series_unguarded(folder, meta)


def _read_dicom_series_unguarded(folder: Path, meta: dict[str, Any]):
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputFileError(folder, "folder holds no DICOM series")
    files_of = {s: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series}
    chosen = max(series, key=lambda s: len(files_of[s]))
    if len(series) > 1:
        logger.warning("%s holds %d DICOM series; reading the largest (%s)", folder, len(series), chosen)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_of[chosen])
    meta["dicom_series_uid"] = chosen
    meta["dicom_files"] = list(files_of[chosen])
    return reader.Execute()


def _read_pil(p: Path, fmt: str) -> ImageData:
    from PIL import Image

    with Image.open(p) as im:
        im.load()  # forces a full decode: a truncated file fails here, not later
        mode = im.mode
        if mode == "I;16B":
            im = im.convert("I;16")
        arr = np.asarray(im)
    if arr.dtype == np.int32 and mode.startswith("I") and arr.size and 0 <= arr.min() and arr.max() < 65536:
        arr = arr.astype(np.uint16)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return ImageData(np.ascontiguousarray(arr), format=fmt, meta={"mode": mode})


def _read_tiff(p: Path) -> ImageData:
    import tifffile

    arr = tifffile.imread(str(p))
    return ImageData(np.ascontiguousarray(arr), format="tiff", meta={})


def _read_npz(p: Path, key: str | None) -> ImageData:
    with np.load(p, allow_pickle=False) as z:
        keys = list(z.files)
        k = key or ("image" if "image" in keys else (keys[0] if len(keys) == 1 else None))
        if k is None or k not in keys:
            raise InputFileError(p, f"no array named {key or 'image'!r} (keys found: {keys})")
        arr = z[k]
    return ImageData(arr, format="npz", meta={"keys": keys, "key": k})


def _read_h5(p: Path, key: str | None) -> ImageData:
    import h5py

    with h5py.File(p, "r") as f:
        keys = list(f.keys())
        k = key or ("image" if "image" in keys else (keys[0] if len(keys) == 1 else None))
        if k is None or k not in keys:
            raise InputFileError(p, f"no dataset named {key or 'image'!r} (keys found: {keys})")
        arr = f[k][()]
    if arr.ndim == 3:
        # TransUNet stores volumes (Z, H, W); expose them slice-last like every volume here.
        arr = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
        spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    else:
        spacing = (1.0,) * min(arr.ndim, 2)
    return ImageData(arr, spacing=spacing, format="h5", meta={"keys": keys, "key": k, "disk_layout": "ZHW"})


# --------------------------------------------------------------------------- writers


def write_image(
    path: str | os.PathLike[str],
    array: np.ndarray,
    like: ImageData | None = None,
    *,
    label: np.ndarray | None = None,
    compress: bool = True,
) -> Path:
    """Write ``array`` to ``path`` (format from the extension), atomically.

    Geometry comes from ``like``: its NIfTI affine for NIfTI output (rebuilt
    from spacing/origin/direction when ``like`` is not NIfTI), its spacing,
    origin and direction for NRRD / MHA / MHD. DICOM output is not written;
    write segmentations of a DICOM series as ``.nii.gz`` with ``like`` set to
    the series. The dtype is kept (``bool`` becomes ``uint8``).

    Args:
        path: destination; the extension picks the writer.
        array: data in the same index order :func:`read_image` returns.
        like: an image whose geometry to copy; ``None`` gives unit spacing,
            zero origin and identity direction.
        label: for ``.npz`` / ``.h5`` only: stored under ``"label"`` next to ``"image"``.
        compress: compress where the format allows it (``.nii.gz`` is always gzip).

    Returns:
        The written path.

    Raises:
        ValueError: unsupported extension, or an array the format cannot hold.
    """
    p = Path(path)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    ext = split_extension(p)[1].lower()
    fmt = _FORMAT_OF.get(ext)
    if fmt is None or fmt == "dicom":
        raise ValueError(
            f"path {str(p)!r}: cannot write {ext or 'files without an extension'}; use one of "
            ".nii.gz, .nii, .nrrd, .mha, .mhd, .png, .jpg, .bmp, .tif, .npz, .npy.h5, .npy"
        )
    if fmt == "nifti":
        _write_nifti(p, array, like)
    elif fmt == "mhd":
        _write_mhd(p, array, like, compress)
    elif fmt in _ITK_FORMATS:
        with atomic_path(p) as tmp:
            _write_itk(tmp, array, like, compress)
    elif fmt in _PIL_FORMATS:
        _write_pil(p, array, fmt)
    elif fmt == "tiff":
        import tifffile

        with atomic_path(p) as tmp:
            tifffile.imwrite(str(tmp), array, compression="zlib" if compress else None)
    elif fmt == "npz":
        with atomic_path(p) as tmp:
            arrays = {"image": array} if label is None else {"image": array, "label": np.asarray(label)}
            with open(tmp, "wb") as fh:
                (np.savez_compressed if compress else np.savez)(fh, **arrays)
    elif fmt == "h5":
        _write_h5(p, array, label)
    else:  # npy
        with atomic_path(p) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
    return p


def _geometry_3d(array: np.ndarray, like: ImageData | None):
    nd = min(array.ndim, 3) if like is None else like.spatial_ndim
    if like is None:
        return (1.0,) * nd, (0.0,) * nd, np.eye(nd)
    return like.spacing, like.origin, np.asarray(like.direction)


def _write_nifti(p: Path, array: np.ndarray, like: ImageData | None) -> None:
    import nibabel as nib

    if like is not None and like.affine is not None:
        affine = np.asarray(like.affine, dtype=np.float64)
    elif like is not None and like.spatial_ndim == 3:
        affine = lps_to_affine(like.spacing, like.origin, like.direction)
    elif like is not None:
        # 2-D geometry: embed in 3-D with unit spacing along the missing axis.
        sp = tuple(like.spacing) + (1.0,)
        org = tuple(like.origin) + (0.0,)
        d = np.eye(3)
        d[:2, :2] = like.direction
        affine = lps_to_affine(sp, org, d)
    else:
        affine = np.eye(4)
    img = nib.Nifti1Image(array, affine, dtype=array.dtype)
    hdr = like.meta.get("nifti_header") if like is not None else None
    if hdr is not None:
        # Keep the input's sform/qform codes and units; data type and scaling stay ours.
        try:
            img.header.set_xyzt_units(*hdr.get_xyzt_units())
            img.set_qform(affine, int(hdr["qform_code"]) or 1)
            img.set_sform(affine, int(hdr["sform_code"]) or 1)
        except Exception:  # pragma: no cover - exotic headers
            pass
    else:
        img.set_qform(affine, 1)
        img.set_sform(affine, 1)
    with atomic_path(p) as tmp:
        nib.save(img, str(tmp))


def _to_sitk(array: np.ndarray, like: ImageData | None):
    import SimpleITK as sitk

    spacing, origin, direction = _geometry_3d(array, like)
    nd = len(spacing)
    is_vector = array.ndim == nd + 1
    if array.ndim not in (nd, nd + 1):
        raise ValueError(f"array of shape {array.shape} does not fit {nd}-D geometry of 'like'")
    axes = tuple(range(nd - 1, -1, -1)) + ((nd,) if is_vector else ())
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(axes)), isVector=is_vector)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(v) for v in np.asarray(direction, dtype=np.float64).reshape(-1)])
    return img


def _write_itk(tmp: Path, array: np.ndarray, like: ImageData | None, compress: bool) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(_to_sitk(array, like), str(tmp), useCompression=compress)


def _write_mhd(p: Path, array: np.ndarray, like: ImageData | None, compress: bool) -> None:
    # An .mhd header names its data file, so write both under their final names
    # in a hidden temporary folder, then move each into place (data first).
    import shutil
    import tempfile

    import SimpleITK as sitk

    p.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        sitk.WriteImage(_to_sitk(array, like), str(tmpdir / p.name), useCompression=compress)
        produced = sorted(tmpdir.iterdir(), key=lambda f: f.name == p.name)  # header last
        for f in produced:
            with atomic_path(p.parent / f.name) as tmp:
                os.replace(f, tmp)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _write_pil(p: Path, array: np.ndarray, fmt: str) -> None:
    from PIL import Image

    if fmt == "jpeg" and array.dtype != np.uint8:
        raise ValueError(f"path {str(p)!r}: JPEG holds uint8 only, got {array.dtype}")
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"path {str(p)!r}: {fmt.upper()} holds uint8 or uint16, got {array.dtype}")
    if array.dtype == np.uint16 and array.ndim != 2:
        raise ValueError(f"path {str(p)!r}: 16-bit {fmt.upper()} must be single-channel (H, W)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"path {str(p)!r}: expected (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    im = Image.fromarray(np.ascontiguousarray(array))
    with atomic_path(p) as tmp:
        kwargs = {"quality": 95} if fmt == "jpeg" else {}
        im.save(tmp, format={"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}[fmt], **kwargs)


def _write_h5(p: Path, array: np.ndarray, label: np.ndarray | None) -> None:
    import h5py

    def disk(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(a, -1, 0)) if a.ndim == 3 else a

    with atomic_path(p) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=disk(array))
            if label is not None:
                f.create_dataset("label", data=disk(np.asarray(label)))
