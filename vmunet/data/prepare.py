"""Check a public download once and convert it into a fast training layout.

``prepare_dataset(kind, raw, output)`` reads every file of the download,
collects **all** problems (missing folders, counts that differ from the
manifest, unpaired images or masks, unreadable files, bad mask values, shape
mismatches) and reports them together; only a clean download is converted.
With ``skip_invalid=True`` (``vmunet prepare --skip-invalid``) the problems of single
files (an unreadable or truncated image, a bad mask, a pair without its partner) are
not fatal: every good pair / case is converted, and every skipped file is listed with
its reason (progress lines and ``<output>/skipped.txt``). Problems of the whole
download (missing folders, wrong counts) stay fatal.
The raw folder is never written to; every output goes through a temporary name
and a rename; a second run skips the splits / cases that are already done.

Output layouts:

* ISIC (``isic2017``, ``isic2018``): ``<split>/images.npy`` ``(N, S, S, 3)`` uint8,
  ``<split>/labels.npy`` ``(N, S, S)`` uint8 0/1, ``<split>/ids.json``, resized to
  ``S`` (256 by default; linear for images, nearest for masks), memory-mapped at
  training time.
* Synapse: ``volumes/caseXXXX_image.npy`` stored slice-first ``(Z, X, Y)``
  (int16 HU clipped to [-125, 275] from the raw BTCV, or float32 in [0, 1]
  from TransUNet files), ``volumes/caseXXXX_label.npy`` (uint8, 8 organs), and
  ``volumes/caseXXXX_meta.json`` (spacing, affine).
* ``prepared.json``: kind, settings, split lists, counts, slices per case, skipped files.
* ``skipped.txt``: with ``skip_invalid``, one line per skipped file and why (none: not written).

Example:
    >>> from vmunet.data.prepare import prepare_dataset
    >>> prepare_dataset("isic2017", "downloads/isic2017", "data/isic2017")  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.data.datasets import (
    SYNAPSE_HU_WINDOW,
    _isic_challenge_dirs,
    _isic_images,
    _synapse_case,
    check_binary_mask,
    find_btcv_root,
)
from vmunet.data.io import case_name, read_image
from vmunet.data.manifests import load_manifest, seeded_split, synapse_label_lut
from vmunet.errors import InputFileError, VmunetUserError
from vmunet.utils.io import atomic_path, atomic_write_text

__all__ = ["prepare_dataset", "PrepareError", "PREPARE_KINDS", "SKIPPED_FILE"]

logger = logging.getLogger(__name__)

PREPARE_KINDS = ("isic2017", "isic2018", "synapse")
FORMAT_VERSION = 1
#: With ``skip_invalid``, the skipped files and their reasons, one per line, in the output folder.
SKIPPED_FILE = "skipped.txt"


class PrepareError(VmunetUserError):
    """The download has problems; ``problems`` lists every one of them.

    Example:
        >>> e = PrepareError("raw", ["a.jpg: no mask", "b.png: bad values"])
        >>> len(e.problems)
        2
    """

    def __init__(self, raw: object, problems: list[str], kept: int = 0) -> None:
        self.problems = list(problems)
        lines = "\n  - ".join(problems)
        done = (
            f"prepared.json not written ({kept} case(s) converted before the first problem are kept "
            "and reused by the next run)"
            if kept
            else "nothing converted"
        )
        super().__init__(f"{raw}: {len(problems)} problem(s) found, {done}:\n  - {lines}")


def prepare_dataset(
    kind: str,
    raw: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    size: int | None = None,
    check_counts: bool = True,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    skip_invalid: bool = False,
) -> Path:
    """Check ``raw`` and convert it into ``output``; returns ``output/prepared.json``.

    Args:
        kind: ``"isic2017"``, ``"isic2018"`` or ``"synapse"``.
        raw: the download folder (never modified).
        output: where the prepared layout goes (must not be inside ``raw``).
        size: ISIC: side of the resized square images (default 256). Ignored for Synapse.
        check_counts: compare the numbers of images / cases with the manifest.
        workers: decoding threads (default: up to 4).
        progress: optional callback receiving one-line progress messages.
        skip_invalid: convert every good pair (ISIC) or case (Synapse) and skip the files with
            problems, listing each with its reason (progress lines, ``<output>/skipped.txt`` and
            ``prepared.json``). Default: any problem stops the run before anything is written.

    Raises:
        PrepareError: the download has problems (all listed); with ``skip_invalid``, only
            problems of the whole download, or a split left without any good pair.
        VmunetUserError: bad arguments (unknown kind, output inside raw, ...).
    """
    if kind not in PREPARE_KINDS:
        raise VmunetUserError(f"prepare: kind {kind!r} is unknown; expected one of {list(PREPARE_KINDS)}")
    raw_p, out_p = Path(raw).resolve(), Path(output).resolve()
    if not raw_p.is_dir():
        raise InputFileError(raw_p, "raw download folder not found")
    if out_p == raw_p or raw_p in out_p.parents:
        raise VmunetUserError(
            f"prepare: --output {out_p} must not be inside --raw {raw_p} (raw is never written)"
        )
    workers = workers or min(4, os.cpu_count() or 1)
    say = progress or (lambda msg: logger.info("%s", msg))
    if kind == "synapse":
        return _prepare_synapse(raw_p, out_p, check_counts, say, skip_invalid)
    return _prepare_isic(kind, raw_p, out_p, size or 256, check_counts, workers, say, skip_invalid)


def _write_skipped(out: Path, skipped: list[str], say: Callable[[str], None]) -> None:
    """List the skipped files on the console and in ``out/skipped.txt`` (removed when none)."""
    path = out / SKIPPED_FILE
    if not skipped:
        if path.is_file():
            path.unlink()
        return
    for line in skipped:
        say(f"skipped {line}")
    atomic_write_text(path, "\n".join(skipped) + "\n")
    say(f"{len(skipped)} skipped file(s) listed in {path}")


# --------------------------------------------------------------------------- ISIC


def _isic_split_pairs(
    kind: str, raw: Path, problems: list[str], unpaired: list[str] | None = None
) -> dict[str, list[tuple[Path, Path, str]]]:
    """Image/mask pairs per split; download-wide problems go to ``problems``, files without
    their partner to ``unpaired`` (or to ``problems`` when it is ``None``)."""
    unpaired = problems if unpaired is None else unpaired
    manifest = load_manifest(kind)
    out: dict[str, list[tuple[Path, Path, str]]] = {}
    if (raw / "train" / "images").is_dir():  # VM-UNet layout: folders are the split
        folders = {s: (raw / s / "images", raw / s / "masks") for s in ("train", "val", "test")}
        folders = {s: d for s, d in folders.items() if d[0].is_dir() or d[1].is_dir()}
    elif kind == "isic2018":
        d = _safe(lambda: _isic_challenge_dirs(raw, "train"), problems)
        if d is None:
            problems.append(
                f"{raw}: no ISIC2018_Task1-2_Training_Input / ISIC2018_Task1_Training_GroundTruth"
            )
            return {}
        folders = {"all": d}
    else:
        folders = {}
        for s in ("train", "val", "test"):
            d = _safe(lambda s=s: _isic_challenge_dirs(raw, s), problems)
            if d is None:
                problems.append(f"{raw}: no ISIC 2017 {s} folders ({manifest['folders'][s]})")
            else:
                folders[s] = d
    for split, (img_dir, mask_dir) in folders.items():
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                problems.append(f"{d}: folder missing")
        if not (img_dir.is_dir() and mask_dir.is_dir()):
            continue
        images = [p for p in _isic_images(img_dir) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
        if not images:
            images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        masks = sorted(
            p for p in mask_dir.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")
        )
        by_case = {}
        for m in masks:
            c = case_name(m)
            by_case[c[: -len("_segmentation")] if c.endswith("_segmentation") else c] = m
        pairs = []
        for img in images:
            c = case_name(img)
            m = by_case.pop(c, None)
            if m is None:
                unpaired.append(f"{img}: no mask {c}_segmentation.png in {mask_dir}")
            else:
                pairs.append((img, m, c))
        unpaired += [f"{m}: mask without an image in {img_dir}" for m in by_case.values()]
        if not images:
            problems.append(f"{img_dir}: folder holds no images")
        out[split] = pairs
    if "all" in out:
        ids = [c for _, _, c in out["all"]]
        split_ids = seeded_split(ids, manifest["ratios"], manifest["seed"])
        allp = {c: (i, m, c) for i, m, c in out.pop("all")}
        out = {s: [allp[c] for c in split_ids[s]] for s in ("train", "val", "test")}
    return out


def _safe(fn: Callable[[], Any], problems: list[str]) -> Any:
    try:
        return fn()
    except InputFileError as exc:
        problems.append(str(exc))
        return None


def _load_isic_pair(
    img: Path, mask: Path, size: int
) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    import cv2

    errs: list[str] = []
    image = label = None
    try:
        image = read_image(img).array
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3]
        if image.dtype != np.uint8:
            errs.append(f"{img}: expected an 8-bit RGB image, got {image.dtype}")
    except InputFileError as exc:
        errs.append(str(exc))
    try:
        label = check_binary_mask(read_image(mask).array, mask)
    except InputFileError as exc:
        errs.append(str(exc))
    if image is not None and label is not None and image.shape[:2] != label.shape:
        errs.append(f"{mask}: mask shape {label.shape} does not match image {img.name} {image.shape[:2]}")
    if errs:
        return None, None, errs
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, label, []


def _prepare_isic(
    kind: str, raw: Path, out: Path, size: int, check_counts: bool, workers: int, say, skip_invalid: bool
) -> Path:
    problems: list[str] = []
    skipped: list[str] = []  # with skip_invalid: "file: reason" of every file left out
    splits = _isic_split_pairs(kind, raw, problems, skipped if skip_invalid else None)
    manifest = load_manifest(kind)
    if check_counts:
        if kind == "isic2018":
            n = sum(len(v) for v in splits.values())
            if n != manifest["total"] and splits:
                problems.append(
                    f"{raw}: found {n} training image/mask pairs, ISIC 2018 has {manifest['total']}"
                )
        for s, pairs in splits.items():
            want = manifest["counts"].get(s)
            if kind == "isic2017" and want is not None and len(pairs) != want:
                problems.append(f"{raw}: split {s} has {len(pairs)} pairs, ISIC 2017 has {want}")
    settings = {"size": size, "format_version": FORMAT_VERSION}
    previous = _read_json(out / "prepared.json")
    results: dict[str, Any] = {}
    todo = {}
    for s, pairs in splits.items():
        ids = [c for _, _, c in pairs]
        prev_skipped = (previous or {}).get("skipped_cases", {}).get(s, []) if skip_invalid else []
        done = (
            previous is not None
            and previous.get("settings") == settings
            and sorted(previous.get("splits", {}).get(s, []) + prev_skipped) == sorted(ids)
            and (skip_invalid or not previous.get("skipped_cases", {}).get(s))
            and all((out / s / f).is_file() for f in ("images.npy", "labels.npy", "ids.json"))
        )
        if done:
            say(f"{s}: {len(ids)} pairs already prepared, skipped")
            results[s] = "skipped"
        else:
            todo[s] = pairs
    # Splits already done were checked when they were written; read and check the rest.
    converted: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    skipped_cases: dict[str, list[str]] = {
        s: list((previous or {}).get("skipped_cases", {}).get(s, [])) for s in splits if s not in todo
    }
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        for s, pairs in todo.items():
            say(f"{s}: checking {len(pairs)} pairs")
            imgs = np.zeros((len(pairs), size, size, 3), np.uint8)
            labs = np.zeros((len(pairs), size, size), np.uint8)
            good = np.zeros(len(pairs), bool)
            for i, (image, label, errs) in enumerate(
                pool.map(lambda p: _load_isic_pair(p[0], p[1], size), pairs)
            ):
                if errs:
                    (skipped if skip_invalid else problems).extend(errs)
                else:
                    imgs[i], labs[i], good[i] = image, label, True
            if skip_invalid and not good.any() and pairs:
                problems.append(f"{raw}: split {s} has no valid pair left ({len(pairs)} skipped)")
            ids = [c for (_, _, c), g in zip(pairs, good) if g]
            skipped_cases[s] = [c for (_, _, c), g in zip(pairs, good) if not g]
            converted[s] = (imgs[good], labs[good], ids)
    if problems:
        raise PrepareError(raw, problems)
    for s, (imgs, labs, ids) in converted.items():
        _save_npy(out / s / "images.npy", imgs)
        _save_npy(out / s / "labels.npy", labs)
        atomic_write_text(out / s / "ids.json", json.dumps(ids) + "\n")
        n_skip = len(skipped_cases[s])
        results[s] = f"converted {len(ids)}" + (f", skipped {n_skip}" if n_skip else "")
        say(f"{s}: {results[s]}")
    final = {s: converted[s][2] if s in converted else list(previous["splits"][s]) for s in splits}
    info = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "source": str(raw),
        "manifest": manifest["name"],
        "rule": manifest["rule"],
        "counts": {s: len(ids) for s, ids in final.items()},
        "splits": final,
        "skipped_cases": {s: c for s, c in skipped_cases.items() if c},
        "skipped": skipped,
        "intensity": "uint8",
        "labels": {"0": "background", "1": "lesion"},
    }
    atomic_write_text(out / "prepared.json", json.dumps(info, indent=1) + "\n")
    if skip_invalid or todo:
        _write_skipped(out, skipped, say)
    say(
        f"prepared {kind} in {out}: "
        + ", ".join(f"{s} {len(ids)} ({results[s]})" for s, ids in final.items())
    )
    return out / "prepared.json"


# --------------------------------------------------------------------------- Synapse


def _prepare_synapse(raw: Path, out: Path, check_counts: bool, say, skip_invalid: bool = False) -> Path:
    manifest = load_manifest("synapse")
    cases = sorted(manifest["train"] + manifest["test"])
    problems: list[str] = []
    base = find_btcv_root(raw)
    if base is not None:
        layout = "raw"
        present = {
            _synapse_case(case_name(p)) for p in (base / "img").iterdir() if p.name.endswith(".nii.gz")
        }
    elif (raw / "train_npz").is_dir() or (raw / "test_vol_h5").is_dir():
        layout = "transunet"
        present = set()
        if (raw / "train_npz").is_dir():
            present |= {
                p.name.split("_")[0] for p in (raw / "train_npz").iterdir() if p.name.endswith(".npz")
            }
        if (raw / "test_vol_h5").is_dir():
            present |= {case_name(p) for p in (raw / "test_vol_h5").iterdir() if p.name.endswith(".h5")}
    else:
        raise PrepareError(
            raw,
            [
                f"{raw}: no Synapse layout (img/ + label/ of BTCV RawData/Training, or "
                "train_npz/ + test_vol_h5/ of TransUNet)"
            ],
        )
    wanted = [c for c in cases if c in present]
    if check_counts:
        problems += [f"{raw}: case {c} of the TransUNet split is missing" for c in cases if c not in present]
    if not wanted:
        raise PrepareError(raw, problems or [f"{raw}: none of the 30 Synapse cases found"])
    vol_dir = out / "volumes"
    slices: dict[str, int] = {}
    todo = []
    for c in wanted:
        meta = _read_json(vol_dir / f"{c}_meta.json")
        if meta and (vol_dir / f"{c}_image.npy").is_file() and (vol_dir / f"{c}_label.npy").is_file():
            slices[c] = int(meta["slices"])
        else:
            todo.append(c)
    if len(todo) < len(wanted):
        say(f"{len(wanted) - len(todo)} case(s) already prepared, skipped")
    lut = synapse_label_lut()
    intensity = "hu" if layout == "raw" else "unit"
    prev = _read_json(out / "prepared.json")
    if prev and prev.get("intensity") not in (None, intensity):
        raise VmunetUserError(
            f"prepare: {out} holds a Synapse layout prepared from another source; use a new --output"
        )
    skipped: list[str] = []
    for c in todo:
        try:
            if layout == "raw":
                image, label, spacing, affine = _read_btcv_case(base, c, lut)  # type: ignore[arg-type]
            else:
                image, label, spacing, affine = _read_transunet_case(raw, c)
        except InputFileError as exc:
            (skipped if skip_invalid else problems).append(str(exc))
            say(f"{c}: checked, " + ("skipped" if skip_invalid else "has a problem (not converted)"))
            continue
        if problems:
            say(f"{c}: checked (not converted: problems found above)")
            continue  # keep checking, but write nothing once something is wrong
        _save_npy(vol_dir / f"{c}_image.npy", np.ascontiguousarray(np.moveaxis(image, -1, 0)))
        _save_npy(vol_dir / f"{c}_label.npy", np.ascontiguousarray(np.moveaxis(label, -1, 0)))
        meta = {
            "case": c,
            "slices": int(image.shape[2]),
            "shape_xyz": list(image.shape),
            "spacing": spacing,
            "affine": affine,
            "source": layout,
        }
        atomic_write_text(vol_dir / f"{c}_meta.json", json.dumps(meta) + "\n")
        slices[c] = int(image.shape[2])
        say(f"{c}: checked and converted")
    if skip_invalid and not slices and not problems:
        problems.append(f"{raw}: no valid case left ({len(skipped)} skipped)")
    if problems:
        raise PrepareError(raw, problems, kept=len([c for c in todo if c in slices]))
    info = {
        "kind": "synapse",
        "format_version": FORMAT_VERSION,
        "source": str(raw),
        "layout": layout,
        "intensity": intensity,
        "hu_window": manifest["hu_window"],
        "splits": {s: [c for c in manifest[s] if c in slices] for s in ("train", "val", "test")},
        "slices": slices,
        "class_names": manifest["class_names"],
        "skipped": skipped,
    }
    atomic_write_text(out / "prepared.json", json.dumps(info, indent=1) + "\n")
    if skip_invalid or todo:
        _write_skipped(out, skipped, say)
    say(f"prepared synapse ({layout}) in {out}: {len(slices)} cases, {sum(slices.values())} slices")
    return out / "prepared.json"


def _read_btcv_case(base: Path, case: str, lut: np.ndarray):
    num = case[4:]
    img_p, lab_p = base / "img" / f"img{num}.nii.gz", base / "label" / f"label{num}.nii.gz"
    errs = []
    img = lab = None
    for p in (img_p, lab_p):
        if not p.is_file():
            errs.append(f"{p}: missing")
    if errs:
        raise InputFileError(img_p if not img_p.is_file() else lab_p, "; ".join(errs))
    img = read_image(img_p)
    lab = read_image(lab_p)
    if lab.array.shape != img.array.shape:
        raise InputFileError(lab_p, f"label shape {lab.array.shape} does not match image {img.array.shape}")
    raw_lab = np.rint(np.asarray(lab.array)).astype(np.int64)
    if raw_lab.min() < 0 or raw_lab.max() > 13:
        raise InputFileError(lab_p, f"BTCV labels must be 0..13, found {raw_lab.min()}..{raw_lab.max()}")
    image = np.clip(np.rint(img.array), *SYNAPSE_HU_WINDOW).astype(np.int16)
    label = lut[raw_lab].astype(np.uint8)
    return image, label, list(img.spacing), np.asarray(img.affine).tolist()


def _read_transunet_case(raw: Path, case: str):
    h5 = raw / "test_vol_h5" / f"{case}.npy.h5"
    if h5.is_file():
        image = read_image(h5, key="image").array.astype(np.float32)
        label = read_image(h5, key="label").array
    else:
        files = sorted((raw / "train_npz").glob(f"{case}_slice*.npz"))
        if not files:
            raise InputFileError(raw / "train_npz", f"no slices of {case}")
        imgs, labs = [], []
        for f in files:
            try:
                with np.load(f, allow_pickle=False) as z:
                    imgs.append(z["image"].astype(np.float32))
                    labs.append(z["label"])
            except Exception as exc:
                raise InputFileError(f, f"cannot read TransUNet slice: {exc}") from exc
        shapes = {a.shape for a in imgs} | {a.shape for a in labs}
        if len(shapes) != 1:
            raise InputFileError(files[0], f"slices of {case} differ in shape: {sorted(shapes)}")
        image, label = np.stack(imgs, -1), np.stack(labs, -1)
    r = np.rint(label)
    if not np.array_equal(r, label) or r.min() < 0 or r.max() > 8:
        raise InputFileError(
            h5 if h5.is_file() else raw / "train_npz", f"{case}: labels must be integers 0..8"
        )
    return image, r.astype(np.uint8), [1.0, 1.0, 1.0], np.eye(4).tolist()


# --------------------------------------------------------------------------- helpers


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
