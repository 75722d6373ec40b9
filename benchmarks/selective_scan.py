"""Selective-scan benchmark: every available backend against the sequential reference, one run.

Shapes are VM-UNet's four encoder stages at 256x256 input with the default width (batch 1,
4 scan directions x channels = dim, L = H*W, N = 16, B/C grouped by direction G = 4, softplus and
delta_bias, D; no z), as SS2D calls the scan.

Each (backend, shape, mode) runs in a fresh subprocess so that peak memory can be read from the
process's peak resident set size: peak = ru_maxrss after the measured call minus the RSS just
before it (inputs already allocated, kernels already loaded by a tiny warm-up call). Times are the
best of --repeat calls (wall clock, time.perf_counter) with torch and numba limited to --threads
threads; "cpu s" is the best process CPU time (time.process_time, all threads) of those calls, which
is less disturbed than wall time by other jobs on a shared machine. "fwd" runs under
torch.no_grad(); "fwd+bwd" runs forward and backward with every input requiring grad. Ratios
are reference time / backend time, measured in the same run.

Usage:
    python benchmarks/selective_scan.py [--threads 2] [--repeat 3] [--stages 1,2,3,4]
                                        [--backends cpu,torch] [--skip-reference-backward]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

STAGES = {1: (768, 4096), 2: (1536, 1024), 3: (3072, 256), 4: (6144, 64)}
N_STATE = 16
GROUPS = 4


def make_inputs(dim: int, length: int, grad: bool, generator, device="cpu") -> list:
    """[u, delta, A, B, C, D, delta_bias] at one shape, initialised as VMamba does (A = -(1..N), S4D
    real; delta_bias = softplus^-1 of dt in [0.001, 0.1]); float32, requiring grad when ``grad``."""
    import torch

    g = generator
    u = torch.randn(1, dim, length, generator=g)
    delta = torch.randn(1, dim, length, generator=g) * 0.5
    A = -torch.arange(1, N_STATE + 1, dtype=torch.float32).repeat(dim, 1)
    B = torch.randn(1, GROUPS, N_STATE, length, generator=g)
    C = torch.randn(1, GROUPS, N_STATE, length, generator=g)
    D = torch.ones(dim)
    dt = torch.rand(dim, generator=g) * 0.099 + 0.001
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus, as mamba's dt init
    ts = [t.to(device) for t in (u, delta, A, B, C, D, bias)]
    return [t.requires_grad_() for t in ts] if grad else ts


def worker(backend: str, stage: int, mode: str, repeat: int, threads: int) -> dict:
    import resource

    import psutil
    import torch

    torch.set_num_threads(threads)
    from vmunet.ops import available_backends, selective_scan

    if backend == "cpu":
        import numba

        numba.set_num_threads(threads)
    dim, L = STAGES[stage]
    g = torch.Generator().manual_seed(0)

    def call(ts, grad):
        u, delta, A, B, C, D, bias = ts
        if grad:
            out = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=backend)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=backend)

    if backend not in available_backends():
        return {"skipped": f"{backend} not available"}
    grad = mode == "fwd+bwd"
    call(make_inputs(GROUPS * 8, 16, grad, g), grad)  # load / compile kernels
    ts = make_inputs(dim, L, grad, g)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    c0, t0 = time.process_time(), time.perf_counter()
    call(ts, grad)
    times, cpus = [time.perf_counter() - t0], [time.process_time() - c0]
    peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0)
    for _ in range(repeat - 1):
        if grad:
            for t in ts:
                t.grad = None
        c0, t0 = time.process_time(), time.perf_counter()
        call(ts, grad)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"time": min(times), "times": times, "cpu": min(cpus), "peak_mib": peak / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--stages", default="1,2,3,4")
    p.add_argument("--backends", default="cpu,torch", help="backends compared with 'reference'")
    p.add_argument("--skip-reference-backward", action="store_true", help="reference fwd+bwd is slow")
    p.add_argument("--worker", nargs=3, metavar=("BACKEND", "STAGE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        backend, stage, mode = args.worker
        print(json.dumps(worker(backend, int(stage), mode, args.repeat, args.threads)))
        return 0

    import torch

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads))
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    backends = ["reference"] + [b for b in args.backends.split(",") if b and b != "reference"]
    print(
        f"# selective_scan benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()} "
        f"{os.cpu_count()} cpus  torch {torch.__version__}  threads={args.threads}  best of {args.repeat}"
    )
    print(f"# batch 1, N={N_STATE}, grouped B/C G={GROUPS}, softplus + delta_bias, D, no z; float32")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cols = ("stage", "dim", "L", "backend", "mode", "time s", "x ref", "cpu s", "x ref", "peak MiB")
    widths = (5, 5, 5, 9, 8, 9, 7, 8, 7, 9)
    print(" ".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    for stage in [int(s) for s in args.stages.split(",")]:
        dim, L = STAGES[stage]
        ref_time = {}
        for backend in backends:
            for mode in ("fwd", "fwd+bwd"):
                if backend == "reference" and mode == "fwd+bwd" and args.skip_reference_backward:
                    print(f"{stage:>5} {dim:>5} {L:>5} {backend:>9} {mode:>8} {'skipped':>9}")
                    continue
                repeat = min(2, args.repeat) if backend == "reference" else args.repeat
                cmd = [sys.executable, __file__, "--worker", backend, str(stage), mode]
                cmd += ["--repeat", str(repeat), "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    print(f"{stage:>5} {dim:>5} {L:>5} {backend:>9} {mode:>8} FAILED: {res.stderr[-300:]}")
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                if "skipped" in r:
                    print(f"{stage:>5} {dim:>5} {L:>5} {backend:>9} {mode:>8} {r['skipped']}")
                    continue
                if backend == "reference":
                    ref_time[mode] = (r["time"], r["cpu"])
                ratio = f"{ref_time[mode][0] / r['time']:.1f}" if mode in ref_time else "n/a"
                cratio = f"{ref_time[mode][1] / r['cpu']:.1f}" if mode in ref_time else "n/a"
                print(
                    f"{stage:>5} {dim:>5} {L:>5} {backend:>9} {mode:>8} {r['time']:>9.3f} {ratio:>7} "
                    f"{r['cpu']:>8.3f} {cratio:>7} {r['peak_mib']:>9.0f}",
                    flush=True,
                )
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
