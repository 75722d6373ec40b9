"""Files per second of ``vmunet segment`` across processes, on this machine, baseline in the same run.

Inputs: a dozen brain MR volumes derived from the MNI ICBM152 2009a T1 template shipped in
nilearn (nothing is downloaded): the template at its own 1 mm grid (about 190 x 230 x 190
voxels), each case with its own small shift, crop, intensity gain and noise (seeded), written
as int16 NIfTI with the template's affine. Model: ``vmunet_tiny`` with random weights (1 channel, 3
classes, 64 x 64 sliding window, min-max intensity window): a 2-D checkpoint, so each volume
goes slice by slice (about 190 slices, 16 windows each) - the decode / predict / write mix of a real run.

Configurations, each a fresh command (startup included, as a user would run it):

1. ``vmunet segment`` (baseline: one process, ``--workers 0``)
2. ``vmunet segment --workers 2`` (background decoding and a writer thread)
3. and 4. ``vmunet segment`` with one compute thread (``OMP_NUM_THREADS=1``), without and with
   ``--workers 1``: a core left free for decoding, as on a GPU machine; 4 is compared with 3
5. ``torchrun --nproc_per_node 2 -m vmunet segment`` (two ranks, one thread each)
6. ``vmunet segment --engine ray --ray-num-cpus 2`` (two 1-CPU Ray actors, local instance)

Reported: wall time of the command, files/s end to end, and files/s in the steady state (from
the first to the last label map written, which leaves out the start-up: imports, model load,
Ray start). Every configuration's label maps are compared, voxels and file bytes, with those of
the first configuration computing with as many threads per process (1: the baseline; 3-6: the
one-thread run 3); the two thread counts are also compared with each other and the voxels that
differ (float32 sums ordered differently by PyTorch's CPU kernels) are counted.

Usage:
    python benchmarks/segment_scaleout.py            # 12 cases
    python benchmarks/segment_scaleout.py --quick    # 4 smaller cases (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def make_cases(folder: Path, n: int, quick: bool) -> list[Path]:
    """``n`` NIfTI volumes from the MNI152 T1 template at 2 mm (seeded variations)."""
    from vmunet.data.demo import _block_mean, mni152_template_paths

    src = nib.load(mni152_template_paths()["t1"])
    t1 = np.asarray(src.dataobj, dtype=np.float32)
    affine = src.affine.copy()
    if quick:  # 2 mm (block means), cropped
        t1 = _block_mean(t1, 2)[15:75, 20:88, 30:50]
        affine[:3, :3] *= 2
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        rng = np.random.default_rng(k)
        sx, sy = (int(v) for v in rng.integers(-3, 4, size=2))
        vol = np.roll(t1, (sx, sy), axis=(0, 1)) * rng.uniform(0.9, 1.1) + rng.normal(0, 3, t1.shape)
        vol = vol[: t1.shape[0] - int(rng.integers(0, 4)), :, : t1.shape[2] - int(rng.integers(0, 3))]
        path = folder / f"case{k:03d}.nii.gz"
        nib.save(nib.Nifti1Image(np.clip(vol, -32768, 32767).astype(np.int16), affine), path)
        paths.append(path)
    return paths


def make_checkpoint(path: Path) -> Path:
    import torch

    import vmunet
    from vmunet.models import save_checkpoint

    torch.manual_seed(0)
    model = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=3)
    save_checkpoint(
        path,
        model,
        "vmunet_tiny",
        inference={
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 3,
            "input_size": [64, 64],
            "normalization": {"kind": "window", "min": 0, "max": 120},
            "class_names": ["background", "grey_matter", "white_matter"],
            "activation": "softmax",
        },
    )
    return path


def run(name: str, cmd: list[str], out: Path, n: int, parallel: int, extra_env: dict) -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **extra_env}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{name}: exit status {proc.returncode}")
    stamps = sorted(p.stat().st_mtime for p in out.glob("case*.nii.gz"))
    if len(stamps) != n:
        raise SystemExit(f"{name}: {len(stamps)} label maps written, expected {n}")
    # Steady state: the files finished after the first wave (one per parallel process) over the time
    # from the first label map to the last; start-up (imports, model load, Ray start) is left out.
    span = stamps[-1] - stamps[0]
    steady = (n - parallel) / span if n > parallel and span > 0 else float("nan")
    return {"config": name, "wall_s": round(wall, 1), "files_per_s": round(n / wall, 3),
            "steady_files_per_s": round(steady, 3)}  # fmt: skip


def compare(out: Path, ref: Path) -> tuple[int, bool]:
    """(voxels whose label differs, over all cases; files byte-identical) against the reference."""
    differ, files = 0, True
    for p in sorted(ref.glob("case*.nii.gz")):
        q = out / p.name
        differ += int((np.asarray(nib.load(p).dataobj) != np.asarray(nib.load(q).dataobj)).sum())
        files &= p.read_bytes() == q.read_bytes()
    return differ, bool(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 smaller cases (smoke run)")
    ap.add_argument("--cases", type=int, default=None, help="number of cases (default 12, quick 4)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    n = args.cases or (4 if args.quick else 12)
    vmunet_cmd = [sys.executable, "-m", "vmunet"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

    with tempfile.TemporaryDirectory(prefix="vmunet_scaleout_") as tmp:
        root = Path(tmp)
        cases = make_cases(root / "in", n, args.quick)
        ckpt = make_checkpoint(root / "tiny.pt")
        shape = nib.load(cases[0]).shape
        common = ["segment", str(root / "in"), "-c", str(ckpt), "--device", "cpu", "--no-progress"]
        one = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        # (name, command, extra arguments, processes, environment, compute threads per process).
        # torchrun gives each rank OMP_NUM_THREADS=1 and Ray each 1-CPU actor the same.
        configs = [
            ("1 process, --workers 0 (baseline)", vmunet_cmd, [], 1, {}, "all"),
            ("1 process, --workers 2", vmunet_cmd, ["--workers", "2"], 1, {}, "all"),
            # One compute thread leaves a core free for decoding, as a GPU leaves the CPU free:
            # what the overlap of --workers is for. --workers 1 is compared with --workers 0 here.
            ("1 thread, --workers 0", vmunet_cmd, [], 1, one, "1"),
            ("1 thread, --workers 1", vmunet_cmd, ["--workers", "1"], 1, one, "1"),
            ("torchrun, 2 processes", [*torchrun, "-m", "vmunet"], [], 2, {}, "1"),
        ]
        try:
            import ray  # noqa: F401

            if not args.no_ray:
                ray_args = ["--engine", "ray", "--ray-num-cpus", "2"]
                configs.append(("ray engine, 2 actors", vmunet_cmd, ray_args, 2, {}, "1"))
        except ImportError:
            print("ray not installed: the Ray engine is skipped (pip install vmunet[ray])")
        results = []
        refs: dict[str, Path] = {}  # label maps of the first configuration of each thread count
        for i, (name, prefix, extra, parallel, extra_env, threads) in enumerate(configs):
            out = root / f"out{i}"
            res = run(name, [*prefix, *common, "-o", str(out), *extra], out, n, parallel, extra_env)
            res["threads"] = threads
            if threads not in refs:
                refs[threads] = out
                res["voxels_differ"], res["same_bytes"] = 0, True
            else:  # against the configuration computing with the same threads per process
                res["voxels_differ"], res["same_bytes"] = compare(out, refs[threads])
            results.append(res)
            print(json.dumps(res), flush=True)
        # Across thread counts float32 sums may be ordered differently (PyTorch's CPU kernels
        # split work by thread): counted, reported, not an engine difference.
        across = compare(refs["1"], refs["all"]) if len(refs) == 2 else (0, True)
        shutil.rmtree(root / "in", ignore_errors=True)

    base = results[0]
    voxels = n * int(np.prod(shape))
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}")
    print(f"{n} cases of {shape[0]}x{shape[1]}x{shape[2]} (MNI152-derived), vmunet_tiny random weights, CPU")
    head = f"{'configuration':36s} {'wall s':>7s} {'files/s':>8s} {'x base':>7s}"
    print(f"{head} {'steady f/s':>10s} {'x base':>7s}  same")
    for r in results:
        b = results[2] if r["config"] == "1 thread, --workers 1" else base
        ratio = r["files_per_s"] / b["files_per_s"]
        sratio = r["steady_files_per_s"] / b["steady_files_per_s"]
        same = (
            "arrays+bytes"
            if r["same_bytes"]
            else ("arrays" if not r["voxels_differ"] else f"{r['voxels_differ']} of {voxels} voxels differ")
        )
        print(f"{r['config']:36s} {r['wall_s']:7.1f} {r['files_per_s']:8.3f} {ratio:7.2f} "
              f"{r['steady_files_per_s']:10.3f} {sratio:7.2f}  {same}")  # fmt: skip
    print(f"1 thread against all threads per process: {across[0]} of {voxels} voxels differ")
    if args.json:
        summary = {
            "cases": n,
            "shape": list(shape),
            "results": results,
            "voxels_differ_across_threads": across[0],
        }
        args.json.write_text(json.dumps(summary, indent=2))
    if any(r["voxels_differ"] for r in results):
        raise SystemExit("label maps differ between configurations")


if __name__ == "__main__":
    main()
