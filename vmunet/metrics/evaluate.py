"""Score a folder of predictions against a folder of labels under one protocol.

Files are paired by case name: the file name without its image extension
(``case01.nii.gz`` -> ``case01``); under the ``isic`` protocol a trailing
``_segmentation`` (the ISIC label naming) is ignored too. Every format that
:func:`vmunet.data.read_image` reads is accepted; the spacing comes from the
label file's header. A case that cannot be scored (no partner file, unreadable
file, shapes that differ, values that are not a label map) is logged in one
line naming the file, and the remaining cases are still scored; the result
lists what was skipped and why.

Example:
    >>> from vmunet.metrics import evaluate_folders
    >>> result = evaluate_folders("masks/", "labelsTs/", protocol="standard")  # doctest: +SKIP
    >>> print(result.format_table())  # doctest: +SKIP
    >>> result.save("evaluation.json")  # writes evaluation.csv and evaluation.json  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.errors import VmunetUserError
from vmunet.metrics.functional import HD95_MODES, _check_choice
from vmunet.metrics.protocols import (
    PROTOCOLS,
    SYNAPSE_CLASSES,
    _IsicAccumulator,
    _standard_accumulator,
    _standard_settings,
    _synapse_accumulator,
    _synapse_settings,
)
from vmunet.metrics.results import EvaluationResult

__all__ = ["evaluate_folders", "case_name", "load_class_names"]

logger = logging.getLogger(__name__)

# Companion / side files that are never cases on their own.
_IGNORED_SUFFIXES = (".raw", ".zraw", ".json", ".txt", ".csv", ".md", ".yaml", ".yml", ".log")


def case_name(path: str | os.PathLike[str], protocol: str = "standard") -> str:
    """The case name of a file: its name without the image extension (and ``_segmentation`` for ISIC)."""
    from vmunet.data.io import split_extension  # the readers' own notion of an extension (".nii.gz")

    name = split_extension(path)[0]
    if protocol == "isic" and name.endswith("_segmentation"):
        name = name[: -len("_segmentation")]
    return name


def load_class_names(spec: str | os.PathLike[str] | Mapping[Any, Any] | None) -> dict[int, str] | None:
    """Class value -> name from a JSON file, a JSON string, or a mapping.

    Accepted shapes: ``{"1": "liver", "2": "spleen"}``, ``{"liver": 1, "spleen": 2}``
    (nnU-Net v2 ``dataset.json`` style), or either one under a ``"labels"`` key
    (so a ``dataset.json`` works as is). Class 0 / ``"background"`` is dropped.

    Raises:
        VmunetUserError: the file cannot be read or the content has another shape.
    """
    if spec is None:
        return None
    where = "labels"
    if isinstance(spec, Mapping):
        data: Any = dict(spec)
    else:
        text = str(spec)
        where = text
        try:
            if text.lstrip().startswith("{"):
                data = json.loads(text)
            else:
                data = json.loads(Path(text).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise VmunetUserError(
                f"--labels: no such file {text!r} (expected a JSON file or a JSON string)"
            ) from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise VmunetUserError(f"--labels: cannot read JSON from {text!r}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise VmunetUserError(f"{where}: expected a JSON object mapping class values to names")
    out: dict[int, str] = {}
    for key, value in data.items():
        try:
            if isinstance(value, int) and not isinstance(value, bool):  # name -> value
                out[int(value)] = str(key)
            else:  # value -> name
                out[int(key)] = str(value)
        except (TypeError, ValueError) as exc:
            raise VmunetUserError(
                f"{where}: cannot read class {key!r}: {value!r} "
                "(expected '<int>': '<name>' or '<name>': <int>)"
            ) from exc
    out.pop(0, None)
    if not out or any(c < 0 for c in out):
        raise VmunetUserError(f"{where}: expected non-negative class values other than background (0)")
    return dict(sorted(out.items()))


def _list_cases(folder: Path, protocol: str, role: str, skipped: list[dict[str, str]]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    duplicates: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.name.lower().endswith(_IGNORED_SUFFIXES):
            continue
        name = case_name(path, protocol)
        if name in found:
            duplicates.setdefault(name, [found[name]]).append(path)
        else:
            found[name] = path
    for name, paths in duplicates.items():
        del found[name]
        files = ", ".join(p.name for p in paths)
        _skip(skipped, name, paths[0], "duplicate", f"several {role} files for case {name!r} ({files})")
    return found


def _skip(skipped: list[dict[str, str]], case: str, path: Path | None, kind: str, reason: str) -> None:
    skipped.append({"case": case, "file": str(path) if path else "", "kind": kind, "reason": reason})
    logger.warning("skipped %s: %s", path if path else case, reason)


def _read(read_image: Any, path: Path, is_label: bool) -> Any:
    """Read one file; ``.npz`` / ``.h5`` label files: prefer the array named ``label`` (TransUNet)."""
    if is_label and path.name.lower().endswith((".npz", ".h5", ".hdf5")):
        try:
            return read_image(path, key="label")
        except Exception:
            pass
    return read_image(path)


def _single_channel(image: Any) -> np.ndarray:
    """A 2-D (H, W, C) mask with identical channels (e.g. an RGB-saved mask) becomes (H, W)."""
    array = np.asarray(image.array)
    if array.ndim == 3 and not getattr(image, "is_volume", False) and array.shape[-1] in (1, 3, 4):
        if array.shape[-1] == 1:
            return array[..., 0]
        channels = array[..., :3]
        if np.all(channels == channels[..., :1]):
            return channels[..., 0]
        raise ValueError("expected a single-channel mask, got a colour image")
    return array


def _as_label_map(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("non-integer values; expected an integer label map")
        array = array.astype(np.int64)
    elif not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"dtype {array.dtype}; expected an integer label map")
    if array.size and array.min() < 0:
        raise ValueError(f"negative value {array.min()}; expected a non-negative label map")
    return array


def _binary_255(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D masks stored as 0/255 (the ISIC convention) are read as 0/1."""
    if label.ndim != 2:
        return pred, label
    out = []
    for a in (pred, label):
        values = np.unique(a)
        out.append((a > 0).astype(np.uint8) if values.size and set(values.tolist()) <= {0, 255} else a)
    return out[0], out[1]


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    label_dir: str | os.PathLike[str],
    protocol: str = "standard",
    labels: str | os.PathLike[str] | Mapping[Any, Any] | None = None,
    hd95_mode: str = "pooled",
    hd95_units: str = "voxel",
    metrics: tuple[str, ...] = ("dice", "hd95"),
    threshold: float = 0.5,
    zero_division: float = math.nan,
    progress: bool | None = None,
) -> EvaluationResult:
    """Pair predictions with labels by case name and score them under a protocol.

    Args:
        pred_dir: folder of predictions (label maps; for ``isic`` also probability maps).
        label_dir: folder of labels; each label's header gives the spacing.
        protocol: ``"standard"`` (default), ``"isic"`` or ``"synapse"``; see :mod:`vmunet.metrics.protocols`.
        labels: class names (see :func:`load_class_names`): a JSON file, a JSON string or a mapping.
            Default: ``standard`` scores every non-zero value found; ``synapse`` the eight organs.
        hd95_mode: ``standard`` only: ``"pooled"`` (medpy, default) or ``"max"`` (MONAI).
        hd95_units: ``synapse`` only: ``"voxel"`` (default, as the papers) or ``"mm"``.
        metrics: ``standard`` only: metric names (default Dice and HD95).
        threshold: ``isic`` only: prediction threshold.
        zero_division: ``isic`` only: value of a ratio with a zero denominator.
        progress: show a progress bar on stderr; default: when stderr is a terminal.

    Returns:
        An :class:`EvaluationResult` (per-case rows, summary, skipped cases).

    Raises:
        VmunetUserError: a folder does not exist, or an argument is not one of the allowed values.
    """
    from tqdm.auto import tqdm

    try:
        from vmunet.data import read_image
        from vmunet.data.io import spacing_is_known
    except ImportError as exc:  # pragma: no cover - the data floor is part of the package
        raise VmunetUserError(f"cannot read images: vmunet.data.read_image is unavailable ({exc})") from exc

    if protocol not in PROTOCOLS:
        raise VmunetUserError(f"protocol: expected one of {list(PROTOCOLS)}, got {protocol!r}")
    try:
        _check_choice(hd95_mode, HD95_MODES, "hd95_mode")
        _check_choice(hd95_units, ("voxel", "mm"), "hd95_units")
    except ValueError as exc:
        raise VmunetUserError(str(exc)) from exc
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    for role, folder in (("--pred", pred_dir), ("--label", label_dir)):
        if not folder.is_dir():
            raise VmunetUserError(f"{role}: {folder} is not a folder")
    class_names = load_class_names(labels)

    try:
        if protocol == "isic":
            acc: Any = _IsicAccumulator(threshold, zero_division)
            settings: dict[str, Any] = {}
        elif protocol == "synapse":
            acc = _synapse_accumulator(
                class_names if class_names is not None else SYNAPSE_CLASSES, hd95_units
            )
            settings = _synapse_settings(hd95_units)
        else:
            acc = _standard_accumulator(class_names, metrics, hd95_mode)
            settings = _standard_settings(hd95_mode)
    except ValueError as exc:
        raise VmunetUserError(str(exc)) from exc

    skipped: list[dict[str, str]] = []
    preds = _list_cases(pred_dir, protocol, "prediction", skipped)
    label_files = _list_cases(label_dir, protocol, "label", skipped)
    for name in sorted(set(preds) - set(label_files)):
        _skip(skipped, name, preds[name], "missing_label", f"no label for case {name!r} in {label_dir}")
    for name in sorted(set(label_files) - set(preds)):
        _skip(
            skipped,
            name,
            label_files[name],
            "missing_prediction",
            f"no prediction for case {name!r} in {pred_dir}",
        )
    pairs = sorted(set(preds) & set(label_files))

    show = sys.stderr.isatty() if progress is None else bool(progress)
    for name in tqdm(pairs, desc="evaluate", unit="case", file=sys.stderr, disable=not show):
        pred_path, label_path = preds[name], label_files[name]
        images = []
        for path in (pred_path, label_path):
            try:
                images.append(_read(read_image, path, is_label=path is label_path))
            except Exception as exc:  # any reader failure: name the file, keep going
                reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
                _skip(skipped, name, path, "unreadable", f"cannot read: {reason}")
                break
        if len(images) != 2:
            continue
        pred_img, label_img = images
        try:
            pred = _single_channel(pred_img)
        except ValueError as exc:
            _skip(skipped, name, pred_path, "invalid_values", str(exc))
            continue
        try:
            label = _single_channel(label_img)
        except ValueError as exc:
            _skip(skipped, name, label_path, "invalid_values", str(exc))
            continue
        if pred.shape != label.shape:
            _skip(
                skipped,
                name,
                pred_path,
                "shape_mismatch",
                f"shape {pred.shape} does not match label {label_path.name} shape {label.shape}",
            )
            continue
        if protocol != "isic":
            bad = None
            for path, arr, role in ((pred_path, pred, "pred"), (label_path, label, "label")):
                try:
                    converted = _as_label_map(arr)
                except ValueError as exc:
                    bad = (path, str(exc))
                    break
                if role == "pred":
                    pred = converted
                else:
                    label = converted
            if bad is not None:
                _skip(skipped, name, bad[0], "invalid_values", bad[1])
                continue
            pred, label = _binary_255(pred, label)
        spacing = None
        if label_img.spacing and spacing_is_known(label_img):
            spacing = tuple(float(s) for s in label_img.spacing)[: label.ndim]
            if len(spacing) != label.ndim:
                spacing = None
        try:
            acc.add(name, pred, label, spacing)
        except ValueError as exc:
            _skip(skipped, name, pred_path, "invalid_values", str(exc))
            continue

    result = acc.result() if protocol == "isic" else acc.result(settings)
    result.skipped = skipped
    result.settings = {**result.settings, "pred_dir": str(pred_dir), "label_dir": str(label_dir)}
    return result
