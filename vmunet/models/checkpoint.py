"""Building models with weights; reading, loading and writing model checkpoints.

The registry (:mod:`vmunet.models.registry`) is a leaf that knows names and builders; this
module builds with weights (:func:`create_model`) and does all the loading. Each model family
brings its own checkpoint filter: :func:`vmunet.models.vmunet.checkpoint_filter_fn` for VM-UNet,
:func:`vmunet.models.baselines.checkpoint_filter_fn` for the MONAI baselines (which load only
this package's checkpoints or their own state dicts: they have no pretrained weights).

Three kinds of checkpoint load into a :class:`~vmunet.models.VMUNet`, all through
:func:`~vmunet.models.vmunet.checkpoint_filter_fn` (rename keys, check every shape):

1. this package's own (``{"format": "vmunet", "arch": ..., "model": state_dict, ...}``,
   written by :func:`save_checkpoint` or the trainer);
2. the public VM-UNet's (JCruan519/VM-UNet ``train.py`` saves ``model.state_dict()``, keys
   ``vmunet.*``; or ``{"model_state_dict": ...}`` in its ``latest.pth``);
3. VMamba ImageNet checkpoints (``{"model": {...}}``): the encoder, mirrored into the decoder.

Checkpoints are read with ``torch.load(..., weights_only=True)``: no pickled code runs.

Example:
    >>> import vmunet
    >>> from vmunet.models import load_checkpoint
    >>> model = vmunet.create_model("vmunet_small", in_channels=1)
    >>> report = load_checkpoint(model, "vmamba_small_e238_ema.pth")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vmunet.errors import InputFileError
from vmunet.utils.io import atomic_path

from . import baselines
from . import vmunet as _vmunet
from .registry import get_model_builder, list_models

__all__ = [
    "create_model",
    "LoadReport",
    "CheckpointMismatchError",
    "read_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "build_model_from_checkpoint",
    "describe_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vmunet"
_RESERVED = ("format", "vmunet_version", "torch_version", "arch", "model", "inference")
_LIST_LIMIT = 8


def _short(keys: list[str] | dict[str, str], limit: int = _LIST_LIMIT) -> str:
    items = [f"{k} ({v})" for k, v in keys.items()] if isinstance(keys, dict) else list(keys)
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did.

    Attributes:
        source: the path, or ``"<state dict>"``.
        kind: what the checkpoint looked like (``"vmunet"``, ``"VM-UNet (public)"``,
            ``"VMamba (ImageNet)"``, ``"state dict"``).
        loaded: model keys that received a tensor.
        adapted: model keys whose tensor was changed to fit, with what was done.
        skipped: checkpoint keys left out, with the reason.
        missing: model keys that received nothing (they keep their initialisation).

    Example:
        >>> r = LoadReport(source="x.pth", kind="state dict", loaded=["a"], missing=["b"])
        >>> r.complete
        False
    """

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model tensor was loaded and nothing was skipped."""
        return not self.skipped and not self.missing

    def __str__(self) -> str:
        lines = [
            f"{self.source} ({self.kind}): loaded {len(self.loaded)} tensors, adapted {len(self.adapted)}, "
            f"skipped {len(self.skipped)}, missing {len(self.missing)}"
        ]
        if self.adapted:
            lines.append(f"  adapted: {_short(self.adapted)}")
        if self.skipped:
            lines.append(f"  skipped: {_short(self.skipped)}")
        if self.missing:
            lines.append(f"  missing (left as initialised): {_short(self.missing)}")
        return "\n".join(lines)


class CheckpointMismatchError(InputFileError):
    """``strict=True`` loading found skipped or missing tensors; ``.report`` holds the details."""

    def __init__(self, report: LoadReport) -> None:
        self.report = report
        parts = []
        if report.skipped:
            parts.append(
                f"{len(report.skipped)} checkpoint tensor(s) cannot be used: {_short(report.skipped)}"
            )
        if report.missing:
            parts.append(f"{len(report.missing)} model tensor(s) missing: {_short(report.missing)}")
        super().__init__(
            report.source,
            "strict loading failed: " + "; ".join(parts) + " (use strict=False to load the rest)",
        )


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one clear error for each way it can fail.

    Raises:
        InputFileError: missing file, not a checkpoint, or a checkpoint that holds pickled
            Python objects (which ``weights_only=True`` refuses to run).
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "checkpoint file not found" if not p.exists() else "not a file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # torch's weights_only message is long; keep the line that names the refused object
        first = lines[0] if lines else type(exc).__name__
        msg = next((ln for ln in lines if "Unsupported global" in ln), first)
        if "Unsupported global" in str(exc) or "GLOBAL " in str(exc):
            raise InputFileError(
                p,
                "the checkpoint holds pickled Python objects that torch.load(weights_only=True) will not "
                f"run ({msg}). If you trust the file, re-save its state dict only: "
                "torch.save(torch.load(p, weights_only=False)['model'], 'weights.pth')",
            ) from exc
        raise InputFileError(p, f"not a readable PyTorch checkpoint ({type(exc).__name__}: {msg})") from exc
    if not isinstance(ckpt, dict):
        raise InputFileError(
            p, f"expected a dict (a state dict or a checkpoint), found {type(ckpt).__name__}"
        )
    return ckpt


def describe_checkpoint(ckpt: dict[str, Any]) -> str:
    """What a loaded checkpoint dict looks like: ``vmunet``, ``VM-UNet (public)``, ``VMamba (ImageNet)``..."""
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        return "vmunet"
    sd = _vmunet._unwrap(ckpt)
    if sd and all(str(k).startswith(("vmunet.", "module.vmunet.")) for k in sd):
        return "VM-UNet (public)"
    if _vmunet.is_vmamba_encoder_checkpoint(_vmunet._strip_prefixes(sd)):
        return "VMamba (ImageNet)"
    return "state dict"


def _unwrap_module(model: nn.Module) -> nn.Module:
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike[str] | dict[str, Any],
    strict: bool = False,
    map_location: Any = "cpu",
) -> LoadReport:
    """Load weights into ``model`` through the model's checkpoint filter; report what happened.

    Args:
        model: the model (a :class:`~vmunet.models.VMUNet`; a DDP / compiled wrapper is unwrapped).
        path_or_state_dict: a checkpoint path, or a checkpoint / state dict already in memory.
        strict: raise :class:`CheckpointMismatchError` (naming the keys) if any checkpoint tensor
            is skipped or any model tensor is missing; nothing is loaded then.
        map_location: passed to ``torch.load``.

    Returns:
        A :class:`LoadReport` (also logged: a summary at INFO, skipped keys at WARNING).

    Raises:
        InputFileError: unreadable checkpoint; :class:`CheckpointMismatchError` under ``strict``.

    Example:
        >>> import vmunet
        >>> src = vmunet.create_model("vmunet_tiny")
        >>> dst = vmunet.create_model("vmunet_tiny")
        >>> load_checkpoint(dst, src.state_dict(), strict=True).complete
        True
    """
    if isinstance(path_or_state_dict, dict):
        source, ckpt = "<state dict>", path_or_state_dict
    else:
        source, ckpt = str(path_or_state_dict), read_checkpoint(path_or_state_dict, map_location)
    net = _unwrap_module(model)
    report = LoadReport(source=source, kind=describe_checkpoint(ckpt))
    if isinstance(net, baselines.MonaiBaseline):
        if report.kind in ("VM-UNet (public)", "VMamba (ImageNet)"):
            raise InputFileError(
                source,
                f"a {report.kind} checkpoint cannot initialise the MONAI baseline {net.arch}: the "
                "baselines have no pretrained weights (leave model.pretrained empty for them)",
            )
        filter_fn = baselines.checkpoint_filter_fn
    else:
        filter_fn = _vmunet.checkpoint_filter_fn
    filtered = filter_fn(ckpt, net, skipped=report.skipped, adapted=report.adapted)
    target = net.state_dict()
    report.loaded = [k for k in target if k in filtered]
    report.missing = [k for k in target if k not in filtered]
    if strict and not report.complete:
        raise CheckpointMismatchError(report)
    net.load_state_dict(filtered, strict=False)
    logger.info("%s", report)
    if report.skipped:
        logger.warning(
            "%s: skipped %d checkpoint tensor(s): %s", source, len(report.skipped), _short(report.skipped)
        )
    return report


def _default_inference(net: nn.Module) -> dict[str, Any]:
    out_channels = int(getattr(net, "out_channels", 1))
    spatial_dims = int(getattr(net, "spatial_dims", 2))
    out: dict[str, Any] = {
        "spatial_dims": spatial_dims,
        "in_channels": int(getattr(net, "in_channels", 3)),
        "out_channels": out_channels,
        "input_size": [256, 256],
        "resize": True,
        "normalization": {"kind": "none"},
        "class_names": ["foreground"] if out_channels == 1 else [f"class_{i}" for i in range(out_channels)],
        "activation": "sigmoid" if out_channels == 1 else "softmax",
    }
    if spatial_dims == 3:
        # volumes: sliding-window inference over ROIs of the variant's input size (96^3 for the
        # BTCV recipes), never a resize; "spacing" (3 floats, mm, X/Y/Z) is the grid the model was
        # trained on, which only the trainer knows: None here means "the volume's own grid"
        cfg_size = getattr(net, "pretrained_cfg", {}).get("input_size", (1, 96, 96, 96))
        out.update({"input_size": [int(v) for v in cfg_size[1:]], "resize": False, "spacing": None})
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    arch_name: str,
    arch_kwargs: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write this package's checkpoint format atomically (temporary name, then rename).

    Args:
        path: destination (``.pt`` / ``.pth``).
        model: the model (a DDP / compiled wrapper is unwrapped); tensors are saved on the CPU.
        arch_name: the registered name to rebuild it with (``vmunet_small``...).
        arch_kwargs: all constructor arguments; ``None`` takes them from ``model.config`` (without
            ``scan_backend``, a choice of the machine that runs it, not of the architecture).
        inference: how to run it (see docs/contracts.md); missing entries are filled from the model
            (sigmoid for one output channel, else softmax; 256x256; resize; no normalisation; for a
            3-D model: ``spatial_dims`` 3, the variant's ROI as ``input_size`` (3 ints), no resize,
            ``spacing`` None).
        **extra: training state to keep alongside (optimizer, scheduler, epoch, config, metrics...).

    Returns:
        The path written.

    Example:
        >>> import vmunet
        >>> m = vmunet.create_model("vmunet_tiny")
        >>> save_checkpoint("run/last.pt", m, "vmunet_tiny", epoch=3)  # doctest: +SKIP
    """
    from vmunet._version import __version__

    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(
            f"extra checkpoint entries must not be named {clash}: reserved names are {_RESERVED}"
        )
    net = _unwrap_module(model)
    if arch_kwargs is None:
        config = getattr(net, "config", None)
        if not isinstance(config, dict):
            raise ValueError("arch_kwargs is required for a model without a .config dict of its arguments")
        arch_kwargs = {k: v for k, v in config.items() if k != "scan_backend"}
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "vmunet_version": __version__,
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-loadable
        "arch": {"name": arch_name, "kwargs": dict(arch_kwargs)},
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "inference": {**_default_inference(net), **(inference or {})},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def build_model_from_checkpoint(
    path_or_dict: str | os.PathLike[str] | dict[str, Any],
    map_location: Any = "cpu",
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a ``vmunet`` checkpoint describes and load its weights (strictly).

    Args:
        path_or_dict: a checkpoint written by :func:`save_checkpoint` (or the trainer), or its dict.
        map_location: passed to ``torch.load``.
        **overrides: constructor arguments to change (e.g. ``scan_backend="torch"``).

    Returns:
        ``(model, checkpoint dict)``; the model is in eval mode.

    Raises:
        InputFileError: not a ``vmunet`` checkpoint (e.g. a public VM-UNet one: use
            ``create_model(name, checkpoint=...)``), an unknown architecture, or weights that
            do not fit it.

    Example:
        >>> model, ckpt = build_model_from_checkpoint("run/best.pt")  # doctest: +SKIP
        >>> ckpt["inference"]["activation"]  # doctest: +SKIP
        'sigmoid'
    """
    if isinstance(path_or_dict, dict):
        source, ckpt = "<checkpoint dict>", path_or_dict
    else:
        source, ckpt = str(path_or_dict), read_checkpoint(path_or_dict, map_location)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputFileError(
            source,
            "not a vmunet checkpoint (no 'format': 'vmunet' entry; it looks like a "
            f"{describe_checkpoint(ckpt)} checkpoint). Build the model yourself and load it: "
            "vmunet.create_model('vmunet_small', in_channels=..., out_channels=..., checkpoint=path)",
        )
    arch = ckpt.get("arch")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise InputFileError(source, "the checkpoint's 'arch' entry must be {'name': str, 'kwargs': dict}")
    if arch["name"] not in list_models():
        raise InputFileError(
            source, f"architecture {arch['name']!r} is not registered; known: {', '.join(list_models())}"
        )
    kwargs = {**dict(arch.get("kwargs") or {}), **overrides}
    try:
        model = create_model(arch["name"], **kwargs)
    except ValueError as exc:
        raise InputFileError(
            source, f"cannot build {arch['name']!r} from the checkpoint's arguments: {exc}"
        ) from exc
    try:
        load_checkpoint(model, ckpt, strict=True)
    except CheckpointMismatchError as exc:
        raise InputFileError(source, exc.reason) from exc
    model.eval()
    return model, ckpt


def create_model(
    name: str,
    checkpoint: str | os.PathLike[str] | dict[str, Any] | None = None,
    strict: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    Args:
        name: a registered name (:func:`vmunet.models.list_models`): ``"vmunet_small"``, or a MONAI
            baseline such as ``"monai_basicunet_2d"`` (:mod:`vmunet.models.baselines`).
        checkpoint: a path or an in-memory checkpoint / state dict: this package's own
            checkpoints; for VM-UNet also the public VM-UNet's, or a VMamba ImageNet checkpoint
            (encoder, mirrored into the decoder). See :func:`load_checkpoint`.
        strict: make any skipped or missing tensor an error.
        **overrides: constructor arguments (``in_channels``, ``out_channels``, ``depths``, ...).

    Returns:
        The model (in training mode, as ``nn.Module`` constructors leave it).

    Raises:
        ValueError: unknown name (the message lists the registered ones) or a bad argument.

    Example:
        >>> model = create_model("vmunet_tiny", in_channels=3, out_channels=1)
        >>> model.out_channels
        1
    """
    model = get_model_builder(name)(**overrides)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
    return model
