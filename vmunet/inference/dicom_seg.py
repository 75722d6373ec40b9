"""Write a label map predicted for a DICOM series as a DICOM Segmentation (SEG) object.

Hospital viewers (OHIF, 3D Slicer, PACS) load a DICOM SEG next to the images it
was made from. :func:`write_dicom_seg` turns a label map on the grid
:func:`vmunet.data.read_image` gives for a DICOM series (``(X, Y, Z)`` = column,
row, slice; slices sorted by position along the slice normal, see
:mod:`vmunet.data.io`) into a BINARY Segmentation with highdicom:

* one segment per foreground class, **segment number = label value** (``1 ..
  n_labels-1``), the class name as the segment label, coded with SNOMED CT
  (:func:`segment_code`: organs such as spleen, kidney, liver, aorta ... under the
  *Anatomical Structure* category, grey / white matter under *Tissue*, lesions
  and tumours under *Morphologically Abnormal Structure*, ``left`` / ``right``
  in the name as a laterality modifier; a name it does not know gets the
  generic *Tissue* / *Tissue* code and keeps its own name as the label);
* every frame references the source instance it lies on. Frames are matched to
  instances by **ImagePositionPatient** projected on the label map's grid (never
  by file name or InstanceNumber), and the ImageOrientationPatient of every
  instance is checked against the grid's axes;
* a class absent from a case keeps its segment (so numbering is the same for
  every case) but has no frames (``omit_empty_frames=True``, highdicom's default;
  pass ``False`` for viewers that want every frame). When the whole label map is
  empty highdicom encodes all frames instead (it logs a warning).

The file is written to a temporary name, then renamed.

Example:
    >>> from vmunet.inference import Segmenter
    >>> from vmunet.inference.dicom_seg import dicom_seg_path, write_prediction_dicom_seg
    >>> pred = Segmenter("best.pt").predict("scans/ct_series/")  # doctest: +SKIP
    >>> write_prediction_dicom_seg(pred, dicom_seg_path("masks/ct_series.nii.gz"))  # doctest: +SKIP
    PosixPath('masks/ct_series_seg.dcm')
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vmunet._version import __version__
from vmunet.errors import InputFileError, VmunetUserError
from vmunet.utils.io import atomic_path

__all__ = [
    "DICOM_SEG_SUFFIX",
    "DicomSegWriter",
    "require_highdicom",
    "SegmentCode",
    "dicom_seg_path",
    "segment_code",
    "write_dicom_seg",
    "write_prediction_dicom_seg",
]

logger = logging.getLogger(__name__)

#: Appended to the case name of the label map: ``<case>_seg.dcm``.
DICOM_SEG_SUFFIX = "_seg.dcm"

# Position tolerances, in voxels: DICOM stores positions as decimal strings of at most 16 characters.
_IN_PLANE_TOL = 0.1
_SLICE_TOL = 0.1
_ORIENTATION_TOL = 1e-3

# Tableau 10 (as in vmunet.inference.folder's overlays), one per foreground class, cycled.
_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


# --------------------------------------------------------------------------- codes


@dataclass(frozen=True)
class SegmentCode:
    """The coded meaning of one segment (DICOM Segment Description).

    Attributes:
        category: Segmented Property Category (a CID 7150 concept, e.g. SCT "Anatomical Structure").
        type: Segmented Property Type (e.g. SCT "Spleen").
        modifier: Segmented Property Type Modifier (laterality: SCT "Left" / "Right"), or ``None``.
        known: whether the class name was recognised (``False``: the generic Tissue code).

    Example:
        >>> c = segment_code("kidney_left")
        >>> c.category.meaning, c.type.meaning, c.modifier.meaning, c.known
        ('Anatomical Structure', 'Kidney', 'Left', True)
        >>> segment_code("class_3").type.meaning
        'Tissue'
    """

    category: Any
    type: Any
    modifier: Any = None
    known: bool = True


# normalised name -> (CID 7150 category attribute, SCT attribute in pydicom's code dictionary)
_ANAT, _TISSUE, _ABNORMAL, _SUBST = (
    "AnatomicalStructure",
    "Tissue",
    "MorphologicallyAbnormalStructure",
    ("BodySubstance"),
)
_KNOWN: dict[str, tuple[str, str]] = {
    **{
        name: (_ANAT, attr)
        for name, attr in {
            "spleen": "Spleen",
            "kidney": "Kidney",
            "liver": "Liver",
            "gallbladder": "Gallbladder",
            "gall bladder": "Gallbladder",
            "stomach": "Stomach",
            "aorta": "Aorta",
            "pancreas": "Pancreas",
            "esophagus": "Esophagus",
            "oesophagus": "Esophagus",
            "adrenal gland": "AdrenalGland",
            "adrenal": "AdrenalGland",
            "inferior vena cava": "InferiorVenaCava",
            "ivc": "InferiorVenaCava",
            "portal vein": "PortalVein",
            "splenic vein": "SplenicVein",
            "duodenum": "Duodenum",
            "bladder": "Bladder",
            "urinary bladder": "Bladder",
            "prostate": "Prostate",
            "heart": "Heart",
            "lung": "Lung",
            "brain": "Brain",
            "brainstem": "BrainStem",
            "brain stem": "BrainStem",
            "cerebellum": "Cerebellum",
            "hippocampus": "Hippocampus",
            "thalamus": "Thalamus",
            "putamen": "Putamen",
            "lateral ventricle": "LateralVentricle",
            "colon": "Colon",
            "small intestine": "SmallIntestine",
            "small bowel": "SmallIntestine",
            "rectum": "Rectum",
            "trachea": "Trachea",
            "uterus": "Uterus",
            "thyroid": "Thyroid",
            "thyroid gland": "Thyroid",
            "eye": "Eye",
            "breast": "Breast",
            "skin": "Skin",
            "femur": "Femur",
            "vertebra": "Vertebra",
            "spinal cord": "SpinalCord",
            "ureter": "Ureter",
            "lymph node": "LymphNode",
            "parotid gland": "ParotidGland",
            "parotid": "ParotidGland",
            "optic nerve": "OpticNerve",
            "mandible": "Mandible",
            "pulmonary artery": "PulmonaryArtery",
        }.items()
    },
    **{
        name: (_TISSUE, attr)
        for name, attr in {
            "grey matter": "GrayMatter",
            "gray matter": "GrayMatter",
            "white matter": "WhiteMatter",
            "fat": "AdiposeTissue",
            "adipose tissue": "AdiposeTissue",
            "muscle": "SkeletalMuscle",
            "skeletal muscle": "SkeletalMuscle",
            "bone": "Bone",
        }.items()
    },
    **{
        name: (_ABNORMAL, attr)
        for name, attr in {
            "lesion": "Lesion",
            "skin lesion": "SkinLesion",
            "tumor": "Tumor",
            "tumour": "Tumor",
            "neoplasm": "Neoplasm",
            "mass": "Mass",
            "nodule": "Nodule",
            "cyst": "Cyst",
            "edema": "Edema",
            "oedema": "Edema",
            "necrosis": "Necrosis",
            "hemorrhage": "Hemorrhage",
            "haemorrhage": "Hemorrhage",
        }.items()
    },
    "cerebrospinal fluid": (_SUBST, "CerebrospinalFluid"),
    "csf": (_SUBST, "CerebrospinalFluid"),
}
_LATERALITY = {"left": "Left", "l": "Left", "lt": "Left", "right": "Right", "r": "Right", "rt": "Right"}


def segment_code(class_name: str, overrides: Mapping[str, SegmentCode] | None = None) -> SegmentCode:
    """SNOMED CT category / type (and laterality) codes for a class name.

    The name is matched case-insensitively with ``_``, ``-`` and ``.`` read as spaces;
    a ``left`` / ``right`` word (``l``, ``r``, ``lt``, ``rt``) anywhere in it becomes a
    laterality modifier (``kidney_left``, ``right adrenal gland``). Unknown names get
    the generic SCT "Tissue" category and type.

    Args:
        class_name: the checkpoint's name for one label value.
        overrides: class name -> :class:`SegmentCode`, looked up first (exact name).

    Returns:
        A :class:`SegmentCode` (pydicom ``Code`` values).
    """
    require_highdicom()
    from pydicom.sr.codedict import codes

    if overrides and class_name in overrides:
        return overrides[class_name]
    words = [w for w in re.split(r"[\s_\-.]+", class_name.strip().lower()) if w]
    side = [w for w in words if w in _LATERALITY]
    rest = " ".join(w for w in words if w not in _LATERALITY)
    hit = _KNOWN.get(rest)
    if hit is None:
        return SegmentCode(codes.cid7150.Tissue, codes.SCT.Tissue, None, known=False)
    modifier = getattr(codes.SCT, _LATERALITY[side[0]]) if len(set(map(_LATERALITY.get, side))) == 1 else None
    return SegmentCode(getattr(codes.cid7150, hit[0]), getattr(codes.SCT, hit[1]), modifier)


# --------------------------------------------------------------------------- source series


@dataclass
class _Grid:
    origin: np.ndarray  # (3,) LPS mm, voxel (0, 0, 0)
    matrix: np.ndarray  # (3, 3) direction @ diag(spacing): index -> mm
    shape: tuple[int, int, int]


def _not_dicom(path: Path, fmt: str | None) -> VmunetUserError:
    if path.is_dir():
        what = "a folder that holds no DICOM series"
    else:
        what = f"a {fmt} file" if fmt else "a file of unknown type"
    return InputFileError(
        path, f"a DICOM SEG needs DICOM source images (a series folder or .dcm files), got {what}"
    )


def _read_headers(files: Sequence[Path]) -> list[Any]:
    import pydicom

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as exc:
            raise InputFileError(f, f"cannot read as DICOM: {type(exc).__name__}: {exc}") from exc
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputFileError(
                f, "multi-frame DICOM images are not supported here (expected one slice a file)"
            )
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "SOPInstanceUID"):
            if key not in ds:
                raise InputFileError(f, f"DICOM file has no {key}; cannot place its slice")
        out.append(ds)
    uids = {str(ds.SeriesInstanceUID) for ds in out if "SeriesInstanceUID" in ds}
    if len(uids) > 1:
        raise InputFileError(files[0], f"the source files belong to {len(uids)} series; give one series")
    return out


def _grid_from_image(image: Any) -> _Grid:
    spacing = np.asarray(image.spacing, dtype=np.float64)
    direction = np.asarray(image.direction, dtype=np.float64).reshape(3, 3)
    shape = tuple(int(s) for s in image.spatial_shape)
    return _Grid(np.asarray(image.origin, dtype=np.float64), direction @ np.diag(spacing), shape)  # type: ignore[arg-type]


def _grid_from_headers(headers: Sequence[Any]) -> _Grid:
    """The grid ``read_image`` builds for a series: slices sorted along the normal row x column."""
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    pos = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in headers])
    order = np.argsort(pos @ normal, kind="stable")
    dz = (
        float(np.diff(pos[order] @ normal).mean())
        if len(headers) > 1
        else float(getattr(headers[0], "SliceThickness", 1.0) or 1.0)
    )
    ps = [float(v) for v in headers[0].PixelSpacing] if "PixelSpacing" in headers[0] else [1.0, 1.0]
    matrix = np.stack([row * ps[1], col * ps[0], normal * dz], axis=1)
    shape = (int(headers[0].Columns), int(headers[0].Rows), len(headers))
    return _Grid(pos[order[0]], matrix, shape)


def _resolve_source(series: Any, image: Any) -> tuple[list[Path], _Grid | None]:
    """Source files and the label map's grid (``None``: build it from the headers of a file list)."""
    from vmunet.data.io import image_format, read_image

    if isinstance(series, (str, os.PathLike)):
        path = Path(series)
        if not path.exists():
            raise InputFileError(path, "no such file or folder")
        fmt = image_format(path)
        if fmt != "dicom":
            raise _not_dicom(path, fmt)
        if image is None or (not (image.meta or {}).get("dicom_files") and path.is_dir()):
            read = read_image(path)
            image = image if image is not None else read
            files = [Path(f) for f in read.meta.get("dicom_files", [path])]
        else:
            files = [Path(f) for f in (image.meta or {}).get("dicom_files", [path])]
            if path.is_dir() and any(f.resolve().parent != path.resolve() for f in files):
                raise InputFileError(path, "image= was read from another folder than this series")
    else:
        files = [Path(f) for f in series]
        if not files:
            raise VmunetUserError("series: no DICOM files given")
        for f in files:
            if not f.is_file():
                raise InputFileError(f, "no such file")
    if image is not None:
        if getattr(image, "format", "dicom") != "dicom" or len(image.spacing) != 3:
            where = image.path if getattr(image, "path", None) is not None else files[0]
            raise _not_dicom(Path(where), getattr(image, "format", None))
        return files, _grid_from_image(image)
    return files, None


def _slice_indices(headers: Sequence[Any], files: Sequence[Path], grid: _Grid) -> list[int]:
    """Slice index ``k`` of the grid on which each source instance lies (by ImagePositionPatient)."""
    inv = np.linalg.inv(grid.matrix)
    axes = grid.matrix / np.linalg.norm(grid.matrix, axis=0)
    nx, ny, nz = grid.shape
    out: list[int] = []
    seen: dict[int, Path] = {}
    for ds, f in zip(headers, files, strict=True):
        if (int(ds.Columns), int(ds.Rows)) != (nx, ny):
            raise InputFileError(
                f, f"slice is {ds.Columns} x {ds.Rows} pixels (columns x rows); the label map is {nx} x {ny}"
            )
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        if np.abs(iop[:3] - axes[:, 0]).max() > _ORIENTATION_TOL or np.abs(iop[3:] - axes[:, 1]).max() > (
            _ORIENTATION_TOL
        ):
            raise InputFileError(
                f, f"ImageOrientationPatient {iop.round(4).tolist()} differs from the label map's axes"
            )
        idx = inv @ (np.asarray(ds.ImagePositionPatient, dtype=np.float64) - grid.origin)
        k = int(np.rint(idx[2]))
        if abs(idx[0]) > _IN_PLANE_TOL or abs(idx[1]) > _IN_PLANE_TOL or abs(idx[2] - k) > _SLICE_TOL:
            raise InputFileError(
                f, f"ImagePositionPatient lies off the label map's grid (voxel {idx.round(3)})"
            )
        if not 0 <= k < nz:
            raise InputFileError(f, f"slice lies outside the label map (slice {k}, the map has {nz})")
        if k in seen:
            raise InputFileError(f, f"two source images at the same position (also {seen[k]})")
        seen[k] = f
        out.append(k)
    return out


# --------------------------------------------------------------------------- writer


def require_highdicom() -> Any:
    """The highdicom module, or one clear error naming the extra to install.

    Raises:
        VmunetUserError: highdicom or pydicom is not installed.
    """
    try:
        import highdicom
        import pydicom  # noqa: F401
    except ImportError as exc:
        raise VmunetUserError(
            f"writing a DICOM SEG needs highdicom and pydicom ({exc}): pip install 'vmunet[dicom]'"
        ) from exc
    return highdicom


def dicom_seg_path(mask_path: str | os.PathLike[str]) -> Path:
    """Where the DICOM SEG of a label map goes: ``<case>_seg.dcm`` beside ``<case>.nii.gz``.

    Example:
        >>> dicom_seg_path("masks/sub/ct_series.nii.gz").as_posix()
        'masks/sub/ct_series_seg.dcm'
    """
    from vmunet.data.io import case_name

    p = Path(mask_path)
    return p.with_name(case_name(p) + DICOM_SEG_SUFFIX)


def write_dicom_seg(
    labels: np.ndarray,
    series: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    class_names: Sequence[str],
    output: str | os.PathLike[str],
    *,
    image: Any = None,
    algorithm_name: str = "vmunet",
    algorithm_version: str = __version__,
    model_name: str | None = None,
    series_description: str | None = None,
    series_number: int | None = None,
    manufacturer: str = "vmunet",
    codes: Mapping[str, SegmentCode] | None = None,
    omit_empty_frames: bool = True,
) -> Path:
    """Write ``labels`` as a BINARY DICOM Segmentation referencing the source series.

    Args:
        labels: integer label map ``(X, Y, Z)`` on :func:`vmunet.data.read_image`'s grid of
            the series (``labels[:, :, k].T`` is the ``(rows, columns)`` frame of the
            ``k``-th slice along the normal); ``(X, Y)`` for a single image. Values
            ``0 .. len(class_names)-1``; 0 is background and gets no segment.
        series: the DICOM series folder, one ``.dcm`` file, or the series' files.
        class_names: name of each label value (``class_names[0]`` is the background).
        output: the ``.dcm`` file to write (its folder is created).
        image: the :class:`~vmunet.data.ImageData` ``labels`` was predicted on (e.g.
            ``Prediction.image``): its geometry (and ``meta["dicom_files"]``) is used, so the
            series is not read again. ``None`` reads the folder with ``read_image``
            (a list of files: the grid is built from the headers the same way).
        algorithm_name / algorithm_version: the Segmentation Algorithm Identification.
        model_name: stored as an algorithm parameter, the ManufacturerModelName and the
            content description (e.g. the checkpoint's model name).
        series_description: of the new series (default ``"<algorithm_name> segmentation"``).
        series_number: of the new series (default: the source's SeriesNumber + 1000).
        manufacturer: the Manufacturer of the SEG (the software that made it).
        codes: class name -> :class:`SegmentCode` overriding :func:`segment_code`.
        omit_empty_frames: leave out frames where a segment is empty (smaller files); a
            class absent from the whole case keeps its segment with no frames.

    Returns:
        ``output``.

    Raises:
        InputFileError: the source is not DICOM, unreadable, multi-frame, or does not lie
            on the label map's grid (the message names the file).
        ValueError: ``labels`` has label values without a class name, or the wrong shape.
        VmunetUserError: highdicom / pydicom are not installed (the ``[dicom]`` extra).
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes as dcm_codes

    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[:, :, None]
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(
            f"labels: expected an integer (X, Y, Z) label map, got {labels.dtype} {labels.shape}"
        )
    names = [str(n) for n in class_names]
    if len(names) < 2:
        raise ValueError(f"class_names: need the background and at least one class, got {names}")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if lo < 0 or hi >= len(names):
        raise ValueError(f"labels: values {lo}..{hi} but class_names names only 0..{len(names) - 1}")

    files, grid = _resolve_source(series, image)
    headers = _read_headers(files)
    grid = grid if grid is not None else _grid_from_headers(headers)
    if tuple(labels.shape) != grid.shape:
        raise ValueError(
            f"labels: shape {tuple(labels.shape)} does not match the series grid {grid.shape} (X, Y, Z)"
        )
    ks = _slice_indices(headers, files, grid)
    order = np.argsort(ks)
    sources = [headers[i] for i in order]
    dtype = np.uint8 if len(names) <= 256 else np.uint16
    frames = np.stack([labels[:, :, ks[i]].T for i in order]).astype(dtype)  # (frames, rows, columns)

    counts = np.bincount(frames.ravel(), minlength=len(names))
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=dcm_codes.DCM.ArtificialIntelligence,
        version=str(algorithm_version),
        parameters={"model": model_name} if model_name else None,
    )
    descriptions = []
    for value in range(1, len(names)):
        code = segment_code(names[value], codes)
        desc = hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=names[value][:64],
            segmented_property_category=code.category,
            segmented_property_type=code.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*_COLOURS[(value - 1) % len(_COLOURS)]),
        )
        if code.modifier is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(code.modifier)
            ]
        descriptions.append(desc)
        if counts[value] == 0:
            logger.info(
                "%s: class %r is empty; its segment %d has no frames", files[0].parent, names[value], value
            )

    src_number = getattr(sources[0], "SeriesNumber", None)
    number = series_number if series_number is not None else int(src_number or 0) + 1000
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=(model_name or algorithm_name)[:64],
        software_versions=str(algorithm_version),
        device_serial_number="none",
        content_description=(f"{algorithm_name} {model_name}" if model_name else algorithm_name)[:64],
        content_label="VMUNET",
        omit_empty_frames=omit_empty_frames,
        series_description=(series_description or f"{algorithm_name} segmentation")[:64],
    )
    out = Path(output)
    with atomic_path(out) as tmp:
        seg.save_as(str(tmp))
    logger.debug("%s: DICOM SEG with %d segments, %d frames", out, len(descriptions), int(seg.NumberOfFrames))
    return out


def write_prediction_dicom_seg(
    prediction: Any,
    output: str | os.PathLike[str],
    *,
    series: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    **kwargs: Any,
) -> Path:
    """Write a :class:`~vmunet.inference.Prediction` of a DICOM series as a DICOM SEG.

    The one-line call for :func:`vmunet.inference.folder.segment_folder`: labels, class
    names and geometry come from the prediction, the source from ``prediction.image.path``
    (the DICOM series folder or ``.dcm`` file that was segmented).

    Args:
        prediction: what ``Segmenter.predict`` returned for a DICOM input.
        output: the ``.dcm`` file to write (see :func:`dicom_seg_path`).
        series: the source, when ``prediction.image.path`` is not it.
        **kwargs: passed to :func:`write_dicom_seg` (``model_name``, ``algorithm_version``, ...).

    Returns:
        ``output``.

    Raises:
        InputFileError: the prediction was not made on DICOM images (names the file).
    """
    img = prediction.image
    src = series if series is not None else getattr(img, "path", None)
    if src is None:
        raise VmunetUserError("prediction: its image has no path; pass series= (the DICOM series folder)")
    if img is not None and getattr(img, "format", "") != "dicom":
        raise _not_dicom(Path(src), getattr(img, "format", None))
    return write_dicom_seg(prediction.labels, src, prediction.class_names, output, image=img, **kwargs)


@dataclass(frozen=True)
class DicomSegWriter:
    """The DICOM-SEG output of ``segment_folder(..., writers=[DicomSegWriter()])``.

    Follows :class:`vmunet.inference.folder.OutputWriter`: for every DICOM input (a series
    folder or a lone ``.dcm`` file) it writes ``<rel>/<case>_seg.dcm`` beside the label map
    ``<rel>/<case>.nii.gz``; other inputs get none (``output_path`` returns ``None``).
    Picklable (plain fields), so it travels to worker processes and Ray actors.

    Attributes:
        key: the output's name in the outputs dict (``"dicom_seg"``).
        model_name / algorithm_name / algorithm_version / omit_empty_frames: passed to
            :func:`write_dicom_seg`.

    Example:
        >>> w = DicomSegWriter(model_name="vmunet_tiny")
        >>> w.key
        'dicom_seg'
        >>> seg.segment_folder(["scans/"], "masks/", writers=[w])  # doctest: +SKIP
    """

    model_name: str | None = None
    algorithm_name: str = "vmunet"
    algorithm_version: str = __version__
    omit_empty_frames: bool = True
    key: str = "dicom_seg"

    def output_path(self, item: Any, output_dir: Path, case: str) -> Path | None:
        """``output_dir/<rel>/<case>_seg.dcm`` for a DICOM input, else ``None``."""
        from vmunet.data.io import image_format

        if not getattr(item, "supported", True) or image_format(item.path) != "dicom":
            return None
        return Path(output_dir) / item.rel_dir / f"{case}{DICOM_SEG_SUFFIX}"

    def write(self, path: Path, prediction: Any, item: Any) -> None:
        """Write the SEG of ``prediction`` (made on ``item.path``) to ``path``."""
        write_prediction_dicom_seg(
            prediction,
            path,
            series=item.path if item is not None else None,
            model_name=self.model_name,
            algorithm_name=self.algorithm_name,
            algorithm_version=self.algorithm_version,
            omit_empty_frames=self.omit_empty_frames,
        )
