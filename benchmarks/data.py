"""Data pipeline throughput: prepared layout vs raw files (one worker, same augmentation).

All data here is SYNTHETIC (random lesion-like JPEGs, random CT-like volumes) generated
in a temporary folder; it only stands in for the ISIC / Synapse file formats and sizes.

    python benchmarks/data.py [--n 120] [--size 768x576]

Prints samples/s for:
  ISIC: raw JPEG + PNG decode -> isic recipe (256)   vs  prepared memmap -> isic recipe (256)
  Synapse slices: raw .nii.gz volumes (LRU cache, shuffled) vs prepared memmap (shuffled),
  synapse recipe (224)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vmunet.data.augment import build_transforms  # noqa: E402
from vmunet.data.datasets import VolumeSliceDataset, VolumeSource, build_dataset  # noqa: E402
from vmunet.data.demo import _lesion_sample  # noqa: E402
from vmunet.data.io import write_image  # noqa: E402
from vmunet.data.prepare import prepare_dataset  # noqa: E402


def rate(ds, n_items: int, shuffle: bool, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(ds)) if shuffle else np.arange(len(ds))
    order = order[:n_items]
    ds[int(order[0])]  # warm-up (opens files / memmaps)
    t0 = time.perf_counter()
    for i in order:
        ds[int(i)]
    return len(order) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=120, help="synthetic ISIC-like images")
    ap.add_argument("--size", default="768x576", help="WxH of the synthetic JPEGs")
    ap.add_argument("--volumes", type=int, default=3, help="synthetic CT volumes (512x512xZ)")
    ap.add_argument("--slices", type=int, default=40, help="slices per volume")
    args = ap.parse_args()
    torch.set_num_threads(1)
    w, h = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ---------------- ISIC-like (synthetic) ----------------
        raw = tmp / "isic_raw"
        for i in range(args.n):
            img, mask = _lesion_sample(rng, 256)
            big = np.asarray(
                __import__("PIL.Image", fromlist=["Image"]).fromarray(img).resize((w, h))
            )  # typical ISIC resolution
            bigm = (
                np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(mask).resize((w, h))) > 127
            )
            write_image(raw / "train" / "images" / f"ISIC_{i:07d}.jpg", big)
            write_image(
                raw / "train" / "masks" / f"ISIC_{i:07d}_segmentation.png", bigm.astype(np.uint8) * 255
            )
            if i < 3:
                for s in ("val", "test"):
                    write_image(raw / s / "images" / f"ISIC_{i:07d}.jpg", big)
                    write_image(
                        raw / s / "masks" / f"ISIC_{i:07d}_segmentation.png", bigm.astype(np.uint8) * 255
                    )
        t0 = time.perf_counter()
        prepare_dataset("isic2017", raw, tmp / "isic_prep", size=256, check_counts=False, workers=1)
        t_prep = time.perf_counter() - t0
        tf = build_transforms("isic", 256, train=True, normalization={"kind": "imagenet"}, seed=0)
        raw_ds = build_dataset("isic", raw, "train", tf)
        prep_ds = build_dataset("isic2017", tmp / "isic_prep", "train", tf)
        r_raw = rate(raw_ds, args.n, shuffle=True)
        r_prep = rate(prep_ds, args.n, shuffle=True)
        print(f"ISIC (synthetic {w}x{h} JPEG, {args.n} images), isic recipe 256, 1 worker:")
        print(f"  raw JPEG/PNG decode : {r_raw:8.1f} samples/s")
        print(f"  prepared memmap     : {r_prep:8.1f} samples/s   ratio {r_prep / r_raw:5.1f}x")
        print(f"  one-off prepare     : {t_prep:8.1f} s for {args.n + 6} pairs")

        # ---------------- Synapse-like slices (synthetic) ----------------
        braw = tmp / "btcv" / "img"
        braw.mkdir(parents=True)
        (tmp / "btcv" / "label").mkdir()
        srcs = []
        for v in range(args.volumes):
            hu = rng.integers(-1000, 1500, (512, 512, args.slices)).astype(np.int16)
            lab = rng.integers(0, 14, (512, 512, args.slices)).astype(np.uint8)
            aff = np.diag([0.7, 0.7, 3.0, 1.0])
            ip, lp = braw / f"img{v:04d}.nii.gz", tmp / "btcv" / "label" / f"label{v:04d}.nii.gz"
            nib.save(nib.Nifti1Image(hu, aff), str(ip))
            nib.save(nib.Nifti1Image(lab, aff), str(lp))
            srcs.append(VolumeSource(ip, lp, f"case{v:04d}"))
            np.save(
                tmp / f"case{v:04d}_image.npy",
                np.ascontiguousarray(np.moveaxis(np.clip(hu, -125, 275), -1, 0)),
            )
            np.save(tmp / f"case{v:04d}_label.npy", np.ascontiguousarray(np.moveaxis(lab, -1, 0)))
        prep_srcs = [
            VolumeSource(
                tmp / f"case{v:04d}_image.npy", tmp / f"case{v:04d}_label.npy", f"case{v:04d}", zfirst=True
            )
            for v in range(args.volumes)
        ]
        norm = {"kind": "window", "min": -125, "max": 275}
        tf = build_transforms("synapse", 224, train=True, normalization=norm, seed=0)
        raw_sl = VolumeSliceDataset(srcs, axis=2, transform=tf, label_mode="synapse13", cache_size=2)
        prep_sl = VolumeSliceDataset(prep_srcs, axis=2, transform=tf, label_mode="index", cache_size=2)
        n = min(len(raw_sl), 80)
        r_raw_s = rate(raw_sl, n, shuffle=True)
        r_prep_s = rate(prep_sl, n, shuffle=True)
        r_raw_seq = rate(
            VolumeSliceDataset(srcs, axis=2, transform=tf, label_mode="synapse13"), n, shuffle=False
        )
        print(
            f"Synapse-like slices (synthetic 512x512x{args.slices} CT, {args.volumes} volumes), "
            "synapse recipe 224:"
        )
        print(f"  raw .nii.gz, LRU cache (2), shuffled : {r_raw_s:8.1f} samples/s")
        print(f"  raw .nii.gz, LRU cache, in order     : {r_raw_seq:8.1f} samples/s")
        print(
            f"  prepared memmap, shuffled            : {r_prep_s:8.1f} samples/s"
            f"   ratio {r_prep_s / r_raw_s:5.1f}x"
        )


if __name__ == "__main__":
    main()
