"""3-D training data: whole volumes resampled, windowed, cached once, then cut into random patches.

The pipeline is MONAI's (the UNETR / SwinUNETR BTCV tutorials, ``Project-MONAI/tutorials``
``3d_segmentation/unetr_btcv_segmentation_3d.ipynb``, use the same steps):

1. :class:`LoadVolumed` reads image and label with :func:`vmunet.data.read_image` (any
   format it knows, geometry kept) and gives channel-first arrays whose affine is
   ``diag(spacing)`` along the array axes. A volume without spacing information (HDF5,
   NumPy) is named in a warning and treated as 1 mm.
2. ``Spacingd`` resamples to the recipe's target spacing (``bilinear`` image, ``nearest``
   label), along the array axes, so no re-orientation happens.
3. Intensity per recipe: ``window`` -> ``ScaleIntensityRanged(clip=True)`` to [0, 1],
   ``ct`` -> clip to [min, max] then ``(x - mean) / std``, ``zscore`` -> ``NormalizeIntensityd``,
   ``minmax`` -> ``ScaleIntensityd``.
4. Optional ``CropForegroundd`` (voxels above 0 after the window) and ``SpatialPadd`` to
   the ROI, so a volume smaller than the ROI is padded, never refused.

Steps 1-4 are deterministic and cached (``CacheDataset`` in memory, or
``PersistentDataset`` on disk), so an epoch does not decode a ``.nii.gz`` again. The
random part runs per sample: ``RandCropByPosNegLabeld`` (``pos`` / ``neg`` balance) then
flips on each axis, 90-degree rotations in the first two axes and an intensity shift
(the tutorial's ``prob=0.1`` / ``0.1`` / ``0.5``).

Example:
    >>> from vmunet.data.volumes3d import VolumeSpec
    >>> spec = VolumeSpec(roi_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0))
    >>> spec.roi_size
    (32, 32, 32)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform
from torch.utils.data import Dataset

from vmunet.data.dataset_classes import VolumeSource, _convert_label
from vmunet.data.io import read_image, spacing_is_known
from vmunet.errors import InputFileError

__all__ = [
    "AUGMENTATIONS_3D",
    "LoadVolumed",
    "PatchDataset",
    "VolumeSpec",
    "WholeVolumeDataset",
    "build_volume_dataset",
    "cache_dir_for",
    "intensity_transform",
    "read_labelled_volume",
    "spacing_is_known",
]

logger = logging.getLogger(__name__)

#: 3-D augmentation recipes (``data.augmentation`` with ``data.spatial_dims: 3``).
AUGMENTATIONS_3D = ("none", "btcv", "flips")


@dataclass(frozen=True)
class VolumeSpec:
    """How volumes become 3-D training samples (built from the ``data`` section of a config).

    Args:
        roi_size: the patch ``(X, Y, Z)`` in voxels at the target spacing.
        spacing: target voxel size in mm ``(X, Y, Z)``; ``None`` keeps each volume's own.
        normalization: a :func:`vmunet.data.normalize_intensity` spec (``window``, ``zscore``,
            ``minmax``, ``none``).
        pos: weight of patches centred on a labelled voxel (``RandCropByPosNegLabeld``).
        neg: weight of patches centred on a background voxel.
        samples_per_volume: patches drawn from each volume per epoch.
        crop_foreground: crop each volume to its foreground (image > 0 after the window) first.
        augmentation: ``btcv`` (flips, rot90, intensity shift), ``flips`` or ``none``.
        cache: ``memory`` (``CacheDataset``), ``disk`` (``PersistentDataset`` in ``cache_dir``)
            or ``none``.
        cache_dir: folder of the disk cache.

    Example:
        >>> VolumeSpec(roi_size=(96, 96, 96), spacing=(1.5, 1.5, 2.0)).pos
        1.0
    """

    roi_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None = None
    normalization: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})
    pos: float = 1.0
    neg: float = 1.0
    samples_per_volume: int = 4
    crop_foreground: bool = False
    augmentation: str = "btcv"
    cache: str = "memory"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        roi = tuple(int(s) for s in self.roi_size)
        if len(roi) != 3 or any(s < 1 for s in roi):
            raise ValueError(f"roi_size must be 3 positive ints (X, Y, Z), got {self.roi_size!r}")
        object.__setattr__(self, "roi_size", roi)
        if self.spacing is not None:
            sp = tuple(float(s) for s in self.spacing)
            if len(sp) != 3 or any(s <= 0 for s in sp):
                raise ValueError(f"spacing must be 3 positive numbers in mm, got {self.spacing!r}")
            object.__setattr__(self, "spacing", sp)
        if self.augmentation not in AUGMENTATIONS_3D:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS_3D}, got {self.augmentation!r}")
        if self.cache not in ("memory", "disk", "none"):
            raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {self.cache!r}")
        if self.cache == "disk" and not self.cache_dir:
            raise ValueError("cache 'disk' needs cache_dir")
        if self.pos < 0 or self.neg < 0 or self.pos + self.neg == 0:
            raise ValueError(f"pos and neg must be >= 0 and not both 0, got {self.pos}, {self.neg}")
        if self.samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be >= 1, got {self.samples_per_volume}")


class LoadVolumed(Transform):
    """Read ``entry["image"]`` / ``entry["label"]`` paths into channel-first MetaTensors.

    The affine is ``diag(spacing)`` along the array axes, which is all ``Spacingd`` needs to
    resample without re-orienting. Labels are converted with ``label_mode`` (e.g.
    ``synapse13``: BTCV's 13 organs to the 8 Synapse ones). Adds ``spacing`` (mm, as read)
    and ``shape`` (as read) to the entry.

    Args:
        label_mode: ``index`` or ``synapse13`` (see :class:`~vmunet.data.PairedImageDataset`).
        num_classes: label values must be below it (``index``).

    A MONAI ``Transform`` (deterministic), so ``CacheDataset`` caches its output.

    Example:
        >>> load = LoadVolumed()
        >>> sample = load({"image": "ct.nii.gz", "label": "seg.nii.gz", "case": "c1"})  # doctest: +SKIP
    """

    def __init__(self, label_mode: str = "index", num_classes: int | None = None) -> None:
        self.label_mode = label_mode
        self.num_classes = num_classes

    def __call__(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        from monai.data import MetaTensor

        path = Path(entry["image"])
        img = read_image(path, key=entry.get("image_key"))
        if not img.is_volume or img.array.ndim not in (3, 4):
            raise InputFileError(path, f"expected a 3-D volume (X, Y, Z[, C]), got shape {img.array.shape}")
        spacing = tuple(float(s) for s in img.spacing)
        if not spacing_is_known(img):
            logger.warning("%s: no voxel spacing in the file; treating it as 1 mm", path)
            spacing = (1.0, 1.0, 1.0)
        arr = np.asarray(img.array, dtype=np.float32)
        arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)
        affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
        out = dict(entry)
        out["image"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)), affine=affine)
        out["spacing"] = spacing
        out["shape"] = tuple(int(s) for s in arr.shape[1:])
        if entry.get("label") is not None:
            lpath = Path(entry["label"])
            lab = read_image(lpath, key=entry.get("label_key")).array
            lab = _convert_label(lab, lpath, self.label_mode, self.num_classes)
            if lab.shape != arr.shape[1:]:
                raise InputFileError(lpath, f"label shape {lab.shape} does not match image {arr.shape[1:]}")
            out["label"] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(lab, dtype=np.float32))[None], affine=affine.clone()
            )
        else:
            out.pop("label", None)
        return out


def intensity_transform(normalization: Mapping[str, Any] | None) -> Any:
    """The MONAI transform of a normalisation spec on key ``image`` (``None`` for ``none``).

    ``window`` -> ``ScaleIntensityRanged(a_min=min, a_max=max, b_min=0, b_max=1, clip=True)``,
    ``ct`` -> clip to [min, max] then ``(x - mean) / std``,
    ``zscore`` -> ``NormalizeIntensityd``, ``minmax`` -> ``ScaleIntensityd`` (to [0, 1]).

    Raises:
        ValueError: an unknown kind, or one only meant for RGB pictures.
    """
    from monai import transforms as mt

    spec = dict(normalization or {"kind": "none"})
    kind = spec.get("kind", "none")
    if kind == "window":
        return mt.ScaleIntensityRanged(
            keys="image", a_min=float(spec["min"]), a_max=float(spec["max"]), b_min=0.0, b_max=1.0, clip=True
        )
    if kind == "ct":
        lo, hi = float(spec["min"]), float(spec["max"])
        return mt.Compose(
            [
                mt.ThresholdIntensityd(keys="image", threshold=hi, above=False, cval=hi),
                mt.ThresholdIntensityd(keys="image", threshold=lo, above=True, cval=lo),
                mt.NormalizeIntensityd(
                    keys="image", subtrahend=float(spec["mean"]), divisor=float(spec["std"])
                ),
            ]
        )
    if kind == "zscore":
        return mt.NormalizeIntensityd(keys="image")
    if kind == "minmax":
        return mt.ScaleIntensityd(keys="image", minv=0.0, maxv=1.0)
    if kind == "none":
        return None
    raise ValueError(
        f"normalization kind {kind!r} is not for volumes; use window, ct, zscore, minmax or none"
    )


def _deterministic(spec: VolumeSpec, label_mode: str, num_classes: int | None, pad: bool) -> list[Any]:
    from monai import transforms as mt

    steps: list[Any] = [LoadVolumed(label_mode, num_classes)]
    if spec.spacing is not None:
        steps.append(
            mt.Spacingd(
                keys=["image", "label"],
                pixdim=spec.spacing,
                mode=("bilinear", "nearest"),
                allow_missing_keys=True,
            )
        )
    norm = intensity_transform(spec.normalization)
    if norm is not None:
        steps.append(norm)
    if spec.crop_foreground and pad:
        steps.append(mt.CropForegroundd(keys=["image", "label"], source_key="image", allow_missing_keys=True))
    if pad:
        steps.append(mt.SpatialPadd(keys=["image", "label"], spatial_size=spec.roi_size))
    return steps


def _random(spec: VolumeSpec) -> list[Any]:
    from monai import transforms as mt

    keys = ["image", "label"]
    steps: list[Any] = [
        mt.RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=spec.roi_size,
            pos=spec.pos,
            neg=spec.neg,
            num_samples=1,
            # background centres only where the image is above 0 (after a window / min-max: not air),
            # as in the MONAI BTCV tutorial; with z-scores every voxel may be a centre.
            image_key="image" if dict(spec.normalization).get("kind") in ("window", "minmax") else None,
            image_threshold=0.0,
            allow_smaller=True,
        )
    ]
    if spec.augmentation in ("btcv", "flips"):
        steps += [mt.RandFlipd(keys=keys, spatial_axis=[a], prob=0.1) for a in range(3)]
    if spec.augmentation == "btcv":
        if spec.roi_size[0] == spec.roi_size[1]:  # rot90 in (X, Y) keeps the patch shape only then
            steps.append(mt.RandRotate90d(keys=keys, prob=0.1, max_k=3))
        steps.append(mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5))
    return steps


def _cached(entries: list[dict[str, Any]], transform: Any, spec: VolumeSpec) -> Any:
    from monai import data as md

    if spec.cache == "memory":
        return md.CacheDataset(entries, transform, cache_rate=1.0, num_workers=0, progress=False)
    if spec.cache == "disk":
        Path(spec.cache_dir).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        return md.PersistentDataset(entries, transform, cache_dir=spec.cache_dir)
    return md.Dataset(entries, transform)


def _plain(t: Any) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _entries(sources: Sequence[VolumeSource]) -> list[dict[str, Any]]:
    out = []
    for s in sources:
        if s.zfirst:
            raise InputFileError(
                s.image,
                "prepared Z-first .npy volumes are for 2-D training; point data.root at the raw volumes",
            )
        e: dict[str, Any] = {"image": str(s.image), "case": s.case}
        if s.label is not None:
            e["label"] = str(s.label)
        if s.image_key:
            e["image_key"] = s.image_key
        if s.label_key:
            e["label_key"] = s.label_key
        out.append(e)
    return out


class PatchDataset(Dataset):
    """Random 3-D training patches: ``samples_per_volume`` per volume per epoch.

    Item ``i`` is a fresh random patch of volume ``i % n_volumes``:
    ``{"image": (C, *roi) float32, "label": (1, *roi) int64, "case": str}``.
    ``transform`` is the MONAI ``Compose`` (so the trainer's ``SeededDataset`` can seed it).

    Args:
        sources: the volumes (with labels).
        spec: the :class:`VolumeSpec`.
        label_mode, num_classes: label conversion (see :class:`LoadVolumed`).

    Example:
        >>> ds = PatchDataset(sources, VolumeSpec(roi_size=(32, 32, 32)))  # doctest: +SKIP
        >>> ds[0]["image"].shape  # doctest: +SKIP
        torch.Size([1, 32, 32, 32])
    """

    def __init__(
        self,
        sources: Sequence[VolumeSource],
        spec: VolumeSpec,
        label_mode: str = "index",
        num_classes: int | None = None,
    ) -> None:
        from monai import transforms as mt

        self.sources = list(sources)
        missing = [s.image for s in self.sources if s.label is None]
        if missing:
            raise InputFileError(missing[0], "a training volume needs a label")
        self.spec = spec
        self.transform = mt.Compose(_deterministic(spec, label_mode, num_classes, pad=True) + _random(spec))
        self.volumes = _cached(_entries(self.sources), self.transform, spec)

    def __len__(self) -> int:
        return len(self.sources) * self.spec.samples_per_volume

    def __getitem__(self, index: int) -> dict[str, Any]:
        out = self.volumes[index % len(self.sources)]
        if isinstance(out, list):  # RandCropByPosNegLabeld returns a list of num_samples=1
            out = out[0]
        return {
            "image": _plain(out["image"]).float(),
            "label": _plain(out["label"]).round().long(),
            "case": out["case"],
        }


class WholeVolumeDataset(Dataset):
    """Whole volumes at the target spacing, windowed, for sliding-window validation.

    Items: ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z) int64, "case", "spacing"}`` where
    ``spacing`` is the spacing of the returned arrays (the target one when resampling).
    Cached like :class:`PatchDataset` (one decode per volume for the whole run).

    Example:
        >>> ds = WholeVolumeDataset(sources, VolumeSpec(roi_size=(32, 32, 32)))  # doctest: +SKIP
    """

    whole_volumes = True

    def __init__(
        self,
        sources: Sequence[VolumeSource],
        spec: VolumeSpec,
        label_mode: str = "index",
        num_classes: int | None = None,
    ) -> None:
        from monai import transforms as mt

        self.sources = list(sources)
        self.spec = spec
        self.label_mode = label_mode
        self.num_classes = num_classes
        self.transform = mt.Compose(_deterministic(spec, label_mode, num_classes, pad=False))
        self.volumes = _cached(_entries(self.sources), self.transform, spec)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict[str, Any]:
        out = self.volumes[index]
        spacing = self.spec.spacing or out["spacing"]
        item = {
            "image": _plain(out["image"]).float(),
            "case": out["case"],
            "spacing": torch.tensor([float(s) for s in spacing], dtype=torch.float64),
        }
        if "label" in out:
            item["label"] = _plain(out["label"]).round().long()
        return item


def read_labelled_volume(
    src: VolumeSource, label_mode: str = "index", num_classes: int | None = None
) -> tuple:
    """``(ImageData of the image, label map on the same grid or None)`` of a source, as read from disk."""
    img = read_image(src.image, key=src.image_key)
    if src.label is None:
        return img, None
    lab = _convert_label(read_image(src.label, key=src.label_key).array, src.label, label_mode, num_classes)
    if lab.shape != img.array.shape[:3]:
        raise InputFileError(src.label, f"label shape {lab.shape} does not match image {img.array.shape[:3]}")
    return img, lab


def build_volume_dataset(
    sources: Sequence[VolumeSource],
    spec: VolumeSpec,
    train: bool,
    label_mode: str = "index",
    num_classes: int | None = None,
) -> Dataset:
    """:class:`PatchDataset` for training, :class:`WholeVolumeDataset` for validation / testing."""
    cls = PatchDataset if train else WholeVolumeDataset
    return cls(sources, spec, label_mode, num_classes)


def cache_dir_for(output_dir: str | os.PathLike[str]) -> str:
    """The default disk cache folder of a run."""
    return str(Path(output_dir) / "cache3d")
