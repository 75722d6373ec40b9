"""Typed training configuration: one dataclass per YAML section.

Every field has a type hint that :func:`vmunet.config.load_config` checks, so a
wrong type or a misspelled key fails before any training starts.

Example:
    >>> from vmunet.config import Config
    >>> cfg = Config()
    >>> cfg.optim.lr, cfg.scheduler.t_max
    (0.001, 50)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedulerConfig",
    "TrainConfig",
]


@dataclass
class ModelConfig:
    """The network.

    Args:
        name: a registered model name (``vmunet.list_models()``), e.g. ``vmunet_small``; or
            ``"package.module:callable"`` for a model of your own, called with
            ``in_channels``, ``out_channels`` and the overrides.
        in_channels: image channels (3 for RGB dermoscopy, 1 for CT).
        out_channels: 1 for binary segmentation (sigmoid), else the number of classes including
            background (softmax).
        pretrained: optional path to VMamba ImageNet weights for the encoder (``vmamba_small_e238_ema.pth``).
        overrides: further constructor arguments (``depths``, ``depths_decoder``, ``drop_path_rate``...).

    Example:
        >>> ModelConfig(name="vmunet_tiny", out_channels=2).overrides
        {}
    """

    name: str = "vmunet_small"
    in_channels: int = 3
    out_channels: int = 1
    pretrained: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the images are and how they are turned into tensors.

    Args:
        kind: dataset kind understood by ``vmunet.data.build_dataset`` (``isic``, ``synapse``,
            ``datalist``...), or ``demo`` (build the bundled demo data on first use).
        root: dataset folder (for ``demo``: where the demo data is built; default ``<output>/demo_data``).
        datalist: optional datalist JSON listing the split files.
        train_split / val_split / test_split: split names. Validation picks ``best.pt``; the test
            split is only ever used by ``vmunet test``.
        size: network input ``[H, W]``.
        augmentation: training augmentation recipe name (``vmunet.data.build_transforms``).
        normalization: intensity normalisation spec (``vmunet.data.normalize_intensity``).
        num_workers: DataLoader worker processes.
        batch_size: training batch size per process.
        val_batch_size: validation batch size (default: ``batch_size``).
        class_names: names of the output classes (background included for multi-class).
        spatial_dims: 2 (images, or volumes slice by slice) or 3 (volumes in 3-D patches; then
            ``size`` is the patch ``[X, Y, Z]`` in voxels at ``spacing``).
        spacing: 3-D only: target voxel size ``[X, Y, Z]`` in mm that volumes are resampled to
            (``null``: keep each volume's own).
        patch_pos / patch_neg: 3-D only: weights of patches centred on a labelled / background
            voxel (MONAI ``RandCropByPosNegLabeld`` ``pos`` / ``neg``).
        samples_per_volume: 3-D only: random patches per training volume per epoch.
        crop_foreground: 3-D only: crop training volumes to their foreground (image > 0) first.
        cache: 3-D only: where the resampled volumes are kept between epochs: ``memory``
            (MONAI ``CacheDataset``), ``disk`` (``PersistentDataset``) or ``none``.
        cache_dir: 3-D only: folder of the ``disk`` cache (default ``<output>/cache3d``).

    Example:
        >>> DataConfig(kind="isic", root="data/isic2017").size
        [256, 256]
    """

    kind: str = "isic"
    root: str | None = None
    datalist: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    size: list[int] = field(default_factory=lambda: [256, 256])
    augmentation: str = "isic"
    normalization: dict[str, Any] = field(default_factory=lambda: {"kind": "imagenet"})
    num_workers: int = 2
    batch_size: int = 32
    val_batch_size: int | None = None
    class_names: list[str] = field(default_factory=list)
    spatial_dims: int = 2
    spacing: list[float] | None = None
    patch_pos: float = 1.0
    patch_neg: float = 1.0
    samples_per_volume: int = 4
    crop_foreground: bool = False
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None


@dataclass
class OptimConfig:
    """AdamW, as in the paper.

    Example:
        >>> OptimConfig().weight_decay
        0.01
    """

    name: Literal["adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    """Learning-rate schedule, stepped once per epoch (as the public VM-UNet code does).

    Args:
        name: ``cosine`` (``CosineAnnealingLR``) or ``none``.
        t_max: cosine period in epochs.
        eta_min: the lowest learning rate.
        warmup_epochs: linear warm-up epochs before the cosine (0: none).

    Example:
        >>> SchedulerConfig(t_max=100).eta_min
        1e-05
    """

    name: Literal["cosine", "none"] = "cosine"
    t_max: int = 50
    eta_min: float = 1e-5
    warmup_epochs: int = 0


@dataclass
class LossConfig:
    """Cross-entropy + Dice.

    Args:
        name: ``bce_dice`` (binary: ``BCEWithLogitsLoss`` + MONAI ``DiceLoss(sigmoid=True)``),
            ``ce_dice`` (multi-class: MONAI ``DiceCELoss(softmax=True)``), or ``auto`` (by
            ``model.out_channels``).
        ce_weight: weight of the (binary) cross-entropy term.
        dice_weight: weight of the Dice term.

    Example:
        >>> LossConfig().name
        'auto'
    """

    name: Literal["auto", "bce_dice", "ce_dice"] = "auto"
    ce_weight: float = 1.0
    dice_weight: float = 1.0


@dataclass
class TrainConfig:
    """The training loop.

    Args:
        epochs: number of epochs.
        seed: seeds sampling order, augmentation and initialisation.
        amp: mixed precision: ``none``, ``bf16`` or ``fp16`` (fp16 needs a GPU; uses a GradScaler).
        channels_last: use the channels-last memory format.
        compile: wrap the model in ``torch.compile``.
        grad_clip: clip the gradient norm to this value (``null``: no clipping).
        val_every: validate every this many epochs (and always after the last one).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        checkpoint_every_steps: also write ``last.pt`` every this many optimiser steps (0: only at
            the end of each epoch), so a kill loses at most that many steps.
        log_every_steps: a plain log line every this many steps when stderr is not a terminal.
        max_steps_per_epoch: cut each epoch short after this many steps (``null``: full epochs).
        val_images: how many validation images the contour grid shows.

    Example:
        >>> TrainConfig(epochs=3).amp
        'none'
    """

    epochs: int = 300
    seed: int = 42
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    val_every: int = 1
    device: str = "auto"
    checkpoint_every_steps: int = 0
    log_every_steps: int = 20
    max_steps_per_epoch: int | None = None
    val_images: int = 8


@dataclass
class EvalConfig:
    """How predictions are scored.

    Args:
        protocol: ``isic`` (pooled pixels over the split), ``synapse`` (per organ on whole volumes,
            slice by slice) or ``standard`` (per case mean).
        threshold: probability threshold for binary outputs.
        overlap: 3-D only: overlap of the gaussian sliding window (validation, ``vmunet test``).
        sw_batch_size: 3-D only: windows per forward pass of the sliding window.

    Example:
        >>> EvalConfig(protocol="synapse").threshold
        0.5
    """

    protocol: Literal["isic", "synapse", "standard"] = "isic"
    threshold: float = 0.5
    overlap: float = 0.5
    sw_batch_size: int = 2


@dataclass
class Config:
    """A complete training recipe (one YAML file).

    Example:
        >>> cfg = Config(train=TrainConfig(epochs=2))
        >>> cfg.train.epochs, cfg.model.name
        (2, 'vmunet_small')
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/vmunet"
