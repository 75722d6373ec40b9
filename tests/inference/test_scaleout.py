"""`vmunet segment` across processes: background workers, --sw-batch-size, torchrun ranks, Ray actors.

Every engine is held against the same reference: a plain single-process run (``workers=0``)
of the same tiny random checkpoint over the same folder, compared on the decoded label maps
and on the file bytes (the writers are deterministic), plus the summary rows.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from vmunet.cli.main import main
from vmunet.errors import VmunetUserError
from vmunet.inference import Segmenter
from vmunet.inference.engines import rank_device, shard, torchrun_env
from vmunet.inference.folder import PARTS_DIR
from vmunet.utils.io import atomic_path

GOOD = ("a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nrrd", "e.png")
BAD = "broken.nii.gz"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five small inputs (NIfTI volumes, an NRRD volume, a picture larger than the window) + one corrupt."""
    root = tmp_path_factory.mktemp("scaleout_in")
    rng = np.random.default_rng(23)
    for name, shape in (("a", (40, 36, 3)), ("b", (33, 70, 2)), ("c", (66, 40, 2))):
        aff = np.diag([0.8, 0.9, 2.5, 1.0])
        aff[:3, 3] = [-10, 4, 30]
        vol = rng.integers(-300, 400, size=shape).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, aff), root / f"{name}.nii.gz")
    img = sitk.GetImageFromArray(rng.integers(-200, 300, size=(2, 30, 44)).astype(np.int16))
    img.SetSpacing((0.7, 1.1, 3.0))
    sitk.WriteImage(img, str(root / "d.nrrd"))
    Image.fromarray(rng.integers(0, 256, size=(90, 130), dtype=np.uint8)).save(root / "e.png")
    (root / BAD).write_bytes(b"\x1f\x8b not a volume")
    return root


@pytest.fixture(scope="module")
def reference(folder, ct_checkpoint, tmp_path_factory):
    """The single-process run everything else must reproduce."""
    out = tmp_path_factory.mktemp("scaleout_ref")
    summary = Segmenter(ct_checkpoint, device="cpu", batch_size=2).segment_folder(folder, out, progress=False)
    assert summary.n_ok == len(GOOD) and summary.n_failed == 1
    return out


def _rows(out: Path, name: str = "summary.csv") -> dict[str, dict[str, str]]:
    with open(out / name, newline="") as fh:
        return {Path(r["file"]).name: r for r in csv.DictReader(fh)}


def _labels(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        return np.asarray(Image.open(path))
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _assert_same_outputs(out: Path, ref: Path, names=GOOD) -> None:
    for name in names:
        got, want = out / name, ref / name
        np.testing.assert_array_equal(_labels(got), _labels(want), err_msg=name)
        assert got.read_bytes() == want.read_bytes(), f"{name}: bytes differ"
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"


_NUMERIC = ("status", "shape", "spacing", "voxels_background", "voxels_liver", "voxels_kidney")


def _assert_same_rows(out: Path, ref: Path) -> None:
    got, want = _rows(out), _rows(ref)
    assert set(got) == set(want) == {*GOOD, BAD}
    for name in GOOD:
        assert {k: got[name][k] for k in _NUMERIC} == {k: want[name][k] for k in _NUMERIC}, name
    assert got[BAD]["status"] == "failed" and BAD in got[BAD]["error"] and "cannot read" in got[BAD]["error"]


# --------------------------------------------------------------------------- one machine


def test_workers_give_the_same_outputs_as_no_workers(folder, reference, ct_checkpoint, tmp_path):
    out = tmp_path / "w2"
    seg = Segmenter(ct_checkpoint, device="cpu", batch_size=2)
    summary = seg.segment_folder(folder, out, progress=False, workers=2, probabilities=True, overlay=True)
    assert summary.n_ok == len(GOOD) and summary.n_failed == 1
    _assert_same_outputs(out, reference)
    _assert_same_rows(out, reference)
    assert [Path(r["file"]).name for r in summary.rows] == sorted([*GOOD, BAD])  # input order kept
    # Probabilities and overlays go through the writer thread too; they match a plain prediction.
    pred = seg.predict(folder / "a.nii.gz", return_probabilities=True)
    np.testing.assert_array_equal(
        np.asarray(nib.load(out / "probabilities" / "a.nii.gz").dataobj), pred.probabilities
    )
    assert (out / "overlays" / "e.png").exists()
    # Resume with workers: nothing to redo.
    again = seg.segment_folder(folder, out, progress=False, workers=2, probabilities=True, overlay=True)
    assert [r["status"] for r in again.rows].count("skipped") == len(GOOD)


def test_cli_workers_and_sw_batch_size(folder, reference, ct_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["segment", str(folder), "-c", str(ct_checkpoint), "-o", str(out), "--device", "cpu"]
    rc = main([*args, "--batch-size", "2", "--workers", "1", "--sw-batch-size", "1", "--no-progress"])
    assert rc == 1  # one input failed
    assert f"{len(GOOD)} segmented" in capsys.readouterr().err
    for name in GOOD:  # one window per pass instead of two: the same labels
        np.testing.assert_array_equal(_labels(out / name), _labels(reference / name), err_msg=name)
    with pytest.raises(SystemExit):
        main([*args, "--workers", "-1"])
    with pytest.raises(SystemExit):
        main([*args, "--sw-batch-size", "0"])


def test_sw_batch_size_reaches_the_inferers_and_keeps_the_labels(ct_checkpoint):
    img = np.random.default_rng(4).integers(-200, 300, size=(150, 130)).astype(np.int16)  # 3x3 windows
    base = Segmenter(ct_checkpoint, device="cpu", batch_size=4)
    one = Segmenter(ct_checkpoint, device="cpu", batch_size=4, sw_batch_size=1)
    nine = Segmenter(ct_checkpoint, device="cpu", batch_size=1, sw_batch_size=9)
    assert base.strategy.inferer.sw_batch_size == 4  # default: --batch-size, as before
    assert one.strategy.inferer.sw_batch_size == 1 and nine.strategy.inferer.sw_batch_size == 9
    p0 = base.predict(img, return_probabilities=True)
    for seg in (one, nine):
        p = seg.predict(img, return_probabilities=True)
        np.testing.assert_array_equal(p.labels, p0.labels)
        np.testing.assert_allclose(p.probabilities, p0.probabilities, atol=1e-5)
    with pytest.raises(ValueError, match="sw_batch_size"):
        Segmenter(ct_checkpoint, device="cpu", sw_batch_size=0)


def test_3d_strategy_prepared_in_workers_matches(tmp_path):
    """A 3-D model: resampling and windowing run in the workers; the label maps are unchanged."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    info = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "input_size": [16, 16, 8],
        "spacing": [1.5, 1.5, 2.0],
        "normalization": {"kind": "window", "min": -100, "max": 200},
        "activation": "softmax",
    }
    seg = Segmenter(net, device="cpu", inference=info, sw_batch_size=3)
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(1)
    for k in range(3):
        vol = rng.integers(-200, 300, size=(30, 26, 9)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.2, 2.5, 1.0])), inp / f"v{k}.nii.gz")
    s0 = seg.segment_folder(inp, tmp_path / "o0", progress=False)
    s2 = seg.segment_folder(inp, tmp_path / "o2", progress=False, workers=2)
    assert s0.n_ok == s2.n_ok == 3
    for k in range(3):
        a, b = (tmp_path / o / f"v{k}.nii.gz" for o in ("o0", "o2"))
        np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
        assert a.read_bytes() == b.read_bytes()


class _NpyWriter:
    """An extra output (like a DICOM-SEG writer would be): the label map as .npy."""

    key = "npy"

    def output_path(self, item, output_dir, case):
        return None if case.startswith("e") else output_dir / "npy" / item.rel_dir / f"{case}.npy"

    def write(self, path, prediction, item):
        with atomic_path(path) as tmp:
            np.save(tmp, prediction.labels)


@pytest.mark.parametrize("workers", [0, 2])
def test_extra_writers_are_called_and_count_for_resume(folder, reference, ct_checkpoint, tmp_path, workers):
    out = tmp_path / "o"
    seg = Segmenter(ct_checkpoint, device="cpu", batch_size=2)
    seg.segment_folder(folder, out, progress=False, writers=[_NpyWriter()], workers=workers)
    saved = np.load(out / "npy" / "a.npy")
    np.testing.assert_array_equal(saved.transpose(2, 1, 0), _labels(reference / "a.nii.gz"))
    assert not (out / "npy" / "e.npy").exists()  # the writer said it does not apply
    (out / "npy" / "b.npy").unlink()
    again = seg.segment_folder(folder, out, progress=False, writers=[_NpyWriter()], workers=workers)
    status = {Path(r["file"]).name: r["status"] for r in again.rows}
    assert status == {"a.nii.gz": "skipped", "b.nii.gz": "ok", "c.nii.gz": "skipped", "d.nrrd": "skipped",
                      "e.png": "skipped", BAD: "failed"}  # fmt: skip
    assert (out / "npy" / "b.npy").exists()


# --------------------------------------------------------------------------- torchrun


def test_rank_helpers():
    assert torchrun_env({}) is None
    env = torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (3, 4, 1, False)
    with pytest.raises(VmunetUserError, match="RANK"):
        torchrun_env({"RANK": "4", "WORLD_SIZE": "4"})
    parts = [shard(list(range(11)), r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(11)) and parts[1] == [1, 4, 7, 10]
    want = f"cuda:{1 % max(1, torch.cuda.device_count())}" if torch.cuda.is_available() else "cpu"
    assert rank_device("auto", env) == want and rank_device("cpu", env) == "cpu"
    assert rank_device("auto", None) == "auto"


def _torchrun(folder: Path, ckpt: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "vmunet", "segment", str(folder), "-c", str(ckpt), "-o", str(out), "--device", "cpu"]
    cmd += ["--batch-size", "2", "--no-progress", *extra]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def torchrun_out(folder, ct_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("scaleout_torchrun") / "out"
    proc = _torchrun(folder, ct_checkpoint, out)
    return out, proc


def test_torchrun_two_ranks_each_input_once_same_outputs(torchrun_out, reference):
    out, proc = torchrun_out
    assert proc.returncode == 1, proc.stderr[-3000:]  # exit 1: one input failed (on every rank)
    assert f"{len(GOOD)} segmented, 0 skipped (already done), 1 failed" in proc.stderr
    assert proc.stderr.count("vmunet segment:") == 1  # only rank 0 reports
    _assert_same_outputs(out, reference)
    _assert_same_rows(out, reference)
    # One summary; each rank's part lists its share, disjoint, together every input exactly once.
    assert sorted(p.name for p in out.glob("*.csv")) == ["summary.csv"]
    parts = [_rows(out / PARTS_DIR, f"summary.rank{r}.csv") for r in (0, 1)]
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) == {*GOOD, BAD}
    order = sorted([*GOOD, BAD])
    for r, part in enumerate(parts):
        assert set(part) == set(order[r::2]) and {p["rank"] for p in part.values()} == {str(r)}


def test_torchrun_resume_redoes_only_the_missing_output(torchrun_out, folder, ct_checkpoint, tmp_path):
    src, _ = torchrun_out
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "c.nii.gz").unlink()
    before = {n: (out / n).stat().st_mtime_ns for n in GOOD if n != "c.nii.gz"}
    proc = _torchrun(folder, ct_checkpoint, out)
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = _rows(out)
    assert {n: r["status"] for n, r in rows.items()} == {
        **{n: "skipped" for n in GOOD if n != "c.nii.gz"},
        "c.nii.gz": "ok",
        BAD: "failed",
    }
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before  # not rewritten
    assert (out / "c.nii.gz").read_bytes() == (src / "c.nii.gz").read_bytes()


def test_a_killed_run_leaves_no_half_written_output_and_a_rerun_finishes(
    folder, ct_checkpoint, reference, tmp_path
):
    """SIGKILL (no clean-up runs) while a run is writing: whatever stands under a final name is complete,
    and the rerun segments what is missing, with the single-process run's outputs. (A kill in the
    middle of a write leaves that write's hidden ``.<case>.<id>.tmp`` file; it is never read as an
    output.)"""
    import signal
    import time

    out = tmp_path / "out"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vmunet", "segment", str(folder), "-c", str(ct_checkpoint), "-o", str(out)]
    cmd += ["--device", "cpu", "--batch-size", "2", "--no-progress", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not any((out / n).exists() for n in GOOD) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    for name in GOOD:  # a label map under its final name is whole (readable, same as the reference)
        if (out / name).exists():
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 1, rerun.stderr[-3000:]  # exit 1: the broken input fails again
    for name in GOOD:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    got, want = _rows(out), _rows(reference)
    assert set(got) == set(want) and got[BAD]["status"] == "failed"
    assert any(got[n]["status"] == "ok" for n in GOOD), "the kill came after every input was done"
    for name in GOOD:  # finished before the kill: skipped, with the counts read back from the file
        assert got[name]["status"] in ("ok", "skipped"), name
        assert {k: got[name][k] for k in _NUMERIC[1:]} == {k: want[name][k] for k in _NUMERIC[1:]}, name
    stray = {p.name for p in out.rglob("*") if p.is_file()} - set(GOOD) - {"summary.csv"}
    assert all(n.startswith(".") and ".tmp" in n for n in stray), stray


def test_torchrun_two_nodes_through_rendezvous_each_input_once(folder, ct_checkpoint, reference, tmp_path):
    """Two torchrun agents (one per "node", as on two machines sharing the output folder) join through
    torchrun's c10d rendezvous: global RANK 0 and 1, LOCAL_RANK 0 on both."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "vmunet-test"]
    cmd += ["-m", "vmunet", "segment", str(folder), "-c", str(ct_checkpoint), "-o", str(out)]
    cmd += ["--device", "cpu", "--batch-size", "2", "--no-progress"]
    nodes = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    results = [(n.communicate(timeout=300)[1], n.returncode) for n in nodes]
    for err, rc in results:
        assert rc == 1, err[-3000:]  # exit 1: one input failed
    assert sum(err.count("vmunet segment:") for err, _ in results) == 1  # only global rank 0 reports
    _assert_same_outputs(out, reference)
    _assert_same_rows(out, reference)
    assert sorted(p.name for p in out.glob("*.csv")) == ["summary.csv"]
    parts = [_rows(out / PARTS_DIR, f"summary.rank{r}.csv") for r in (0, 1)]
    order = sorted([*GOOD, BAD])
    for r, part in enumerate(parts):
        assert set(part) == set(order[r::2]) and {p["rank"] for p in part.values()} == {str(r)}


# --------------------------------------------------------------------------- Ray


def test_ray_engine_without_ray_is_one_line(folder, ct_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = main(
        ["segment", str(folder), "-c", str(ct_checkpoint), "-o", str(tmp_path / "o"), "--engine", "ray"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "pip install vmunet[ray]" in err and "Traceback" not in err
    assert main(["segment", str(folder), "-c", str(ct_checkpoint), "-o", str(tmp_path / "o"),
                 "--ray-address", "auto"]) == 2  # fmt: skip


def test_ray_engine_local_two_cpus_same_outputs(folder, reference, ct_checkpoint, tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    args = ["segment", str(folder), "-c", str(ct_checkpoint), "-o", str(out), "--device", "cpu"]
    rc = main([*args, "--batch-size", "2", "--engine", "ray", "--ray-num-cpus", "2", "--no-progress"])
    assert rc == 1
    assert f"{len(GOOD)} segmented" in capsys.readouterr().err
    _assert_same_outputs(out, reference)
    _assert_same_rows(out, reference)
    assert Path(_rows(out)[BAD]["file"]) == folder / BAD  # the paths as given, not the actors' absolute ones
