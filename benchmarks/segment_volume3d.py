"""Whole-volume segmentation time on the CPU: a 512 x 512 x 100 CT-sized volume through the 3-D path.

The volume is SYNTHETIC (random HU values with a few bright blobs), 0.7 x 0.7 x 2.5 mm like an
abdominal CT; only its size matters here. The model is ``vmunet3d_tiny`` (``--model`` to change;
``vmunet3d_small`` is the recipe's) with random weights, 9 output classes, trained-spacing
1.5 x 1.5 x 2.0 mm and a 96^3 ROI (the synapse3d recipe), run by
``vmunet.inference.Segmenter``: resample to 1.5 x 1.5 x 2.0 mm (239 x 239 x 125), gaussian
sliding window (``--overlap``), probabilities resampled back onto the 512 x 512 x 100 grid, argmax.

Same-run baseline: the 2-D ``vmunet_tiny`` segmenting the same volume slice by slice (each slice
resized to 224 x 224, the synapse recipe), so the ratio says what the native 3-D path costs
against today's slice-wise one on this machine.

    python benchmarks/segment_volume3d.py [--model vmunet3d_tiny] [--overlap 0.5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vmunet  # noqa: E402
from vmunet.data import ImageData  # noqa: E402
from vmunet.inference import Segmenter  # noqa: E402
from vmunet.models import save_checkpoint  # noqa: E402

NAMES = [
    "background",
    "aorta",
    "gallbladder",
    "kidney_left",
    "kidney_right",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
]


def _volume(shape=(512, 512, 100)) -> ImageData:
    rng = np.random.default_rng(0)
    vol = rng.normal(-100, 200, shape).astype(np.float32)
    for _ in range(6):
        c = [rng.integers(60, s - 60) if s > 120 else s // 2 for s in shape]
        vol[c[0] - 40 : c[0] + 40, c[1] - 40 : c[1] + 40, max(0, c[2] - 15) : c[2] + 15] += 300
    return ImageData(vol, spacing=(0.7, 0.7, 2.5), format="nifti")


def _ckpt(folder: Path, name: str, spatial_dims: int) -> Path:
    model = vmunet.create_model(name, in_channels=1, out_channels=9)
    inf = {
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "out_channels": 9,
        "normalization": {"kind": "window", "min": -175, "max": 250},
        "class_names": NAMES,
        "activation": "softmax",
    }
    if spatial_dims == 3:
        inf.update({"input_size": [96, 96, 96], "spacing": [1.5, 1.5, 2.0], "resize": False})
    else:
        inf.update({"input_size": [224, 224], "resize": True})
    return save_checkpoint(folder / f"{name}.pt", model, name, inference=inf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vmunet3d_tiny")
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    img = _volume()
    with tempfile.TemporaryDirectory() as tmp:
        ck3 = _ckpt(Path(tmp), args.model, 3)
        seg3 = Segmenter(ck3, device="cpu", overlap=args.overlap, batch_size=args.batch_size)
        small = ImageData(np.zeros((96, 96, 96), np.float32), spacing=(1.5, 1.5, 2.0), format="nifti")
        seg3.predict(small)  # warm-up: kernel compilation, thread pools
        t0 = time.perf_counter()
        pred = seg3.predict(img)
        t3 = time.perf_counter() - t0
        assert pred.labels.shape == img.array.shape
        t2 = float("nan")
        if not args.no_baseline:
            ck2 = _ckpt(Path(tmp), "vmunet_tiny", 2)
            seg2 = Segmenter(ck2, device="cpu", batch_size=8)
            seg2.predict(
                ImageData(np.zeros((64, 64, 2), np.float32), spacing=(1.0, 1.0, 1.0), format="nifti")
            )
            t0 = time.perf_counter()
            seg2.predict(img)
            t2 = time.perf_counter() - t0
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {args.threads}")
    grid = "1.5 x 1.5 x 2.0 mm grid, ROI 96^3"
    print(f"volume 512 x 512 x 100 at 0.7 x 0.7 x 2.5 mm -> {grid}, overlap {args.overlap}")
    print(f"3-D {args.model:16s} whole volume: {t3:8.1f} s")
    if not args.no_baseline:
        ratio = t3 / t2
        print(f"2-D vmunet_tiny slice-wise (100 at 224^2): {t2:8.1f} s  (3-D / 2-D time {ratio:.2f})")


if __name__ == "__main__":
    main()
