"""The training loop: resumable to the step, distributed, mixed precision, watchable.

Example:
    >>> from vmunet.config import load_config
    >>> from vmunet.train import Trainer
    >>> cfg = load_config("demo", overrides=["train.epochs=1"])  # doctest: +SKIP
    >>> summary = Trainer(cfg, output_dir="runs/demo").fit()  # doctest: +SKIP
    >>> summary["best_val_dice"]  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vmunet._version import __version__
from vmunet.config import Config, check_data_paths, config_to_dict, save_config
from vmunet.errors import ConfigError, VmunetUserError
from vmunet.train.builders import build_model, build_split_dataset, inference_spec, unpack_batch
from vmunet.train.checkpoint import (
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from vmunet.train.distributed import all_reduce_sum, init_distributed
from vmunet.train.losses import build_loss
from vmunet.train.monitor import EpochProgress, MetricsLog, plot_curves, plot_validation_grid
from vmunet.train.optim import build_optimizer, build_scheduler
from vmunet.train.sampling import ResumableSampler, SeededDataset

__all__ = ["NonFiniteLossError", "Trainer", "check_roi", "train"]

logger = logging.getLogger("vmunet.train")

# Test hook: SIGKILL this process right after the checkpoint of this global step is written.
_KILL_ENV = "VMUNET_DEBUG_KILL_AT_STEP"


class NonFiniteLossError(VmunetUserError):
    """The loss became NaN or infinite; training stopped, the last good checkpoint is kept."""


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds third-party code that uses the global state
    torch.manual_seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def check_roi(model: nn.Module, roi: tuple[int, ...], key: str = "data.size") -> None:
    """Raise :class:`ConfigError` when ``roi`` is not a multiple of the model's ``size_divisors``."""
    div = getattr(model, "size_divisors", None)
    if div is None:
        return
    div = tuple(int(d) for d in div)
    if len(div) != len(roi):
        raise ConfigError(f"key '{key}': {list(roi)} has {len(roi)} axes but the model has {len(div)}")
    if any(r % d for r, d in zip(roi, div)):
        fit = [max(d, round(r / d) * d) for r, d in zip(roi, div)]
        raise ConfigError(
            f"key '{key}': the patch {list(roi)} must be a multiple of {list(div)} on each axis for this "
            f"model; e.g. {fit}"
        )


class Trainer:
    """Train the model a :class:`~vmunet.config.Config` describes, 2-D or 3-D.

    2-D recipes train and validate on samples at ``data.size``; 3-D recipes
    (``data.spatial_dims: 3``) train on random patches and validate each whole volume
    with the gaussian 3-D sliding window (``eval.overlap``, ``eval.sw_batch_size``). Both
    validate through the inferers of :mod:`vmunet.inference.inferers`, the same ones
    ``vmunet test`` and ``vmunet segment`` use, and pick ``best.pt`` by the pooled Dice.

    Args:
        config: the checked config.
        output_dir: where checkpoints, logs and plots go (default ``config.output_dir``).
        resume: ``None`` (fresh run), ``"auto"`` (``<output_dir>/last.pt``) or a checkpoint path.
        device: overrides ``config.train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        model: use this network instead of building ``config.model`` (its ``arch`` is then
            recorded as the config's model name and overrides).
        train_dataset / val_dataset: use these instead of building ``config.data``; items are
            ``{"image": (C, H, W), "label": (H, W) or (1, H, W)}`` dicts or ``(image, label)`` pairs.

    Files written by rank 0 in ``output_dir``: ``config.yaml``, ``last.pt``, ``best.pt``,
    ``metrics.jsonl``, ``metrics.csv``, ``curves.png``, ``val_samples.png`` (and ``tensorboard/``
    when TensorBoard is installed).

    Example:
        >>> trainer = Trainer(cfg, "runs/x", model=net, train_dataset=tr, val_dataset=va)  # doctest: +SKIP
        >>> trainer.fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: Config,
        output_dir: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
        device: str | None = None,
        model: nn.Module | None = None,
        train_dataset: Any = None,
        val_dataset: Any = None,
    ) -> None:
        self.cfg = config
        self.output_dir = Path(output_dir if output_dir is not None else config.output_dir)
        if device is not None:
            config.train.device = device
        self.dist, self.device = init_distributed(config.train.device)
        t = config.train
        self.spatial_dims = int(config.data.spatial_dims)
        if self.spatial_dims == 3 and t.channels_last:
            raise ConfigError("key 'train.channels_last' is for 2-D images; set it to false for a 3-D recipe")
        if t.amp == "fp16" and self.device.type != "cuda":
            raise VmunetUserError("train.amp=fp16 needs a CUDA device; use 'bf16' or 'none' on the CPU")
        if train_dataset is None or val_dataset is None:
            check_data_paths(config)

        # Same initial weights on every rank (DDP also broadcasts them from rank 0).
        _seed_everything(t.seed)
        if model is None:
            model, self.arch = build_model(config)
        else:
            kwargs = getattr(_unwrap(model), "config", None)
            self.arch = {
                "name": config.model.name,
                "kwargs": dict(kwargs)
                if isinstance(kwargs, dict)
                else {
                    "in_channels": config.model.in_channels,
                    "out_channels": config.model.out_channels,
                    **config.model.overrides,
                },
            }
        if self.dist.rank:  # per-rank stream for drop path etc. (rank 0 keeps the plain seed)
            torch.manual_seed(t.seed + 1000003 * self.dist.rank)
        model = model.to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        if self.spatial_dims == 3:
            check_roi(model, tuple(int(v) for v in config.data.size))
        if t.compile:
            model = torch.compile(model)
        if self.dist.enabled:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.model = model

        self.optimizer = build_optimizer(self.raw_model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.scheduler)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)
        self.loss_fn = build_loss(
            config.loss.name, config.model.out_channels, config.loss.ce_weight, config.loss.dice_weight
        )
        self.val_inferer = self._validation_inferer()

        if train_dataset is None:
            train_dataset = build_split_dataset(config, config.data.train_split, True, self.output_dir)
        if val_dataset is None:
            val_dataset = build_split_dataset(config, config.data.val_split, False, self.output_dir)
        if len(train_dataset) == 0 or len(val_dataset) == 0:
            raise VmunetUserError(
                f"empty data set: {len(train_dataset)} training / {len(val_dataset)} validation samples"
            )
        self.train_sampler = ResumableSampler(
            len(train_dataset),
            shuffle=True,
            seed=t.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.val_sampler = ResumableSampler(
            len(val_dataset),
            shuffle=False,
            seed=t.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            pad=False,
        )
        self.train_loader = self._loader(train_dataset, self.train_sampler, config.data.batch_size)
        self.val_loader = self._loader(
            val_dataset, self.val_sampler, config.data.val_batch_size or config.data.batch_size
        )

        # Progress state (overwritten by resume).
        self.epoch = 0  # epochs completed
        self.epoch_step = 0  # optimiser steps done inside epoch `self.epoch`
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best_dice = -math.inf
        self.best_epoch = 0
        self._epoch_loss_sum = 0.0
        self._epoch_loss_count = 0
        if resume is not None:
            path = self.output_dir / "last.pt" if str(resume) == "auto" else Path(resume)
            self.load_state(path)

        self.is_main = self.dist.is_main
        self.metrics_log = MetricsLog(self.output_dir, enabled=self.is_main)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.output_dir / "config.yaml")

    # ------------------------------------------------------------------ data

    def _loader(self, dataset: Any, sampler: ResumableSampler, batch_size: int) -> DataLoader:
        if getattr(dataset, "whole_volumes", False):  # validation volumes differ in size
            batch_size = 1
        workers = self.cfg.data.num_workers
        g = torch.Generator()
        g.manual_seed(self.cfg.train.seed)
        return DataLoader(
            SeededDataset(dataset),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=g,  # keeps DataLoader seeding off the global RNG (exact resume)
        )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (without the model weights)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "step": self.global_step,
            "epoch_loss": [self._epoch_loss_sum, self._epoch_loss_count],
            "rng": capture_rng_state(),
            "config": config_to_dict(self.cfg),
            "metrics": {
                "history": self.history,
                "best_val_dice": self.best_dice,
                "best_epoch": self.best_epoch,
            },
            "world_size": self.dist.world_size,
        }

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "format": "vmunet",
            "vmunet_version": __version__,
            "torch_version": str(torch.__version__),
            "arch": self.arch,
            "model": {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()},
            "inference": inference_spec(self.cfg),
            **self.state_dict(),
        }

    def save(self, name: str = "last.pt") -> Path | None:
        """Write a checkpoint (rank 0 only; atomic)."""
        if not self.dist.is_main:
            return None
        return save_training_checkpoint(self.output_dir / name, self._checkpoint())

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Restore weights and training state from a checkpoint written by :meth:`save`."""
        ckpt = load_training_checkpoint(path)
        missing = [
            k for k in ("optimizer", "scheduler", "epoch", "epoch_step", "step", "rng") if k not in ckpt
        ]
        if missing:
            raise VmunetUserError(f"{path}: cannot resume, the checkpoint lacks training state {missing}")
        if ckpt.get("world_size", 1) != self.dist.world_size and ckpt["epoch_step"]:
            logger.warning(
                "resuming mid-epoch with %d process(es) from a run with %d: the sample order changes",
                self.dist.world_size,
                ckpt.get("world_size", 1),
            )
        try:
            self.raw_model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise VmunetUserError(f"{path}: weights do not fit the configured model ({exc})") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.epoch_step = int(ckpt["epoch_step"])
        self.global_step = int(ckpt["step"])
        self._epoch_loss_sum, count = ckpt.get("epoch_loss", [0.0, 0])
        self._epoch_loss_count = int(count)
        metrics = ckpt.get("metrics") or {}
        self.history = list(metrics.get("history", []))
        self.best_dice = float(metrics.get("best_val_dice", -math.inf))
        self.best_epoch = int(metrics.get("best_epoch", 0))
        restore_rng_state(ckpt["rng"])
        if self.dist.rank:  # the checkpoint holds rank 0's generators; give the others their own stream
            torch.manual_seed(self.cfg.train.seed + 1000003 * self.dist.rank + self.global_step)
        logger.info(
            "resumed from %s: epoch %d, step %d of the epoch, global step %d",
            path,
            self.epoch + 1,
            self.epoch_step,
            self.global_step,
        )

    # ------------------------------------------------------------------ loop

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = unpack_batch(batch, self.cfg.model.out_channels)
        nb = self.device.type == "cuda"
        image = image.to(self.device, non_blocking=nb)
        if self.cfg.train.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, target.to(self.device, non_blocking=nb)

    def _steps_per_epoch(self) -> int:
        n = len(self.train_sampler._indices())
        steps = -(-n // self.cfg.data.batch_size)
        if self.cfg.train.max_steps_per_epoch:
            steps = min(steps, self.cfg.train.max_steps_per_epoch)
        return steps

    def train_one_epoch(self) -> float:
        """Run (the rest of) epoch ``self.epoch``; returns its mean training loss."""
        t = self.cfg.train
        steps = self._steps_per_epoch()
        self.train_sampler.set_epoch(self.epoch, start=self.epoch_step * self.cfg.data.batch_size)
        self.model.train()
        progress = EpochProgress(
            steps,
            self.epoch,
            t.epochs,
            enabled=self.dist.is_main,
            log_every=t.log_every_steps,
            initial=self.epoch_step,
        )
        kill_at = int(os.environ.get(_KILL_ENV, "0") or 0)
        try:
            for batch in self.train_loader if self.epoch_step < steps else ():
                image, target = self._to_device(batch)
                with self._autocast():
                    logits = self.model(image)
                    loss = self.loss_fn(logits.float(), target)
                loss_value = loss.detach().float().reshape(1)
                all_reduce_sum(loss_value, self.dist)
                loss_value = float(loss_value.item()) / self.dist.world_size
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"the training loss became {loss_value} at global step {self.global_step + 1} "
                        f"(epoch {self.epoch + 1}, step {self.epoch_step + 1}); stopped. The last good "
                        f"checkpoint is {self.output_dir / 'last.pt'}; lower optim.lr, set train.grad_clip, "
                        "or use train.amp=none"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if t.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.raw_model.parameters(), t.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.epoch_step += 1
                self.global_step += 1
                self._epoch_loss_sum += loss_value
                self._epoch_loss_count += 1
                progress.update(
                    loss_value, self.optimizer.param_groups[0]["lr"], image.shape[0] * self.dist.world_size
                )
                if t.checkpoint_every_steps and self.global_step % t.checkpoint_every_steps == 0:
                    self.save("last.pt")
                if kill_at and self.global_step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.epoch_step >= steps:
                    break
        finally:
            progress.close()
        self._last_rate = progress.images_per_second
        return self._epoch_loss_sum / max(1, self._epoch_loss_count)

    def _validation_inferer(self) -> Any:
        """The inferer validation runs: samples whole (2-D), or the gaussian 3-D sliding window."""
        from vmunet.inference.inferers import SlidingWindowInferer3D, WholeImageInferer

        act = "sigmoid" if self.cfg.model.out_channels == 1 else "softmax"
        if self.spatial_dims == 3:
            return SlidingWindowInferer3D(
                tuple(int(s) for s in self.cfg.data.size),
                self.cfg.eval.overlap,
                self.cfg.eval.sw_batch_size,
                activation=act,
            )
        return WholeImageInferer(None, activation=act)

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Pooled Dice per foreground class over the validation split (reduced over ranks), and the loss.

        Each batch goes through :attr:`val_inferer` (logits for the loss, then the shared
        activation and label rule with ``eval.threshold``).
        """
        from vmunet.inference.inferers import labels_from_probabilities, logits_to_probabilities

        out = self.cfg.model.out_channels
        n_fg = 1 if out == 1 else out - 1
        counts = torch.zeros(3, n_fg, dtype=torch.float64)  # TP, FP, FN per foreground class
        loss_sum = torch.zeros(2, dtype=torch.float64)  # sum, batches
        model = self.raw_model
        model.eval()
        self.val_sampler.set_epoch(0)
        keep = self.cfg.train.val_images if self.dist.is_main else 0
        shown: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        inferer = self.val_inferer
        for batch in self.val_loader:
            image, target = self._to_device(batch)
            with self._autocast():
                logits = inferer.logits(image, model)
            loss_sum[0] += float(self.loss_fn(logits, target))
            loss_sum[1] += 1
            probs = logits_to_probabilities(logits, inferer.activation)
            pred = labels_from_probabilities(probs, inferer.activation, self.cfg.eval.threshold)[:, None]
            true = target.long()
            for j, c in enumerate([1] if out == 1 else range(1, out)):
                p, g = pred == c, true == c
                counts[0, j] += float((p & g).sum())
                counts[1, j] += float((p & ~g).sum())
                counts[2, j] += float((~p & g).sum())
            for i in range(min(keep - len(shown), image.shape[0])):
                if self.spatial_dims == 3:  # the middle slice along the last axis of each volume
                    k = image.shape[-1] // 2
                    img, lab, prd = image[i, ..., k], true[i, 0, ..., k], pred[i, 0, ..., k]
                else:
                    img, lab, prd = image[i], true[i, 0], pred[i, 0]
                shown.append((img.float().cpu().numpy(), lab.cpu().numpy(), prd.cpu().numpy()))
        all_reduce_sum(counts, self.dist)
        all_reduce_sum(loss_sum, self.dist)
        tp, fp, fn = counts
        denom = 2 * tp + fp + fn
        per_class = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
        valid = per_class[~per_class.isnan()]
        dice = float(valid.mean()) if len(valid) else float("nan")
        return {
            "val_loss": float(loss_sum[0] / loss_sum[1].clamp(min=1)),
            "val_dice": dice,
            "val_dice_per_class": [float(v) for v in per_class],
            "_shown": shown,
        }

    def fit(self) -> dict[str, Any]:
        """Train until ``train.epochs``; returns a summary (best validation Dice, its epoch, paths)."""
        t = self.cfg.train
        if self.is_main:
            n_params = sum(p.numel() for p in self.raw_model.parameters())
            logger.info(
                "training %s (%s parameters) on %s%s for %d epochs -> %s",
                self.arch["name"],
                f"{n_params:,}",
                self.device,
                f" x {self.dist.world_size} processes" if self.dist.enabled else "",
                t.epochs,
                self.output_dir,
            )
        start = time.perf_counter()
        while self.epoch < t.epochs:
            epoch_start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss = self.train_one_epoch()
            self.scheduler.step()
            self.epoch += 1
            self.epoch_step = 0
            self._epoch_loss_sum, self._epoch_loss_count = 0.0, 0
            row: dict[str, Any] = {
                "epoch": self.epoch,
                "step": self.global_step,
                "lr": lr,
                "train_loss": train_loss,
                "img_per_s": getattr(self, "_last_rate", float("nan")),
            }
            validated = self.epoch % t.val_every == 0 or self.epoch == t.epochs
            shown: list = []
            if validated:
                result = self.validate()
                shown = result.pop("_shown")
                row.update(result)
                improved = math.isfinite(result["val_dice"]) and result["val_dice"] > self.best_dice
                if improved:
                    self.best_dice, self.best_epoch = result["val_dice"], self.epoch
            row["epoch_time_s"] = time.perf_counter() - epoch_start
            self.history.append(row)
            self.save("last.pt")
            if validated and self.is_main:
                if self.best_epoch == self.epoch:
                    self.save("best.pt")
                logger.info(
                    "epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.4f (best %.4f at epoch %d)",
                    self.epoch,
                    t.epochs,
                    train_loss,
                    row["val_loss"],
                    row["val_dice"],
                    self.best_dice,
                    self.best_epoch,
                )
                plot_curves(self.history, self.output_dir / "curves.png")
                if shown:
                    images, labels, preds = (np.stack(x) for x in zip(*shown))
                    plot_validation_grid(
                        images,
                        labels,
                        preds,
                        self.output_dir / "val_samples.png",
                        title=f"epoch {self.epoch}",
                    )
            elif self.is_main:
                logger.info("epoch %d/%d: train loss %.4f", self.epoch, t.epochs, train_loss)
            self.metrics_log.write(self.history)
        self.metrics_log.close()
        return {
            "best_val_dice": self.best_dice if math.isfinite(self.best_dice) else float("nan"),
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "steps": self.global_step,
            "seconds": time.perf_counter() - start,
            "output_dir": str(self.output_dir),
            "last": str(self.output_dir / "last.pt"),
            "best": str(self.output_dir / "best.pt"),
        }


def train(
    config: Config,
    output_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Build a :class:`Trainer` from ``config`` and run it; returns the summary of :meth:`Trainer.fit`.

    Under ``torchrun`` this joins the process group and trains with DDP.
    """
    from vmunet.train.distributed import shutdown_distributed

    trainer = Trainer(config, output_dir=output_dir, resume=resume, device=device)
    info = trainer.dist
    try:
        return trainer.fit()
    finally:
        # DDP's reducer holds the gloo/NCCL process group: drop it first, so that destroying the group
        # really frees it now, and not during interpreter shutdown, where gloo's threads abort the process.
        del trainer
        gc.collect()
        shutdown_distributed(info)
