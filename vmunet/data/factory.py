"""``build_dataset``: the one door from a config's data section to a torch Dataset.

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

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from vmunet.data.dataset_classes import (
    NpzSliceDataset,
    Pair,
    PairedImageDataset,
    PreparedArrayDataset,
    VolumeDataset,
    VolumeSliceDataset,
    VolumeSource,
)
from vmunet.data.layouts.datalist import datalist_pairs, entries_are_volumes
from vmunet.data.layouts.folder import SPLIT_ALIASES, find_folder_pairs
from vmunet.data.layouts.isic import find_isic_pairs
from vmunet.data.layouts.nnunet import nnunet_pairs
from vmunet.data.layouts.synapse import SYNAPSE_NORMALIZATION, _synapse_slice_pairs, find_synapse_volumes
from vmunet.errors import InputFileError, VmunetUserError

if TYPE_CHECKING:
    from vmunet.data.volumes3d import VolumeSpec

__all__ = ["build_dataset", "DATASET_KINDS"]

DATASET_KINDS = ("isic2017", "isic2018", "isic", "synapse", "datalist", "nnunet", "folder")


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
    volume_spec: VolumeSpec | None = None,
    train: bool = False,
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
        volume_spec: with ``spatial_dims=3``: how volumes become 3-D samples
            (:class:`vmunet.data.volumes3d.VolumeSpec`): random patches when ``train``, else
            whole resampled volumes (:func:`vmunet.data.volumes3d.build_volume_dataset`).
        train: with ``volume_spec``: training patches (``True``) or whole volumes.

    Raises:
        VmunetUserError: unknown kind; InputFileError: a missing or bad layout (message names the path).
    """
    if spatial_dims == 3 and volume_spec is not None:
        whole = _build(
            kind,
            root,
            split,
            None,
            normalization=normalization,
            datalist=datalist,
            channels=channels,
            spatial_dims=3,
            num_classes=num_classes,
            volumes=True,
            seed=seed,
        )
        if not isinstance(whole, VolumeDataset):
            raise VmunetUserError(
                f"data (kind {kind!r}, split {split!r}) holds 2-D images, not volumes; a 3-D recipe "
                "(data.spatial_dims: 3) needs volumes"
            )
        from vmunet.data.volumes3d import build_volume_dataset

        return build_volume_dataset(whole.sources, volume_spec, train, whole.label_mode, whole.num_classes)
    return _build(
        kind,
        root,
        split,
        transform,
        normalization=normalization,
        datalist=datalist,
        channels=channels,
        spatial_dims=spatial_dims,
        axis=axis,
        empty_fraction=empty_fraction,
        num_classes=num_classes,
        volumes=volumes,
        seed=seed,
    )


def _build(
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
            return NpzSliceDataset(pairs, transform, norm, channels or 1, "index", 9)
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
        if entries_are_volumes(first_paths):
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
    if entries_are_volumes(list(cases[0][0])):
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
