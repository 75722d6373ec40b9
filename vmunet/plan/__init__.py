"""``vmunet plan``: fingerprint a data set and write the recipe ``vmunet train`` runs.

Example:
    >>> from vmunet.plan import plan_dataset  # doctest: +SKIP
    >>> recipe_path = plan_dataset("nnUNet_raw/Dataset001_Brain", "plans/recipe.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vmunet.errors import InputFileError, VmunetUserError
from vmunet.plan.fingerprint import fingerprint_dataset, load_fingerprint
from vmunet.plan.planner import kfold_splits, plan_recipe
from vmunet.utils.io import atomic_write_text

__all__ = ["plan_dataset", "render_recipe"]

logger = logging.getLogger(__name__)


def _dataset_splits(fp: dict[str, Any]) -> tuple[list[dict[str, list[str]]], str]:
    """The data set's own ``splits_final.json`` when it has one, else a seeded 5-fold split."""
    root = Path(fp["data"])
    own = root / "splits_final.json" if root.is_dir() else None
    ids = {c["case"] for c in fp["cases"]}
    if own is not None and own.is_file():
        try:
            folds = json.loads(own.read_text())
        except ValueError as exc:
            raise InputFileError(own, f"not valid JSON: {exc}") from exc
        ok = (
            isinstance(folds, list)
            and folds
            and all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in folds)
        )
        if not ok:
            raise InputFileError(
                own, "expected a list of {'train': [...], 'val': [...]} folds (nnU-Net format)"
            )
        unknown = sorted({c for f in folds for k in ("train", "val") for c in f[k]} - ids)
        if unknown:
            raise InputFileError(own, f"names case(s) not in the data set: {unknown[:5]}")
        return [
            {"train": sorted(f["train"]), "val": sorted(f["val"])} for f in folds
        ], f"the data set's {own.name}"
    folds = kfold_splits(sorted(ids))
    return folds, f"seeded {len(folds)}-fold split of the labelled cases (seed 12345)"


def _test_entries(fp: dict[str, Any]) -> list[dict[str, Any]]:
    root = Path(fp["data"])
    if fp["layout"] == "datalist":
        return [{k: v for k, v in e.items() if v} for e in fp.get("test", [])]
    if fp["layout"] != "nnunet" or not (root / "imagesTs").is_dir():
        return []
    ending = fp["file_ending"]
    out = []
    for f in sorted((root / "imagesTs").glob(f"*_0000{ending}")):
        case = f.name[: -len(ending) - 5]
        lab = root / "labelsTs" / f"{case}{ending}"
        out.append({"image": str(f), "case": case, **({"label": str(lab)} if lab.is_file() else {})})
    return out


def _scalar(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def render_recipe(recipe: dict[str, Any], why: dict[str, str], header: list[str]) -> str:
    """The recipe as YAML, one ``# why`` comment beside each planned key."""
    lines = [f"# {h}" if h else "#" for h in header]
    for section, value in recipe.items():
        if not isinstance(value, dict):
            lines.append(f"{section}: {_scalar(value)}")
            continue
        lines.append(f"{section}:")
        for key, v in value.items():
            reason = why.get(f"{section}.{key}")
            lines.append(f"  {key}: {_scalar(v)}" + (f"  # {reason}" if reason else ""))
    return "\n".join(lines) + "\n"


def plan_dataset(
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    dims: int | None = None,
    memory_gb: float | None = None,
    fold: int = 0,
    epochs: int | None = None,
    workers: int | None = None,
    skip_invalid: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fingerprint DATA (or reuse ``fingerprint.json`` beside ``output``), plan, write the recipe.

    Writes ``output`` (the YAML recipe), ``fingerprint.json`` and ``datalist.json`` (the fold's
    train / val cases and the data set's test cases) in the recipe's folder, each atomically.

    Returns:
        The recipe path and the plan summary (fold, splits, target spacing, ...).

    Raises:
        VmunetUserError: bad DATA, a case with problems (strict), or an impossible option.
    """
    from vmunet.config.loader import config_from_dict

    out = Path(output)
    if out.suffix not in (".yaml", ".yml"):
        raise VmunetUserError(f"--output must be a .yaml file, got {str(out)!r}")
    if dims not in (None, 2, 3):
        raise VmunetUserError(f"--dims must be 2 or 3, got {dims}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fp_path = out.parent / "fingerprint.json"
    cached = load_fingerprint(fp_path)
    if cached is not None and Path(cached.get("data", "")) != Path(data).resolve():
        cached = None
    fp = fingerprint_dataset(
        data, workers=workers, progress=progress, skip_invalid=skip_invalid, cached=cached
    )
    reused = fp is cached
    if fp["dataset"]["spatial_dims"] == 3 and fp["dataset"]["channels"] > 1:
        raise VmunetUserError(
            f"{data}: {fp['dataset']['channels']}-channel volumes are not supported by the volume "
            "datasets yet"
        )
    folds, split_why = _dataset_splits(fp)
    fp["splits"] = folds
    if not reused:
        atomic_write_text(fp_path, json.dumps(fp, indent=1))
    if memory_gb is None:
        memory_gb = _default_memory_gb()
    recipe, why, summary = plan_recipe(
        fp,
        dims=dims,
        memory_gb=memory_gb,
        fold=fold,
        epochs=epochs,
        output_dir=str((out.parent / "runs" / out.stem).resolve()),
        datalist=str((out.parent / "datalist.json").resolve()),
    )
    by_case = {c["case"]: c for c in fp["cases"]}

    def entry(c: str) -> dict[str, Any]:
        imgs = by_case[c]["images"]
        return {"image": imgs[0] if len(imgs) == 1 else imgs, "label": by_case[c]["label"], "case": c}

    datalist = {
        "name": fp.get("name"),
        "fold": fold,
        "training": [entry(c) for c in folds[fold]["train"]],
        "validation": [entry(c) for c in folds[fold]["val"]],
        "test": _test_entries(fp),
    }
    why["data.kind"] = f"fold {fold} of {len(folds)} ({split_why}), cases listed in datalist.json"
    header = [
        f"vmunet plan of {fp['data']} ({fp.get('name')}): {fp['dataset']['num_cases']} labelled cases, "
        f"{fp['dataset']['spatial_dims']}-D, {fp['dataset']['channels']} channel(s), "
        f"modality {summary['modality']}",
        f"fingerprint: fingerprint.json; memory budget {memory_gb:g} GB; fold {fold}: "
        f"{len(folds[fold]['train'])} train / {len(folds[fold]['val'])} val, {len(datalist['test'])} test",
        "Edit freely: vmunet train checks every key.",
    ]
    if fp.get("skipped"):
        header.append(f"skipped (--skip-invalid): {'; '.join(fp['skipped'])}")
    text = render_recipe(recipe, why, header)
    config_from_dict(yaml.safe_load(text), source=str(out))  # what we write, train accepts
    atomic_write_text(out.parent / "datalist.json", json.dumps(datalist, indent=1))
    atomic_write_text(out, text)
    summary["fingerprint_reused"] = reused
    return out, summary


def _default_memory_gb() -> float:
    """The detected GPU's memory, else a CPU figure (a quarter of RAM, at most 8 GB)."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram = 8.0
    return float(min(8.0, max(1.0, round(ram / 4, 1))))
