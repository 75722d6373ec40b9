"""3-D training: random patches in, gaussian sliding-window validation on whole volumes out.

:class:`VolumeTrainer` is the :class:`~vmunet.train.Trainer` for recipes with
``data.spatial_dims: 3``. The training step is the same (patches from
:class:`vmunet.data.volumes3d.PatchDataset` are ordinary ``(B, C, X, Y, Z)`` batches);
what changes is validation: every validation volume, resampled to the training spacing,
is predicted whole with :func:`monai.inferers.sliding_window_inference`
(``mode="gaussian"``, ``eval.overlap``), and Dice is pooled per foreground class over the
split, which picks ``best.pt``. The checkpoint's ``inference`` dict carries
``spatial_dims: 3``, the ROI, the training spacing and the window, so ``vmunet segment``
needs no config.

Example:
    >>> from vmunet.config import load_config
    >>> from vmunet.train.volume import VolumeTrainer
    >>> cfg = load_config("demo3d", overrides=["train.epochs=1"])  # doctest: +SKIP
    >>> VolumeTrainer(cfg, "runs/demo3d").fit()["best_val_dice"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vmunet.errors import ConfigError
from vmunet.train.distributed import all_reduce_sum
from vmunet.train.sampling import ResumableSampler
from vmunet.train.trainer import Trainer

__all__ = ["VolumeTrainer", "check_roi", "sliding_window_logits"]


def check_roi(model: torch.nn.Module, roi: tuple[int, ...], key: str = "data.size") -> None:
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


def sliding_window_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    roi: tuple[int, ...],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    autocast: Any = None,
) -> torch.Tensor:
    """Logits of a whole ``(B, C, *spatial)`` volume by gaussian-blended sliding windows (MONAI).

    Volumes smaller than ``roi`` are padded by MONAI and cropped back.
    """
    from contextlib import nullcontext

    from monai.inferers import sliding_window_inference

    with autocast if autocast is not None else nullcontext():
        out = sliding_window_inference(
            image, roi, sw_batch_size, model, overlap=overlap, mode="gaussian", progress=False
        )
    return out.float()  # type: ignore[union-attr]


class VolumeTrainer(Trainer):
    """:class:`~vmunet.train.Trainer` for 3-D recipes (same arguments, files and resume rules).

    Validation batches hold one whole volume each (volumes differ in size); the patch size
    ``data.size`` is checked against the model's ``size_divisors`` when it has them.

    Example:
        >>> trainer = VolumeTrainer(cfg, "runs/demo3d")  # doctest: +SKIP
        >>> trainer.fit()  # doctest: +SKIP
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        if config.data.spatial_dims != 3:
            raise ConfigError("VolumeTrainer needs a 3-D recipe (data.spatial_dims: 3)")
        if config.train.channels_last:
            raise ConfigError("key 'train.channels_last' is for 2-D images; set it to false for a 3-D recipe")
        super().__init__(config, *args, **kwargs)
        check_roi(self.raw_model, tuple(config.data.size))

    def _loader(self, dataset: Any, sampler: ResumableSampler, batch_size: int) -> DataLoader:
        if getattr(dataset, "whole_volumes", False):
            batch_size = 1
        return super()._loader(dataset, sampler, batch_size)

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Pooled Dice per foreground class over whole validation volumes (sliding window), and the loss."""
        out = self.cfg.model.out_channels
        n_fg = 1 if out == 1 else out - 1
        counts = torch.zeros(3, n_fg, dtype=torch.float64)
        loss_sum = torch.zeros(2, dtype=torch.float64)
        model = self.raw_model
        model.eval()
        self.val_sampler.set_epoch(0)
        keep = self.cfg.train.val_images if self.dist.is_main else 0
        shown: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        roi = tuple(int(s) for s in self.cfg.data.size)
        for batch in self.val_loader:
            image, target = self._to_device(batch)
            logits = sliding_window_logits(
                model, image, roi, self.cfg.eval.overlap, self.cfg.eval.sw_batch_size, self._autocast()
            )
            loss_sum[0] += float(self.loss_fn(logits, target))
            loss_sum[1] += 1
            if out == 1:
                pred = (torch.sigmoid(logits) > self.cfg.eval.threshold).long()
                true = target.long()
            else:
                pred = logits.argmax(1, keepdim=True)
                true = target
            for j, c in enumerate([1] if out == 1 else range(1, out)):
                p, g = pred == c, true == c
                counts[0, j] += float((p & g).sum())
                counts[1, j] += float((p & ~g).sum())
                counts[2, j] += float((~p & g).sum())
            if len(shown) < keep:  # the middle slice along the last axis of each volume
                k = image.shape[-1] // 2
                shown.append(
                    (
                        image[0, ..., k].float().cpu().numpy(),
                        true[0, 0, ..., k].cpu().numpy(),
                        pred[0, 0, ..., k].cpu().numpy(),
                    )
                )
        all_reduce_sum(counts, self.dist)
        all_reduce_sum(loss_sum, self.dist)
        tp, fp, fn = counts
        denom = 2 * tp + fp + fn
        per_class = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
        valid = per_class[~per_class.isnan()]
        return {
            "val_loss": float(loss_sum[0] / loss_sum[1].clamp(min=1)),
            "val_dice": float(valid.mean()) if len(valid) else float("nan"),
            "val_dice_per_class": [float(v) for v in per_class],
            "_shown": shown,
        }
