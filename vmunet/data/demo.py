"""Small data sets that build offline: real MNI152 brain slices, and synthetic lesions.

:func:`make_demo_data` builds the demo from the **MNI ICBM152 2009a symmetric
template** (T1 plus grey- and white-matter probability maps) that nilearn
ships inside its wheel (``nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``).
Nothing is downloaded. It is a real MRI-derived template, not ISIC or Synapse.

Labels: ``0`` background (incl. CSF), ``1`` grey matter, ``2`` white matter.
A voxel is grey (white) matter when that tissue's probability is at least 0.5
and not below the other one; everything else is background.

Split (no slice is in two sets, and neighbouring sets never touch):
axial slices whose label covers at least 3 % of the slice are taken every
``step``-th slice, grouped in slabs of ``slab_size`` consecutive taken slices,
and the slabs are dealt in the repeating pattern train, train, train,
validation, test. Wherever two consecutive slabs belong to different sets,
the first slice of the later slab is dropped, leaving a gap of at least
``2 * step`` mm between sets. Interleaving keeps all three sets spanning the
whole brain, so validation and test see the same anatomy range as training.

Each kept slice is cropped to the brain's bounding box (square), resized to
``size x size`` (linear for T1 and tissue probabilities, labels from the
resized probabilities), given mild random contrast (gamma 0.8-1.25, gain
0.9-1.1) and Gaussian noise when ``variation`` is on, and written as a 2-D
NIfTI (uint8 image, uint8 label). The 2 mm volume (T1 + labels) is also written
for 3-D use. License: the ICBM 2009a templates are freely usable with the
copyright notice kept; see the ``README.txt`` written next to the data.

:func:`make_synthetic_lesions` draws RGB skin-like pictures with one dark,
irregular lesion and its 0/255 mask, in the VM-UNet folder layout; it is for
fast tests and is clearly synthetic.

Example:
    >>> from vmunet.data.demo import make_demo_data
    >>> datalist = make_demo_data("demo_data")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.data.io import ImageData, affine_to_lps, write_image
from vmunet.errors import VmunetUserError
from vmunet.utils.io import atomic_write_text

__all__ = ["make_demo_data", "make_synthetic_lesions", "mni152_template_paths", "DEMO_LABELS"]

logger = logging.getLogger(__name__)

DEMO_LABELS = {"0": "background", "1": "grey matter", "2": "white matter"}
_SPLIT_PATTERN = ("training", "training", "training", "validation", "test")
_MNI_NOTICE = """\
MNI ICBM152 2009a nonlinear symmetric template (T1, grey and white matter maps),
as shipped inside the nilearn package. Used here to build a small demo data set.

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University. Permission to use, copy,
modify, and distribute this software and its documentation for any purpose and
without fee is hereby granted, provided that the above copyright notice appear in
all copies. The authors and McGill University make no representations about the
suitability of this software for any purpose. It is provided "as is" without
express or implied warranty.

Reference: V.S. Fonov, A.C. Evans, R.C. McKinstry, C.R. Almli, D.L. Collins,
"Unbiased nonlinear average age-appropriate brain templates from birth to
adulthood", NeuroImage 47 (2009) S102.

Labels: 0 background, 1 grey matter, 2 white matter (tissue probability >= 0.5).
These are template-derived labels for a demonstration, not clinical ground truth.
"""


def mni152_template_paths() -> dict[str, Path]:
    """Paths of the T1 / GM / WM templates inside the installed nilearn package."""
    try:
        import nilearn
    except ImportError as exc:  # pragma: no cover - nilearn is a dependency
        raise VmunetUserError("the demo data needs nilearn (pip install nilearn)") from exc
    root = Path(nilearn.__file__).parent / "datasets" / "data"
    paths = {k: root / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise VmunetUserError(f"nilearn's MNI152 templates are missing: {missing}; reinstall nilearn")
    return paths


def _labels_from_probabilities(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    lab = np.zeros(gm.shape, dtype=np.uint8)
    lab[(gm >= 0.5) & (gm >= wm)] = 1
    lab[(wm >= 0.5) & (wm > gm)] = 2
    return lab


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    s = [d - d % f for d in a.shape]
    a = a[: s[0], : s[1], : s[2]]
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def _assign_slabs(slices: list[int], slab_size: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"training": [], "validation": [], "test": []}
    prev = None
    for i in range(0, len(slices), slab_size):
        split = _SPLIT_PATTERN[(i // slab_size) % len(_SPLIT_PATTERN)]
        slab = slices[i : i + slab_size]
        if prev is not None and split != prev:
            slab = slab[1:]  # leave a gap between different sets
        out[split].extend(slab)
        prev = split
    return out


def make_demo_data(
    output_dir: str | os.PathLike[str],
    size: int = 96,
    step: int = 2,
    slab_size: int = 4,
    seed: int = 0,
    variation: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build the MNI152 demo data set and return its datalist JSON path.

    Args:
        output_dir: folder to write into (created). Nothing outside it is touched.
        size: side of the square 2-D slices (64-128 keeps CPU training short).
        step: take every ``step``-th axial slice (1 mm apart in the template).
        slab_size: taken slices per slab when dealing slabs into the sets.
        seed: seed of the contrast/noise variation.
        variation: add mild per-slice contrast change and noise.
        overwrite: rebuild even if a datalist with the same settings exists.

    Returns:
        ``output_dir/datalist.json``: a MONAI datalist with ``training``,
        ``validation`` and ``test`` lists of ``{"image", "label", "case"}``
        (paths relative to ``output_dir``), plus ``labels``, ``volume`` (the 3-D
        T1 and labels at 2 mm), ``spatial_dims`` 2 and a description of the split.
    """
    import nibabel as nib
    from skimage.transform import resize

    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if step < 1 or slab_size < 2:
        raise ValueError(f"step must be >= 1 and slab_size >= 2, got step={step}, slab_size={slab_size}")
    out = Path(output_dir)
    datalist_path = out / "datalist.json"
    settings = {"size": size, "step": step, "slab_size": slab_size, "seed": seed, "variation": variation}
    if datalist_path.is_file() and not overwrite:
        try:
            old = json.loads(datalist_path.read_text())
            if old.get("settings") == settings and all(
                (out / e["image"]).is_file() and (out / e["label"]).is_file()
                for k in ("training", "validation", "test")
                for e in old[k]
            ):
                logger.info("demo data already built in %s", out)
                return datalist_path
        except (ValueError, KeyError, TypeError):
            pass

    paths = mni152_template_paths()
    imgs = {k: nib.load(str(p)) for k, p in paths.items()}
    affine = np.asarray(imgs["t1"].affine, dtype=np.float64)
    t1 = np.asanyarray(imgs["t1"].dataobj).astype(np.float32)
    gm = np.asanyarray(imgs["gm"].dataobj).astype(np.float32) / 255.0  # stored as uint8 0..255
    wm = np.asanyarray(imgs["wm"].dataobj).astype(np.float32) / 255.0
    labels = _labels_from_probabilities(gm, wm)

    # Bounding box of the brain (labelled voxels), squared in-plane, with a margin.
    nz = np.nonzero(labels)
    lo = [int(v.min()) for v in nz]
    hi = [int(v.max()) + 1 for v in nz]
    side = max(hi[0] - lo[0], hi[1] - lo[1]) + 8
    cx, cy = (lo[0] + hi[0]) // 2, (lo[1] + hi[1]) // 2
    x0 = int(np.clip(cx - side // 2, 0, t1.shape[0] - side))
    y0 = int(np.clip(cy - side // 2, 0, t1.shape[1] - side))
    side = min(side, t1.shape[0], t1.shape[1])

    rng = np.random.default_rng(seed)
    frac = (labels[x0 : x0 + side, y0 : y0 + side] > 0).mean(axis=(0, 1))
    candidates = [int(z) for z in np.nonzero(frac >= 0.03)[0]][::step]
    split_of = _assign_slabs(candidates, slab_size)

    datalist: dict[str, Any] = {
        "name": "MNI152 2009a brain tissue demo (real template images, offline)",
        "description": (
            "Axial slices of the MNI ICBM152 2009a symmetric template shipped with nilearn; labels are "
            "tissue probabilities >= 0.5 (1 grey matter, 2 white matter). Not ISIC, not Synapse."
        ),
        "license": "see README.txt (McConnell Brain Imaging Centre notice)",
        "labels": DEMO_LABELS,
        "spatial_dims": 2,
        "split_rule": (
            f"every {step}-th axial slice with >=3% brain, slabs of {slab_size} slices dealt "
            "train,train,train,validation,test; first slice of a slab dropped where the set changes"
        ),
        "settings": settings,
    }
    pix = side / size  # mm per output pixel
    for split in ("training", "validation", "test"):
        entries = []
        for z in split_of[split]:
            img2 = t1[x0 : x0 + side, y0 : y0 + side, z]
            probs = np.stack([gm[x0 : x0 + side, y0 : y0 + side, z], wm[x0 : x0 + side, y0 : y0 + side, z]])
            img2 = resize(img2, (size, size), order=1, preserve_range=True, anti_aliasing=True)
            probs = resize(probs, (2, size, size), order=1, preserve_range=True, anti_aliasing=False)
            lab2 = _labels_from_probabilities(probs[0], probs[1])
            if variation:
                x = np.clip(img2 / 255.0, 0, 1) ** rng.uniform(0.8, 1.25) * rng.uniform(0.9, 1.1)
                x = x + rng.normal(0, 0.02, x.shape)
                img2 = np.clip(x * 255.0, 0, 255)
            img_u8 = np.round(img2).astype(np.uint8)
            # 2-D geometry in LPS: template voxel (x0, y0, z) is the slice origin.
            world = affine @ np.array([x0, y0, z, 1.0])
            like = ImageData(
                img_u8,
                spacing=(pix, pix),
                origin=(-world[0], -world[1]),
                format="nifti",
            )
            case = f"mni152_z{z:03d}"
            rel_img = f"slices/{split}/{case}_t1.nii.gz"
            rel_lab = f"slices/{split}/{case}_label.nii.gz"
            write_image(out / rel_img, img_u8, like=like)
            write_image(out / rel_lab, lab2, like=like)
            entries.append({"image": rel_img, "label": rel_lab, "case": case})
        datalist[split] = entries

    # 3-D volume at 2 mm (block means of T1 and probabilities, labels re-thresholded).
    t1_2 = _block_mean(t1, 2)
    lab_2 = _labels_from_probabilities(_block_mean(gm, 2), _block_mean(wm, 2))
    aff2 = affine.copy()
    aff2[:3, :3] = affine[:3, :3] * 2
    aff2[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.array([0.5, 0.5, 0.5])
    sp2, org2, dir2 = affine_to_lps(aff2)
    vol_like = ImageData(t1_2, spacing=sp2, origin=org2, direction=dir2, affine=aff2, format="nifti")
    write_image(out / "volume/mni152_t1_2mm.nii.gz", np.round(t1_2).astype(np.uint8), like=vol_like)
    write_image(out / "volume/mni152_label_2mm.nii.gz", lab_2, like=vol_like)
    datalist["volume"] = {
        "image": "volume/mni152_t1_2mm.nii.gz",
        "label": "volume/mni152_label_2mm.nii.gz",
        "case": "mni152_2mm",
    }
    atomic_write_text(out / "README.txt", _MNI_NOTICE)
    atomic_write_text(datalist_path, json.dumps(datalist, indent=2) + "\n")
    logger.info(
        "demo data: %d training, %d validation, %d test slices in %s",
        len(datalist["training"]),
        len(datalist["validation"]),
        len(datalist["test"]),
        out,
    )
    return datalist_path


# --------------------------------------------------------------------------- synthetic lesions


def _lesion_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Skin-like background: a warm tone with a smooth shading gradient and noise.
    base = np.array([rng.uniform(190, 235), rng.uniform(140, 185), rng.uniform(120, 165)], dtype=np.float32)
    gx, gy = rng.uniform(-30, 30, 2)
    shade = (xx - 0.5) * gx + (yy - 0.5) * gy
    img = base[None, None, :] + shade[..., None] + rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    # Irregular blob: a radius perturbed by a few low harmonics.
    cx, cy = rng.uniform(0.35, 0.65, 2)
    r0 = rng.uniform(0.12, 0.3)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.hypot(xx - cx, yy - cy)
    edge = np.full_like(theta, r0)
    for k in range(2, 6):
        edge += r0 * rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    mask = r <= edge
    colour = np.array([rng.uniform(60, 130), rng.uniform(30, 80), rng.uniform(20, 60)], dtype=np.float32)
    weight = np.clip((edge - r) / (0.04 + 1e-6), 0, 1)[..., None]  # soft border
    img = img * (1 - weight) + (colour[None, None, :] + rng.normal(0, 8, (size, size, 3))) * weight
    return np.clip(img, 0, 255).astype(np.uint8), (mask.astype(np.uint8) * 255)


def make_synthetic_lesions(
    output_dir: str | os.PathLike[str], n: int = 20, size: int = 64, seed: int = 0
) -> Path:
    """Write ``n`` synthetic RGB lesion pictures with 0/255 masks in the VM-UNet layout.

    Layout: ``{train,val,test}/images/lesion_XXXX.png`` and
    ``{train,val,test}/masks/lesion_XXXX.png``; the ``n`` pictures are split
    70 / 10 / 20 % (at least one each). Deterministic for a given seed.

    Args:
        output_dir: folder to write into.
        n: total number of pictures (>= 3).
        size: side of the square pictures in pixels (>= 16).
        seed: random seed.

    Returns:
        ``output_dir``.
    """
    if n < 3:
        raise ValueError(f"n must be >= 3 (one picture per split at least), got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    out = Path(output_dir)
    rng = np.random.default_rng(seed)
    n_val = max(1, round(0.1 * n))
    n_test = max(1, round(0.2 * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        n_train, n_test = 1, n - 1 - n_val
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        img, mask = _lesion_sample(rng, size)
        write_image(out / split / "images" / f"lesion_{i:04d}.png", img)
        write_image(out / split / "masks" / f"lesion_{i:04d}.png", mask)
    return out
