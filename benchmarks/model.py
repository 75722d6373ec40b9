"""VM-UNet on the CPU: forward and forward+backward time and peak memory, per scan backend.

Runs ``vmunet_small`` (the paper's configuration, 27.4 M parameters) on 256x256 inputs at
batch 1 and 8 with every CPU scan backend, each configuration in a fresh subprocess (so peak
memory is that configuration's own), and prints the speed-up over the sequential
``reference`` backend measured in the same run. A 1024x1024 matmul rate is printed before and
after as a gauge of how loaded the machine was.

Each run first makes one batch-1 pass (first-call compilation of the kernels; not for the
reference backend, which has none), then times ``--repeats`` passes at the full batch. Peak
memory is the growth of the process's peak resident set (``ru_maxrss``) over those passes:
the activations (and, for training, gradients) of one pass plus any first-call compilation,
above the weights and the input.

With ``--fused`` it instead times, in one process and interleaved, the ``cpu`` backend's fused
cross-scan path (``SSND.fused_scan``, the default) against the unfused path ("before"), MONAI's
SwinUNETR (2-D, feature_size 48) and, once, the ``reference`` backend; then prints the top ops of a
torch.profiler run of each path.

Usage:
    python benchmarks/model.py                          # defaults: 2 threads, batch 1 and 8
    python benchmarks/model.py --fused --repeats 5      # before / after the fused cross-scan
    python benchmarks/model.py --batches 1 --backends cpu torch
    git worktree add /tmp/base <commit> && python benchmarks/model.py --against-tree /tmp/base --repeats 5

With ``--against-tree DIR`` it times this tree against another checkout (fused and unfused paths,
forward and forward+backward, the median of ``--repeats`` passes per subprocess), alternating
subprocesses of the two trees ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    a @ a
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    return 10 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9


def worker(args: argparse.Namespace) -> None:
    import torch

    import vmunet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vmunet.create_model(args.model, drop_path_rate=0.0, scan_backend=args.backend)
    x = torch.randn(args.batch, 3, args.size, args.size)
    train = args.mode == "fwd+bwd"
    model.train(train)

    def one_pass() -> None:
        if train:
            model(x).mean().backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.inference_mode():
                model(x)

    before = _rss_mb()
    first = float("nan")
    if args.backend != "reference":  # compile the kernels on a small batch, not on the timed one
        x_full, x = x, x[:1]
        t0 = time.perf_counter()
        one_pass()
        first = time.perf_counter() - t0
        x = x_full
    times = []
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - t0)
    peak = _rss_mb()
    print(json.dumps({"first_s": first, "times_s": times, "peak_mb": peak - before, "rss_mb": peak}))


def fused_compare(args: argparse.Namespace) -> None:
    """Fused vs unfused cross-scan path, SwinUNETR-2D and the reference backend, interleaved."""
    import torch
    from monai.networks.nets import SwinUNETR
    from torch.profiler import profile

    import vmunet
    from vmunet.nn.vss import SSND

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vmunet.create_model(args.model, drop_path_rate=0.0, scan_backend="cpu")
    swin = SwinUNETR(in_channels=3, out_channels=1, feature_size=48, spatial_dims=2)
    x = torch.randn(1, 3, args.size, args.size)

    def set_fused(on: bool) -> None:
        for m in model.modules():
            if isinstance(m, SSND):
                m.fused_scan = on

    def timed(net, train: bool) -> float:
        net.train(train)
        t0 = time.perf_counter()
        if train:
            net(x).mean().backward()
            net.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                net(x)
        return time.perf_counter() - t0

    print(f"{args.model} at {args.size}x{args.size}, {args.threads} threads, batch 1; {os.cpu_count()} cores")
    print(f"machine gauge before: 1024^2 matmul at {_gflops(args.threads):.1f} GFLOP/s")
    for mode, train in (("fwd", False), ("fwd+bwd", True)):
        runs: dict[str, list[float]] = {"before (unfused)": [], "after (fused)": [], "SwinUNETR-2D": []}
        for on in (False, True):  # warm-up: kernel compilation
            set_fused(on)
            timed(model, train)
        timed(swin, train)
        for _ in range(max(1, args.repeats)):
            for name in runs:
                if name == "SwinUNETR-2D":
                    runs[name].append(timed(swin, train))
                else:
                    set_fused(name.startswith("after"))
                    runs[name].append(timed(model, train))
        med = {k: statistics.median(v) for k, v in runs.items()}
        for k, v in runs.items():
            print(f"  {mode:7s} {k:17s} median {med[k]:.3f} s  range {min(v):.3f}-{max(v):.3f}  n={len(v)}")
        after = med["after (fused)"]
        print(
            f"  {mode}: after vs before {med['before (unfused)'] / after:.2f}x, "
            f"vs SwinUNETR-2D {med['SwinUNETR-2D'] / after:.2f}x (ratios of the medians)"
        )
        # the host's speed drifts within a run: the ratio inside each round (three passes back to
        # back) is steadier than the ratio of medians taken over the whole run
        for other in ("before (unfused)", "SwinUNETR-2D"):
            per = [o / a for o, a in zip(runs[other], runs["after (fused)"])]
            print(
                f"  {mode}: {other} / after, per round: median {statistics.median(per):.2f}x "
                f"(range {min(per):.2f}-{max(per):.2f}x)"
            )
        if args.with_reference and not train:
            for m in model.modules():
                if isinstance(m, SSND):
                    m.scan_backend = "reference"
            ref = timed(model, False)
            for m in model.modules():
                if isinstance(m, SSND):
                    m.scan_backend = "cpu"
            print(f"  fwd: reference backend {ref:.3f} s (one pass): after vs reference {ref / after:.1f}x")
    model.eval()
    for on in (False, True):
        set_fused(on)
        with profile() as prof, torch.inference_mode():
            model(x)
        print(f"\nprofile, forward, {'after (fused)' if on else 'before (unfused)'}:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"machine gauge after: 1024^2 matmul at {_gflops(args.threads):.1f} GFLOP/s")


_TREE_CHILD = """
import json, statistics, sys, time
import torch
import vmunet
from vmunet.nn.vss import SSND
model_name, size, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
m = vmunet.create_model(model_name, drop_path_rate=0.0, scan_backend="cpu")
x = torch.randn(1, 3, size, size)
out = {}
for fused in (False, True):
    for mod in m.modules():
        if isinstance(mod, SSND):
            mod.fused_scan = fused
    for mode in ("fwd", "fwd+bwd"):
        m.train(mode != "fwd")
        def one():
            if mode == "fwd":
                with torch.inference_mode():
                    m(x)
            else:
                m(x).mean().backward()
                m.zero_grad(set_to_none=True)
        one(); one()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter(); one(); ts.append(time.perf_counter() - t0)
        out[("fused " if fused else "unfused ") + mode] = statistics.median(ts)
print(json.dumps(out))
"""


def against_tree(args: argparse.Namespace) -> None:
    """This tree against another checkout (e.g. ``git worktree add /tmp/base <commit>``): fused and
    unfused, fwd and fwd+bwd, in subprocesses alternating between the two trees, ``--rounds`` times."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this tree": here, f"other tree ({args.against_tree})": os.path.abspath(args.against_tree)}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    print(f"{args.model} at {args.size}x{args.size}, {args.threads} threads, batch 1; {os.cpu_count()} cores")
    print(f"machine gauge before: 1024^2 matmul at {_gflops(args.threads):.1f} GFLOP/s")
    for _ in range(args.rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(args.threads)}
            env["NUMBA_NUM_THREADS"] = str(args.threads)
            cmd = [sys.executable, "-c", _TREE_CHILD, args.model, str(args.size), str(args.threads)]
            out = subprocess.run(
                [*cmd, str(args.repeats)], capture_output=True, text=True, env=env, cwd=tree, check=True
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = list(next(iter(runs.values()))[0])
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    for name, m in med.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in m.items()))
    this, other = (med[n] for n in trees)
    for mode in ("fwd", "fwd+bwd"):
        now = this["fused " + mode]
        print(
            f"  {mode}: this tree fused vs other tree unfused {other['unfused ' + mode] / now:.2f}x, "
            f"vs other tree fused {other['fused ' + mode] / now:.2f}x"
        )
    print(f"machine gauge after: 1024^2 matmul at {_gflops(args.threads):.1f} GFLOP/s")


def run_child(args: argparse.Namespace, backend: str, batch: int, mode: str, repeats: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--model", args.model,
        "--size", str(args.size),
        "--threads", str(args.threads),
        "--backend", backend,
        "--batch", str(batch),
        "--mode", mode,
        "--repeats", str(repeats),
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
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["time_s"] = statistics.median(res["times_s"]) if res["times_s"] else res["first_s"]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vmunet_small")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--backends", nargs="+", default=["cpu", "torch", "reference"])
    p.add_argument("--repeats", type=int, default=2, help="timed passes after the warm-up (reference: 1)")
    p.add_argument("--child-timeout", type=float, default=420.0, help="seconds before a run is skipped")
    p.add_argument(
        "--reference-max-batch", type=int, default=1, help="largest batch run with the reference backend"
    )
    p.add_argument("--fused", action="store_true", help="fused vs unfused cross-scan (see above)")
    p.add_argument("--with-reference", action="store_true", help="with --fused: one reference-backend pass")
    p.add_argument("--against-tree", help="another checkout of vmunet to time against (see against_tree)")
    p.add_argument("--rounds", type=int, default=3, help="with --against-tree: alternations of the two trees")
    # worker-only arguments
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.fused:
        fused_compare(args)
        return
    if args.against_tree:
        against_tree(args)
        return

    print(f"{args.model} at {args.size}x{args.size}, {args.threads} threads; {os.cpu_count()} cores seen")
    print(f"machine gauge before: 1024^2 matmul at {_gflops(args.threads):.1f} GFLOP/s")
    rows = []
    for batch in args.batches:
        for mode in ("fwd", "fwd+bwd"):
            results = {}
            for backend in args.backends:
                if backend == "reference" and batch > args.reference_max_batch:
                    results[backend] = {"skipped": f"batch > {args.reference_max_batch} (minutes per pass)"}
                    continue
                repeats = 1 if backend == "reference" else args.repeats
                results[backend] = run_child(args, backend, batch, mode, repeats)
                r = results[backend]
                print(f"  batch {batch} {mode:7s} {backend:9s} ", json.dumps(r), flush=True)
            ref = results.get("reference", {}).get("time_s")
            for backend, r in results.items():
                rows.append((batch, mode, backend, r, ref))
    print(f"machine gauge after: 1024^2 matmul at {_gflops(args.threads):.1f} GFLOP/s")
    print()
    print("| batch | pass | backend | time / pass (s) | warm-up b=1 (s) | peak memory (MB) | vs reference |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for batch, mode, backend, r, ref in rows:
        if "skipped" in r:
            print(f"| {batch} | {mode} | {backend} | skipped: {r['skipped']} | | | |")
            continue
        ratio = f"{ref / r['time_s']:.1f}x" if ref else "n/a"
        warm = "-" if r["first_s"] != r["first_s"] else f"{r['first_s']:.1f}"  # NaN: no warm-up
        print(f"| {batch} | {mode} | {backend} | {r['time_s']:.3f} | {warm} | {r['peak_mb']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
