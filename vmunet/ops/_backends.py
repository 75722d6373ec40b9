"""Backend registry, lazy detection of optional kernels and backend resolution.

The kernel modules (``_triton_scan``, ``_triton_cross``, ``_numba_scan``) are imported here, lazily,
and never import this module back: each owns its constants (``_triton_scan.CHUNK``,
``_numba_scan.TILE``), and callers read them from the module that :func:`triton_kernels` or
:func:`numba_kernels` returns.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

import torch

from vmunet.errors import VmunetUserError

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "ScanBackendUnavailableError",
    "available_backends",
    "resolve_backend",
    "mamba_kernel_check",
    "mamba_selective_scan_fn",
    "numba_kernels",
    "triton_cross_kernels",
    "triton_kernels",
]

logger = logging.getLogger(__name__)

ENV_VAR = "VMUNET_SCAN_BACKEND"
#: every backend name, fastest first
BACKENDS = ("triton", "cuda", "cpu", "chunked", "torch", "reference")


class ScanBackendUnavailableError(VmunetUserError, RuntimeError):
    """A selective-scan backend was asked for but cannot run here; the message says why and how to fix it."""


_UNSET = object()
_mamba_cache: Any = _UNSET  # (selective_scan_fn or None, reason or None)
_numba_cache: Any = _UNSET  # (module or None, reason or None)
_triton_cache: Any = _UNSET  # (module or None, reason or None)
_triton_cross_cache: Any = _UNSET  # module or None
_mamba_check_cache: dict[str, str | None] = {}  # device -> why the kernel check failed, or None


def _module_present(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it.

    A module already in ``sys.modules`` counts as present even without a ``__spec__`` (stubs, some
    test doubles, modules created by hand): ``importlib.util.find_spec`` raises ValueError for those.
    """
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def mamba_selective_scan_fn() -> tuple[Any, str | None]:
    """Import mamba-ssm's ``selective_scan_fn`` once, on first use. Returns (fn or None, reason).

    An import that succeeds does not prove the CUDA kernel was built (mamba-ssm imports without it
    since state-spaces/mamba PR #977); ``_why_unavailable`` also runs ``mamba_kernel_check`` once per
    device before the "cuda" backend is used.
    """
    global _mamba_cache
    if _mamba_cache is _UNSET:
        if not _module_present("mamba_ssm"):
            _mamba_cache = (None, "mamba-ssm is not installed")
        else:
            try:
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            except Exception as exc:  # no CUDA build / no libcuda / a broken or stub install
                _mamba_cache = (None, f"mamba-ssm is installed but failed to import ({_one_line(exc)})")
            else:
                _mamba_cache = (selective_scan_fn, None)
        if _mamba_cache[1]:
            logger.debug("cuda scan backend unavailable: %s", _mamba_cache[1])
    return _mamba_cache


def mamba_kernel_check(fn: Any, device: torch.device) -> str | None:
    """Run ``fn`` (mamba-ssm's ``selective_scan_fn``) once on tiny tensors on ``device`` and compare it
    with the float64 reference. None when it ran and matched, else a sentence saying what failed."""
    from vmunet.ops._reference import selective_scan_reference

    g = torch.Generator().manual_seed(0)
    b, d, n, length = 1, 2, 2, 5
    u, delta = torch.randn(b, d, length, generator=g), torch.randn(b, d, length, generator=g) * 0.5
    A = -torch.rand(d, n, generator=g) - 0.5
    B, C = torch.randn(b, 1, n, length, generator=g), torch.randn(b, 1, n, length, generator=g)
    D = torch.ones(d)
    try:
        out = fn(*(t.to(device) for t in (u, delta, A, B, C, D)), delta_softplus=True)
        ref, _ = selective_scan_reference(*(t.double() for t in (u, delta, A, B, C, D)), delta_softplus=True)
        out = out[0] if isinstance(out, tuple) else out
        if tuple(out.shape) != tuple(ref.shape) or not torch.allclose(
            out.detach().double().cpu(), ref, rtol=1e-3, atol=1e-3
        ):
            return "mamba-ssm's selective_scan_fn ran but gave wrong values in a tiny check call"
    except Exception as exc:  # the kernel is missing, built for another GPU, or built against another torch
        return f"mamba-ssm imports, but its CUDA kernel failed a tiny check call ({_one_line(exc)})"
    return None


def _mamba_runs(device: torch.device) -> str | None:
    key = str(device)
    if key not in _mamba_check_cache:
        fn, why = mamba_selective_scan_fn()
        _mamba_check_cache[key] = why if fn is None else mamba_kernel_check(fn, device)
        if _mamba_check_cache[key]:
            logger.debug("cuda scan backend unavailable on %s: %s", key, _mamba_check_cache[key])
    return _mamba_check_cache[key]


def triton_kernels() -> tuple[Any, str | None]:
    """Import the Triton scan kernels once, on first use. Returns (module or None, reason)."""
    global _triton_cache
    if _triton_cache is _UNSET:
        if not _module_present("triton"):
            _triton_cache = (None, "triton is not installed")
        else:
            try:
                from vmunet.ops import _triton_scan
            except Exception as exc:  # a broken triton install
                _triton_cache = (None, f"triton failed to import ({_one_line(exc)})")
            else:
                _triton_cache = (_triton_scan, None)
        if _triton_cache[1]:
            logger.debug("triton scan backend unavailable: %s", _triton_cache[1])
    return _triton_cache


def triton_cross_kernels() -> Any:
    """The Triton cross-scan / cross-merge module for CUDA tensors, or None (imported once, lazily)."""
    global _triton_cross_cache
    if _triton_cross_cache is _UNSET:
        _triton_cross_cache = None
        if _module_present("triton"):
            try:
                from vmunet.ops import _triton_cross
            except Exception as exc:
                logger.debug("triton cross-scan unavailable: %s", _one_line(exc))
            else:
                _triton_cross_cache = _triton_cross
    return _triton_cross_cache


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


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
            why = _mamba_runs(tensor.device)
            if why is None:
                return None
            reasons.append(why)
        return (
            "selective_scan backend 'cuda' is unavailable: "
            + "; ".join(reasons)
            + ". To fix: build the kernel with `MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation "
            "'vmunet[cuda]'` (see docs/install-gpu.md), move the tensors to the GPU (e.g. "
            "`x.to('cuda')`), or choose another backend (backend='triton'|'torch', or unset "
            f"{ENV_VAR})."
        )
    if name == "triton":
        if device == "cpu" and not _interpreting():
            return (
                "selective_scan backend 'triton' runs on CUDA tensors, but the tensors are on 'cpu' (and "
                "TRITON_INTERPRET=1, Triton's slow interpreter for tests, is not set). To fix: move the "
                "tensors to the GPU (e.g. `x.to('cuda')`) or use backend='cpu'|'torch'."
            )
        if device not in ("cuda", "cpu"):
            return (
                f"selective_scan backend 'triton' runs on CUDA tensors, but the tensors are on '{device}'. "
                "To fix: move them to a CUDA GPU or use backend='torch'."
            )
        mod, why = triton_kernels()
        if mod is None:
            return (
                f"selective_scan backend 'triton' is unavailable: {why}. To fix: install a CUDA build of "
                "PyTorch (it ships triton) or `pip install triton`, or use backend='torch'."
            )
        if device == "cpu" and not mod.INTERPRET:
            return (
                "selective_scan backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton "
                "is first imported (this process imported the kernels without it). To fix: set it at "
                "start-up, or use backend='cpu'|'torch'."
            )
        return None
    if name == "cpu":
        mod, why = numba_kernels()
        if mod is None:
            return (
                f"selective_scan backend 'cpu' is unavailable: {why}. Install numba or use backend='torch'."
            )
        if device != "cpu":
            return (
                f"selective_scan backend 'cpu' runs on CPU tensors only, but the tensors are on '{device}'. "
                "Use backend='triton', 'cuda' or 'torch' for GPU tensors."
            )
        return None
    return None  # chunked, torch and reference run anywhere


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

    Automatic: for CUDA tensors "triton" when triton imports, else "cuda" when mamba-ssm's kernel
    passes its check call, else "torch"; for CPU tensors "cpu" (numba kernels) when numba imports,
    else "torch".

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
    device = tensor.device.type if tensor is not None else "cpu"
    for cand in ("triton", "cuda") if device == "cuda" else ("cpu",):
        if _why_unavailable(cand, tensor) is None:
            return cand
    return "torch"
