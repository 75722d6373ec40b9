"""Synapse / BTCV finders: TransUNet's npz/h5 files, the raw BTCV NIfTI download, prepared folders."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from vmunet.data.dataset_classes import Pair, VolumeSource
from vmunet.data.layouts.folder import SPLIT_ALIASES
from vmunet.data.manifests import load_manifest
from vmunet.errors import InputFileError, VmunetUserError

__all__ = ["SYNAPSE_HU_WINDOW", "SYNAPSE_NORMALIZATION", "find_btcv_root", "find_synapse_volumes"]

# The CT intensity window of the TransUNet Synapse preprocessing (Beckschen/TransUNet,
# datasets/README.md): HU clipped to [-125, 275], then scaled to [0, 1].
SYNAPSE_HU_WINDOW = (-125, 275)
SYNAPSE_NORMALIZATION = {"kind": "window", "min": SYNAPSE_HU_WINDOW[0], "max": SYNAPSE_HU_WINDOW[1]}


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
