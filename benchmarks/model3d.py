"""Native 3-D VM-UNet against MONAI's SwinUNETR on the CPU: time and peak memory of one 96^3 patch.

Runs ``vmunet3d_small`` (1 channel in, 9 classes out, the default ``cpu`` scan backend) and
MONAI's ``SwinUNETR(spatial_dims=3, in_channels=1, out_channels=9, feature_size=48)`` (the
UNETR / SwinUNETR BTCV configuration) on one (1, 1, 96, 96, 96) patch, forward (inference mode)
and forward+backward (training mode, ``out.mean().backward()``), with the same number of threads
(``torch.set_num_threads``; OMP / numba threads set to match).

Every measurement is one pass in a fresh subprocess, and the subprocesses are interleaved
(round 1: every model and mode once, round 2: again, ...), so a slow minute of a shared machine
hits all models alike; the time reported is the median over the rounds. Inside each subprocess
a warm-up pass on a 64^3 patch first compiles the scan kernels (numba, cached on disk) and
creates the oneDNN primitives, untimed.

Peak memory: ``tracemalloc`` does not see PyTorch's allocations, so each subprocess reads its
resident set: the current RSS (``/proc/self/statm``) once the model and the input exist, and the
peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) after the timed pass; the difference is the most
the passes needed above the weights and the imports (activations, tensors saved for backward,
gradients, workspace; the smaller warm-up pass peaks lower, so the 96^3 pass sets it). The
absolute peak of the process is printed too.

Extra VM-UNet configurations can be added with ``--vmunet NAME=JSON`` (constructor overrides),
e.g. ``--vmunet dims48='{"dims": 48}'``; ``--profile`` prints the top operators of one
vmunet3d_small forward.

Usage:
    python benchmarks/model3d.py                      # 2 threads, 3 rounds
    python benchmarks/model3d.py --rounds 1 --vmunet k2='{"scan_directions": 2}'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SIZE = 96


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _build(name: str, overrides: dict):
    import torch

    torch.manual_seed(0)
    if name == "swinunetr":
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(in_channels=1, out_channels=9, feature_size=48, spatial_dims=3)
    import vmunet

    return vmunet.create_model(
        "vmunet3d_small", in_channels=1, out_channels=9, drop_path_rate=0.0, **overrides
    )


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model = _build(args.model, json.loads(args.overrides))
    train = args.mode == "fwd+bwd"
    model.train(train)

    def one_pass(x: torch.Tensor) -> None:
        if train:
            model(x).mean().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(x)

    x = torch.randn(1, 1, SIZE, SIZE, SIZE)
    before = _rss_now_mb()
    t0 = time.perf_counter()
    one_pass(torch.randn(1, 1, 64, 64, 64))  # SwinUNETR needs >= 64 (its bottleneck is 1/32)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    one_pass(x)
    dt = time.perf_counter() - t0
    peak = _rss_peak_mb()
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {"time_s": dt, "warmup_s": warm, "peak_mb": peak - before, "rss_mb": peak, "params": params}
        )
    )


def run_child(args: argparse.Namespace, model: str, overrides: str, mode: str) -> dict:
    cmd = [
        sys.executable, __file__, "--worker",
        "--model", model, "--overrides", overrides, "--mode", mode, "--threads", str(args.threads),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "NUMBA_NUM_THREADS": str(args.threads)}
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.child_timeout, env=env, check=True
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"> {args.child_timeout:.0f} s"}
    except subprocess.CalledProcessError as exc:
        return {"skipped": f"failed: {exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else exc}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile(args: argparse.Namespace) -> None:
    import torch
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(args.threads)
    model = _build("vmunet", {}).eval()
    x = torch.randn(1, 1, SIZE, SIZE, SIZE)
    with torch.inference_mode():
        model(torch.randn(1, 1, 32, 32, 32))
        with torch_profile() as prof:
            model(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument(
        "--vmunet", nargs="*", default=[], metavar="NAME=JSON", help="extra vmunet3d_small overrides"
    )
    p.add_argument("--no-swin", action="store_true", help="leave SwinUNETR out")
    p.add_argument("--profile", action="store_true", help="profile one vmunet3d_small forward and exit")
    p.add_argument("--child-timeout", type=float, default=900.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.profile:
        profile(args)
        return

    import torch

    models = [("vmunet3d_small", "vmunet", "{}")]
    for spec in args.vmunet:
        name, _, js = spec.partition("=")
        json.loads(js)  # fail early on bad JSON
        models.append((f"vmunet3d_small {name}", "vmunet", js))
    if not args.no_swin:
        models.append(("SwinUNETR fs48", "swinunetr", "{}"))
    print(
        f"# model3d benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()} "
        f"{os.cpu_count()} cpus  torch {torch.__version__}  threads={args.threads}  "
        f"patch 1x1x{SIZE}^3, 9 classes"
    )
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for mode in args.modes:
            for label, kind, overrides in models:
                res = run_child(args, kind, overrides, mode)
                results.setdefault((label, mode), []).append(res)
                print(f"  round {r + 1} {mode:7s} {label:28s} {json.dumps(res)}", flush=True)
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    base = models[-1][0] if not args.no_swin else models[0][0]
    print(
        f"| model | params | pass | time s (median) | x faster than {base} | peak MiB over weights | x less |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for mode in args.modes:
        ref = [x for x in results[(base, mode)] if "skipped" not in x]
        ref_t = statistics.median(x["time_s"] for x in ref) if ref else None
        ref_m = statistics.median(x["peak_mb"] for x in ref) if ref else None
        for label, _, _ in models:
            ok = [x for x in results[(label, mode)] if "skipped" not in x]
            if not ok:
                print(f"| {label} | | {mode} | skipped: {results[(label, mode)][0]['skipped']} | | | |")
                continue
            t = statistics.median(x["time_s"] for x in ok)
            m = statistics.median(x["peak_mb"] for x in ok)
            rt = f"{ref_t / t:.2f}" if ref_t else "n/a"
            rm = f"{ref_m / m:.2f}" if ref_m else "n/a"
            print(f"| {label} | {ok[0]['params'] / 1e6:.2f} M | {mode} | {t:.2f} | {rt} | {m:.0f} | {rm} |")


if __name__ == "__main__":
    main()
