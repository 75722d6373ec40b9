"""Generic layouts: the VM-UNet folder layout (``<split>/images`` + ``<split>/masks``) and split names."""

from __future__ import annotations

import os
from pathlib import Path

from vmunet.data.dataset_classes import Pair
from vmunet.data.io import case_name, is_supported
from vmunet.errors import InputFileError

__all__ = ["SPLIT_ALIASES", "find_folder_pairs"]

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
