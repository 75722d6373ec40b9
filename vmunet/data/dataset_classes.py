"""The torch Dataset classes: 2-D pairs, prepared arrays, volume slices, whole volumes.

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

The layouts that produce the samples live in :mod:`vmunet.data.layouts`; the
trainer reaches all of them through :func:`vmunet.data.factory.build_dataset`.

Example:
    >>> from vmunet.data.dataset_classes import PairedImageDataset  # doctest: +SKIP
    >>> ds = PairedImageDataset([Pair("a.png", "a_mask.png", "a")], channels=3)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vmunet.data.io import image_format, read_image
from vmunet.data.manifests import synapse_label_lut
from vmunet.data.transforms import as_channels as _as_channels
from vmunet.data.transforms import normalize_intensity
from vmunet.errors import InputFileError

__all__ = [
    "Pair",
    "PairedImageDataset",
    "PreparedArrayDataset",
    "VolumeSliceDataset",
    "VolumeDataset",
    "VolumeSource",
    "NpzSliceDataset",
    "check_binary_mask",
]


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


class NpzSliceDataset(PairedImageDataset):
    """TransUNet's ``train_npz`` slices (keys ``image``, ``label``)."""

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
