"""Turn a fingerprint into a training recipe, each decision with the reason it was taken.

The rules follow nnU-Net's experiment planner where they apply to VM-UNet (Isensee et al.,
Nature Methods 2021, and ``nnunetv2/experiment_planning/experiment_planners``):

* **target spacing**: the median spacing per axis; when one axis is more than 3x coarser
  than the others *and* has fewer than a third of their voxels, that axis takes the 10th
  percentile of its spacings instead (never finer than the other axes).
* **normalisation**: CT -> clip to the foreground 0.5 / 99.5 percentiles and z-score with the
  foreground mean / std; other volumes -> per-image z-score; RGB pictures -> the ImageNet
  statistics the VMamba weights were trained with (nnU-Net z-scores RGB; we keep the
  statistics the pretrained encoder expects).
* **2-D or 3-D**: pictures are 2-D; volumes are 3-D unless the target grid is too thin for
  the 3-D network (fewer than 16 slices) or strongly anisotropic (spacing ratio > 3),
  where nnU-Net's own results favour its 2-D configuration.
* **patch / image size**: the median shape at the target spacing, rounded down to what the
  network accepts (multiples of 32 in-plane, 16 along Z), shrunk along its longest axis
  until one training step fits the memory budget with the planned batch.

Example:
    >>> from vmunet.plan.planner import plan_recipe  # doctest: +SKIP
    >>> recipe = plan_recipe(fingerprint, memory_gb=8)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.errors import VmunetUserError

__all__ = ["ANISOTROPY_THRESHOLD", "KIB_PER_VOXEL", "plan_recipe", "kfold_splits", "target_spacing"]

ANISOTROPY_THRESHOLD = 3.0
#: peak training memory (forward + backward, float32, CPU) per input voxel and sample, KiB,
#: measured with ``ru_maxrss`` on vmunet_tiny / vmunet_small at 128x128 and vmunet3d_* at
#: 64x64x32 (2-core CPU, 2026-12-04); the planner budgets twice these for headroom.
KIB_PER_VOXEL = {"vmunet_tiny": 10.1, "vmunet_small": 17.3, "vmunet3d_tiny": 1.5, "vmunet3d_small": 2.4}
_HEADROOM = 2.0
_CT_NAMES = ("ct",)


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[list[float], str]:
    """nnU-Net's full-resolution target spacing and a sentence saying how it was chosen."""
    target = np.median(spacings, 0)
    if len(target) < 3:
        return target.tolist(), "median spacing of the cases"
    sizes = np.median(spacings * shapes, 0) / target
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * min(target[others])
    aniso_voxels = sizes[worst] * ANISOTROPY_THRESHOLD < min(sizes[others])
    if aniso_spacing and aniso_voxels:
        t = float(np.percentile(spacings[:, worst], 10))
        t = max(t, float(max(target[others])) + 1e-5)
        target[worst] = t
        return (
            target.tolist(),
            f"median spacing; axis {worst} is anisotropic, so its 10th percentile (nnU-Net rule)",
        )
    return target.tolist(), "median spacing of the cases (nnU-Net full-resolution rule)"


def kfold_splits(cases: list[str], folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """A seeded k-fold split of case IDs (sorted first, so listing order does not matter)."""
    ids = sorted(cases)
    k = max(2, min(folds, len(ids)))
    perm = np.random.default_rng(seed).permutation(len(ids))
    chunks = np.array_split(perm, k)
    return [
        {
            "train": sorted(ids[j] for c in chunks[:i] + chunks[i + 1 :] for j in c),
            "val": sorted(ids[j] for j in chunks[i]),
        }
        for i in range(k)
    ]


def _round_down(v: float, m: int) -> int:
    return max(m, int(v // m) * m)


def _fit(size: list[int], divisors: tuple[int, ...], kib: float, batch: int, budget_kib: float) -> list[int]:
    size = list(size)
    while math.prod(size) * kib * _HEADROOM * batch > budget_kib:
        i = int(np.argmax([s / d for s, d in zip(size, divisors, strict=True)]))
        if size[i] <= divisors[i]:
            break
        size[i] -= divisors[i]
    return size


def _modality(fp: dict[str, Any]) -> str:
    names = [str(v).lower() for v in (fp.get("channel_names") or {}).values()]
    if fp["dataset"]["spatial_dims"] == 2 and fp["dataset"]["channels"] in (3, 4):
        return "rgb"
    if names and all(n in _CT_NAMES for n in names):
        return "ct"
    return names[0] if names else "unknown"


def plan_recipe(
    fp: dict[str, Any],
    *,
    dims: int | None = None,
    memory_gb: float = 4.0,
    fold: int = 0,
    epochs: int | None = None,
    output_dir: str = "runs/planned",
    datalist: str = "datalist.json",
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """The recipe (a config dict), a reason per ``section.key``, and the plan summary.

    Args:
        fp: a fingerprint from :func:`vmunet.plan.fingerprint.fingerprint_dataset`.
        dims: force 2 or 3 (``None``: decide).
        memory_gb: memory one training step may use (GPU memory, or RAM on a CPU).
        fold: which of the 5 folds is the validation set.
        epochs: override the planned epochs.
        output_dir: the recipe's ``output_dir``.
        datalist: the datalist JSON the recipe reads (written by ``vmunet plan``).

    Raises:
        VmunetUserError: an impossible request (3-D on pictures, a fold out of range).
    """
    ds = fp["dataset"]
    why: dict[str, str] = {}
    is_volume = ds["spatial_dims"] == 3
    spacings = np.array([c["spacing"] for c in fp["cases"]], dtype=np.float64)
    shapes = np.array([c["shape"] for c in fp["cases"]], dtype=np.float64)
    if dims == 3 and not is_volume:
        raise VmunetUserError("--dims 3 needs volumes; this data set holds 2-D pictures")
    spacing, spacing_why = target_spacing(spacings, shapes) if is_volume else (None, "")
    # decide 2-D / 3-D
    if not is_volume:
        sdims, dims_why = 2, "the cases are 2-D pictures"
    else:
        sp = np.array(spacing)
        grid = np.median(spacings * shapes, 0) / sp
        ratio = float(sp.max() / sp.min())
        if dims is not None:
            sdims, dims_why = dims, f"--dims {dims}"
        elif grid.min() < 16:
            sdims, dims_why = (
                2,
                f"volumes only {int(grid.min())} voxels thick at the target spacing (3-D needs 16)",
            )
        elif ratio > ANISOTROPY_THRESHOLD:
            sdims, dims_why = (
                2,
                f"spacing ratio {ratio:.1f} > {ANISOTROPY_THRESHOLD:g}: slices, as nnU-Net's 2-D wins there",
            )
        else:
            sdims, dims_why = (
                3,
                f"volumes, spacing ratio {ratio:.1f} <= {ANISOTROPY_THRESHOLD:g}: native 3-D patches",
            )
    n_cls = len(fp["labels"]) if fp.get("labels") else max(2, max(int(k) for k in ds["class_voxels"]) + 1)
    binary = n_cls == 2
    out_ch = 1 if binary and sdims == 2 and not is_volume else n_cls
    modality = _modality(fp)
    inten = ds["intensity"][0]
    if modality == "rgb":
        norm, norm_why = (
            {"kind": "imagenet"},
            "RGB pictures: the ImageNet statistics the VMamba weights expect",
        )
    elif modality == "ct":
        norm = {
            "kind": "ct",
            "min": round(inten["percentile_00_5"], 4),
            "max": round(inten["percentile_99_5"], 4),
            "mean": round(inten["mean"], 4),
            "std": round(max(inten["std"], 1e-6), 4),
        }
        norm_why = (
            "CT: clip to the foreground 0.5/99.5 percentiles, z-score with the foreground mean/std (nnU-Net)"
        )
    else:
        norm, norm_why = (
            {"kind": "zscore"},
            f"{modality} intensities have no fixed scale: per-image z-score (nnU-Net)",
        )
    # model, size and batch for the memory budget
    budget_kib = memory_gb * 1024 * 1024
    big = memory_gb >= 16
    if sdims == 3:
        model = "vmunet3d_small" if big else "vmunet3d_tiny"
        divisors: tuple[int, ...] = (32, 32, 16)
        grid = np.median(spacings * shapes, 0) / np.array(spacing)
        start = [
            _round_down(min(g, 192 if i < 2 else 96), d)
            for i, (g, d) in enumerate(zip(grid, divisors, strict=True))
        ]
        batch = 2
        size_why = (
            "median shape at the target spacing, multiples of (32, 32, 16), shrunk to fit the memory budget"
        )
    else:
        model = "vmunet_small" if big else "vmunet_tiny"
        divisors = (32, 32)
        plane = (
            np.median(shapes, 0)[:2]
            if not is_volume
            else np.median(spacings * shapes, 0)[:2] / np.median(spacings, 0)[:2]
        )
        start = [_round_down(min(float(g), 256), 32) for g in plane]
        batch = 16 if big else 8
        size_why = (
            "median in-plane shape, capped at the paper's 256, multiples of 32, fitted to the memory budget"
        )
    kib = KIB_PER_VOXEL[model]
    size = _fit(start, divisors, kib, batch, budget_kib)
    while batch > 2 and math.prod(size) * kib * _HEADROOM * batch > budget_kib:
        batch //= 2
    model_why = f"{'>=' if big else '<'} 16 GB budget: the {'paper-sized small' if big else 'tiny'} variant"
    # rare classes: nnU-Net oversamples foreground; here, patches centred on labels
    freq = {int(k): v for k, v in ds["class_frequency"].items() if int(k) > 0}
    rare = [k for k, v in freq.items() if v < 0.01]
    n_cases = ds["num_cases"]
    n_epochs = epochs or (300 if sdims == 2 else 250)
    folds = fp.get("splits") or kfold_splits([c["case"] for c in fp["cases"]])
    if not 0 <= fold < len(folds):
        raise VmunetUserError(f"--fold must be in 0..{len(folds) - 1}, got {fold}")
    data: dict[str, Any] = {
        "kind": "datalist",
        "root": fp["data"] if fp["layout"] != "datalist" else str(Path(fp["data"]).parent),
        "datalist": datalist,
        "train_split": "train",
        "val_split": "val",
        "test_split": "test",
        "spatial_dims": sdims,
        "size": size,
        "normalization": norm,
        "augmentation": ("flips" if sdims == 3 else ("isic" if modality == "rgb" else "synapse")),
        "batch_size": batch,
        "num_workers": 2,
        "class_names": [str(k) for k, _ in sorted(fp["labels"].items(), key=lambda t: int(t[1]))]
        if fp.get("labels")
        else [f"class_{i}" for i in range(n_cls)],
    }
    why.update(
        {
            "data.kind": f"cases of fold {fold} listed in {datalist} (written by vmunet plan)",
            "data.spatial_dims": dims_why,
            "data.size": size_why,
            "data.normalization": norm_why,
            "data.batch_size": f"largest of 2..{16 if big else 8} that fits {memory_gb:g} GB with the size",
            "data.augmentation": "flips for 3-D patches" if sdims == 3 else "the paper's 2-D recipe",
        }
    )
    if binary and out_ch == 1:
        data["class_names"] = [data["class_names"][-1]]
    if is_volume:
        data["spacing"] = [round(s, 5) for s in spacing] if sdims == 3 else None
        why["data.spacing"] = spacing_why if sdims == 3 else "2-D slices keep each volume's own grid"
        if sdims == 3:
            data["patch_pos"] = 2.0 if rare else 1.0
            data["patch_neg"] = 1.0
            data["samples_per_volume"] = 4
            data["cache"] = "memory" if n_cases <= 100 else "disk"
            why["data.patch_pos"] = (
                f"class(es) {rare} under 1% of voxels: 2:1 patches centred on labels (nnU-Net oversamples)"
                if rare
                else "labels common enough: 1:1 labelled / background patch centres"
            )
            why["data.cache"] = f"{n_cases} cases: {'in memory' if n_cases <= 100 else 'on disk'}"
    recipe = {
        "model": {
            "name": model,
            "in_channels": ds["channels"] if modality != "rgb" else 3,
            "out_channels": out_ch,
        },
        "data": data,
        "loss": {"name": "bce_dice" if out_ch == 1 else "ce_dice", "ce_weight": 1.0, "dice_weight": 1.0},
        "train": {"epochs": n_epochs, "seed": 42},
        "scheduler": {"name": "cosine", "t_max": n_epochs},
        "eval": {"protocol": "standard", "overlap": 0.5, "sw_batch_size": 2},
        "output_dir": output_dir,
    }
    why.update(
        {
            "model.name": model_why,
            "model.out_channels": "one sigmoid output (binary)"
            if out_ch == 1
            else f"{n_cls} classes incl. background",
            "loss.name": ("Dice + BCE" if out_ch == 1 else "Dice + CE")
            + (f"; Dice is per class, so rare class(es) {rare} weigh as much as common ones" if rare else ""),
            "train.epochs": f"{n_epochs}: {'the paper' if sdims == 2 else 'a 3-D budget'}; change: --epochs",
            "scheduler.t_max": "cosine over all epochs",
        }
    )
    summary = {
        "fold": fold,
        "folds": folds,
        "modality": modality,
        "rare_classes": rare,
        "memory_gb": memory_gb,
        "target_spacing": spacing,
        "spatial_dims": sdims,
    }
    return recipe, why, summary
