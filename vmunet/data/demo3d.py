"""The 3-D demo: the MNI152 template at 2 mm, cut into disjoint axial slabs for train / val / test.

Same source and labels as the 2-D demo (:mod:`vmunet.data.demo`): the MNI ICBM152 2009a
symmetric T1 template shipped inside nilearn, labels ``1`` grey matter / ``2`` white
matter where that tissue probability is >= 0.5 and not below the other (block means of
2 x 2 x 2 voxels, i.e. 2 mm). Nothing is downloaded.

Split (no voxel is in two sets): the 2 mm volume is cropped to the brain's bounding box
(4-voxel margin in X and Y) and cut along Z (inferior -> superior) into five slabs
separated by 2-slice (4 mm) gaps that belong to no set::

    train (16 slices) | gap | val (10) | gap | train (16) | gap | test (10) | gap | train (16)

Each slab is written as its own NIfTI with the affine of its position in the template,
so a 3-D model's training patches (cut inside a training slab) never touch a held-out
voxel, and every set keeps its physical coordinates. The 2-D comparison model
(``benchmarks/compare_2d_3d.py``) trains on the axial slices of the same training slabs.

Example:
    >>> from vmunet.data.demo3d import make_demo3d_data
    >>> datalist = make_demo3d_data("demo3d_data")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.data.demo import (
    _MNI_NOTICE,
    DEMO_LABELS,
    _block_mean,
    _labels_from_probabilities,
    mni152_template_paths,
)
from vmunet.data.io import ImageData, affine_to_lps, write_image
from vmunet.utils.io import atomic_write_text

__all__ = ["SLAB_LAYOUT", "make_demo3d_data"]

logger = logging.getLogger(__name__)

#: (set, slices) from inferior to superior; a 2-slice gap separates neighbouring slabs.
SLAB_LAYOUT = (("training", 16), ("validation", 10), ("training", 16), ("test", 10), ("training", 16))
GAP = 2
_VERSION = 1


def _slabs(z_lo: int, z_hi: int) -> list[tuple[str, int, int]]:
    """``(set, start, stop)`` slabs centred in ``[z_lo, z_hi)``."""
    need = sum(n for _, n in SLAB_LAYOUT) + GAP * (len(SLAB_LAYOUT) - 1)
    start = max(0, z_lo + (z_hi - z_lo - need) // 2)
    out = []
    for name, n in SLAB_LAYOUT:
        out.append((name, start, start + n))
        start += n + GAP
    return out


def make_demo3d_data(output_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Build the 3-D MNI152 slab data set and return its datalist JSON path.

    Args:
        output_dir: folder to write into (created).
        overwrite: rebuild even when a complete data set of this version exists.

    Returns:
        ``output_dir/datalist.json``: a MONAI datalist with ``training`` (3 slabs),
        ``validation`` (1) and ``test`` (1) lists of ``{"image", "label", "case"}``, plus
        ``labels``, ``spatial_dims`` 3, the slab table (``slabs``, voxel Z ranges in the
        cropped 2 mm volume) and the split rule.
    """
    import nibabel as nib

    out = Path(output_dir)
    dl_path = out / "datalist.json"
    if dl_path.is_file() and not overwrite:
        try:
            old = json.loads(dl_path.read_text())
            if old.get("version") == _VERSION and all(
                (out / e[k]).is_file()
                for s in ("training", "validation", "test")
                for e in old[s]
                for k in ("image", "label")
            ):
                return dl_path
        except (ValueError, KeyError, TypeError):
            pass
    paths = mni152_template_paths()
    imgs = {k: nib.load(str(p)) for k, p in paths.items()}
    affine = np.asarray(imgs["t1"].affine, dtype=np.float64)
    t1 = _block_mean(np.asanyarray(imgs["t1"].dataobj).astype(np.float32), 2)
    gm = _block_mean(np.asanyarray(imgs["gm"].dataobj).astype(np.float32) / 255.0, 2)
    wm = _block_mean(np.asanyarray(imgs["wm"].dataobj).astype(np.float32) / 255.0, 2)
    labels = _labels_from_probabilities(gm, wm)
    aff2 = affine.copy()  # 2 mm grid: voxel centres at the centre of each 2x2x2 block
    aff2[:3, :3] = affine[:3, :3] * 2
    aff2[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.array([0.5, 0.5, 0.5])

    nz = np.nonzero(labels)
    lo = [max(0, int(v.min()) - 4) for v in nz]
    hi = [min(s, int(v.max()) + 5) for v, s in zip(nz, labels.shape)]
    datalist: dict[str, Any] = {
        "name": "MNI152 2009a brain tissue 3-D demo (real template, offline, axial slabs at 2 mm)",
        "description": (
            "The MNI ICBM152 2009a symmetric template shipped with nilearn at 2 mm; labels are tissue "
            "probabilities >= 0.5 (1 grey matter, 2 white matter). Not ISIC, not Synapse."
        ),
        "license": "see README.txt (McConnell Brain Imaging Centre notice)",
        "labels": DEMO_LABELS,
        "spatial_dims": 3,
        "version": _VERSION,
        "split_rule": (
            "brain bounding box of the 2 mm template cut along Z into slabs train(16) val(10) train(16) "
            f"test(10) train(16) slices, {GAP}-slice gaps between slabs belong to no set; no voxel is shared"
        ),
        "training": [],
        "validation": [],
        "test": [],
        "slabs": [],
    }
    counts: dict[str, int] = {}
    for name, z0, z1 in _slabs(lo[2], hi[2]):
        k = counts.get(name, 0)
        counts[name] = k + 1
        case = f"mni152_{name}{k}"
        sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(z0, z1))
        aff = aff2.copy()
        aff[:3, 3] = aff2[:3, 3] + aff2[:3, :3] @ np.array([lo[0], lo[1], z0], dtype=np.float64)
        sp, org, dr = affine_to_lps(aff)
        like = ImageData(t1[sl], spacing=sp, origin=org, direction=dr, affine=aff, format="nifti")
        rel_img, rel_lab = f"volumes/{case}_t1.nii.gz", f"volumes/{case}_label.nii.gz"
        write_image(out / rel_img, np.round(t1[sl]).astype(np.uint8), like=like)
        write_image(out / rel_lab, labels[sl], like=like)
        datalist[name].append({"image": rel_img, "label": rel_lab, "case": case})
        datalist["slabs"].append({"case": case, "set": name, "z": [z0, z1]})
    atomic_write_text(out / "README.txt", _MNI_NOTICE)
    atomic_write_text(dl_path, json.dumps(datalist, indent=2) + "\n")
    logger.info("3-D demo data: %s slabs in %s", counts, out)
    return dl_path
