"""Build the model and the data sets a config describes (adapters over vmunet.models / vmunet.data).

Example:
    >>> from vmunet.config import Config
    >>> from vmunet.train.builders import build_model
    >>> cfg = Config()
    >>> cfg.model.name = "vmunet_tiny"
    >>> model, arch = build_model(cfg)
    >>> arch["name"]
    'vmunet_tiny'
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vmunet.config.schema import Config
from vmunet.errors import ConfigError

__all__ = ["build_model", "build_split_dataset", "inference_spec", "unpack_batch", "volume_spec"]

logger = logging.getLogger("vmunet.train")


def _import_callable(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"key 'model.name': cannot import {spec!r} ({exc})") from None
    return obj


def build_model(cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``cfg.model`` and its ``arch`` entry (``{"name", "kwargs"}``) for checkpoints.

    ``model.name`` is a registered name (``vmunet_small``...) or ``"module:callable"``; the
    latter is called with ``in_channels``, ``out_channels`` and ``model.overrides``.

    Raises:
        ConfigError: unknown model name or a constructor argument it does not accept.
    """
    m = cfg.model
    kwargs = {"in_channels": m.in_channels, "out_channels": m.out_channels, **m.overrides}
    if ":" in m.name:
        factory = _import_callable(m.name)
        try:
            model = factory(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"key 'model.overrides': {m.name} rejected its arguments ({exc})") from None
        arch_kwargs = getattr(model, "config", None)
        arch = {"name": m.name, "kwargs": dict(arch_kwargs) if isinstance(arch_kwargs, dict) else kwargs}
    else:
        from vmunet.models import create_model, list_models

        if m.name not in list_models():
            import difflib

            close = difflib.get_close_matches(m.name, list_models(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"key 'model.name': unknown model {m.name!r}{hint} (registered: {', '.join(list_models())})"
            )
        try:
            model = create_model(m.name, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"key 'model.overrides' (model {m.name}): {exc}") from None
        config = getattr(model, "config", None)
        arch_kwargs = (
            {k: v for k, v in config.items() if k != "scan_backend"} if isinstance(config, dict) else kwargs
        )
        arch = {"name": m.name, "kwargs": arch_kwargs}
        if m.pretrained:
            from vmunet.models import MonaiBaseline, load_checkpoint

            if isinstance(model, MonaiBaseline):
                raise ConfigError(
                    f"key 'model.pretrained': {m.name} is a MONAI baseline trained from scratch; it has "
                    "no VMamba / VM-UNet pretrained weights (set model.pretrained: null)"
                )

            report = load_checkpoint(model, m.pretrained)
            logger.info("initialised from %s: %s", m.pretrained, report)
    return model, arch


def inference_spec(cfg: Config) -> dict[str, Any]:
    """The ``inference`` entry of a checkpoint (docs/contracts.md): how ``vmunet segment`` runs it."""
    out = cfg.model.out_channels
    names = list(cfg.data.class_names) or (
        ["background", "foreground"] if out == 1 else [f"class_{i}" for i in range(out)]
    )
    if cfg.data.spatial_dims == 3:
        return {
            "spatial_dims": 3,
            "in_channels": cfg.model.in_channels,
            "out_channels": out,
            "input_size": [int(s) for s in cfg.data.size],  # the ROI (X, Y, Z) at `spacing`
            "spacing": [float(s) for s in cfg.data.spacing] if cfg.data.spacing else None,  # mm, X/Y/Z
            "resize": False,
            "normalization": dict(cfg.data.normalization),
            "class_names": names,
            "activation": "sigmoid" if out == 1 else "softmax",
            "threshold": cfg.eval.threshold,
            "overlap": cfg.eval.overlap,
        }
    return {
        "spatial_dims": 2,
        "in_channels": cfg.model.in_channels,
        "out_channels": out,
        "input_size": list(cfg.data.size),
        "resize": True,
        "normalization": dict(cfg.data.normalization),
        "class_names": names,
        "activation": "sigmoid" if out == 1 else "softmax",
        "threshold": cfg.eval.threshold,
        "overlap": cfg.eval.overlap,
    }


def _demo_root(cfg: Config, output_dir: Path | None) -> Path:
    if cfg.data.root:
        return Path(cfg.data.root)
    return (output_dir or Path(cfg.output_dir)) / "demo_data"


def build_split_dataset(
    cfg: Config, split: str, train: bool, output_dir: Path | None = None, volumes: bool = False
) -> Any:
    """The data set of one split through ``vmunet.data`` (``build_dataset`` + ``build_transforms``).

    ``data.kind: demo`` builds the MNI152 demo data (``vmunet.data.make_demo_data``) on first use,
    under ``data.root`` or ``<output>/demo_data``, and reads it as a datalist.
    """
    import vmunet.data as vdata

    kind, root, datalist = cfg.data.kind, cfg.data.root, cfg.data.datalist
    if root is None and datalist is not None:
        root = str(Path(datalist).parent)
    if kind == "demo":
        datalist = str(vdata.make_demo_data(_demo_root(cfg, output_dir)))
        kind, root = "datalist", str(Path(datalist).parent)
    elif kind == "demo3d":
        from vmunet.data.demo3d import make_demo3d_data

        datalist = str(make_demo3d_data(_demo_root(cfg, output_dir)))
        kind, root = "datalist", str(Path(datalist).parent)
    try:
        from vmunet.data.augment import build_transforms
        from vmunet.data.factory import build_dataset
    except ImportError as exc:  # pragma: no cover - a broken installation
        raise ConfigError(f"key 'data.kind': vmunet.data cannot build data sets here ({exc})") from None
    if cfg.data.spatial_dims == 3:
        return _build_3d(cfg, kind, root, datalist, split, train, output_dir, volumes)
    transform = None
    if not volumes:
        try:
            transform = build_transforms(
                cfg.data.augmentation,
                size=tuple(cfg.data.size),
                train=train,
                normalization=dict(cfg.data.normalization),
            )
        except ValueError as exc:
            raise ConfigError(f"key 'data.augmentation' / 'data.normalization': {exc}") from None
    kwargs: dict[str, Any] = {"transform": transform}
    params = inspect.signature(build_dataset).parameters
    for name, value in (
        ("datalist", datalist),
        ("normalization", dict(cfg.data.normalization)),
        ("channels", cfg.model.in_channels),
        ("volumes", volumes),
        ("num_classes", max(2, cfg.model.out_channels)),
        ("seed", cfg.train.seed),
    ):
        if name in params:
            kwargs[name] = value
    try:
        return build_dataset(kind, root, split, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"key 'data' (kind {kind!r}, split {split!r}): {exc}") from None


def volume_spec(cfg: Config, output_dir: Path | None = None) -> Any:
    """The :class:`vmunet.data.volumes3d.VolumeSpec` of a 3-D recipe's ``data`` section."""
    from vmunet.data.volumes3d import VolumeSpec, cache_dir_for

    d = cfg.data
    cache_dir = d.cache_dir or (cache_dir_for(output_dir or cfg.output_dir) if d.cache == "disk" else None)
    try:
        return VolumeSpec(
            roi_size=tuple(d.size),  # type: ignore[arg-type]
            spacing=tuple(d.spacing) if d.spacing else None,  # type: ignore[arg-type]
            normalization=dict(d.normalization),
            pos=d.patch_pos,
            neg=d.patch_neg,
            samples_per_volume=d.samples_per_volume,
            crop_foreground=d.crop_foreground,
            augmentation=d.augmentation,
            cache=d.cache,
            cache_dir=cache_dir,
        )
    except ValueError as exc:
        raise ConfigError(f"key 'data' (3-D recipe): {exc}") from None


def _build_3d(
    cfg: Config,
    kind: str,
    root: str | None,
    datalist: str | None,
    split: str,
    train: bool,
    output_dir: Path | None,
    volumes: bool,
) -> Any:
    from vmunet.data.factory import build_dataset

    spec = volume_spec(cfg, output_dir)
    try:
        return build_dataset(
            kind,
            root,  # type: ignore[arg-type]
            split,
            datalist=datalist,
            normalization=dict(cfg.data.normalization),
            channels=cfg.model.in_channels,
            spatial_dims=3,
            num_classes=max(2, cfg.model.out_channels),
            seed=cfg.train.seed,
            volume_spec=spec,
            train=train and not volumes,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"key 'data' (kind {kind!r}, split {split!r}): {exc}") from None


def unpack_batch(batch: Any, out_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (B, C, H, W) float, target (B, 1, H, W))`` from a dict or an ``(image, label)`` pair.

    Binary targets become 0/1 floats (any label > 0 is foreground); multi-class targets are
    integer class indices.
    """
    if isinstance(batch, dict):
        image, label = batch["image"], batch["label"]
    else:
        image, label = batch[0], batch[1]
    image = torch.as_tensor(image).float()
    label = torch.as_tensor(label)
    if label.ndim == image.ndim - 1:
        label = label.unsqueeze(1)
    if label.shape[1] != 1:
        raise ValueError(f"labels must have one channel, got shape {tuple(label.shape)}")
    if out_channels == 1:
        label = (label > 0).float()
    else:
        label = label.round().long() if label.is_floating_point() else label.long()
    return image, label
