"""Backend registry, lazy detection of optional kernels and backend resolution."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import torch

from vmunet.errors import VmunetUserError

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "ScanBackendUnavailableError",
    "available_backends",
    "resolve_backend",
    "mamba_selective_scan_fn",
    "numba_kernels",
]

logger = logging.getLogger(__name__)

ENV_VAR = "VMUNET_SCAN_BACKEND"
#: time steps per chunk of the "triton" kernels: with saved states the forward also returns the state
#: before every chunk, (b, ceil(L / TRITON_CHUNK), N, d) (the op's fake implementation needs the count)
TRITON_CHUNK = 16
#: every backend name, fastest first
BACKENDS = ("cuda", "cpu", "torch", "reference")


class ScanBackendUnavailableError(VmunetUserError, RuntimeError):
    """A selective-scan backend was asked for but cannot run here; the message says why and how to fix it."""


_UNSET = object()
_mamba_cache: Any = _UNSET  # (selective_scan_fn or None, reason or None)
_numba_cache: Any = _UNSET  # (module or None, reason or None)


def mamba_selective_scan_fn() -> tuple[Any, str | None]:
    """Import mamba-ssm's ``selective_scan_fn`` once, on first use. Returns (fn or None, reason)."""
    global _mamba_cache
    if _mamba_cache is _UNSET:
        if importlib.util.find_spec("mamba_ssm") is None:
            _mamba_cache = (None, "mamba-ssm is not installed")
        else:
            try:
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            except (ImportError, OSError, RuntimeError) as exc:  # no CUDA build / no libcuda
                why = f"mamba-ssm is installed but failed to import ({type(exc).__name__}: {exc})"
                _mamba_cache = (None, why)
            else:
                _mamba_cache = (selective_scan_fn, None)
        if _mamba_cache[1]:
            logger.debug("cuda scan backend unavailable: %s", _mamba_cache[1])
    return _mamba_cache


def numba_kernels() -> tuple[Any, str | None]:
    """Import the numba CPU kernels once, on first use. Returns (module or None, reason)."""
    global _numba_cache
    if _numba_cache is _UNSET:
        try:
            from vmunet.ops import _numba_scan
        except Exception as exc:  # numba missing or broken: the cpu backend is simply unavailable
            _numba_cache = (None, f"numba failed to import ({type(exc).__name__}: {exc})")
            logger.debug("cpu scan backend unavailable: %s", _numba_cache[1])
        else:
            _numba_cache = (_numba_scan, None)
    return _numba_cache


def _why_unavailable(name: str, tensor: torch.Tensor | None) -> str | None:
    """None when ``name`` can run on ``tensor``'s device, else a sentence saying why not and how to fix."""
    device = tensor.device.type if tensor is not None else "cpu"
    if name == "cuda":
        reasons = []
        fn, why = mamba_selective_scan_fn()
        if fn is None:
            reasons.append(why)
        if not torch.cuda.is_available():
            reasons.append("PyTorch sees no CUDA GPU")
        if device != "cuda":
            reasons.append(f"the tensors are on '{device}'")
        if not reasons:
            return None
        return (
            "selective_scan backend 'cuda' is unavailable: "
            + "; ".join(reasons)
            + ". To fix: install the kernel with `pip install 'vmunet[cuda]'` on a machine with CUDA, "
            "move the tensors to the GPU (e.g. `x.to('cuda')`), or choose another backend "
            f"(backend='cpu'|'torch', or unset {ENV_VAR})."
        )
    if name == "cpu":
        mod, why = numba_kernels()
        if mod is None:
            return (
                f"selective_scan backend 'cpu' is unavailable: {why}. Install numba or use backend='torch'."
            )
        if device != "cpu":
            return (
                f"selective_scan backend 'cpu' runs on CPU tensors only, but the tensors are on '{device}'. "
                "Use backend='cuda' or 'torch' for GPU tensors."
            )
        return None
    return None  # torch and reference run anywhere


def available_backends(tensor: torch.Tensor | None = None) -> list[str]:
    """Names of the backends that can run here (for ``tensor``'s device; CPU when None), fastest first.

    Example:
        >>> from vmunet.ops import available_backends
        >>> "torch" in available_backends()
        True
    """
    return [name for name in BACKENDS if _why_unavailable(name, tensor) is None]


def resolve_backend(backend: str | None, tensor: torch.Tensor | None = None) -> str:
    """Pick the scan backend: ``backend`` if given, else ``$VMUNET_SCAN_BACKEND``, else automatic.

    Automatic: "cuda" when mamba-ssm imports and ``tensor`` is on a CUDA device, else "cpu" (numba
    kernels) for CPU tensors when numba imports, else "torch".

    Raises:
        ValueError: unknown backend name.
        ScanBackendUnavailableError: the named backend cannot run here (the message says why).

    Example:
        >>> import torch
        >>> from vmunet.ops import resolve_backend
        >>> resolve_backend("torch", torch.zeros(1))
        'torch'
    """
    source = "backend"
    name = backend
    if name is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env and env.lower() != "auto":
            name, source = env, f"environment variable {ENV_VAR}"
    if name is not None and (not isinstance(name, str) or name.lower() != "auto"):
        if not isinstance(name, str) or name.lower() not in BACKENDS:
            raise ValueError(
                f"selective_scan: unknown {source} {name!r}; valid names are "
                f"{', '.join(map(repr, BACKENDS))} "
                "(or 'auto' / None for automatic choice)"
            )
        name = name.lower()
        why = _why_unavailable(name, tensor)
        if why is not None:
            raise ScanBackendUnavailableError(why + (f" (chosen by {source})" if source != "backend" else ""))
        return name
    for cand in ("cuda", "cpu"):
        if _why_unavailable(cand, tensor) is None:
            return cand
    return "torch"
