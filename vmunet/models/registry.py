"""Model registry: names and builders, nothing else (timm's ``_registry.py`` habit).

A leaf of ``vmunet.models``: it imports no model family and no loading code. The families
(:mod:`vmunet.models.vmunet`, :mod:`vmunet.models.baselines`) register their builders with
:func:`register_model` when ``vmunet.models`` is imported; building with weights
(:func:`vmunet.models.create_model`) and every kind of loading live in
:mod:`vmunet.models.checkpoint`.

Registered names: ``vmunet_tiny`` / ``vmunet_small`` / ``vmunet_base`` (VM-UNet), and the MONAI
baselines ``monai_<family>_<2d|3d>`` (``monai_basicunet_2d``, ``monai_segresnet_3d``,
``monai_swinunetr_2d``...; see :mod:`vmunet.models.baselines`).

Example:
    >>> import vmunet
    >>> "vmunet_small" in vmunet.list_models()
    True
    >>> vmunet.list_models("monai_*_2d")
    ['monai_basicunet_2d', 'monai_segresnet_2d', 'monai_swinunetr_2d']
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

from torch import nn

__all__ = ["register_model", "list_models", "get_model_builder"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name (``vmunet_small``...)."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models, sorted; ``pattern`` is a shell-style filter.

    Example:
        >>> list_models("vmunet_*")
        ['vmunet_base', 'vmunet_small', 'vmunet_tiny']
    """
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; ``ValueError`` listing the names (and the closest) if unknown."""
    if not isinstance(name, str) or name not in _MODELS:
        names = sorted(_MODELS)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint} Registered models: {', '.join(names)}")
    return _MODELS[name]
