"""Model registry: ``register_model``, ``create_model``, ``list_models`` (timm's habits).

Example:
    >>> import vmunet
    >>> "vmunet_small" in vmunet.list_models()
    True
    >>> model = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=2)
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "get_model_builder"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name (``vmunet_small``...)."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def _ensure_builtin_models() -> None:
    from . import vmunet  # noqa: F401  (registers the VM-UNet variants)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models, sorted; ``pattern`` is a shell-style filter.

    Example:
        >>> list_models("vmunet_*")
        ['vmunet_base', 'vmunet_small', 'vmunet_tiny']
    """
    _ensure_builtin_models()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; ``ValueError`` listing the names (and the closest) if unknown."""
    _ensure_builtin_models()
    if not isinstance(name, str) or name not in _MODELS:
        names = sorted(_MODELS)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint} Registered models: {', '.join(names)}")
    return _MODELS[name]


def create_model(
    name: str,
    checkpoint: str | os.PathLike[str] | dict[str, Any] | None = None,
    strict: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    Args:
        name: a registered name (:func:`list_models`), e.g. ``"vmunet_small"``.
        checkpoint: a path or an in-memory checkpoint / state dict: this package's own
            checkpoints, the public VM-UNet's, or a VMamba ImageNet checkpoint (encoder, mirrored
            into the decoder). See :func:`vmunet.models.load_checkpoint`.
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
        from .checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint, strict=strict)
    return model
