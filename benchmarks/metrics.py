"""HD95 on a Synapse-sized pair: vmunet vs medpy ``hd95`` vs MONAI ``compute_hausdorff_distance``.

One synthetic CT-sized pair (default 512 x 512 x 150 voxels, spacing 0.76 x 0.76 x 3.0 mm)
with eight organ-like blobs (ellipsoids with low-frequency boundary noise; the
prediction is a jittered, differently-perturbed copy). Every library scores the
same masks once; the script prints the times, the speed-up ratios and the
largest relative difference under the matching convention:

* vmunet ``mode="pooled"`` against medpy ``metric.binary.hd95(pred == c, label == c, voxelspacing)``;
* vmunet ``mode="max"`` against MONAI ``compute_hausdorff_distance(one_hot_pred, one_hot_label,
  percentile=95, spacing=...)`` (one-hot tensors are built before the clock starts).

Usage:
    python benchmarks/metrics.py                 # full size (medpy alone takes minutes)
    python benchmarks/metrics.py --shape 256 256 80
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
from scipy import ndimage as ndi

# (centre as a fraction of the volume, radii in mm) of eight abdominal organs, in Synapse label order
ORGANS = [
    ((0.50, 0.56, 0.50), (12, 12, 150)),  # 1 aorta: a long tube
    ((0.40, 0.42, 0.55), (18, 15, 35)),  # 2 gallbladder
    ((0.66, 0.62, 0.45), (30, 25, 50)),  # 3 left kidney
    ((0.33, 0.62, 0.45), (30, 25, 50)),  # 4 right kidney
    ((0.30, 0.40, 0.66), (95, 75, 70)),  # 5 liver
    ((0.55, 0.50, 0.45), (55, 14, 18)),  # 6 pancreas
    ((0.73, 0.45, 0.66), (45, 32, 45)),  # 7 spleen
    ((0.62, 0.34, 0.62), (65, 45, 45)),  # 8 stomach
]


def make_pair(shape, spacing, seed=0):
    """A (prediction, label) pair of uint8 label maps with eight irregular organ-like blobs."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    sp = np.asarray(spacing, dtype=float)
    size = np.asarray(shape)
    # large organs first, so that the small ones drawn over them stay visible
    order = sorted(range(len(ORGANS)), key=lambda i: -float(np.prod(ORGANS[i][1])))
    for c, (centre, radii_mm) in ((i + 1, ORGANS[i]) for i in order):
        for out, jitter in ((label, 0.0), (pred, 1.0)):
            ctr = np.asarray(centre) * size + jitter * rng.normal(0, 1.5, 3)
            r = np.asarray(radii_mm) / sp * (1 + jitter * rng.normal(0, 0.04, 3))
            r = np.minimum(r, size / 2.5)
            lo = np.maximum(np.floor(ctr - 1.3 * r).astype(int), 0)
            hi = np.minimum(np.ceil(ctr + 1.3 * r).astype(int) + 1, size)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            grids = np.ogrid[box]
            q = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, ctr, r))
            ext = hi - lo
            coarse = tuple(max(2, int(e) // 8) for e in ext)
            noise = ndi.zoom(rng.standard_normal(coarse), [e / k for e, k in zip(ext, coarse)], order=1)
            noise = noise[: ext[0], : ext[1], : ext[2]]
            noise = np.pad(noise, [(0, e - n) for e, n in zip(ext, noise.shape)], mode="edge")
            view = out[box]
            view[q + 0.25 * noise < 1] = c
    return pred, label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 150))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.76, 0.76, 3.0))
    ap.add_argument("--skip-medpy", action="store_true", help="medpy needs minutes at full size")
    args = ap.parse_args()

    import torch
    from monai.metrics import compute_hausdorff_distance

    from vmunet.metrics import compute_per_class

    shape, spacing = tuple(args.shape), tuple(args.spacing)
    classes = list(range(1, 9))
    t0 = time.perf_counter()
    pred, label = make_pair(shape, spacing)
    print(f"pair {shape} spacing {spacing}: built in {time.perf_counter() - t0:.1f} s")
    print("organ voxels (label):", [int(np.count_nonzero(label == c)) for c in classes])
    print(f"machine: {platform.machine()} {platform.processor()}; torch threads {torch.get_num_threads()}")

    # warm-up on a tiny pair (imports, first-call costs), not timed
    compute_per_class(pred[:40, :40, :10], label[:40, :40, :10], classes, ("hd95",), spacing)

    t0 = time.perf_counter()
    ours_pooled = compute_per_class(pred, label, classes, ("hd95",), spacing, hd95_mode="pooled")["hd95"]
    t_ours_pooled = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_max = compute_per_class(pred, label, classes, ("hd95",), spacing, hd95_mode="max")["hd95"]
    t_ours_max = time.perf_counter() - t0
    print(f"vmunet pooled: {t_ours_pooled:8.2f} s  {np.round(ours_pooled, 4).tolist()}")
    print(f"vmunet max:    {t_ours_max:8.2f} s  {np.round(ours_max, 4).tolist()}")

    def onehot(x: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(x).long(), 9).permute(3, 0, 1, 2)[None].float()

    onehot_p, onehot_l = onehot(pred), onehot(label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        monai = compute_hausdorff_distance(onehot_p, onehot_l, percentile=95, spacing=spacing)[0].numpy()
        t_monai = time.perf_counter() - t0
    del onehot_p, onehot_l
    rel_monai = np.max(np.abs(ours_max - monai) / np.abs(monai))
    print(f"MONAI (max):   {t_monai:8.2f} s  {np.round(monai, 4).tolist()}")
    print(f"  vmunet max is {t_monai / t_ours_max:.1f}x faster than MONAI; max relative diff {rel_monai:.2e}")

    if not args.skip_medpy:
        from medpy.metric.binary import hd95

        t0 = time.perf_counter()
        medpy = np.array([hd95(pred == c, label == c, voxelspacing=spacing) for c in classes])
        t_medpy = time.perf_counter() - t0
        rel_medpy = np.max(np.abs(ours_pooled - medpy) / np.abs(medpy))
        print(f"medpy (pooled):{t_medpy:8.2f} s  {np.round(medpy, 4).tolist()}")
        print(
            f"  vmunet pooled is {t_medpy / t_ours_pooled:.1f}x faster than medpy; "
            f"max relative difference {rel_medpy:.2e}"
        )


if __name__ == "__main__":
    main()
