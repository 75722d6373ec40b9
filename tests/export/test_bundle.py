"""``vmunet export --format bundle``: a MONAI bundle that MONAI's own runner runs, same voxels as
``vmunet segment``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmunet.data import read_image

# The requirements of MONAI's bundle metadata schema (meta_schema_20240725.json, named by the model zoo's
# bundles), restated here: `verify_metadata` downloads the schema, and this machine has no internet. MONAI's
# verifier skips the download when the file already exists, so it validates against this local statement.
LOCAL_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2019-09/schema",
    "type": "object",
    "required": [
        "schema",
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ],
    "properties": {
        **{
            k: {"type": "string"}
            for k in ("schema", "version", "monai_version", "pytorch_version", "numpy_version", "task")
        },
        **{k: {"type": "string"} for k in ("description", "authors", "copyright", "intended_use")},
        "changelog": {"type": "object"},
        "required_packages_version": {"type": "object"},
        "references": {"type": "array", "items": {"type": "string"}},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                side: {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": [
                            "type",
                            "format",
                            "num_channels",
                            "spatial_shape",
                            "dtype",
                            "value_range",
                        ],
                        "properties": {
                            "type": {"type": "string"},
                            "format": {"type": "string"},
                            "num_channels": {"type": "integer"},
                            "spatial_shape": {"type": "array", "items": {"type": ["string", "integer"]}},
                            "dtype": {"type": "string"},
                            "value_range": {"type": "array", "items": {"type": "number"}},
                            "is_patch_data": {"type": "boolean"},
                            "channel_def": {"type": "object"},
                        },
                    },
                }
                for side in ("inputs", "outputs")
            },
        },
    },
}


def _segment(cli, ckpt, inputs, out) -> None:
    assert cli("segment", inputs, "--checkpoint", ckpt, "--output", out, "--device", "cpu") == 0


def _assert_same_label_maps(bundle_out: Path, segment_out: Path, names: list[str], n_labels: int) -> None:
    for name in names:
        got, want = read_image(bundle_out / name), read_image(segment_out / name)
        assert got.array.shape == want.array.shape, name
        np.testing.assert_array_equal(got.array, want.array, err_msg=name)
        np.testing.assert_allclose(got.spacing, want.spacing, atol=1e-6)
        if want.origin is not None:
            np.testing.assert_allclose(got.origin, want.origin, atol=1e-5)
        assert 1 < len(np.unique(got.array)) <= n_labels, name  # a real segmentation, not a constant map


def _run_bundle_in_process(bundle: Path, dataset_dir: Path, output_dir: Path) -> None:
    """What ``python -m monai.bundle run --config_file ... --dataset_dir ... --output_dir ...`` calls."""
    from monai.bundle import run

    run(
        config_file=str(bundle / "configs" / "inference.json"),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
    )


def test_bundle_layout_and_metadata_pass_monai_verify_metadata(ckpt2d, cli, tmp_path):
    from monai.bundle import verify_metadata

    bundle = tmp_path / "bundle"
    assert cli("export", ckpt2d, "--format", "bundle", "--output", bundle) == 0
    for rel in (
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.pt",
        "docs/README.md",
        "LICENSE",
    ):
        assert (bundle / rel).is_file(), rel
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["schema"].endswith("meta_schema_20240725.json")
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "liver",
        "2": "kidney",
    }
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    for key in (
        "bundle_root",
        "output_dir",
        "dataset_dir",
        "datalist",
        "device",
        "network_def",
        "preprocessing",
    ):
        assert key in cfg, key
    for key in ("inferer", "postprocessing", "evaluator", "handlers", "initialize", "run"):
        assert key in cfg, key
    assert cfg["network_def"]["_target_"] == "vmunet.create_model"
    assert cfg["inferer"]["roi_size"] == [64, 64]
    schema = tmp_path / "meta_schema_20240725.json"
    schema.write_text(json.dumps(LOCAL_SCHEMA))
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))
    broken = dict(meta)
    del broken["network_data_format"]["outputs"]["pred"]["dtype"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="dtype"):
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema))


def test_bundle_2d_run_by_monai_equals_vmunet_segment(ckpt2d, pictures, cli, tmp_path):
    bundle = tmp_path / "bundle"
    assert cli("export", ckpt2d, "--format", "bundle", "--output", bundle) == 0
    _run_bundle_in_process(bundle, pictures, tmp_path / "out_bundle")
    _segment(cli, ckpt2d, pictures, tmp_path / "out_segment")
    _assert_same_label_maps(tmp_path / "out_bundle", tmp_path / "out_segment", ["small.png", "large.png"], 3)


def test_bundle_3d_run_by_monai_equals_vmunet_segment(ckpt3d, volumes, cli, tmp_path):
    bundle = tmp_path / "bundle3d"
    assert cli("export", ckpt3d, "--format", "bundle", "--output", bundle) == 0
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    assert cfg["inferer"]["roi_size"] == [32, 32, 16] and cfg["inferer"]["overlap"] == 0.25
    _run_bundle_in_process(bundle, volumes, tmp_path / "out_bundle")
    _segment(cli, ckpt3d, volumes, tmp_path / "out_segment")
    names = ["case_a.nii.gz", "case_b.nii.gz"]
    _assert_same_label_maps(tmp_path / "out_bundle", tmp_path / "out_segment", names, 3)
    rotated = read_image(tmp_path / "out_bundle" / "case_b.nii.gz")
    np.testing.assert_allclose(rotated.direction, read_image(volumes / "case_b.nii.gz").direction, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_bundle_runs_under_python_m_monai_bundle_run(dims, ckpt2d, ckpt3d, pictures, volumes, cli, tmp_path):
    ckpt, data = (ckpt2d, pictures) if dims == 2 else (ckpt3d, volumes)
    bundle = tmp_path / "bundle"
    assert cli("export", ckpt, "--format", "bundle", "--output", bundle) == 0
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
    ]
    cmd += ["--dataset_dir", str(data), "--output_dir", str(tmp_path / "out_bundle")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _segment(cli, ckpt, data, tmp_path / "out_segment")
    names = ["small.png", "large.png"] if dims == 2 else ["case_a.nii.gz", "case_b.nii.gz"]
    _assert_same_label_maps(tmp_path / "out_bundle", tmp_path / "out_segment", names, 3)


def test_bundle_refuses_a_non_empty_output_folder_and_a_foreign_checkpoint(ckpt2d, cli, tmp_path, capsys):
    import torch

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    assert cli("export", ckpt2d, "--format", "bundle", "--output", taken) == 2
    assert (taken / "mine.txt").read_text() == "keep me" and len(list(taken.iterdir())) == 1
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    assert cli("export", foreign, "--format", "bundle", "--output", tmp_path / "new") == 2
    assert not (tmp_path / "new").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "taken" in err[0] and "foreign.pt" in err[1] and "vmunet checkpoint" in err[1]


def test_bundle_preprocessing_refuses_what_vmunet_segment_refuses():
    from vmunet.data import ImageData
    from vmunet.errors import VmunetUserError
    from vmunet.export.monai_components import VmunetPreprocessd

    info2d = {"in_channels": 1, "out_channels": 2, "input_size": [32, 32]}
    pre2d = VmunetPreprocessd("image", info2d)

    def run(pre, img):
        return pre({"image": img.array, "_vmunet_image": img})

    x = run(pre2d, ImageData(np.ones((40, 30), np.float32), format="png", path="ok.png"))["image"]
    assert tuple(x.shape) == (1, 40, 30)
    vol = ImageData(np.ones((8, 8, 4), np.float32), spacing=(1.0, 1.0, 1.0), format="nifti", path="v.nii.gz")
    with pytest.raises(VmunetUserError, match=r"v\.nii\.gz.*is a volume but this bundle holds a 2-D model"):
        run(pre2d, vol)
    nan = np.ones((40, 30), np.float32)
    nan[3, 4] = np.nan
    with pytest.raises(VmunetUserError, match=r"nan\.png.*NaN"):
        run(pre2d, ImageData(nan, format="png", path="nan.png"))
    with pytest.raises(VmunetUserError, match=r"empty\.png.*no pixels"):
        run(pre2d, ImageData(np.zeros((0, 30), np.float32), format="png", path="empty.png"))
