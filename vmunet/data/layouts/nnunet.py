"""nnU-Net raw folders (``imagesTr``, ``labelsTr``, ``dataset.json``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from vmunet.data.layouts.folder import SPLIT_ALIASES
from vmunet.data.manifests import seeded_split
from vmunet.errors import InputFileError

__all__ = ["nnunet_case_names", "nnunet_pairs"]


def nnunet_case_names(img_dir: Path, ending: str) -> list[str]:
    """Sorted case IDs of the ``CASE_XXXX<ending>`` channel files in ``img_dir``.

    Raises:
        InputFileError: no such file in ``img_dir``.
    """
    cases = sorted(
        {
            f.name[: -len(ending)][:-5]
            for f in img_dir.iterdir()
            if f.name.endswith(ending) and re.fullmatch(r".+_\d{4}", f.name[: -len(ending)])
        }
    )
    if not cases:
        raise InputFileError(img_dir, f"no images named CASE_XXXX{ending}")
    return cases


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
    cases = nnunet_case_names(img_dir, ending)
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
