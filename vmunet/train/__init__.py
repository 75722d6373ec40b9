"""Training: the trainer, losses, optimiser and schedule, checkpoints, distributed runs, evaluation.

Example:
    >>> from vmunet.config import load_config
    >>> from vmunet.train import train
    >>> summary = train(load_config("demo"), output_dir="runs/demo")  # doctest: +SKIP
"""

from vmunet.train.checkpoint import load_training_checkpoint, save_training_checkpoint
from vmunet.train.losses import BCEDiceLoss, build_loss
from vmunet.train.optim import build_optimizer, build_scheduler
from vmunet.train.sampling import ResumableSampler, SeededDataset
from vmunet.train.trainer import NonFiniteLossError, Trainer, train

__all__ = [
    "BCEDiceLoss",
    "NonFiniteLossError",
    "ResumableSampler",
    "SeededDataset",
    "Trainer",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "load_training_checkpoint",
    "save_training_checkpoint",
    "train",
]
