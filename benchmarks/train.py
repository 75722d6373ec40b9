"""Training throughput and peak memory of vmunet_small at 256x256 (the paper's ISIC setting).

Measures, in one run on the same machine:
  * baseline: a bare PyTorch loop (forward, BCE+Dice loss, backward, AdamW step) on tensors in memory;
  * trainer: the same steps through ``vmunet.train.Trainer`` (DataLoader, per-sample seeding,
    progress, NaN check), reported as a ratio to the baseline (overhead of the trainer);
  * on a GPU, also bf16 autocast and channels-last, as ratios to the fp32 baseline.

Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the growth of the process's
peak resident set size (``ru_maxrss``) during the baseline loop.

usage: python benchmarks/train.py [--batch N] [--steps N] [--warmup N] [--device cpu|cuda]
Defaults: batch 8 on CPU, 32 on GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

import vmunet  # noqa: E402
from vmunet.config import load_config  # noqa: E402
from vmunet.train import Trainer  # noqa: E402
from vmunet.train.losses import BCEDiceLoss  # noqa: E402


class _Random(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = (torch.rand(n, 1, size, size, generator=g) > 0.7).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(
    model, batch, size, steps, warmup, device, amp=None, channels_last=False
) -> tuple[float, float]:
    """Images per second and peak memory (MiB) of a plain training loop."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = BCEDiceLoss()
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else torch.enable_grad
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        with ctx():
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    dt = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB on Linux
    return steps * batch / dt, peak


def trainer_loop(batch, size, steps, warmup, device) -> float:
    cfg = load_config(
        "isic17",
        [
            f"data.batch_size={batch}",
            "data.num_workers=0",
            f"data.size=[{size}, {size}]",
            "train.epochs=1",
            f"train.max_steps_per_epoch={warmup}",
            "train.log_every_steps=1000",
        ],
    )
    trainer = Trainer(
        cfg,
        output_dir=os.environ.get("TMPDIR", "/tmp") + "/vmunet_bench_train",
        device=device.type,
        train_dataset=_Random(batch * (warmup + steps), size),
        val_dataset=_Random(1, size),
    )
    trainer.train_one_epoch()  # warm-up steps
    cfg.train.max_steps_per_epoch = steps
    trainer.epoch, trainer.epoch_step = 1, 0
    _sync(device)
    t0 = time.perf_counter()
    trainer.train_one_epoch()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (32 if gpu else 8)
    steps = args.steps or (20 if gpu else 3)
    name = torch.cuda.get_device_name(device) if gpu else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    print(
        f"vmunet {vmunet.__version__}, torch {torch.__version__}, {name}, threads {torch.get_num_threads()}"
    )
    print(f"vmunet_small, {args.size}x{args.size}, batch {batch}, {steps} timed steps, {args.warmup} warm-up")

    torch.manual_seed(0)
    model = vmunet.create_model("vmunet_small", in_channels=3, out_channels=1)
    base, peak = bare_loop(model, batch, args.size, steps, args.warmup, device)
    print(f"baseline  bare loop fp32        {base:8.2f} img/s   peak memory {peak:8.0f} MiB")
    rows = []
    if gpu:
        for label, kw in (
            ("bf16 autocast", {"amp": torch.bfloat16}),
            ("channels_last", {"channels_last": True}),
        ):
            torch.manual_seed(0)
            m = vmunet.create_model("vmunet_small", in_channels=3, out_channels=1)
            rate, pk = bare_loop(m, batch, args.size, steps, args.warmup, device, **kw)
            rows.append((label, rate, pk))
    rate = trainer_loop(batch, args.size, steps, args.warmup, device)
    rows.append(("Trainer (fp32)", rate, float("nan")))
    for label, r, pk in rows:
        mem = f"peak memory {pk:8.0f} MiB" if pk == pk else ""
        print(f"{label:<26}      {r:8.2f} img/s   ratio to baseline {r / base:5.2f}   {mem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
