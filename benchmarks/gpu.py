"""Selective scan and VM-UNet on a CUDA GPU: time, peak memory and error, per scan backend.

Runs every scan backend that takes CUDA tensors (``cuda`` when mamba-ssm is installed,
``torch`` and ``reference`` always) at VM-UNet's four stage shapes (the same shapes as
``benchmarks/selective_scan.py``), then ``vmunet_small`` at 256x256 (batch 1 and 8) with the
fastest GPU backend present. Times are the median of ``--repeat`` calls after one warm-up call,
each bracketed by ``torch.cuda.synchronize()``; peak memory is ``torch.cuda.max_memory_allocated``
above the inputs; "x ref" is reference time / backend time from the same run. Each scan backend's
stage-4 output and input gradients are also compared with a float64 CPU recurrence (relative
Frobenius error, ``|out - ref| / |ref|``) on fresh random inputs.

Usage:
    python benchmarks/gpu.py [--repeat 5] [--stages 1,2,3,4] [--model-batches 1 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from selective_scan import STAGES as _SCAN_STAGES  # noqa: E402  (this script's folder is on sys.path)
from selective_scan import make_inputs  # noqa: E402

# the scan benchmark's stage shapes, plus stage 0, a tiny shape for dry runs
STAGES = {0: (32, 128), **_SCAN_STAGES}


def _inputs(dim: int, length: int, device, grad: bool, seed: int = 0):
    import torch

    return make_inputs(dim, length, grad, torch.Generator().manual_seed(seed), device)


def _call(ts, backend: str, grad: bool):
    import torch

    from vmunet.ops import selective_scan

    u, delta, A, B, C, D, bias = ts
    if grad:
        for t in ts:
            t.grad = None
        out = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=backend)
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            out = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=backend)
    return out


def _time(fn, repeat: int, device):
    import torch

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()  # warm-up: kernel loads, allocator
    sync()
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
    return statistics.median(times), min(times), max(times), peak


def _rel(a, b) -> float:
    return float((a.double().cpu() - b).norm() / b.norm().clamp_min(1e-300))


def scan_errors(backend: str, device) -> str:
    from vmunet.ops._reference import selective_scan_reference

    dim, L = 64, 300
    ts = _inputs(dim, L, device, grad=True, seed=1)
    out = _call(ts, backend, grad=False)
    gout = _call(ts, backend, grad=True)
    del gout
    grads = [t.grad.double().cpu() for t in ts]
    ref = [t.detach().double().cpu().requires_grad_() for t in ts]
    u, delta, A, B, C, D, bias = ref
    r, _ = selective_scan_reference(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
    r.backward(r.new_ones(r.shape))
    errs = [_rel(out, r.detach())] + [_rel(g, t.grad) for g, t in zip(grads, ref)]
    names = ["out", "du", "ddelta", "dA", "dB", "dC", "dD", "dbias"]
    return "  ".join(f"{n} {e:.1e}" for n, e in zip(names, errs))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--stages", default="1,2,3,4")
    p.add_argument("--model", default="vmunet_small")
    p.add_argument("--model-batches", type=int, nargs="*", default=[1, 8])
    p.add_argument("--device", default="cuda", help="'cpu' only to dry-run this script without a GPU")
    args = p.parse_args()

    import torch

    from vmunet.ops import available_backends

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA device visible to torch", file=sys.stderr)
        return 2
    probe = torch.zeros(1, device=dev)
    backends = [b for b in ("cuda", "torch", "reference") if b in available_backends(probe)]
    card = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU dry run"
    print(
        f"# gpu benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {card}  "
        f"{platform.machine()}  torch {torch.__version__}  CUDA {torch.version.cuda}  "
        f"median of {args.repeat}"
    )
    print(f"# scan backends on {dev.type} tensors: {', '.join(backends)}")
    print("# scan: batch 1, N=16, grouped B/C G=4, softplus + delta_bias, D, no z; float32")
    for b in backends:
        print(f"# error vs float64 CPU recurrence, {b}: {scan_errors(b, dev)}", flush=True)

    cols = ("stage", "dim", "L", "backend", "mode", "median s", "min s", "max s", "x ref", "peak MiB")
    widths = (5, 5, 5, 9, 8, 9, 9, 9, 7, 9)
    print(" ".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    for stage in [int(s) for s in args.stages.split(",")]:
        dim, L = STAGES[stage]
        ref = {}
        for backend in ["reference"] + [b for b in backends if b != "reference"]:
            for mode in ("fwd", "fwd+bwd"):
                grad = mode == "fwd+bwd"
                ts = _inputs(dim, L, dev, grad)
                med, lo, hi, peak = _time(lambda ts=ts, b=backend, g=grad: _call(ts, b, g), args.repeat, dev)
                if backend == "reference":
                    ref[mode] = med
                ratio = f"{ref[mode] / med:.1f}" if mode in ref else "n/a"
                print(
                    f"{stage:>5} {dim:>5} {L:>5} {backend:>9} {mode:>8} {med:>9.4f} {lo:>9.4f} "
                    f"{hi:>9.4f} {ratio:>7} {peak:>9.0f}",
                    flush=True,
                )
                del ts
                if dev.type == "cuda":
                    torch.cuda.empty_cache()

    if args.model_batches:
        import vmunet

        gpu_backend = backends[0]
        model = vmunet.create_model(args.model).to(dev)
        model.set_scan_backend(gpu_backend)
        print(f"# model {args.model} 256x256, scan backend {gpu_backend!r}, float32")
        for batch in args.model_batches:
            x = torch.randn(batch, 3, 256, 256, device=dev)

            def fwd(x=x):
                model.eval()
                with torch.no_grad():
                    model(x)

            def fwd_bwd(x=x):
                model.train()
                model.zero_grad(set_to_none=True)
                model(x).float().mean().backward()

            for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                med, lo, hi, peak = _time(fn, max(2, args.repeat // 2), dev)
                print(
                    f"# model batch {batch:>2} {mode:>8}: median {med:.3f} s (min {lo:.3f}, max {hi:.3f}), "
                    f"peak {peak:.0f} MiB",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
