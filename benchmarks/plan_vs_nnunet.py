"""vmunet's plan side by side with nnU-Net's own fingerprint and planner, on the same data sets.

Runs ``nnunetv2``'s ``extract_fingerprints`` + ``plan_experiments`` (the default
``ExperimentPlanner``, 8 GB target) in a subprocess with its own ``nnUNet_raw`` /
``nnUNet_preprocessed`` folders, and ``vmunet plan`` with the same 8 GB, on two small
data sets written to a temporary folder: generated CT-like volumes (anisotropic) and the
real MNI152 2009a template slabs shipped with nilearn. Prints a Markdown table of target
spacing, normalisation scheme, foreground statistics, 2-D/3-D and patch size.

Usage:
    python benchmarks/plan_vs_nnunet.py            # needs nnunetv2 installed
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "plan"))

_NNUNET = """
import json, sys
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
ids = [int(i) for i in sys.argv[1:]]
extract_fingerprints(ids, num_processes=1, check_dataset_integrity=True, verbose=False,
                     show_progress_bar=False)
plan_experiments(ids, gpu_memory_target_in_gb=8)
"""


def run_nnunet(raw: Path, pre: Path, ids: list[int]) -> None:
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(pre),
        "nnUNet_results": str(pre / "res"),
    }
    subprocess.run([sys.executable, "-c", _NNUNET, *map(str, ids)], env=env, check=True, capture_output=True)


def compare(work: Path) -> list[dict[str, Any]]:
    """Build the data sets under ``work``, plan with both, return one row per data set."""
    from _fixtures import make_ct_dataset, make_mni_dataset

    from vmunet.config.loader import load_config
    from vmunet.plan import plan_dataset

    raw, pre = work / "raw", work / "pre"
    sets = {
        1: ("generated CT-like (anisotropic)", make_ct_dataset(raw / "Dataset901_GenCT", n=6)),
        2: ("MNI152 2009a slabs (real, T1)", make_mni_dataset(raw / "Dataset902_MNI", work / "mni_work")),
    }
    run_nnunet(raw, pre, [901, 902])
    rows = []
    for (name, root), nn_id in zip(sets.values(), (901, 902), strict=True):
        nn_dir = pre / root.name
        plans = json.loads((nn_dir / "nnUNetPlans.json").read_text())
        nn_fp = json.loads((nn_dir / "dataset_fingerprint.json").read_text())
        recipe, _ = plan_dataset(root, work / f"plan{nn_id}" / "r.yaml", memory_gb=8, dims=3)
        recipe2d, _ = plan_dataset(root, work / f"plan{nn_id}" / "r2.yaml", memory_gb=8, dims=2)
        ours = json.loads((recipe.parent / "fingerprint.json").read_text())
        cfg, cfg2 = load_config(recipe), load_config(recipe2d)
        auto, _ = plan_dataset(root, work / f"plan{nn_id}" / "auto.yaml", memory_gb=8)
        full = plans["configurations"]["3d_fullres"]
        rows.append(
            {
                "data": name,
                "nnunet_spacing_xyz": list(reversed(full["spacing"])),  # nnU-Net plans are Z, Y, X
                "vmunet_spacing_xyz": cfg.data.spacing,
                "nnunet_norm": full["normalization_schemes"][0],
                "vmunet_norm": cfg.data.normalization["kind"],
                "nnunet_fg": nn_fp["foreground_intensity_properties_per_channel"]["0"],
                "vmunet_fg": ours["dataset"]["intensity"][0],
                "nnunet_patch_3d_xyz": list(reversed(full["patch_size"])),
                "vmunet_patch_3d_xyz": cfg.data.size,
                "nnunet_patch_2d": list(reversed(plans["configurations"]["2d"]["patch_size"])),
                "vmunet_size_2d": cfg2.data.size,
                "nnunet_batch_3d": full["batch_size"],
                "vmunet_batch_3d": cfg.data.batch_size,
                "vmunet_dims_auto": load_config(auto).data.spatial_dims,
            }
        )
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "x".join(f"{x:g}" for x in v)
    return str(v)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare(Path(tmp))
    print("| data | quantity | vmunet plan | nnU-Net plans |")
    print("|---|---|---|---|")
    for r in rows:
        for q, a, b in (
            ("target spacing X, Y, Z (mm)", r["vmunet_spacing_xyz"], r["nnunet_spacing_xyz"]),
            ("normalisation", r["vmunet_norm"], r["nnunet_norm"]),
            (
                "foreground mean / std",
                f"{r['vmunet_fg']['mean']:.1f} / {r['vmunet_fg']['std']:.1f}",
                f"{r['nnunet_fg']['mean']:.1f} / {r['nnunet_fg']['std']:.1f}",
            ),
            (
                "foreground p0.5 / p99.5",
                f"{r['vmunet_fg']['percentile_00_5']:.1f} / {r['vmunet_fg']['percentile_99_5']:.1f}",
                f"{r['nnunet_fg']['percentile_00_5']:.1f} / {r['nnunet_fg']['percentile_99_5']:.1f}",
            ),
            ("3-D patch X, Y, Z", r["vmunet_patch_3d_xyz"], r["nnunet_patch_3d_xyz"]),
            ("3-D batch", r["vmunet_batch_3d"], r["nnunet_batch_3d"]),
            ("2-D size", r["vmunet_size_2d"], r["nnunet_patch_2d"]),
            ("2-D or 3-D (vmunet decides; nnU-Net trains both)", r["vmunet_dims_auto"], "2d + 3d_fullres"),
        ):
            print(f"| {r['data']} | {q} | {_fmt(a)} | {_fmt(b)} |")


if __name__ == "__main__":
    main()
