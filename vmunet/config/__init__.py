"""Typed training configs: dataclass schema plus YAML loading with clear errors.

Example:
    >>> from vmunet.config import load_config
    >>> cfg = load_config("isic17", overrides=["train.epochs=3"])  # doctest: +SKIP
"""

from vmunet.config.loader import (
    PACKAGED_CONFIGS,
    check_data_paths,
    config_from_dict,
    config_to_dict,
    load_config,
    resolve_config_path,
    save_config,
    valid_keys,
)
from vmunet.config.schema import (
    Config,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SchedulerConfig,
    TrainConfig,
)

__all__ = [
    "PACKAGED_CONFIGS",
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedulerConfig",
    "TrainConfig",
    "check_data_paths",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "resolve_config_path",
    "save_config",
    "valid_keys",
]
