"""``vmunet demo``: the end-to-end job on bundled data.

Until the training issue lands this is a smoke job: build the tiny model, run
one forward/backward pass on CPU and report which selective-scan backend ran.
"""

from __future__ import annotations

import argparse
import time

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the bundled demo (smoke job: forward/backward of a tiny model)",
        description="Build a tiny VM-UNet, run forward and backward on CPU, print the scan backend.",
        epilog="example:\n  vmunet demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import vmunet
    from vmunet.ops import resolve_backend

    model = vmunet.create_model("vmunet_tiny", in_channels=3, out_channels=1)
    x = torch.randn(2, 3, args.size, args.size)
    backend = resolve_backend(None, x)
    t0 = time.perf_counter()
    logits = model(x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    loss.backward()
    dt = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vmunet {vmunet.__version__}: vmunet_tiny ({n_params:,} parameters)")
    print(f"input {tuple(x.shape)} -> logits {tuple(logits.shape)}, loss {loss.item():.4f}")
    print(f"selective-scan backend: {backend}")
    print(f"forward + backward on CPU: {dt:.2f} s")
    return 0
