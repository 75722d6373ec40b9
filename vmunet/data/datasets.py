"""Torch datasets over the public layouts and generic folders.

Every dataset returns dicts::

    {"image": float32 tensor (C, H, W),
     "label": int64 tensor (1, H, W) of class indices (0/1 for binary masks),
     "case": str}

(the trainer's losses take ``(B, 1, H, W)`` targets). Volume datasets used for
evaluation (:class:`VolumeDataset`) return ``(C, X, Y, Z)`` / ``(1, X, Y, Z)``
plus ``"spacing"``. The optional ``transform`` is any callable
``t(image=np_image, mask=np_mask) -> {"image", "mask"}`` (see
:func:`vmunet.data.augment.build_transforms`); without one, the image is
normalised with ``normalization`` and passed on unchanged.

Layouts (found by :func:`build_dataset`):

* ISIC challenge downloads: ``ISIC-2017_Training_Data/ISIC_0000000.jpg`` +
  ``ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png`` (and the
  2018 ``ISIC2018_Task1-2_Training_Input`` / ``ISIC2018_Task1_Training_GroundTruth``).
* VM-UNet layout: ``{train,val,test}/images`` + ``{train,val,test}/masks`` (pairs by name).
* Synapse: TransUNet's ``train_npz/caseXXXX_sliceYYY.npz`` + ``test_vol_h5/caseXXXX.npy.h5``,
  or the raw BTCV ``img/imgXXXX.nii.gz`` + ``label/labelXXXX.nii.gz``.
* MONAI datalist JSON, nnU-Net raw (``imagesTr``, ``labelsTr``, ``dataset.json``).
* Prepared layouts written by :func:`vmunet.data.prepare.prepare_dataset`.

Example:
    >>> from vmunet.data import build_dataset  # doctest: +SKIP
    >>> ds = build_dataset("isic2017", "data/isic2017_prepared", "train")  # doctest: +SKIP
    >>> ds[0]["image"].shape  # doctest: +SKIP
    torch.Size([3, 256, 256])
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vmunet.data.io import case_name, image_format, is_supported, read_image
from vmunet.data.manifests import load_manifest, seeded_split, synapse_label_lut
from vmunet.data.transforms import normalize_intensity
from vmunet.errors import InputFileError, VmunetUserError

__all__ = [
    "Pair",
    "PairedImageDataset",
    "PreparedArrayDataset",
    "VolumeSliceDataset",
    "VolumeDataset",
    "check_binary_mask",
    "find_isic_pairs",
    "find_folder_pairs",
    "find_synapse_volumes",
    "datalist_pairs",
    "nnunet_pairs",
    "build_dataset",
    "DATASET_KINDS",
    "SPLIT_ALIASES",
]

logger = logging.getLogger(__name__)

DATASET_KINDS = ("isic2017", "isic2018", "isic", "synapse", "datalist", "nnunet", "folder")
# The CT intensity window of the TransUNet Synapse preprocessing (Beckschen/TransUNet,
# datasets/README.md): HU clipped to [-125, 275], then scaled to [0, 1].
SYNAPSE_HU_WINDOW = (-125, 275)
SYNAPSE_NORMALIZATION = {"kind": "window", "min": SYNAPSE_HU_WINDOW[0], "max": SYNAPSE_HU_WINDOW[1]}

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
    "train_full": "train_full",
}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Pair:
    """One sample on disk: image path(s), optional label path, case name."""

    image: Path | tuple[Path, ...]
    label: Path | None
    case: str


# --------------------------------------------------------------------------- label checks


def check_binary_mask(mask: np.ndarray, path: object) -> np.ndarray:
    """Turn a 0/255 mask into 0/1 uint8; any other value is an :class:`InputFileError`.

    Example:
        >>> check_binary_mask(np.array([[0, 255]], np.uint8), "m.png").tolist()
        [[0, 1]]
    """
    if mask.ndim == 3:
        if mask.shape[-1] in (3, 4) and np.array_equal(mask[..., 0], mask[..., 1]):
            mask = mask[..., 0]
        elif mask.shape[-1] == 1:
            mask = mask[..., 0]
        else:
            raise InputFileError(path, f"mask must be single-channel, got shape {mask.shape}")
    bad = (mask != 0) & (mask != 255)
    if bad.any():
        values = np.unique(mask[bad])[:5].tolist()
        raise InputFileError(path, f"mask values must be 0 or 255, found {values}")
    return (mask == 255).astype(np.uint8)


def _index_mask(mask: np.ndarray, path: object, num_classes: int | None) -> np.ndarray:
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if not np.issubdtype(mask.dtype, np.integer):
        r = np.rint(mask)
        if not np.array_equal(r, mask):
            raise InputFileError(path, "label holds non-integer values; expected class indices")
        mask = r
    if mask.size and (mask.min() < 0 or (num_classes is not None and mask.max() >= num_classes)):
        hi = f"< {num_classes}" if num_classes is not None else ">= 0"
        raise InputFileError(
            path, f"label values must be class indices {hi}, found {mask.min()}..{mask.max()}"
        )
    return mask.astype(np.uint8 if mask.size == 0 or mask.max() < 256 else np.int64)


def _convert_label(mask: np.ndarray, path: object, mode: str, num_classes: int | None) -> np.ndarray:
    if mode == "binary255":
        return check_binary_mask(mask, path)
    if mode == "auto":
        vals = np.unique(mask)
        if vals.size and set(vals.tolist()) <= {0, 255} and 255 in vals:
            return check_binary_mask(mask, path)
        return _index_mask(mask, path, num_classes)
    if mode == "synapse13":
        m = _index_mask(mask, path, 14)
        return synapse_label_lut()[m]
    return _index_mask(mask, path, num_classes)


def _as_channels(image: np.ndarray, channels: int | None, path: object) -> np.ndarray:
    """(H, W[, C]) -> (H, W, C) with the requested channel count."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise InputFileError(path, f"expected a 2-D image (H, W) or (H, W, C), got shape {image.shape}")
    if channels is None or image.shape[-1] == channels:
        return image
    if channels == 3 and image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3 and image.shape[-1] == 4:
        return image[..., :3]
    if channels == 1 and image.shape[-1] in (3, 4):
        return image[..., :3].mean(axis=-1, keepdims=True).astype(np.float32)
    raise InputFileError(path, f"image has {image.shape[-1]} channels, expected {channels}")


def _finish(
    image: np.ndarray,
    mask: np.ndarray | None,
    case: str,
    transform: Callable[..., Any] | None,
    normalization: Mapping[str, Any] | None,
) -> dict[str, Any]:
    if transform is not None:
        kwargs = {"image": image} if mask is None else {"image": image, "mask": mask}
        out = transform(**kwargs)
        image, mask = out["image"], out.get("mask", mask)
    else:
        image = normalize_intensity(image, normalization) if normalization else image.astype(np.float32)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    sample: dict[str, Any] = {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "case": case,
    }
    if mask is not None:
        sample["label"] = torch.from_numpy(np.ascontiguousarray(np.asarray(mask), dtype=np.int64))[None]
    return sample


class _Base(Dataset):
    def __init__(
        self,
        transform: Callable[..., Any] | None,
        normalization: Mapping[str, Any] | None,
        channels: int | None,
        label_mode: str,
        num_classes: int | None,
    ) -> None:
        if label_mode not in ("binary255", "index", "auto", "synapse13"):
            raise ValueError(
                f"label_mode must be 'binary255', 'index', 'auto' or 'synapse13', got {label_mode!r}"
            )
        self.transform = transform
        self.normalization = dict(normalization) if normalization else None
        self.channels = channels
        self.label_mode = label_mode
        self.num_classes = num_classes


# --------------------------------------------------------------------------- 2-D pairs


class PairedImageDataset(_Base):
    """2-D image / mask pairs read from files (any :func:`read_image` format).

    Args:
        pairs: the samples (see the ``find_*`` helpers).
        transform: ``t(image=, mask=)`` callable, e.g. from ``build_transforms``.
        normalization: normalisation spec used when ``transform`` is ``None``.
        channels: force this many image channels (3 for RGB models, 1 for grey);
            ``None`` keeps what the file has.
        label_mode: ``"binary255"`` (0/255 masks, ISIC), ``"index"`` (class
            indices), ``"auto"`` (0/255 if the mask holds exactly those, else indices),
            ``"synapse13"`` (BTCV labels mapped to the 8 Synapse organs).
        num_classes: with ``"index"``: labels must be below it.

    Example:
        >>> ds = PairedImageDataset(find_folder_pairs("lesions", "train"), channels=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        transform: Callable[..., Any] | None = None,
        normalization: Mapping[str, Any] | None = None,
        channels: int | None = None,
        label_mode: str = "auto",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(transform, normalization, channels, label_mode, num_classes)
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None, str]:
        """The raw (image (H, W, C), mask (H, W) or None, case) of a sample, before any transform."""
        pair = self.pairs[index]
        paths = pair.image if isinstance(pair.image, tuple) else (pair.image,)
        chans = [read_image(p).array for p in paths]
        image = chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)
        image = _as_channels(image, self.channels, paths[0])
        mask = None
        if pair.label is not None:
            mask = _convert_label(read_image(pair.label).array, pair.label, self.label_mode, self.num_classes)
            if mask.shape != image.shape[:2]:
                raise InputFileError(
                    pair.label,
                    f"mask shape {mask.shape} does not match image {paths[0].name} {image.shape[:2]}",
                )
        return image, mask, pair.case

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, case = self.load(index)
        return _finish(image, mask, case, self.transform, self.normalization)


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in _IMAGE_EXTS + (".nii", ".gz")
        and is_supported(p)
    )


def _pair_by_name(images: list[Path], masks: list[Path], mask_folder: Path) -> list[Pair]:
    """Match masks to images by stem (``X`` or ``X_segmentation``); every problem is reported at once."""
    by_stem: dict[str, Path] = {}
    for m in masks:
        stem = case_name(m)
        by_stem[stem[: -len("_segmentation")] if stem.endswith("_segmentation") else stem] = m
    pairs, missing = [], []
    for img in images:
        c = case_name(img)
        if c in by_stem:
            pairs.append(Pair(img, by_stem.pop(c), c))
        else:
            missing.append(img)
    problems = [
        f"{img}: no mask {c}.png or {c}_segmentation.png in {mask_folder}"
        for img in missing
        for c in [case_name(img)]
    ]
    problems += [f"{m}: mask without an image" for m in by_stem.values()]
    if problems:
        raise InputFileError(
            missing[0] if missing else next(iter(by_stem.values())),
            f"{len(problems)} unpaired file(s): "
            + "; ".join(problems[:10])
            + (" ..." if len(problems) > 10 else ""),
        )
    return pairs


def find_folder_pairs(root: str | os.PathLike[str], split: str | None = None) -> list[Pair]:
    """Pairs in the VM-UNet layout ``root/<split>/images`` + ``root/<split>/masks``.

    With ``split=None`` (or a root without split folders) ``root/images`` and
    ``root/masks`` are used. Masks pair with images by name (``X.png`` or
    ``X_segmentation.png`` for image ``X.jpg``), never by sort order.

    Raises:
        InputFileError: missing folders, an empty folder, unpaired files (all named).
    """
    root = Path(root)
    base = root / split if split is not None and (root / split).is_dir() else root
    if split is not None and base == root and not (root / "images").is_dir():
        raise InputFileError(
            root / split, "split folder not found (expected <root>/<split>/images and masks)"
        )
    img_dir, mask_dir = base / "images", base / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise InputFileError(d, "folder not found (VM-UNet layout: <split>/images and <split>/masks)")
    images = _list_images(img_dir)
    if not images:
        raise InputFileError(img_dir, "folder holds no images")
    return _pair_by_name(images, _list_images(mask_dir), mask_dir)


_ISIC_SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


def _isic_challenge_dirs(root: Path, split: str) -> tuple[Path, Path] | None:
    word = _ISIC_SPLIT_WORDS[split]
    cands = [d for d in root.iterdir() if d.is_dir()] + [
        d for sub in root.iterdir() if sub.is_dir() for d in sub.iterdir() if d.is_dir()
    ]
    imgs = [
        d
        for d in cands
        if word in d.name.lower()
        and "groundtruth" not in d.name.lower()
        and ("data" in d.name.lower() or "input" in d.name.lower())
        and d.name.lower().startswith("isic")
    ]
    gts = [
        d
        for d in cands
        if word in d.name.lower()
        and "groundtruth" in d.name.lower()
        and ("part1" in d.name.lower() or "task1" in d.name.lower())
    ]
    if not imgs and not gts:
        return None
    if not imgs or not gts:
        missing = "image folder" if not imgs else "ground-truth folder"
        raise InputFileError(root, f"ISIC {split} split: {missing} not found (challenge layout)")
    return sorted(imgs)[0], sorted(gts)[0]


def _isic_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in (".jpg", ".jpeg", ".png")
        and p.name.upper().startswith("ISIC_")
        and not p.stem.endswith("_superpixels")
        and not p.name.startswith(".")
    )


def find_isic_pairs(root: str | os.PathLike[str], split: str, year: int | None = None) -> list[Pair]:
    """ISIC pairs for ``split`` from the challenge download or the VM-UNet layout.

    ISIC 2017: the official training / validation / test folders are the split.
    ISIC 2018: the official training folder is split by the seeded rule of
    ``isic2018.json`` (7:1:2, seed 42). ``split="all"`` returns every pair.
    """
    root = Path(root)
    split = SPLIT_ALIASES.get(split, split)
    if not root.is_dir():
        raise InputFileError(root, "data folder not found")
    if (root / "train" / "images").is_dir() or (root / split / "images").is_dir():
        return find_folder_pairs(root, split)
    if year == 2018 or (year is None and any("2018" in d.name for d in root.iterdir())):
        dirs = _isic_challenge_dirs(root, "train")
        if dirs is None:
            raise InputFileError(
                root,
                "no ISIC 2018 layout found (ISIC2018_Task1-2_Training_Input, "
                "ISIC2018_Task1_Training_GroundTruth, or train/images + train/masks)",
            )
        pairs = _pair_by_name(_isic_images(dirs[0]), _isic_images(dirs[1]), dirs[1])
        if split == "all":
            return pairs
        m = load_manifest("isic2018")
        chosen = set(seeded_split([p.case for p in pairs], m["ratios"], m["seed"])[split])
        return [p for p in pairs if p.case in chosen]
    splits = ("train", "val", "test") if split == "all" else (split,)
    out: list[Pair] = []
    for s in splits:
        dirs = _isic_challenge_dirs(root, s)
        if dirs is None:
            raise InputFileError(
                root,
                f"no ISIC {s} folders found (challenge layout ISIC-2017_*_Data + "
                "*_Part1_GroundTruth, or VM-UNet layout <split>/images + masks)",
            )
        out += _pair_by_name(_isic_images(dirs[0]), _isic_images(dirs[1]), dirs[1])
    return out


# --------------------------------------------------------------------------- prepared arrays


class PreparedArrayDataset(_Base):
    """2-D samples from a prepared split: ``images.npy`` (N, H, W[, C]) + ``labels.npy`` (N, H, W).

    The arrays are memory-mapped, so a sample costs one small read; ``ids.json``
    names the cases. Written by :func:`vmunet.data.prepare.prepare_dataset`.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        transform: Callable[..., Any] | None = None,
        normalization: Mapping[str, Any] | None = None,
        channels: int | None = None,
    ) -> None:
        super().__init__(transform, normalization, channels, "index", None)
        self.folder = Path(folder)
        for name in ("images.npy", "labels.npy", "ids.json"):
            if not (self.folder / name).is_file():
                raise InputFileError(self.folder / name, "prepared file missing; run 'vmunet prepare' again")
        self.ids = json.loads((self.folder / "ids.json").read_text())
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None:  # opened lazily, once per worker process
            self._images = np.load(self.folder / "images.npy", mmap_mode="r")
            self._labels = np.load(self.folder / "labels.npy", mmap_mode="r")
            if len(self._images) != len(self.ids) or len(self._labels) != len(self.ids):
                raise InputFileError(
                    self.folder, "prepared arrays and ids.json disagree; run 'vmunet prepare' again"
                )
        return self._images, self._labels  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images"] = state["_labels"] = None  # re-open memmaps in each worker
        return state

    def __getitem__(self, index: int) -> dict[str, Any]:
        images, labels = self._arrays()
        image = _as_channels(np.array(images[index]), self.channels, self.folder / "images.npy")
        return _finish(image, np.array(labels[index]), self.ids[index], self.transform, self.normalization)


# --------------------------------------------------------------------------- volumes


class _VolumeCache:
    """A small per-process LRU cache of volumes (image, label) keyed by path."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._data: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, loader: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = loader()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value


def _load_volume(path: Path, key: str | None = None) -> np.ndarray:
    """A volume as an array, slice axis last; ``.npy`` files are memory-mapped (stored Z-first)."""
    if path.suffix == ".npy" and not path.name.endswith(".npy.h5"):
        arr = np.load(path, mmap_mode="r")  # prepared: (Z, X, Y) on disk for contiguous slices
        return arr
    img = read_image(path, key=key)
    if not img.is_volume and img.array.ndim != 3:
        raise InputFileError(path, f"expected a 3-D volume, got shape {img.array.shape}")
    return img.array


def _volume_shape(path: Path, key: str | None = None) -> tuple[int, ...]:
    if path.suffix == ".npy" and not path.name.endswith(".npy.h5"):
        z, x, y = np.load(path, mmap_mode="r").shape[:3]
        return (x, y, z)
    fmt = image_format(path)
    try:
        if fmt == "nifti":
            import nibabel as nib

            return tuple(int(s) for s in nib.load(str(path)).shape[:3])
        if fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                z, h, w = f[key or "image"].shape
            return (h, w, z)
    except Exception as exc:
        raise InputFileError(path, f"cannot read the volume header: {exc}") from exc
    return tuple(_load_volume(path, key).shape[:3])


@dataclass(frozen=True)
class VolumeSource:
    """A volume on disk: image path, label path (or None), case; ``*_key`` for h5 files."""

    image: Path
    label: Path | None
    case: str
    image_key: str | None = None
    label_key: str | None = None
    zfirst: bool = False  # prepared .npy memmaps are stored (Z, X, Y)


class VolumeSliceDataset(_Base):
    """2-D slices taken along one axis of 3-D volumes, without loading a volume per item.

    Volumes come from :class:`VolumeSource` entries. Prepared ``.npy`` volumes
    are memory-mapped (one slice read per item); other formats go through a
    per-worker LRU cache of ``cache_size`` volumes, so iterating in volume order
    decodes each volume once (sort the sampler or prepare the data for shuffling).

    Args:
        sources: the volumes.
        axis: slicing axis in ``(X, Y, Z)`` order (2 = axial for CT / MNI data).
        empty_fraction: fraction of label-empty slices to keep (1.0 keeps all;
            needs one pass over the labels at construction).
        seed: which empty slices are kept.
        normalization: spec applied to each slice (``window`` for CT), before ``transform``.
        transform, channels, label_mode, num_classes: as :class:`PairedImageDataset`.
        cache_size: volumes kept per worker process.
        slices: optional explicit ``{case: [slice indices]}`` to use instead.

    Example:
        >>> ds = VolumeSliceDataset(sources, axis=2, empty_fraction=0.1)  # doctest: +SKIP
    """

    def __init__(
        self,
        sources: Sequence[VolumeSource],
        axis: int = 2,
        empty_fraction: float = 1.0,
        seed: int = 0,
        transform: Callable[..., Any] | None = None,
        normalization: Mapping[str, Any] | None = None,
        channels: int | None = None,
        label_mode: str = "index",
        num_classes: int | None = None,
        cache_size: int = 4,
        slices: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__(transform, normalization, channels, label_mode, num_classes)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        if not 0.0 <= empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
        self.sources = list(sources)
        self.axis = axis
        self.cache_size = cache_size
        self._cache = _VolumeCache(cache_size)
        rng = np.random.default_rng(seed)
        self.index: list[tuple[int, int]] = []
        for vi, src in enumerate(self.sources):
            if slices is not None and src.case in slices:
                chosen = list(slices[src.case])
            else:
                n = _volume_shape(src.image, src.image_key)[axis]
                chosen = list(range(n))
                if empty_fraction < 1.0 and src.label is not None:
                    lab = self._label_volume(vi)
                    other = tuple(a for a in range(3) if a != axis)
                    nonempty = np.asarray(lab != 0).any(axis=other)
                    keep = nonempty | (rng.random(n) < empty_fraction)
                    chosen = [k for k in chosen if keep[k]]
            self.index += [(vi, k) for k in chosen]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = _VolumeCache(self.cache_size)

    def __len__(self) -> int:
        return len(self.index)

    def _volume(self, vi: int, which: str) -> np.ndarray:
        src = self.sources[vi]
        path = src.image if which == "image" else src.label
        key = src.image_key if which == "image" else src.label_key
        return self._cache.get((str(path), key), lambda: _load_volume(path, key))  # type: ignore[arg-type]

    def _label_volume(self, vi: int) -> np.ndarray:
        vol = self._volume(vi, "label")
        return np.moveaxis(vol, 0, -1) if self.sources[vi].zfirst else vol

    def _slice(self, vol: np.ndarray, k: int, zfirst: bool) -> np.ndarray:
        if zfirst:
            if self.axis == 2:
                return np.array(vol[k])
            vol = np.moveaxis(vol, 0, -1)
        return np.ascontiguousarray(vol[(slice(None),) * self.axis + (k,)])  # a view, then one copy

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None, str]:
        """Raw (image slice, label slice or None, case name) before any transform."""
        vi, k = self.index[index]
        src = self.sources[vi]
        image = self._slice(self._volume(vi, "image"), k, src.zfirst)
        image = _as_channels(image, self.channels, src.image)
        mask = None
        if src.label is not None:
            raw = self._slice(self._volume(vi, "label"), k, src.zfirst)
            mask = _convert_label(raw, src.label, self.label_mode, self.num_classes)
            if mask.shape != image.shape[:2]:
                raise InputFileError(
                    src.label, f"label shape {mask.shape} does not match image {image.shape[:2]}"
                )
        return image, mask, f"{src.case}_slice{k:03d}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, case = self.load(index)
        return _finish(image, mask, case, self.transform, self.normalization)


class VolumeDataset(_Base):
    """Whole volumes for evaluation: ``image`` ``(C, X, Y, Z)``, ``label`` ``(1, X, Y, Z)``, ``spacing``.

    Intensities are normalised with ``normalization``; labels converted per ``label_mode``.
    """

    def __init__(
        self,
        sources: Sequence[VolumeSource],
        normalization: Mapping[str, Any] | None = None,
        label_mode: str = "index",
        num_classes: int | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(transform, normalization, None, label_mode, num_classes)
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict[str, Any]:
        src = self.sources[index]
        if src.zfirst:
            image = np.moveaxis(np.asarray(np.load(src.image, mmap_mode="r")), 0, -1)
            spacing = (1.0, 1.0, 1.0)
            meta_path = src.image.with_name(src.image.name.replace("_image.npy", "_meta.json"))
            if meta_path.is_file():
                spacing = tuple(json.loads(meta_path.read_text()).get("spacing", spacing))
        else:
            img = read_image(src.image, key=src.image_key)
            image, spacing = img.array, img.spacing
        image = (
            normalize_intensity(image, self.normalization) if self.normalization else image.astype(np.float32)
        )
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "case": src.case,
            "spacing": tuple(float(s) for s in spacing),
        }
        if src.label is not None:
            if src.zfirst:
                lab = np.moveaxis(np.asarray(np.load(src.label, mmap_mode="r")), 0, -1)
            else:
                lab = read_image(src.label, key=src.label_key).array
            lab = _convert_label(lab, src.label, self.label_mode, self.num_classes)
            if lab.shape != image.shape[:3]:
                raise InputFileError(src.label, f"label shape {lab.shape} does not match image {image.shape}")
            sample["label"] = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.int64))[None]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


# --------------------------------------------------------------------------- Synapse


_CASE_RE = re.compile(r"(\d+)")


def _synapse_case(stem: str) -> str:
    m = _CASE_RE.search(stem)
    return f"case{int(m.group(1)):04d}" if m else stem


def _synapse_split_cases(split: str) -> list[str]:
    m = load_manifest("synapse")
    if split == "train_full":
        return list(m["train"])
    if split == "train":
        return [c for c in m["train"] if c not in set(m["val"])]
    if split in ("val", "test"):
        return list(m[split])
    if split == "all":
        return sorted(m["train"] + m["test"])
    raise VmunetUserError(f"Synapse split {split!r} is unknown; expected train, val, test, train_full or all")


def find_btcv_root(root: Path) -> Path | None:
    """The folder holding the raw BTCV ``img/`` and ``label/`` folders under ``root``, if any.

    Accepts the download as unpacked (``Abdomen/RawData/Training``) or any folder on that path.
    """
    candidates = (
        root,
        root / "Training",
        root / "RawData" / "Training",
        root / "Abdomen" / "RawData" / "Training",
    )
    for r in candidates:
        if (r / "img").is_dir():
            return r
    return None


def find_synapse_volumes(root: str | os.PathLike[str], split: str) -> tuple[str, list[VolumeSource]]:
    """Volumes of a Synapse split; returns (layout, sources).

    Layouts: ``"prepared"`` (``volumes/caseXXXX_image.npy``), ``"raw"`` (BTCV
    ``img/`` + ``label/``, possibly under ``Abdomen/RawData/Training``) and
    ``"transunet"`` (``test_vol_h5/*.npy.h5``; training cases there exist only as slices).
    """
    root = Path(root)
    split = SPLIT_ALIASES.get(split, split)
    cases = _synapse_split_cases(split)
    if (root / "volumes").is_dir():
        try:  # a subset prepared with check_counts=False holds only some cases
            done = json.loads((root / "prepared.json").read_text())["slices"]
            cases = [c for c in cases if c in done]
        except (OSError, ValueError, KeyError):
            pass
        srcs = [
            VolumeSource(
                root / "volumes" / f"{c}_image.npy", root / "volumes" / f"{c}_label.npy", c, zfirst=True
            )
            for c in cases
        ]
        missing = [s.image for s in srcs if not s.image.is_file()]
        if missing:
            raise InputFileError(
                missing[0], f"{len(missing)} prepared volume(s) missing; run 'vmunet prepare synapse'"
            )
        return "prepared", srcs
    raw = find_btcv_root(root)
    if raw is not None:
        srcs, problems = [], []
        for c in cases:
            num = c[4:]
            img, lab = raw / "img" / f"img{num}.nii.gz", raw / "label" / f"label{num}.nii.gz"
            if not img.is_file():
                problems.append(f"{img} missing")
            if not lab.is_file():
                problems.append(f"{lab} missing")
            srcs.append(VolumeSource(img, lab, c))
        if problems:
            raise InputFileError(
                raw, f"{len(problems)} BTCV file(s) missing for split {split}: " + "; ".join(problems[:6])
            )
        return "raw", srcs
    h5 = root / "test_vol_h5"
    if h5.is_dir():
        srcs = [VolumeSource(h5 / f"{c}.npy.h5", h5 / f"{c}.npy.h5", c, "image", "label") for c in cases]
        missing = [s.image for s in srcs if not s.image.is_file()]
        if missing:
            raise InputFileError(
                missing[0],
                f"{len(missing)} volume(s) of split {split} not in test_vol_h5 (TransUNet ships "
                "training cases as train_npz slices only)",
            )
        return "transunet", srcs
    raise InputFileError(
        root,
        "no Synapse layout found: expected train_npz/ + test_vol_h5/ (TransUNet), "
        "img/ + label/ (BTCV RawData/Training) or a prepared folder",
    )


def _synapse_slice_pairs(root: Path, split: str) -> list[Pair]:
    cases = set(_synapse_split_cases(split))
    folder = root / "train_npz"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".npz"))
    if not files:
        raise InputFileError(folder, "folder holds no .npz slices")
    return [Pair(p, p, p.name[:-4]) for p in files if p.name.split("_")[0] in cases]


class _NpzSliceDataset(PairedImageDataset):
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None, str]:
        pair = self.pairs[index]
        try:
            with np.load(pair.image, allow_pickle=False) as z:
                image, label = z["image"], z["label"]
        except Exception as exc:
            raise InputFileError(
                pair.image, f"cannot read TransUNet slice (keys image, label): {exc}"
            ) from exc
        image = _as_channels(image, self.channels, pair.image)
        mask = _convert_label(label, pair.image, "index", 9)
        if mask.shape != image.shape[:2]:
            raise InputFileError(
                pair.image, f"label shape {mask.shape} does not match image {image.shape[:2]}"
            )
        return image, mask, pair.case


# --------------------------------------------------------------------------- generic layouts


def datalist_pairs(
    datalist: str | os.PathLike[str], split: str, base_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """Entries of a MONAI datalist JSON split (``training`` / ``validation`` / ``test``), paths absolute.

    Uses :func:`monai.data.load_decathlon_datalist`; each entry keeps its other keys.
    """
    from monai.data import load_decathlon_datalist

    path = Path(datalist)
    if not path.is_file():
        raise InputFileError(path, "datalist JSON not found")
    key = {"train": "training", "val": "validation", "test": "test"}.get(
        SPLIT_ALIASES.get(split, split), split
    )
    try:
        content = json.loads(path.read_text())
    except ValueError as exc:
        raise InputFileError(path, f"not valid JSON: {exc}") from exc
    if key not in content:
        raise InputFileError(path, f"datalist has no {key!r} list (found keys: {sorted(content)})")
    entries = load_decathlon_datalist(
        str(path), is_segmentation=True, data_list_key=key, base_dir=str(base_dir or path.parent)
    )
    for i, e in enumerate(entries):
        if "image" not in e:
            raise InputFileError(path, f"{key}[{i}] has no 'image' key")
        e.setdefault("case", case_name(e["image"] if isinstance(e["image"], str) else e["image"][0]))
    return entries


def nnunet_pairs(
    root: str | os.PathLike[str], split: str, seed: int = 0, val_fraction: float = 0.2
) -> tuple[list[tuple[tuple[Path, ...], Path | None, str]], dict[str, Any]]:
    """Cases of an nnU-Net raw folder (``imagesTr``, ``labelsTr``, ``dataset.json``).

    ``train`` / ``val`` split the labelled cases with :func:`seeded_split`
    (``val_fraction`` to validation, no test part), ``all`` returns every labelled
    case, ``test`` lists ``imagesTs`` (labels from ``labelsTs`` when present).
    Channels ``_0000``, ``_0001`` ... are returned as a tuple of paths.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputFileError(meta_path, "nnU-Net dataset.json not found")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise InputFileError(meta_path, f"not valid JSON: {exc}") from exc
    ending = meta.get("file_ending", ".nii.gz")
    n_ch = len(meta.get("channel_names", meta.get("modality", {"0": "x"})))
    split = SPLIT_ALIASES.get(split, split)
    img_dir = root / ("imagesTs" if split == "test" else "imagesTr")
    lab_dir = root / ("labelsTs" if split == "test" else "labelsTr")
    if not img_dir.is_dir():
        raise InputFileError(img_dir, "folder not found")
    cases = sorted(
        {
            f.name[: -len(ending)][:-5]
            for f in img_dir.iterdir()
            if f.name.endswith(ending) and re.fullmatch(r".+_\d{4}", f.name[: -len(ending)])
        }
    )
    if not cases:
        raise InputFileError(img_dir, f"no images named CASE_XXXX{ending}")
    problems, out = [], []
    for c in cases:
        chans = tuple(img_dir / f"{c}_{i:04d}{ending}" for i in range(n_ch))
        problems += [f"{p} missing" for p in chans if not p.is_file()]
        lab = lab_dir / f"{c}{ending}"
        if split != "test" and not lab.is_file():
            problems.append(f"{lab} missing (label of {c})")
        out.append((chans, lab if lab.is_file() else None, c))
    if problems:
        raise InputFileError(root, f"{len(problems)} problem(s): " + "; ".join(problems[:8]))
    if split in ("train", "val"):
        s = seeded_split(
            [c for _, _, c in out], {"train": 1 - val_fraction, "val": val_fraction, "test": 0.0}, seed
        )
        keep = set(s[split])
        out = [o for o in out if o[2] in keep]
    return out, meta


def _entries_are_volumes(paths: Sequence[Path]) -> bool:
    p = paths[0]
    fmt = image_format(p)
    if fmt in ("nifti",):
        import nibabel as nib

        try:
            return len(nib.load(str(p)).shape) >= 3 and nib.load(str(p)).shape[2] > 1
        except Exception as exc:
            raise InputFileError(p, f"cannot read header: {exc}") from exc
    return fmt in ("nrrd", "mha", "mhd", "dicom", "h5")


# --------------------------------------------------------------------------- factory


def build_dataset(
    kind: str,
    root: str | os.PathLike[str],
    split: str,
    transform: Callable[..., Any] | None = None,
    *,
    normalization: Mapping[str, Any] | None = None,
    datalist: str | os.PathLike[str] | None = None,
    channels: int | None = None,
    spatial_dims: int = 2,
    axis: int = 2,
    empty_fraction: float = 1.0,
    num_classes: int | None = None,
    volumes: bool = False,
    seed: int = 0,
) -> Dataset:
    """Build the dataset for a layout kind and split; the trainer's single entry point.

    Args:
        kind: ``"isic2017"``, ``"isic2018"``, ``"isic"`` (VM-UNet layout or prepared),
            ``"synapse"``, ``"datalist"``, ``"nnunet"`` or ``"folder"`` (``<split>/images``
            + ``<split>/masks`` with 0/255 or index masks).
        root: the data folder (raw download, converted layout, or prepared output).
        split: ``train``, ``val`` or ``test`` (also ``training`` / ``validation``;
            Synapse adds ``train_full``).
        transform: ``t(image=, mask=)`` callable (``build_transforms``).
        normalization: used when ``transform`` is ``None`` (and for volumes).
        datalist: the datalist JSON for ``kind="datalist"`` (default ``root/datalist.json``),
            or a prepared layout's datalist.
        channels: force the image channel count (ISIC defaults to 3, Synapse to 1).
        spatial_dims: 2 gives 2-D samples (slices of volumes); 3 gives whole volumes.
        axis: slicing axis for volumes.
        empty_fraction: fraction of label-empty slices kept for 2-D training on volumes.
        num_classes: checks label values (class indices must be below it).
        volumes: for Synapse / volume data, return :class:`VolumeDataset` (whole
            volumes for evaluation) even with ``spatial_dims=2``.
        seed: seed of the empty-slice subsampling and the nnU-Net train/val split.

    Raises:
        VmunetUserError: unknown kind; InputFileError: a missing or bad layout (message names the path).
    """
    root = Path(root)
    split = SPLIT_ALIASES.get(split, split)
    if kind not in DATASET_KINDS:
        raise VmunetUserError(f"dataset kind {kind!r} is unknown; expected one of {list(DATASET_KINDS)}")
    if not root.exists():
        raise InputFileError(root, "data folder not found")
    prepared = root / "prepared.json"
    if prepared.is_file():
        return _build_prepared(
            root, split, transform, normalization, channels, volumes, axis, empty_fraction, seed, num_classes
        )
    if kind in ("isic2017", "isic2018", "isic"):
        year = {"isic2017": 2017, "isic2018": 2018}.get(kind)
        pairs = find_isic_pairs(root, split, year)
        return PairedImageDataset(pairs, transform, normalization, channels or 3, "binary255")
    if kind == "folder":
        return PairedImageDataset(
            find_folder_pairs(root, split), transform, normalization, channels, "auto", num_classes
        )
    if kind == "synapse":
        norm = normalization
        if (root / "train_npz").is_dir() and split in ("train", "train_full", "val") and not volumes:
            pairs = _synapse_slice_pairs(root, split)
            if not pairs:
                raise InputFileError(root / "train_npz", f"no slices of the Synapse {split} cases")
            return _NpzSliceDataset(pairs, transform, norm, channels or 1, "index", 9)
        layout, srcs = find_synapse_volumes(root, split)
        if layout == "raw" and norm is None:
            norm = dict(SYNAPSE_NORMALIZATION)
        mode = "synapse13" if layout == "raw" else "index"
        if volumes or spatial_dims == 3:
            return VolumeDataset(srcs, norm, mode, 9 if mode == "index" else None)
        return VolumeSliceDataset(
            srcs,
            axis,
            empty_fraction,
            seed,
            transform,
            norm,
            channels or 1,
            mode,
            9 if mode == "index" else None,
        )
    if kind == "datalist":
        dl = Path(datalist) if datalist else root / "datalist.json"
        entries = datalist_pairs(dl, split, base_dir=root if datalist else dl.parent)
        if not entries:
            raise InputFileError(dl, f"split {split!r} is empty")
        first = entries[0]["image"]
        first_paths = [Path(first)] if isinstance(first, str) else [Path(p) for p in first]
        if _entries_are_volumes(first_paths):
            srcs = [
                VolumeSource(Path(e["image"]), Path(e["label"]) if e.get("label") else None, e["case"])
                for e in entries
            ]
            if volumes or spatial_dims == 3:
                return VolumeDataset(srcs, normalization, "index", num_classes)
            return VolumeSliceDataset(
                srcs, axis, empty_fraction, seed, transform, normalization, channels, "index", num_classes
            )
        pairs = [
            Pair(
                Path(e["image"]) if isinstance(e["image"], str) else tuple(Path(p) for p in e["image"]),
                Path(e["label"]) if e.get("label") else None,
                e["case"],
            )
            for e in entries
        ]
        return PairedImageDataset(pairs, transform, normalization, channels, "auto", num_classes)
    # nnunet
    cases, meta = nnunet_pairs(root, split, seed=seed)
    n_cls = num_classes or (len(meta["labels"]) if isinstance(meta.get("labels"), dict) else None)
    if _entries_are_volumes(list(cases[0][0])):
        if any(len(ch) > 1 for ch, _, _ in cases):
            raise VmunetUserError("multi-channel nnU-Net volumes are not supported by the slice dataset yet")
        srcs = [VolumeSource(ch[0], lab, c) for ch, lab, c in cases]
        if volumes or spatial_dims == 3:
            return VolumeDataset(srcs, normalization, "index", n_cls)
        return VolumeSliceDataset(
            srcs, axis, empty_fraction, seed, transform, normalization, channels, "index", n_cls
        )
    pairs = [Pair(ch if len(ch) > 1 else ch[0], lab, c) for ch, lab, c in cases]
    return PairedImageDataset(pairs, transform, normalization, channels, "index", n_cls)


def _build_prepared(
    root: Path,
    split: str,
    transform,
    normalization,
    channels,
    volumes,
    axis,
    empty_fraction,
    seed,
    num_classes,
) -> Dataset:
    info = json.loads((root / "prepared.json").read_text())
    kind = info.get("kind")
    if kind in ("isic2017", "isic2018"):
        folder = root / split
        if not folder.is_dir():
            raise InputFileError(folder, f"prepared split {split!r} not found (have: {info.get('splits')})")
        return PreparedArrayDataset(folder, transform, normalization, channels or 3)
    if kind == "synapse":
        _, srcs = find_synapse_volumes(root, split)
        default = dict(SYNAPSE_NORMALIZATION) if info.get("intensity") == "hu" else None
        norm = normalization or default
        if volumes:
            return VolumeDataset(srcs, norm, "index", 9)
        slices = info.get("slices") if empty_fraction >= 1.0 and axis == 2 else None
        return VolumeSliceDataset(
            srcs,
            axis,
            empty_fraction,
            seed,
            transform,
            norm,
            channels or 1,
            "index",
            9,
            slices=None
            if slices is None
            else {s.case: range(slices[s.case]) for s in srcs if s.case in slices},
        )
    raise InputFileError(root / "prepared.json", f"unknown prepared kind {kind!r}")
