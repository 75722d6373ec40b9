"""Fingerprint a data set: what every case holds, read once and saved as ``fingerprint.json``.

The statistics follow nnU-Net's data fingerprint (Isensee et al., *nnU-Net*, Nature Methods
2021; ``nnunetv2/experiment_planning/dataset_fingerprint``): per case the shape, spacing and
orientation, and up to 10 000 intensity samples drawn from the foreground (label > 0) voxels
of each channel; the data set's foreground statistics (mean, std, percentiles 0.5 / 99.5)
are computed on the pooled samples. Class frequencies are voxel counts over all labels.

Example:
    >>> from vmunet.plan.fingerprint import fingerprint_dataset  # doctest: +SKIP
    >>> fp = fingerprint_dataset("nnUNet_raw/Dataset001_Brain")  # doctest: +SKIP
    >>> fp["dataset"]["median_spacing"]  # doctest: +SKIP
    [2.0, 2.0, 2.0]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.errors import InputFileError, VmunetUserError

__all__ = ["FINGERPRINT_VERSION", "SAMPLES_PER_CASE", "fingerprint_dataset", "find_cases", "load_fingerprint"]

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
#: foreground intensity samples drawn per case and channel (nnU-Net draws 10 000)
SAMPLES_PER_CASE = 10_000
_NNUNET_KEYS = ("labels", "file_ending")


def _nnunet_cases(root: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    from vmunet.data.layouts.nnunet import nnunet_case_names

    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise InputFileError(meta_path, f"not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise InputFileError(meta_path, "expected a JSON object")
    missing = [k for k in _NNUNET_KEYS if k not in meta]
    if "channel_names" not in meta and "modality" not in meta:
        missing.append("channel_names")
    if missing:
        raise InputFileError(meta_path, f"dataset.json is missing key(s) {missing} (nnU-Net v2 format)")
    labels = meta["labels"]
    if not isinstance(labels, dict) or not labels:
        raise InputFileError(meta_path, "'labels' must map names to integer values, e.g. {'background': 0}")
    channels = meta.get("channel_names", meta.get("modality"))
    ending = str(meta["file_ending"])
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir():
        raise InputFileError(img_dir, "folder not found (nnU-Net raw layout needs imagesTr/)")
    names = nnunet_case_names(img_dir, ending)
    problems: list[str] = []
    cases = []
    for c in names:
        chans = [img_dir / f"{c}_{i:04d}{ending}" for i in range(len(channels))]
        gone = [p for p in chans if not p.is_file()]
        if gone:
            problems.append(f"{gone[0]}: missing (channel of case {c})")
            continue
        lab = lab_dir / f"{c}{ending}"
        if not lab.is_file():
            problems.append(f"{lab}: missing (case {c} has no label)")
            continue
        cases.append({"case": c, "images": [str(p) for p in chans], "label": str(lab)})
    info = {
        "layout": "nnunet",
        "name": meta.get("name") or root.name,
        "labels": {str(k): v for k, v in labels.items()},
        "channel_names": {str(k): str(v) for k, v in channels.items()},
        "file_ending": ending,
    }
    return cases, info, problems


def _folder_cases(root: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    from vmunet.data.io import case_name, is_supported

    img_dir = root / "images"
    lab_dir = next((root / n for n in ("labels", "masks") if (root / n).is_dir()), None)
    if lab_dir is None:
        raise InputFileError(root, "images/ found but no labels/ (or masks/) beside it")
    labels = {case_name(p): p for p in sorted(lab_dir.iterdir()) if is_supported(p)}
    cases, problems = [], []
    for p in sorted(img_dir.iterdir()):
        if not is_supported(p):
            continue
        c = case_name(p)
        if c not in labels:
            problems.append(f"{p}: no label named {c}.* in {lab_dir}")
            continue
        cases.append({"case": c, "images": [str(p)], "label": str(labels[c])})
    if not cases and not problems:
        raise InputFileError(img_dir, "no readable images (PNG/JPG/TIFF, NIfTI/NRRD/MHA)")
    return cases, {"layout": "folder", "name": root.name, "labels": None, "channel_names": None}, problems


def _datalist_cases(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    from vmunet.data.layouts.datalist import datalist_pairs

    entries = datalist_pairs(path, "training")
    cases, problems = [], []
    for e in entries:
        imgs = [e["image"]] if isinstance(e["image"], str) else list(e["image"])
        if not e.get("label"):
            problems.append(f"{imgs[0]}: no 'label' in the datalist entry (case {e['case']})")
            continue
        cases.append({"case": str(e["case"]), "images": [str(p) for p in imgs], "label": str(e["label"])})
    content = json.loads(path.read_text())
    labels = content.get("labels")
    if isinstance(labels, dict):  # MSD style {"0": "background"} -> name: value
        try:
            labels = {str(v): int(k) for k, v in labels.items()}
        except (TypeError, ValueError):
            labels = None
    mod = content.get("modality") or content.get("channel_names")
    info = {
        "layout": "datalist",
        "name": content.get("name") or path.stem,
        "labels": labels if isinstance(labels, dict) else None,
        "channel_names": {str(k): str(v) for k, v in mod.items()} if isinstance(mod, dict) else None,
        "test": [
            {"image": e["image"] if isinstance(e["image"], str) else e["image"][0], "label": e.get("label")}
            for e in (datalist_pairs(path, "test") if "test" in content else [])
        ],
    }
    return cases, info, problems


def find_cases(data: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The labelled cases of DATA, its declared labels and channels, and the problems found.

    DATA is an nnU-Net raw folder (``dataset.json``), a MONAI datalist JSON file, or a
    folder with ``images/`` and ``labels/`` (or ``masks/``) whose files pair by name.

    Raises:
        InputFileError: DATA is none of these layouts, or its ``dataset.json`` is malformed.
    """
    p = Path(data)
    if not p.exists():
        raise InputFileError(p, "not found")
    if p.is_file() and p.suffix == ".json":
        return _datalist_cases(p)
    if p.is_dir() and (p / "dataset.json").is_file():
        return _nnunet_cases(p)
    if p.is_dir() and (p / "images").is_dir():
        return _folder_cases(p)
    if p.is_dir() and (p / "datalist.json").is_file():
        return _datalist_cases(p / "datalist.json")
    raise InputFileError(
        p,
        "is none of the layouts vmunet plans: an nnU-Net raw folder (dataset.json, imagesTr/, labelsTr/), "
        "a MONAI datalist JSON, or a folder with images/ and labels/",
    )


def _orientation(img: Any) -> str | None:
    if img.affine is None:
        return None
    import nibabel as nib

    return "".join(nib.aff2axcodes(img.affine))


def _fingerprint_case(case: dict[str, Any], n_declared: int | None, seed: int) -> dict[str, Any]:
    """One case's entry; ``problems`` lists what is wrong with it (empty when fine)."""
    from vmunet.data.io import read_image

    out: dict[str, Any] = {
        "case": case["case"],
        "images": case["images"],
        "label": case["label"],
        "problems": [],
    }
    probs = out["problems"]
    arrays, first = [], None
    for path in case["images"]:
        try:
            img = read_image(path)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is reported per file
            probs.append(f"{path}: unreadable ({exc})")
            return out
        a = np.asarray(img.array)
        nd = img.spatial_ndim
        extra = a.shape[nd:]
        if img.is_volume and extra and (n_declared is None or n_declared == len(case["images"])):
            probs.append(
                f"{path}: {a.ndim}-D image with {int(np.prod(extra))} channel(s) in one file, but "
                f"{len(case['images'])} channel(s) declared; expected one 3-D file per channel "
                "(nnU-Net: CASE_0000, CASE_0001, ...)"
            )
            return out
        chans = [a[..., i] for i in range(a.shape[-1])] if extra else [a]
        arrays += chans
        if first is None:
            first = img
        elif img.spatial_shape != first.spatial_shape:
            probs.append(
                f"{path}: shape {img.spatial_shape} differs from {case['images'][0]}'s {first.spatial_shape}"
            )
            return out
    assert first is not None
    try:
        lab_img = read_image(case["label"])
    except Exception as exc:  # noqa: BLE001
        probs.append(f"{case['label']}: unreadable ({exc})")
        return out
    lab = np.asarray(lab_img.array)
    if lab.ndim > lab_img.spatial_ndim:
        lab = lab[..., 0] if lab.shape[-1] in (3, 4) and np.all(lab[..., 0:1] == lab) else lab
    if not np.issubdtype(lab.dtype, np.integer) and not np.issubdtype(lab.dtype, np.bool_):
        bad = lab[~np.isfinite(lab) | (lab != np.round(lab))]
        if bad.size:
            probs.append(
                f"{case['label']}: label holds non-integer values (e.g. {float(bad.flat[0])!r}); "
                "expected integer class indices"
            )
            return out
    lab = lab.astype(np.int64)
    if lab.shape[: first.spatial_ndim] != first.spatial_shape or lab.ndim != first.spatial_ndim:
        probs.append(f"{case['label']}: shape {lab.shape} differs from the image's {first.spatial_shape}")
        return out
    if first.is_volume:
        if not np.allclose(lab_img.spacing, first.spacing, rtol=1e-3, atol=1e-4):
            probs.append(
                f"{case['label']}: spacing {lab_img.spacing} differs from the image's {first.spacing}"
            )
        elif not np.allclose(lab_img.origin, first.origin, atol=1e-2) or not np.allclose(
            lab_img.direction, first.direction, atol=1e-3
        ):
            probs.append(f"{case['label']}: origin/direction differ from the image's (not on the same grid)")
    values, counts = np.unique(lab, return_counts=True)
    fg = lab > 0
    rng = np.random.default_rng(seed)
    samples = []
    for a in arrays:
        v = np.asarray(a, dtype=np.float64)[fg]
        if v.size > SAMPLES_PER_CASE:
            v = rng.choice(v, SAMPLES_PER_CASE, replace=False)
        samples.append(v)
    out.update(
        shape=list(first.spatial_shape),
        spacing=list(first.spacing),
        orientation=_orientation(first),
        is_volume=bool(first.is_volume),
        channels=len(arrays),
        label_values=[int(v) for v in values],
        class_voxels={str(int(v)): int(n) for v, n in zip(values, counts, strict=True)},
        foreground_voxels=int(fg.sum()),
        _samples=samples,
    )
    return out


def _intensity(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {
            "mean": 0.0,
            "std": 1.0,
            "percentile_00_5": 0.0,
            "percentile_99_5": 0.0,
            "min": 0.0,
            "max": 0.0,
        }
    p_lo, p_hi = np.percentile(values, [0.5, 99.5])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "percentile_00_5": float(p_lo),
        "percentile_99_5": float(p_hi),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _signature(cases: list[dict[str, Any]]) -> list[list[Any]]:
    sig = []
    for c in cases:
        for p in [*c["images"], c["label"]]:
            st = Path(p).stat()
            sig.append([str(p), st.st_size, int(st.st_mtime)])
    return sig


def load_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A saved fingerprint, or ``None`` when absent, of another version, or unreadable."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        fp = json.loads(p.read_text())
    except ValueError:
        return None
    return fp if isinstance(fp, dict) and fp.get("version") == FINGERPRINT_VERSION else None


def fingerprint_dataset(
    data: str | os.PathLike[str],
    *,
    workers: int | None = None,
    seed: int = 1234,
    progress: Callable[[int, int], None] | None = None,
    skip_invalid: bool = False,
    cached: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read every labelled case of DATA once and return its fingerprint (a JSON-able dict).

    Args:
        data: see :func:`find_cases`.
        workers: decoding threads (default up to 4).
        seed: seed of the foreground intensity sampling.
        progress: ``progress(done, total)`` after each case.
        skip_invalid: leave out cases with problems (listed under ``"skipped"``) instead of
            raising.
        cached: a previous fingerprint; returned as is when it was made from the same files.

    Raises:
        InputFileError: the layout is unreadable, or (strict) any case has a problem; the
            message lists every problem found.
    """
    # Absolute paths: the recipe's datalist must not depend on the folder `plan` ran in.
    cases, info, problems = find_cases(Path(data).resolve())
    signature = _signature(cases)
    if cached is not None and cached.get("signature") == signature and cached.get("seed") == seed:
        if not (problems and not skip_invalid):
            return cached
    labels = info.get("labels")
    n_declared = len(info["channel_names"]) if info.get("channel_names") else None
    total = len(cases)
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_fingerprint_case, c, n_declared, seed + i) for i, c in enumerate(cases)]
        for i, f in enumerate(futures):
            results.append(f.result())
            if progress is not None:
                progress(i + 1, total)
    declared = None
    if labels:
        try:
            declared = {int(v) for v in labels.values()}
        except (TypeError, ValueError) as exc:
            raise InputFileError(Path(data) / "dataset.json", "'labels' values must be integers") from exc
    for r in results:
        if declared is not None and not r["problems"]:
            bad = sorted(set(r["label_values"]) - declared)
            if bad:
                r["problems"].append(
                    f"{r['label']}: label values {bad} are not in dataset.json's labels {sorted(declared)}"
                )
        problems += r["problems"]
    good = [r for r in results if not r["problems"]]
    if problems and not skip_invalid:
        raise InputFileError(
            Path(data),
            f"{len(problems)} problem(s) (fix them, or pass --skip-invalid to leave those cases out): "
            + "; ".join(problems[:10])
            + (" ..." if len(problems) > 10 else ""),
        )
    if not good:
        raise VmunetUserError(f"{data}: no usable labelled case to plan from")
    dims = {2 if not r["is_volume"] else 3 for r in good}
    chans = {r["channels"] for r in good}
    if len(dims) > 1 or len(chans) > 1:
        raise InputFileError(Path(data), f"cases mix {sorted(dims)}-D images / {sorted(chans)} channels")
    n_ch = chans.pop()
    pooled = [np.concatenate([r["_samples"][c] for r in good]) for c in range(n_ch)]
    class_voxels: dict[str, int] = {}
    cases_with: dict[str, int] = {}
    for r in good:
        for k, n in r["class_voxels"].items():
            class_voxels[k] = class_voxels.get(k, 0) + n
            cases_with[k] = cases_with.get(k, 0) + 1
    total_vox = sum(class_voxels.values())
    spacings = np.array([r["spacing"] for r in good])
    shapes = np.array([r["shape"] for r in good])
    for r in good:
        r.pop("_samples")
        r.pop("problems")
    return {
        "version": FINGERPRINT_VERSION,
        "data": str(Path(data).resolve()),
        "seed": seed,
        "signature": signature,
        **{k: v for k, v in info.items() if k != "test"},
        "test": info.get("test", []),
        "skipped": problems,
        "cases": good,
        "dataset": {
            "spatial_dims": dims.pop(),
            "channels": n_ch,
            "num_cases": len(good),
            "median_shape": np.median(shapes, 0).tolist(),
            "median_spacing": np.median(spacings, 0).tolist(),
            "intensity": [_intensity(v) for v in pooled],
            "class_voxels": class_voxels,
            "class_frequency": {
                k: n / total_vox for k, n in sorted(class_voxels.items(), key=lambda t: int(t[0]))
            },
            "cases_with_class": cases_with,
            "orientations": sorted({str(r["orientation"]) for r in good}),
        },
    }
