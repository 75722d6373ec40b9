"""A small multi-file DICOM MR series cut from a real image (nilearn's MNI152 2009a T1 template).

:func:`mni_slab` gives a real T1 slab (block means of 2 x 2 x 2 voxels, cropped off-centre so
the symmetric template is no longer left-right symmetric) and its grey / white matter labels
(the demo data's rule); :func:`write_dicom_series` writes any ``(X, Y, Z)`` volume as one
single-frame file per slice with proper UIDs, ImagePositionPatient, ImageOrientationPatient,
PixelSpacing, SliceThickness and a rescale (stored int16, ``RescaleSlope`` / ``RescaleIntercept``).
File names and InstanceNumbers are deliberately *not* in slice order, so a reader that trusts
either instead of the positions gets the wrong answer.

Used by ``tests/inference/test_dicom_seg.py`` and reusable by a CLI test::

    # from tests/inference/: a relative import; from another test folder: inference._dicom_fixtures
    from ._dicom_fixtures import mni_slab, write_dicom_series
    t1, labels, spacing = mni_slab()
    series = write_dicom_series(tmp_path / "series", t1, spacing)
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DicomSeries", "mni_slab", "write_dicom_series", "AXIAL", "CORONAL_OBLIQUE"]

#: Volume axes (X, Y, Z) as LPS direction columns: a plain axial series.
AXIAL = np.eye(3)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


#: A coronal series (rows run foot-wards), tilted 20 degrees about the left-right axis.
CORONAL_OBLIQUE = _rotation(0, 20.0) @ np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass
class DicomSeries:
    """What :func:`write_dicom_series` wrote.

    Attributes:
        folder: the series folder.
        files: file of slice ``k`` of the written volume (``files[k]``), *not* sorted by name.
        sop_instance_uids: SOPInstanceUID of slice ``k``.
        positions: ImagePositionPatient of slice ``k`` (LPS, mm).
        study_instance_uid / series_instance_uid / frame_of_reference_uid: the shared UIDs.
    """

    folder: Path
    files: list[Path]
    sop_instance_uids: list[str]
    positions: np.ndarray
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    slope: float = 1.0
    intercept: float = 0.0
    extra: dict = field(default_factory=dict)

    def slice_of(self) -> dict[str, int]:
        """SOPInstanceUID -> slice index ``k`` of the written volume."""
        return {uid: k for k, uid in enumerate(self.sop_instance_uids)}


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    s = [d - d % f for d in a.shape]
    a = a[: s[0], : s[1], : s[2]].astype(np.float64)
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def mni_slab(
    shape: tuple[int, int, int] = (64, 48, 12), start: tuple[int, int, int] = (8, 30, 40)
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A real T1 slab ``(X, Y, Z)`` from the MNI152 template at 2 mm, with grey/white matter labels.

    Args:
        shape: size of the slab in 2 mm voxels (non-square in-plane, so a transposed frame fails).
        start: corner of the slab in the 2 mm volume (98 x 116 x 94); the default is off-centre
            in X so the slab is not left-right symmetric.

    Returns:
        ``(t1, labels, spacing)``: T1 intensities (float64, 0..255), ``uint8`` labels
        (0 background, 1 grey matter, 2 white matter), and the voxel size ``(2.0, 2.0, 2.0)``.
    """
    import nibabel as nib

    from vmunet.data.demo import _labels_from_probabilities, mni152_template_paths

    paths = mni152_template_paths()
    vols = {k: _block_mean(np.asanyarray(nib.load(str(p)).dataobj), 2) for k, p in paths.items()}
    sl = tuple(slice(s, s + n) for s, n in zip(start, shape, strict=True))
    t1 = vols["t1"][sl]
    labels = _labels_from_probabilities(vols["gm"][sl] / 255.0, vols["wm"][sl] / 255.0)
    return np.ascontiguousarray(t1), np.ascontiguousarray(labels), (2.0, 2.0, 2.0)


def write_dicom_series(
    folder: str | Path,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (-60.0, -40.0, 10.0),
    direction: np.ndarray = AXIAL,
    *,
    slope: float = 0.125,
    intercept: float = -10.0,
    modality: str = "MR",
    seed: int = 0,
) -> DicomSeries:
    """Write ``volume`` (indexed ``(X, Y, Z)`` like :func:`vmunet.data.read_image`) as a DICOM series.

    Voxel ``(i, j, k)`` is at ``origin + direction @ (spacing * (i, j, k))`` (LPS, mm): slice ``k``
    becomes one file whose pixel ``(row j, column i)`` is ``volume[i, j, k]``, stored as
    ``round((value - intercept) / slope)`` in int16. File names and InstanceNumbers are a
    shuffled permutation of the slice order.

    Args:
        folder: where to write (created).
        volume: ``(X, Y, Z)`` real values.
        spacing: voxel size ``(X, Y, Z)`` in mm.
        origin: position of voxel ``(0, 0, 0)``.
        direction: 3x3, columns the LPS directions of the X, Y and Z axes (orthonormal).
        slope / intercept: the rescale written into every file.
        modality: ``"MR"`` (MR Image Storage) or ``"CT"`` (CT Image Storage).
        seed: for the file-name / InstanceNumber shuffle.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    nx, ny, nz = volume.shape
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    order = np.random.default_rng(seed).permutation(nz)
    now = datetime.datetime(2024, 5, 17, 10, 30, 0)
    files: list[Path] = []
    uids: list[str] = []
    positions = []
    for k in range(nz):
        pos = np.asarray(origin, dtype=np.float64) + direction[:, 2] * spacing[2] * k
        stored = np.round((volume[:, :, k].T - intercept) / slope)
        if stored.min() < -32768 or stored.max() > 32767:
            raise ValueError("volume does not fit int16 with this slope / intercept")
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Template^MNI152"
        ds.PatientID = "MNI152-2009a"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.StudyID = "1"
        ds.AccessionNumber = "A1"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "MNI152 2009a T1 template (nilearn), test series"
        ds.Modality = modality
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 3
        ds.SeriesDescription = "T1 slab"
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "vmunet tests"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = ds.StudyTime
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8g}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]  # row spacing (Y), column spacing (X)
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        if modality == "MR":
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "SP"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTrainLength = 1
        else:
            ds.RescaleType = "HU"
            ds.KVP = "120"
        ds.PixelData = np.ascontiguousarray(stored.astype("<i2")).tobytes()
        path = folder / f"IM{int(order[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(uid)
        positions.append(pos)
    return DicomSeries(
        folder, files, uids, np.asarray(positions), study, series, frame, slope=slope, intercept=intercept
    )
