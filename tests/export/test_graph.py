"""``vmunet export --format onnx|torchscript|pt2``: exported models run by their own runtimes reproduce
PyTorch's logits, at the export shape and at other batch and spatial sizes (the dynamic axes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vmunet.export import DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportCheckError, export_checkpoint
from vmunet.models import build_model_from_checkpoint


def _eager(ckpt, x: torch.Tensor) -> np.ndarray:
    """The reference: the checkpoint's model in eager PyTorch with the automatic scan backend."""
    model, _ = build_model_from_checkpoint(ckpt)
    with torch.no_grad():
        return model(x).numpy()


def _close(got: np.ndarray, want: np.ndarray, tol: float = DEFAULT_TOLERANCE) -> float:
    assert got.shape == want.shape
    rel = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    assert rel <= tol, rel
    return rel


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def onnx2d(ckpt2d, tmp_path_factory):
    return export_checkpoint(ckpt2d, tmp_path_factory.mktemp("onnx") / "tiny2d.onnx", "onnx")


@pytest.fixture(scope="module")
def onnx3d(ckpt3d, tmp_path_factory):
    return export_checkpoint(ckpt3d, tmp_path_factory.mktemp("onnx") / "tiny3d.onnx", "onnx")


def test_onnx_2d_matches_pytorch_in_onnxruntime_at_other_batch_and_sizes(onnx2d, ckpt2d):
    import onnx

    assert onnx2d.path.is_file() and onnx2d.dynamic and onnx2d.opset == DEFAULT_OPSET
    assert [s for s, _ in onnx2d.checks] == [(2, 1, 64, 64), (1, 1, 96, 96)]
    sess = _ort(onnx2d.path)
    assert [i.name for i in sess.get_inputs()] == ["image"]
    g = torch.Generator().manual_seed(7)
    for shape in ((1, 1, 64, 64), (3, 1, 96, 128), (1, 1, 32, 160), (2, 1, 32, 32)):
        x = torch.randn(shape, generator=g) * 2
        got = sess.run(None, {"image": x.numpy()})[0]
        _close(got, _eager(ckpt2d, x))
    model = onnx.load(str(onnx2d.path))
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == DEFAULT_OPSET
    props = {p.key: p.value for p in model.metadata_props}
    inference = json.loads(props["vmunet_inference"])
    assert inference["normalization"] == {"kind": "window", "min": -125, "max": 275}
    assert inference["class_names"] == ["background", "liver", "kidney"] and inference["input_size"] == [
        64,
        64,
    ]
    assert json.loads(props["vmunet_arch"])["name"] == "vmunet_tiny"
    sidecar = json.loads(onnx2d.sidecar.read_text())
    assert (
        sidecar["input_name"] == "image" and sidecar["inference"] == inference and sidecar["dynamic"] is True
    )


def test_onnx_3d_matches_pytorch_in_onnxruntime_at_other_batch_and_sizes(onnx3d, ckpt3d):
    assert onnx3d.dynamic and onnx3d.input_shape == (2, 1, 32, 32, 16)
    sess = _ort(onnx3d.path)
    g = torch.Generator().manual_seed(8)
    for shape in ((1, 1, 32, 32, 16), (2, 1, 64, 32, 32)):
        x = torch.randn(shape, generator=g)
        _close(sess.run(None, {"image": x.numpy()})[0], _eager(ckpt3d, x))


def test_onnx_export_logits_drive_the_same_labels_as_pytorch(onnx2d, ckpt2d):
    # the tolerance is small enough that argmax labels agree but for true near-ties
    x = torch.randn(1, 1, 128, 96, generator=torch.Generator().manual_seed(3))
    got = _ort(onnx2d.path).run(None, {"image": x.numpy()})[0]
    want = _eager(ckpt2d, x)
    agree = (got.argmax(1) == want.argmax(1)).mean()
    assert agree > 0.999, agree


def test_torchscript_round_trip(ckpt2d, tmp_path):
    res = export_checkpoint(ckpt2d, tmp_path / "tiny2d.ts", "torchscript")
    loaded = torch.jit.load(str(res.path))
    extra = {"vmunet.json": ""}
    torch.jit.load(str(res.path), _extra_files=extra)
    assert json.loads(extra["vmunet.json"])["inference"]["activation"] == "softmax"
    shapes = [(2, 1, 64, 64)] + ([(1, 1, 96, 128)] if res.dynamic else [])
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            _close(loaded(x).numpy(), _eager(ckpt2d, x))


def test_pt2_round_trip_with_dynamic_shapes(ckpt2d, tmp_path):
    res = export_checkpoint(ckpt2d, tmp_path / "tiny2d.pt2", "pt2")
    assert res.dynamic and [s for s, _ in res.checks] == [(2, 1, 64, 64), (1, 1, 96, 96)]
    assert res.dynamic_axes == ["batch", "height", "width"]
    meta = json.loads(res.sidecar.read_text())
    assert meta["dynamic_axes"] == ["batch", "height", "width"] and meta["min_input_size"] == [64, 64]
    module = torch.export.load(str(res.path)).module()
    # pt2: dynamic batch and spatial sizes from twice the divisor (32) up (see vmunet.export.graph)
    for shape in ((1, 1, 64, 160), (3, 1, 128, 96)):  # export checked (2, 1, 64, 64) and (1, 1, 96, 96)
        x = torch.randn(shape)
        with torch.no_grad():
            _close(module(x).numpy(), _eager(ckpt2d, x))
    with pytest.raises(Exception, match="(?i)guard|range|constraint|expected"):  # below the stated minimum
        module(torch.randn(1, 1, 32, 64))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_3d_torchscript_and_pt2_round_trips(fmt, ckpt3d, tmp_path):
    from vmunet.export import run_exported

    res = export_checkpoint(ckpt3d, tmp_path / f"tiny3d.{fmt}", fmt)
    if fmt == "pt2":  # the 32 x 32 x 16 window is one divisor: below pt2's dynamic spatial minimum
        assert res.dynamic_axes == ["batch"] and json.loads(res.sidecar.read_text())["min_input_size"] is None
    x = torch.randn(2, 1, 32, 32, 16)
    _close(run_exported(res.path, fmt, x), _eager(ckpt3d, x))


@pytest.mark.slow
def test_onnx_opset_20_is_written_and_runs(ckpt2d, tmp_path):
    import onnx

    res = export_checkpoint(ckpt2d, tmp_path / "op20.onnx", "onnx", opset=20)
    versions = {o.domain or "ai.onnx": o.version for o in onnx.load(str(res.path)).opset_import}
    assert versions["ai.onnx"] == 20 and res.max_rel_diff <= DEFAULT_TOLERANCE


def test_a_failed_check_exits_2_and_leaves_nothing(ckpt2d, cli, tmp_path, monkeypatch, capsys):
    import vmunet.export.graph as graph

    real = graph._reference_logits
    monkeypatch.setattr(graph, "_reference_logits", lambda src, x: real(src, x) + 0.5)
    out = tmp_path / "out"
    out.mkdir()
    assert cli("export", ckpt2d, "--format", "torchscript", "--output", out / "m.ts") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ from PyTorch" in err[0] and "m.ts" in err[0]
    assert list(out.iterdir()) == []  # no model, no sidecar, no temporary file
    with pytest.raises(ExportCheckError):
        export_checkpoint(ckpt2d, out / "m.ts", "torchscript")
    assert list(out.iterdir()) == []


def _bad_checkpoints(tmp_path):
    rand = tmp_path / "random.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, rand)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    return {"random.pt": rand, "notes.txt": text, "missing.pt": tmp_path / "missing.pt"}


@pytest.mark.parametrize(
    "case, args, needle",
    [
        ("random.pt", ["--format", "onnx"], "not a vmunet checkpoint"),
        ("notes.txt", ["--format", "onnx"], "not a readable PyTorch checkpoint"),
        ("missing.pt", ["--format", "torchscript"], "no such file"),
        ("good", ["--format", "tflite"], "--format 'tflite'"),
        ("good", ["--format", "onnx", "--opset", "11"], "--opset 11"),
        ("good", ["--format", "onnx", "--opset", "99"], "--opset 99"),
        ("good", ["--format", "pt2", "--opset", "18"], "--opset applies to --format onnx only"),
        ("good", ["--format", "onnx", "--input-size", "50", "64"], "--input-size 50 64"),
        ("good", ["--format", "onnx", "--tolerance", "0"], "--tolerance"),
    ],
)
def test_bad_inputs_get_one_line_exit_2_and_no_file(case, args, needle, ckpt2d, cli, tmp_path, capsys):
    bad = _bad_checkpoints(tmp_path)
    ckpt = ckpt2d if case == "good" else bad[case]
    out = tmp_path / "out"
    out.mkdir()
    assert cli("export", ckpt, *args, "--output", out / "model.onnx") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    if case != "good":
        assert case in err[0]
    assert list(out.iterdir()) == []
