"""Regenerate tests/data_files/model_vmunet_tiny_logits.pt (stored logits of the tiny VM-UNet).

The tiny model is built from a fixed seed and run on a fixed input with the sequential
``reference`` scan backend; the test (tests/models/test_vmunet.py::test_stored_logits_regression)
rebuilds it and compares with the reference and the automatic (fast) backend. Run this only
when a change to the network or its initialisation is intended, and say so in the commit.

Usage:
    python scripts/make_model_regression.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import vmunet
from vmunet.utils.io import atomic_path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data_files" / "model_vmunet_tiny_logits.pt"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    seed, kwargs = 2024, {"in_channels": 3, "out_channels": 2}
    torch.manual_seed(seed)
    model = vmunet.create_model("vmunet_tiny", **kwargs).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        logits = model.set_scan_backend("reference")(x)
    payload = {
        "seed": seed,
        "kwargs": kwargs,
        "input": x,
        "logits": logits,
        "backend": "reference",
        "torch_version": str(torch.__version__),
        "vmunet_version": vmunet.__version__,
    }
    with atomic_path(args.output) as tmp:
        torch.save(payload, tmp)
    print(f"wrote {args.output}: logits {tuple(logits.shape)}, mean {logits.mean():.6f}")  # noqa: T201


if __name__ == "__main__":
    main()
