"""Segmentation speed on CPU: fast scan backend vs the sequential reference, in one run.

Times ``vmunet.inference.Segmenter`` with ``vmunet_small`` (random weights; 3
input channels as the official Synapse recipe, 9 classes, 224x224 resize, CT
window) on:

* a 512x512 CT-like slice (synthetic), per slice, after one warm-up;
* a 512x512xN CT-like volume (synthetic, N=100 by default) written as NIfTI and
  segmented end to end by ``segment_folder`` (read, slice batches, write, summary).

Each measurement runs in a fresh subprocess so that its peak RSS is its own.
The reference backend is far too slow for a whole volume: it is timed on a few
slices and extrapolated (labelled so). Speed numbers are ratios within this run.

Usage:
    python benchmarks/segment.py                 # full run (minutes on 2 cores)
    python benchmarks/segment.py --slices 20 --ref-slices 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _ct_like(shape, seed=0) -> np.ndarray:
    """Synthetic CT: air outside a soft-tissue ellipse, a few brighter organs and a bone disc (HU, int16)."""
    rng = np.random.default_rng(seed)
    x, y, z = shape
    yy, xx = np.mgrid[0:x, 0:y].astype(np.float32)
    cx, cy = x / 2, y / 2
    body = ((xx - cy) / (0.42 * y)) ** 2 + ((yy - cx) / (0.32 * x)) ** 2 <= 1
    vol = np.full(shape, -1000, np.int16)
    for k in range(z):
        sl = np.where(body, 40, -1000).astype(np.float32)
        for ox, oy, r, hu in [(-0.12, -0.1, 0.09, 60), (0.1, 0.12, 0.05, 150), (0.0, 0.2, 0.04, 700)]:
            rr = r * x * (1 + 0.3 * np.sin(k / 15 + ox * 10))
            blob = (yy - cx - ox * x) ** 2 + (xx - cy - oy * y) ** 2 <= rr**2
            sl[blob] = hu
        sl += rng.normal(0, 15, size=sl.shape).astype(np.float32) * body
        vol[:, :, k] = np.clip(sl, -1024, 3000).astype(np.int16)
    return vol


def _checkpoint(path: Path) -> None:
    import vmunet
    from vmunet.models import save_checkpoint

    model = vmunet.create_model("vmunet_small", in_channels=3, out_channels=9)
    save_checkpoint(
        path,
        model,
        "vmunet_small",
        inference={
            "input_size": [224, 224],
            "resize": True,
            "normalization": {"kind": "window", "min": -125, "max": 275},
            "activation": "softmax",
        },
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _child(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    from vmunet.inference import Segmenter
    from vmunet.ops import resolve_backend

    seg = Segmenter(args.checkpoint, device="cpu", batch_size=args.batch_size, scan_backend=args.backend)
    backend = resolve_backend(args.backend, torch.zeros(1))
    out: dict = {"backend": backend, "threads": torch.get_num_threads()}
    if args.case == "slice":
        sl = _ct_like((512, 512, 1), seed=1)[:, :, 0]
        seg.predict(sl)  # warm-up (compilation, allocator)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            seg.predict(sl)
            times.append(time.perf_counter() - t0)
        out.update(seconds_per_slice=min(times), all=times)
    else:
        vol_path = Path(args.volume)
        sl = _ct_like((512, 512, 1), seed=1)[:, :, 0]
        seg.predict(sl)  # warm-up outside the timing
        rss_before = _peak_rss_mb()
        t0 = time.perf_counter()
        summary = seg.segment_folder([vol_path], Path(args.output), overwrite=True, progress=False)
        dt = time.perf_counter() - t0
        assert summary.n_failed == 0, summary.rows
        out.update(seconds_per_volume=dt, peak_rss_before_mb=rss_before)
    out["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(case, backend, ckpt, extra) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--backend", backend, "--checkpoint", str(ckpt), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=100, help="slices in the synthetic volume")
    ap.add_argument("--ref-slices", type=int, default=1, help="slices timed with the reference backend")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--fast", default="cpu", help="fast backend name (default: cpu)")
    ap.add_argument("--child", choices=("slice", "volume"), help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--volume", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.case = args.child
        _child(args)
        return

    import nibabel as nib
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, shared, no GPU")
    with tempfile.TemporaryDirectory() as td:
        tdp = Path(td)
        ckpt = tdp / "small.pt"
        _checkpoint(ckpt)
        vol = _ct_like((512, 512, args.slices))
        aff = np.diag([0.7, 0.7, 2.5, 1.0])
        nib.save(nib.Nifti1Image(vol, aff), tdp / "ct.nii.gz")
        print(f"synthetic CT-like volume: 512x512x{args.slices} int16 ({vol.nbytes / 2**20:.0f} MiB)")
        del vol
        common = ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]

        fast_slice = _run_child("slice", args.fast, ckpt, common)
        print(
            f"[{fast_slice['backend']}] 512x512 slice: {fast_slice['seconds_per_slice']:.2f} s "
            f"(peak RSS {fast_slice['peak_rss_mb']:.0f} MB)"
        )
        ref_slice = _run_child(
            "slice", "reference", ckpt, ["--batch-size", "1", "--repeats", str(args.ref_slices)]
        )
        print(
            f"[reference] 512x512 slice: {ref_slice['seconds_per_slice']:.2f} s "
            f"(peak RSS {ref_slice['peak_rss_mb']:.0f} MB)"
        )
        ratio = ref_slice["seconds_per_slice"] / fast_slice["seconds_per_slice"]
        print(f"slice speed-up fast/reference: {ratio:.1f}x")

        vol_res = _run_child(
            "volume",
            args.fast,
            ckpt,
            common + ["--volume", str(tdp / "ct.nii.gz"), "--output", str(tdp / "out")],
        )
        per_slice = vol_res["seconds_per_volume"] / args.slices
        print(
            f"[{vol_res['backend']}] 512x512x{args.slices} volume end to end: "
            f"{vol_res['seconds_per_volume']:.1f} s ({per_slice:.2f} s/slice), "
            f"peak RSS {vol_res['peak_rss_mb']:.0f} MB (after warm-up {vol_res['peak_rss_before_mb']:.0f} MB)"
        )
        ref_vol = ref_slice["seconds_per_slice"] * args.slices
        print(
            f"[reference] 512x512x{args.slices} volume EXTRAPOLATED from {args.ref_slices} slice(s): "
            f"{ref_vol:.0f} s ({ref_vol / vol_res['seconds_per_volume']:.1f}x the fast run)"
        )


if __name__ == "__main__":
    main()
