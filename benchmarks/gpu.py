"""Selective scan, cross-scan and VM-UNet training on a CUDA GPU: time, peak memory, error, throughput.

Sections, each printed as it finishes (a failing section prints its error and the run goes on):

1. scan errors: every scan backend that takes CUDA tensors (``triton``; ``cuda`` when mamba-ssm's
   kernel passes its check call; ``torch``; ``reference``) against a float64 CPU recurrence on fresh
   random inputs (relative Frobenius error ``|x - ref| / |ref|`` of the output and every gradient).
2. scan table: each backend at VM-UNet's four stage shapes (``benchmarks/selective_scan.py``; batch 1,
   N = 16, grouped B/C G = 4, softplus + delta_bias, D, float32), forward and forward + backward.
   "x ref" and "x torch" are the reference's and the torch backend's time over this row's, same run.
3. cross-scan / cross-merge: the Triton kernels against today's torch ops (flip / transpose / cat),
   at the SS2D shapes of the four stages (batch 8, channels = dim / 4).
4. model: ``vmunet_small`` forward and forward + backward at 256x256, float32, the automatic backend.
5. training throughput: whole optimizer steps (zero_grad, forward under bf16 autocast, BCE loss,
   backward, AdamW step) of ``vmunet_small`` at 256x256 and 224x224, batch 32, channels_last, with
   ``torch.compile`` off and on; images per second over the timed steps and peak memory
   (``torch.cuda.max_memory_allocated`` during them). "first s" is the first step (compilation).
With ``--quick`` (or ``--tests``) the cuda-marked tests (``pytest -m cuda tests/ops tests/models``)
run first; ``--quick`` also skips training configurations that would begin after 300 s.

Times are medians of ``--repeat`` synchronised calls after a warm-up call; peak memory of the scan
rows is ``torch.cuda.max_memory_allocated`` above the inputs.

Usage:
    python benchmarks/gpu.py --quick          # everything, sized to finish in about 6 minutes
    python benchmarks/gpu.py [--repeat 5] [--stages 1,2,3,4] [--train-sizes 256 224] [--compile off on]
    python benchmarks/gpu.py --device cpu --dry-run   # tiny sizes on the CPU: checks the script itself
    python benchmarks/gpu.py --device cpu --dry-run --compile off on --compile-backend aot_eager
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from selective_scan import STAGES as _SCAN_STAGES  # noqa: E402  (this script's folder is on sys.path)
from selective_scan import make_inputs  # noqa: E402

# the scan benchmark's stage shapes, plus stage 0, a tiny shape for dry runs
STAGES = {0: (32, 144), **_SCAN_STAGES}


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


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, repeat: int, device):
    import torch

    cuda = device.type == "cuda"
    fn()  # warm-up: kernel compilation and loads, allocator
    _sync(device)
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
    return statistics.median(times), min(times), max(times), peak


def _rel(a, b) -> float:
    return float((a.double().cpu() - b).norm() / b.norm().clamp_min(1e-300))


def scan_errors(backend: str, device, dim: int = 64, length: int = 300) -> str:
    from vmunet.ops._reference import selective_scan_reference

    ts = _inputs(dim, length, device, grad=True, seed=1)
    out = _call(ts, backend, grad=False)
    _call(ts, backend, grad=True)
    grads = [t.grad.double().cpu() for t in ts]
    ref = [t.detach().double().cpu().requires_grad_() for t in ts]
    u, delta, A, B, C, D, bias = ref
    r, _ = selective_scan_reference(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
    r.backward(r.new_ones(r.shape))
    errs = [_rel(out, r.detach())] + [_rel(g, t.grad) for g, t in zip(grads, ref)]
    names = ["out", "du", "ddelta", "dA", "dB", "dC", "dD", "dbias"]
    return "  ".join(f"{n} {e:.1e}" for n, e in zip(names, errs)) + f"  (max {max(errs):.1e})"


def _section(title: str, fn, *args) -> None:
    print(f"\n## {title}", flush=True)
    t0 = time.perf_counter()
    try:
        fn(*args)
    except Exception:  # one failing section must not cost the rest of a lent GPU's time
        print(f"# section failed:\n{traceback.format_exc()}", flush=True)
    print(f"# ({time.perf_counter() - t0:.0f} s)", flush=True)


def scan_table(args, dev, backends) -> None:
    import torch

    cols = (
        "stage",
        "dim",
        "L",
        "backend",
        "mode",
        "median s",
        "min s",
        "max s",
        "x ref",
        "x torch",
        "peak MiB",
    )
    widths = (5, 5, 5, 9, 8, 9, 9, 9, 7, 7, 9)
    print(" ".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    order = ["reference", "torch"] + [b for b in backends if b not in ("reference", "torch")]
    for stage in args.stages:
        dim, L = STAGES[stage]
        base: dict = {}
        for backend in [b for b in order if b in backends]:
            for mode in ("fwd", "fwd+bwd"):
                grad = mode == "fwd+bwd"
                ts = _inputs(dim, L, dev, grad)
                med, lo, hi, peak = _time(lambda ts=ts, b=backend, g=grad: _call(ts, b, g), args.repeat, dev)
                base.setdefault((backend, mode), med)
                rr = base.get(("reference", mode))
                rt = base.get(("torch", mode))
                x_ref = f"{rr / med:.1f}" if rr else "n/a"
                x_torch = f"{rt / med:.1f}" if rt else "n/a"
                print(
                    f"{stage:>5} {dim:>5} {L:>5} {backend:>9} {mode:>8} {med:>9.5f} {lo:>9.5f} "
                    f"{hi:>9.5f} {x_ref:>7} {x_torch:>7} {peak:>9.0f}",
                    flush=True,
                )
                del ts
                if dev.type == "cuda":
                    torch.cuda.empty_cache()


def cross_table(args, dev) -> None:
    import torch

    from vmunet.ops import _backends, cross_merge_2d, cross_scan_2d

    kernels = _backends.triton_cross_kernels() if dev.type == "cuda" else None
    impls = [("torch", None)] + ([("triton", kernels)] if kernels is not None else [])
    if kernels is None:
        print("# no Triton cross-scan for these tensors (CPU, or triton missing): torch rows only")
    print(
        f"{'stage':>5} {'B':>3} {'C':>5} {'HxW':>9} {'impl':>7} {'mode':>13} {'median s':>10} {'x torch':>8}"
    )
    saved = _backends._triton_cross_cache
    try:
        for stage in args.stages:
            dim, L = STAGES[stage]
            side = int(round(L**0.5))
            b, c = args.cross_batch, dim // 4
            x = torch.randn(b, c, side, side, device=dev)
            y = torch.randn(b, 4, c, side * side, device=dev)
            xg = x.clone().requires_grad_()
            base = {}
            for name, mod in impls:
                # today's torch ops: cross_scan.py's own code path, with the Triton dispatch switched off
                _backends._triton_cross_cache = mod

                def scan_merge_bwd(xg=xg, side=side):
                    xg.grad = None
                    cross_merge_2d(cross_scan_2d(xg) * 1.5, side, side).sum().backward()

                runs = (
                    ("scan", lambda x=x: cross_scan_2d(x)),
                    ("merge", lambda y=y, side=side: cross_merge_2d(y, side, side)),
                    ("scan+merge+bwd", scan_merge_bwd),
                )
                for mode, fn in runs:
                    med = _time(fn, args.repeat, dev)[0]
                    base.setdefault(mode, med)
                    print(
                        f"{stage:>5} {b:>3} {c:>5} {f'{side}x{side}':>9} {name:>7} {mode:>13} {med:>10.6f} "
                        f"{base[mode] / med:>8.1f}",
                        flush=True,
                    )
    finally:
        _backends._triton_cross_cache = saved


def model_table(args, dev, backend) -> None:
    import torch

    import vmunet

    model = vmunet.create_model(args.model).to(dev)
    model.set_scan_backend(backend)
    print(f"# model {args.model} {args.size}x{args.size}, scan backend {backend!r}, float32")
    for batch in args.model_batches:
        x = torch.randn(batch, 3, args.size, args.size, device=dev)

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


def train_throughput(args, dev, backend) -> None:
    import torch
    import torch.nn.functional as F

    import vmunet

    amp = torch.bfloat16
    print(
        f"# {args.model}, batch {args.train_batch}, bf16 autocast, AdamW, scan backend {backend!r}; "
        f"{args.train_warmup} warm-up + {args.train_steps} timed steps"
    )
    print(
        f"{'size':>5} {'compile':>7} {'ch_last':>7} {'first s':>8} {'step s':>8} {'img/s':>8} {'peak MiB':>9}"
    )
    for size in args.train_sizes:
        for compiled in args.compile:
            for channels_last in args.channels_last:
                spent = time.perf_counter() - args.t_start
                if args.budget_s and spent > args.budget_s:
                    state = "on" if compiled else "off"
                    print(f"# size {size}, compile {state}: skipped ({spent:.0f} s > {args.budget_s:.0f} s)")
                    continue
                torch.manual_seed(0)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                model = vmunet.create_model(args.model).to(dev).set_scan_backend(backend)
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                model = model.to(memory_format=fmt).train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                x = torch.randn(args.train_batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
                target = (torch.rand(args.train_batch, 1, size, size, device=dev) > 0.5).float()
                if compiled:  # a fresh compile per configuration; static shapes (one size per compile)
                    torch._dynamo.reset()
                fwd = torch.compile(model, dynamic=False, backend=args.compile_backend) if compiled else model

                def step(fwd=fwd, opt=opt, x=x, target=target):
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(dev.type, dtype=amp):
                        out = fwd(x)
                    loss = F.binary_cross_entropy_with_logits(out.float(), target)
                    loss.backward()
                    opt.step()

                _sync(dev)
                t0 = time.perf_counter()
                step()
                _sync(dev)
                first = time.perf_counter() - t0
                for _ in range(args.train_warmup - 1):
                    step()
                _sync(dev)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                for _ in range(args.train_steps):
                    step()
                _sync(dev)
                per = (time.perf_counter() - t0) / args.train_steps
                peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
                print(
                    f"{size:>5} {'on' if compiled else 'off':>7} {'on' if channels_last else 'off':>7} "
                    f"{first:>8.2f} {per:>8.4f} {args.train_batch / per:>8.1f} {peak:>9.0f}",
                    flush=True,
                )
                del model, opt, fwd, x, target, step


def cuda_tests(_args) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/ops",
        "tests/models",
    ]
    print("# " + " ".join(cmd[1:]), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    lines = (res.stdout + res.stderr).strip().splitlines()
    fails = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    print("\n".join(fails + lines[-1:]) + f"\n# pytest exit code {res.returncode}", flush=True)


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="everything, sized to about 6 minutes on one GPU")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny sizes, to check the script (use with --device cpu)"
    )
    p.add_argument("--device", default="cuda", help="'cpu' only to dry-run this script without a GPU")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--stages", default="1,2,3,4")
    p.add_argument("--model", default="vmunet_small")
    p.add_argument("--size", type=int, default=256, help="image size of the model section")
    p.add_argument("--model-batches", type=int, nargs="*", default=[1, 8])
    p.add_argument("--cross-batch", type=int, default=8)
    p.add_argument("--train-sizes", type=int, nargs="*", default=[256, 224])
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--compile", nargs="*", default=["off", "on"], choices=["off", "on"])
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (aot_eager: quick check)"
    )
    p.add_argument("--channels-last", nargs="*", default=["on"], choices=["off", "on"])
    p.add_argument("--tests", action="store_true", help="also run the cuda-marked tests (on with --quick)")
    p.add_argument("--budget-s", type=float, default=0, help="skip training configurations begun after this")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat = min(args.repeat, 3)
        args.model_batches = [8]
        args.train_warmup, args.train_steps = 2, 5
        args.tests = True
        args.budget_s = args.budget_s or 300
    if args.dry_run:
        args.repeat, args.stages = 2, "0"
        args.model, args.size, args.model_batches = "vmunet_tiny", 64, [1]
        args.cross_batch, args.train_sizes, args.train_batch = 1, [64, 32], 2
        args.train_warmup, args.train_steps = 1, 1
        if "--compile" not in (argv if argv is not None else sys.argv):
            args.compile = ["off"]  # compiling on a small CPU takes minutes; ask for it with --compile
    args.stages = [int(s) for s in str(args.stages).split(",")]
    args.compile = [c == "on" for c in args.compile]
    args.channels_last = [c == "on" for c in args.channels_last]
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    args.t_start = t_start = time.perf_counter()

    import torch

    from vmunet.ops import available_backends

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA device visible to torch", file=sys.stderr)
        return 2
    probe = torch.zeros(1, device=dev)
    backends = [b for b in ("triton", "cuda", "torch", "reference") if b in available_backends(probe)]
    if dev.type == "cpu":
        backends = [b for b in ("cpu", "torch", "reference") if b in available_backends(probe)]
    card = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU dry run"
    print(
        f"# gpu benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {card}  "
        f"{platform.machine()}  torch {torch.__version__}  CUDA {torch.version.cuda}  "
        f"median of {args.repeat}{'  --quick' if args.quick else ''}"
    )
    try:
        import triton

        print(f"# triton {triton.__version__}")
    except ImportError:
        print("# triton not installed")
    print(f"# scan backends on {dev.type} tensors: {', '.join(backends)}")
    fastest = backends[0]

    def errors():
        print(
            "# scan: batch 1, dim 64, L 300, N=16, grouped B/C G=4, softplus + delta_bias, D, no z; float32"
        )
        for b in backends:
            print(f"# error vs float64 CPU recurrence, {b}: {scan_errors(b, dev)}", flush=True)

    if args.tests:  # first: the correctness checks must not be the part a time limit cuts off
        _section("cuda-marked tests", cuda_tests, args)
    _section("scan errors", errors)
    _section("selective scan (batch 1, N=16, grouped B/C G=4, softplus + delta_bias, D; float32)", scan_table,
             args, dev, backends)  # fmt: skip
    _section("cross-scan / cross-merge (float32)", cross_table, args, dev)
    if args.model_batches:
        _section("model", model_table, args, dev, fastest)
    if args.train_sizes:
        _section("training throughput", train_throughput, args, dev, fastest)
    print(f"\n# total {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
