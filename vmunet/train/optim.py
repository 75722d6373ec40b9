"""Optimiser and learning-rate schedule from a config (AdamW + cosine annealing, per epoch).

Example:
    >>> import torch
    >>> from vmunet.config import Config
    >>> model = torch.nn.Linear(2, 2)
    >>> opt = build_optimizer(model, Config().optim)
    >>> sched = build_scheduler(opt, Config().scheduler)
"""

from __future__ import annotations

import math

import torch

from vmunet.config.schema import OptimConfig, SchedulerConfig

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """``CosineAnnealingLR(T_max, eta_min)`` stepped once per epoch, with optional linear warm-up.

    With ``warmup_epochs = w`` the factor rises linearly over ``w`` epochs, then follows the
    cosine of ``CosineAnnealingLR`` (closed form, restarting every ``2 * T_max`` like it).
    """
    if cfg.name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    if cfg.warmup_epochs == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.t_max, eta_min=cfg.eta_min)
    base = optimizer.param_groups[0]["lr"]
    w, t_max, floor = cfg.warmup_epochs, cfg.t_max, cfg.eta_min

    def factor(epoch: int) -> float:
        if epoch < w:
            return (epoch + 1) / (w + 1)
        t = epoch - w
        lr = floor + (base - floor) * (1 + math.cos(math.pi * t / t_max)) / 2
        return lr / base

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
