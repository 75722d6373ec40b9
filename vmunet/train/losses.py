"""Segmentation losses built from MONAI: BCE + Dice (binary) and CE + Dice (multi-class).

The paper trains ISIC with BCE + Dice (weights 1:1) and Synapse with CE + Dice
(weights 1:1, ``loss_weight = [1, 1]`` in the public
``configs/config_setting_synapse.py`` of JCruan519/VM-UNet). The network
returns logits; the losses apply sigmoid / softmax themselves.

Example:
    >>> import torch
    >>> from vmunet.train.losses import build_loss
    >>> loss = build_loss("bce_dice", out_channels=1)
    >>> value = loss(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BCEDiceLoss", "build_loss"]


class BCEDiceLoss(nn.Module):
    """``ce_weight * BCEWithLogits + dice_weight * Dice(sigmoid)`` for one-channel logits.

    Args:
        ce_weight: weight of the binary cross-entropy.
        dice_weight: weight of the soft Dice loss (MONAI ``DiceLoss(sigmoid=True)``).

    Example:
        >>> import torch
        >>> BCEDiceLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)).item() > 0
        True
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        from monai.losses import DiceLoss  # imported here: importing monai takes seconds

        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.bce = nn.BCEWithLogitsLoss()
        self.dice = DiceLoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        return self.ce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)


class _CEDice(nn.Module):
    def __init__(self, ce_weight: float, dice_weight: float) -> None:
        from monai.losses import DiceCELoss

        super().__init__()
        # include_background / squared_pred / batch follow the public nDiceLoss (per class over the
        # whole batch, background included, squared terms in the denominator).
        self.loss = DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            include_background=True,
            squared_pred=True,
            batch=True,
            lambda_ce=ce_weight,
            lambda_dice=dice_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target.long())


def build_loss(name: str, out_channels: int, ce_weight: float = 1.0, dice_weight: float = 1.0) -> nn.Module:
    """The loss for ``name`` (``auto`` picks by ``out_channels``); targets are ``(B, 1, H, W)``.

    Binary targets hold 0/1 (float); multi-class targets hold class indices.
    """
    if name == "auto":
        name = "bce_dice" if out_channels == 1 else "ce_dice"
    if name == "bce_dice":
        if out_channels != 1:
            raise ValueError(f"loss 'bce_dice' needs out_channels=1, got {out_channels}")
        return BCEDiceLoss(ce_weight, dice_weight)
    if name == "ce_dice":
        if out_channels < 2:
            raise ValueError(f"loss 'ce_dice' needs out_channels >= 2, got {out_channels}")
        return _CEDice(ce_weight, dice_weight)
    raise ValueError(f"loss name must be one of 'auto', 'bce_dice', 'ce_dice', got {name!r}")
