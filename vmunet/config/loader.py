"""Load, check, override and save training configs (YAML <-> :class:`Config`).

Every mistake is a :class:`vmunet.errors.ConfigError` whose message names the
full dotted key: an unknown key also names the closest valid one, a wrong type
names the expected type and the value given.

Example:
    >>> from vmunet.config import load_config
    >>> cfg = load_config("demo", overrides=["train.epochs=1"])  # doctest: +SKIP
    >>> cfg.train.epochs  # doctest: +SKIP
    1
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from vmunet.config.schema import Config
from vmunet.errors import ConfigError
from vmunet.utils.io import atomic_write_text

__all__ = [
    "PACKAGED_CONFIGS",
    "check_data_paths",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "resolve_config_path",
    "save_config",
    "valid_keys",
]

PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# Numbers that must be positive / non-negative (checked after the types).
_POSITIVE = {
    "model.in_channels",
    "model.out_channels",
    "data.batch_size",
    "data.val_batch_size",
    "train.epochs",
    "train.val_every",
    "train.log_every_steps",
    "train.max_steps_per_epoch",
    "scheduler.t_max",
    "optim.lr",
    "data.samples_per_volume",
    "eval.sw_batch_size",
}
_NON_NEGATIVE = {
    "data.num_workers",
    "train.checkpoint_every_steps",
    "train.val_images",
    "scheduler.warmup_epochs",
    "scheduler.eta_min",
    "optim.weight_decay",
    "loss.ce_weight",
    "loss.dice_weight",
    "train.grad_clip",
    "data.patch_pos",
    "data.patch_neg",
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return "a mapping"
    if tp is Any:
        return "any value"
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return getattr(tp, "__name__", str(tp))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key a config may contain (sections included), e.g. ``train.epochs``."""
    keys = []
    for name, tp in _hints(cls).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, dotted + "."))
    return keys


def _unknown_key(dotted: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, valid_keys(), n=1, cutoff=0.5)
    if not close:
        # Also try the last component alone against every leaf ("epoch" -> "train.epochs").
        leaf = dotted.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid_keys()}
        near = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        close = [by_leaf[near[0]]] if near else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown key '{dotted}'{hint}")


def _bad_type(dotted: str, tp: Any, value: Any, source: str) -> ConfigError:
    return ConfigError(
        f"{source}: key '{dotted}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )


def _convert(value: Any, tp: Any, dotted: str, source: str) -> Any:
    """Check ``value`` against the type hint ``tp``; return it (ints widened to float where needed)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad_type(dotted, tp, value, source)
        return _build(tp, value, dotted + ".", source)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _bad_type(dotted, tp, value, source)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, dotted, source)
            except ConfigError:
                continue
        raise _bad_type(dotted, tp, value, source)
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
        raise _bad_type(dotted, tp, value, source)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _bad_type(dotted, tp, value, source)
        return [_convert(v, inner, f"{dotted}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad_type(dotted, tp, value, source)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad_type(dotted, tp, value, source)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad_type(dotted, tp, value, source)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads "1e-3" (no dot) as a string: accept numbers written that way.
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if math.isfinite(number):
                return number
        raise _bad_type(dotted, tp, value, source)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad_type(dotted, tp, value, source)
    raise TypeError(f"unsupported config type {tp!r} for {dotted}")  # a bug in the schema


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in hints:
            raise _unknown_key(dotted, source)
        kwargs[key] = _convert(value, hints[key], dotted, source)
    return cls(**kwargs)


def _check_values(cfg: Config, source: str) -> None:
    flat = _flatten(config_to_dict(cfg))
    for key in _POSITIVE:
        v = flat.get(key)
        if v is not None and v <= 0:
            raise ConfigError(f"{source}: key '{key}' must be > 0, got {v!r}")
    for key in _NON_NEGATIVE:
        v = flat.get(key)
        if v is not None and v < 0:
            raise ConfigError(f"{source}: key '{key}' must be >= 0, got {v!r}")
    if cfg.data.spatial_dims not in (2, 3):
        raise ConfigError(f"{source}: key 'data.spatial_dims' must be 2 or 3, got {cfg.data.spatial_dims!r}")
    size = cfg.data.size
    if cfg.data.spatial_dims == 3:
        if len(size) != 3 or any(s <= 0 for s in size):
            raise ConfigError(
                f"{source}: key 'data.size' expects three positive integers [X, Y, Z] (the 3-D patch, "
                f"data.spatial_dims is 3), got {size!r}"
            )
        sp = cfg.data.spacing
        if sp is not None and (len(sp) != 3 or any(s <= 0 for s in sp)):
            raise ConfigError(
                f"{source}: key 'data.spacing' expects three positive mm values [X, Y, Z], got {sp!r}"
            )
        if cfg.data.patch_pos + cfg.data.patch_neg <= 0:
            raise ConfigError(f"{source}: keys 'data.patch_pos' and 'data.patch_neg' cannot both be 0")
    elif len(size) != 2 or any(s <= 0 for s in size):
        raise ConfigError(f"{source}: key 'data.size' expects two positive integers [H, W], got {size!r}")
    if not 0.0 <= cfg.eval.overlap < 1.0:
        raise ConfigError(f"{source}: key 'eval.overlap' must lie in [0, 1), got {cfg.eval.overlap!r}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(
            f"{source}: key 'optim.betas' expects two numbers in [0, 1), got {cfg.optim.betas!r}"
        )
    if cfg.loss.name == "bce_dice" and cfg.model.out_channels != 1:
        raise ConfigError(
            f"{source}: key 'loss.name' is 'bce_dice' (binary) but model.out_channels is "
            f"{cfg.model.out_channels}; use 'ce_dice' or 'auto'"
        )
    if cfg.loss.name == "ce_dice" and cfg.model.out_channels < 2:
        raise ConfigError(
            f"{source}: key 'loss.name' is 'ce_dice' but model.out_channels is 1; use 'bce_dice'"
        )
    if not (0.0 < cfg.eval.threshold < 1.0):
        raise ConfigError(f"{source}: key 'eval.threshold' must lie in (0, 1), got {cfg.eval.threshold!r}")
    if cfg.data.class_names and len(cfg.data.class_names) != max(cfg.model.out_channels, 2):
        raise ConfigError(
            f"{source}: key 'data.class_names' has {len(cfg.data.class_names)} names but the model has "
            f"{cfg.model.out_channels} output channel(s) (binary: 2 names, background first)"
        )
    if cfg.train.device != "auto" and cfg.train.device != "cpu" and not cfg.train.device.startswith("cuda"):
        raise ConfigError(
            f"{source}: key 'train.device' expects auto, cpu, cuda or cuda:N, got {cfg.train.device!r}"
        )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" in _SECTIONS:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_SECTIONS = {k for k, tp in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(tp)}


def config_from_dict(data: dict[str, Any] | None, source: str = "config") -> Config:
    """Build a checked :class:`Config` from a nested mapping (e.g. parsed YAML).

    Raises:
        ConfigError: naming the dotted key of the first unknown key, wrong type or bad value.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}"
        )
    cfg = _build(Config, data, "", source)
    _check_values(cfg, source)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts/lists (what :func:`save_config` writes)."""
    return dataclasses.asdict(cfg)


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML ({exc})") from None
    parts = key.split(".")
    node = data
    cls: Any = Config
    for depth, part in enumerate(parts[:-1]):
        hints = _hints(cls) if dataclasses.is_dataclass(cls) else None
        if hints is not None:
            if part not in hints:
                raise _unknown_key(".".join(parts[: depth + 1]), "--set")
            cls = hints[part]
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: depth + 1])}' is not a section")
        node = child
    if dataclasses.is_dataclass(cls) and parts[-1] not in _hints(cls):
        raise _unknown_key(key, "--set")
    node[parts[-1]] = value


def resolve_config_path(path_or_name: str | os.PathLike[str]) -> Path:
    """Find a config: an existing file, else a recipe shipped with the package (``demo``, ``isic17``...).

    Raises:
        InputFileError: when neither exists (the message lists the packaged recipes).
    """
    from vmunet.errors import InputFileError

    p = Path(path_or_name)
    if p.is_file():
        return p
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    if p.parent == Path(".") and packaged.is_file():
        return packaged
    recipes = ", ".join(sorted(q.stem for q in PACKAGED_CONFIGS.glob("*.yaml")))
    raise InputFileError(p, f"no such config file (packaged recipes: {recipes})")


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Read a YAML recipe, apply ``KEY=VALUE`` overrides (values parsed as YAML scalars), check it.

    Args:
        path: a YAML file, or the bare name of a packaged recipe (``demo``, ``isic17``, ``isic18``,
            ``synapse``); ``None`` starts from the defaults.
        overrides: e.g. ``["train.epochs=3", "data.root=/data/isic2017"]``.

    Returns:
        The checked :class:`Config`.

    Raises:
        ConfigError: an unknown key (with the closest valid key), a wrong type or a bad value.
        InputFileError: the file is missing or is not valid YAML.
    """
    from vmunet.errors import InputFileError

    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(resolved.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise InputFileError(resolved, f"not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InputFileError(
                resolved, "expected a mapping of sections (model:, data:, ...) at the top level"
            )
        data = loaded or {}
    for item in overrides:
        _apply_override(data, item)
    return config_from_dict(data, source)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back unchanged."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    return atomic_write_text(path, text)


def check_data_paths(cfg: Config, source: str = "config") -> None:
    """Fail early when a data path the config names does not exist (key and path in the message)."""
    if cfg.data.kind in ("demo", "demo3d"):
        return  # built on first use
    for key in ("root", "datalist"):
        value = getattr(cfg.data, key)
        if value is not None and not Path(value).exists():
            raise ConfigError(f"{source}: key 'data.{key}' points to {value!r}, which does not exist")
    if cfg.data.root is None and cfg.data.datalist is None:
        raise ConfigError(f"{source}: set 'data.root' or 'data.datalist' (where the images are)")
    if cfg.model.pretrained is not None and not Path(cfg.model.pretrained).is_file():
        raise ConfigError(
            f"{source}: key 'model.pretrained' points to {cfg.model.pretrained!r}, which does not exist"
        )
