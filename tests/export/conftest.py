"""Tiny real checkpoints (random weights) and small scans for the export tests, built once.

The 2-D checkpoint mirrors ``tests/inference/conftest.py``'s ``ct_checkpoint`` (1 channel in, 3 classes,
64x64 sliding window, CT window normalisation); the 3-D one is a ``vmunet3d_tiny`` with a 32x32x16 ROI
at 1.5 x 1.5 x 2 mm, so that the bundle has to resample volumes and back.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest


def _save(path, arch, inference, **kw):
    import vmunet
    from vmunet.models import save_checkpoint

    model = vmunet.create_model(
        arch, in_channels=inference["in_channels"], out_channels=inference["out_channels"]
    )
    save_checkpoint(path, model, arch, inference=inference, **kw)
    return path


@pytest.fixture(scope="session")
def ckpt2d(tmp_path_factory):
    return _save(
        tmp_path_factory.mktemp("ckpt") / "tiny2d.pt",
        "vmunet_tiny",
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 3,
            "input_size": [64, 64],
            "resize": False,
            "normalization": {"kind": "window", "min": -125, "max": 275},
            "class_names": ["background", "liver", "kidney"],
            "activation": "softmax",
        },
    )


@pytest.fixture(scope="session")
def ckpt3d(tmp_path_factory):
    return _save(
        tmp_path_factory.mktemp("ckpt") / "tiny3d.pt",
        "vmunet3d_tiny",
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "input_size": [32, 32, 16],
            "spacing": [1.5, 1.5, 2.0],
            "resize": False,
            "normalization": {"kind": "window", "min": 0, "max": 100},
            "class_names": ["background", "ball", "cube"],
            "activation": "softmax",
            "overlap": 0.25,
        },
    )


@pytest.fixture(scope="session")
def pictures(tmp_path_factory):
    """Two grey PNGs: one smaller than the 64x64 window, one that needs several windows."""
    from vmunet.data import write_image

    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    write_image(root / "small.png", (rng.random((50, 60)) * 255).astype(np.uint8))
    yy, xx = np.mgrid[:100, :130]
    blob = ((yy - 50) ** 2 + (xx - 70) ** 2 < 900) * 150 + rng.normal(60, 20, (100, 130))
    write_image(root / "large.png", np.clip(blob, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def volumes(tmp_path_factory):
    """Two NIfTI volumes: one on another grid than the checkpoint's (resampled), one rotated."""
    from vmunet.data.io import ImageData, write_image

    root = tmp_path_factory.mktemp("volumes")
    rng = np.random.default_rng(1)
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    for name, shape, spacing, direction in (
        ("case_a", (40, 36, 14), (0.8, 0.9, 2.5), None),
        ("case_b", (30, 34, 18), (1.5, 1.5, 2.0), rot),
    ):
        vol = rng.normal(40, 25, shape).astype(np.float32)
        vol[8:20, 10:24, 4:10] += 50
        like = ImageData(vol, spacing=spacing, origin=(10.0, -20.0, 5.0), direction=direction, format="nifti")
        write_image(root / f"{name}.nii.gz", vol, like=like)
    return root


@pytest.fixture
def cli():
    """Run ``vmunet ...`` in-process, as the console script does."""
    import vmunet.cli.main as main_mod

    def run(*argv: str) -> int:
        return main_mod.main([str(a) for a in argv])

    return run


PYTHON = sys.executable
