"""vmunet plan against nnU-Net's own fingerprint extraction and planner (nnunetv2, installed by CI).

The same two small data sets (generated CT-like anisotropic volumes, the real MNI152 template slabs)
go through ``nnunetv2``'s ``extract_fingerprints`` + ``plan_experiments`` in a subprocess and through
``vmunet plan``: the target spacing and the normalisation scheme must agree, the foreground
statistics must agree up to sampling. The patch sizes differ on purpose (VM-UNet's sizes must be
multiples of 32 / 16 and fit the memory budget; see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

# nnU-Net's normalisation class names -> vmunet's `data.normalization.kind`
NORM = {"CTNormalization": "ct", "ZScoreNormalization": "zscore"}


def test_plans_agree_with_nnunet(tmp_path):
    pytest.importorskip("nnunetv2")  # CI installs it (Makefile); no skip there
    from plan_vs_nnunet import compare

    rows = compare(tmp_path)
    assert len(rows) == 2
    for r in rows:
        assert np.allclose(r["vmunet_spacing_xyz"], r["nnunet_spacing_xyz"]), r["data"]
        assert NORM[r["nnunet_norm"]] == r["vmunet_norm"], r["data"]
        ours, theirs = r["vmunet_fg"], r["nnunet_fg"]
        scale = theirs["std"]
        for key in ("mean", "std", "percentile_00_5", "percentile_99_5"):
            # both sample foreground voxels (10 000 per case, differently): agree to 5 % of the spread
            assert abs(ours[key] - theirs[key]) < 0.05 * scale, (r["data"], key, ours[key], theirs[key])
        # VM-UNet's 3-D patch: multiples of (32, 32, 16), where nnU-Net's need not be
        assert all(p % m == 0 for p, m in zip(r["vmunet_patch_3d_xyz"], (32, 32, 16))), r
    ct, mni = rows
    assert ct["vmunet_norm"] == "ct" and mni["vmunet_norm"] == "zscore"
