"""MONAI datalist JSON files (``training`` / ``validation`` / ``test`` lists)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmunet.data.io import case_name, image_format
from vmunet.data.layouts.folder import SPLIT_ALIASES
from vmunet.errors import InputFileError

__all__ = ["datalist_pairs", "entries_are_volumes"]


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


def entries_are_volumes(paths: Sequence[Path]) -> bool:
    """Whether the first entry's file is a volume (a 3-D NIfTI with more than one slice, NRRD, MHA ...)."""
    p = paths[0]
    fmt = image_format(p)
    if fmt in ("nifti",):
        import nibabel as nib

        try:
            return len(nib.load(str(p)).shape) >= 3 and nib.load(str(p)).shape[2] > 1
        except Exception as exc:
            raise InputFileError(p, f"cannot read header: {exc}") from exc
    return fmt in ("nrrd", "mha", "mhd", "dicom", "h5")
