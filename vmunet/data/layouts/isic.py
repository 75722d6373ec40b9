"""ISIC 2017 / 2018 finders: the challenge downloads and the VM-UNet layout."""

from __future__ import annotations

import os
from pathlib import Path

from vmunet.data.dataset_classes import Pair
from vmunet.data.layouts.folder import SPLIT_ALIASES, _pair_by_name, find_folder_pairs
from vmunet.data.manifests import load_manifest, seeded_split
from vmunet.errors import InputFileError

__all__ = ["find_isic_pairs"]

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
