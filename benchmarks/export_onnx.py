"""ONNX Runtime (CPU) against vmunet's own ``cpu`` backend (numba) in PyTorch, one run, one machine.

A random-weight ``vmunet_small`` checkpoint (1 input channel, 2 classes, 256x256) is exported with
``vmunet.export.export_checkpoint`` (the ``chunked`` scan backend, opset 18, dynamic sizes, checked
against PyTorch), then the same input batch goes through

* PyTorch eager with ``scan_backend="cpu"`` (numba kernels: the automatic CPU choice), under
  ``torch.inference_mode``, and
* PyTorch eager with ``scan_backend="chunked"`` (the formulation the exported graph holds), and
* an ONNX Runtime ``InferenceSession`` (CPUExecutionProvider, graph optimisations on),

both with --threads intra-op threads. Times are the best of --repeat calls after one warm-up call
(wall clock, ``time.perf_counter``); the ratio is PyTorch time / ONNX Runtime time (> 1: ONNX
Runtime is faster). The largest logit difference between the two is printed too.

Usage:
    python benchmarks/export_onnx.py [--quick] [--size 256] [--batch 1] [--threads 2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _best(fn, repeat: int) -> float:
    fn()  # warm-up (numba compile, ORT arena)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 timed calls instead of --repeat")
    ap.add_argument("--arch", default="vmunet_small")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    repeat = 2 if args.quick else args.repeat

    import numpy as np
    import onnxruntime as ort
    import torch

    import vmunet
    from vmunet.export import export_checkpoint
    from vmunet.models import save_checkpoint

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        model = vmunet.create_model(args.arch, in_channels=1, out_channels=2)
        save_checkpoint(
            ckpt, model, args.arch, inference={"input_size": [args.size, args.size], "activation": "softmax"}
        )
        t0 = time.perf_counter()
        res = export_checkpoint(ckpt, Path(tmp) / "model.onnx", "onnx", input_size=[args.size, args.size])
        export_s = time.perf_counter() - t0

        x = torch.randn(args.batch, 1, args.size, args.size, generator=torch.Generator().manual_seed(0))
        net = vmunet.create_model(args.arch, in_channels=1, out_channels=2, scan_backend="cpu")
        net.load_state_dict(model.state_dict())
        net.eval()

        def torch_call():
            with torch.inference_mode():
                return net(x)

        net_chunked = vmunet.create_model(args.arch, in_channels=1, out_channels=2, scan_backend="chunked")
        net_chunked.load_state_dict(model.state_dict())
        net_chunked.eval()

        def chunked_call():
            with torch.inference_mode():
                return net_chunked(x)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(res.path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}

        def ort_call():
            return sess.run(None, feed)[0]

        t_torch = _best(torch_call, repeat)
        t_chunked = _best(chunked_call, repeat)
        t_ort = _best(ort_call, repeat)
        diff = float(np.abs(ort_call() - torch_call().numpy()).max())
        size_mb = res.path.stat().st_size / 2**20

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"threads {args.threads}"
    )
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(
        f"{args.arch} {args.batch}x1x{args.size}x{args.size}: exported in {export_s:.1f} s "
        f"(opset {res.opset}, {size_mb:.1f} MB, export check max rel diff {res.max_rel_diff:.2e})"
    )
    print(f"  PyTorch, cpu (numba) backend : {t_torch * 1e3:9.1f} ms  (best of {repeat})")
    print(
        f"  PyTorch, chunked backend     : {t_chunked * 1e3:9.1f} ms  (best of {repeat}; the exported scan)"
    )
    print(f"  ONNX Runtime, CPU            : {t_ort * 1e3:9.1f} ms  (best of {repeat})")
    print(f"  ratio PyTorch / ONNX Runtime : {t_torch / t_ort:9.2f}x")
    print(f"  max |ONNX Runtime - PyTorch(cpu)| logit difference: {diff:.2e}")


if __name__ == "__main__":
    main()
