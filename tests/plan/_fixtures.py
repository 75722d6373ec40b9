"""Small nnU-Net raw data sets for the planner tests: generated CT-like volumes, and the real MNI152."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from vmunet.data.io import ImageData, write_image


def write_case(
    root: Path, case: str, image: np.ndarray, label: np.ndarray | None, spacing, split="Tr"
) -> None:
    like = ImageData(image, spacing=tuple(spacing), format="nifti")
    (root / f"images{split}").mkdir(parents=True, exist_ok=True)
    write_image(root / f"images{split}" / f"{case}_0000.nii.gz", image, like=like)
    if label is not None:
        (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
        write_image(root / f"labels{split}" / f"{case}.nii.gz", label, like=like)


def make_ct_dataset(root: Path, n: int = 5, seed: int = 0, spacing=(0.8, 0.8, 2.5)) -> Path:
    """Generated CT-like volumes (HU-like intensities, a bright ball and a small dim cube as labels)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (40 + 4 * i, 36, 20 + 2 * (i % 2))
        img = rng.normal(-100, 40, shape).astype(np.int16)
        lab = np.zeros(shape, np.uint8)
        c = np.array(shape) // 2
        zz = np.indices(shape)
        ball = sum((zz[a] - c[a]) ** 2 for a in range(3)) < 36
        lab[ball] = 1
        lab[c[0] - 1 : c[0] + 1, 2:4, 2:4] = 2
        img[lab == 1] = rng.normal(300, 60, int(ball.sum())).astype(np.int16)
        img[lab == 2] = 50
        sp = list(spacing)
        sp[2] = spacing[2] + 0.5 * (i % 3)
        write_case(root, f"gen_{i:03d}", img, lab, sp)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "generated CT-like balls",
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "ball": 1, "cube": 2},
                "numTraining": n,
                "file_ending": ".nii.gz",
            }
        )
    )
    return root


def make_mni_dataset(root: Path, work: Path) -> Path:
    """The real MNI152 2009a template (nilearn) as an nnU-Net raw data set: the 3-D demo's slabs,
    training + validation slabs in imagesTr, the test slab in imagesTs."""
    from vmunet.data.demo3d import make_demo3d_data

    dl_path = make_demo3d_data(work)
    dl = json.loads(dl_path.read_text())
    for split, sub in (("training", "Tr"), ("validation", "Tr"), ("test", "Ts")):
        for e in dl[split]:
            (root / f"images{sub}").mkdir(parents=True, exist_ok=True)
            (root / f"labels{sub}").mkdir(parents=True, exist_ok=True)
            shutil.copy(work / e["image"], root / f"images{sub}" / f"{e['case']}_0000.nii.gz")
            shutil.copy(work / e["label"], root / f"labels{sub}" / f"{e['case']}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "MNI152 2009a template slabs (real, nilearn)",
                "channel_names": {"0": "T1"},
                "labels": {"background": 0, "grey_matter": 1, "white_matter": 2},
                "numTraining": len(dl["training"]) + len(dl["validation"]),
                "file_ending": ".nii.gz",
            }
        )
    )
    return root
