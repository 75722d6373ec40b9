"""Training checkpoints: atomic writes, ``weights_only=True`` loading, RNG state capture.

A checkpoint is a plain dict in the format of docs/contracts.md (``format``,
``arch``, ``model``, ``inference``, versions) plus the training state
(optimizer, scheduler, scaler, epoch, step, RNG states, config, metrics). All
RNG states are stored as tensors and plain numbers so that
``torch.load(..., weights_only=True)`` reads it.

Example:
    >>> import torch
    >>> from vmunet.train.checkpoint import capture_rng_state, restore_rng_state
    >>> state = capture_rng_state()
    >>> a = torch.rand(1); restore_rng_state(state); b = torch.rand(1)
    >>> bool(a == b)
    True
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmunet.errors import InputFileError
from vmunet.utils.io import atomic_path

__all__ = [
    "capture_rng_state",
    "load_training_checkpoint",
    "restore_rng_state",
    "save_training_checkpoint",
]


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain numbers."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the global state is what we save
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_training_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to a temporary sibling, then rename it onto ``path``.

    A kill at any moment leaves either the previous file or the new one, never a torn file.
    """
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def load_training_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        InputFileError: missing file, unreadable file, or not a vmunet checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise InputFileError(p, f"cannot read the checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "vmunet" or "model" not in ckpt:
        raise InputFileError(p, "not a vmunet checkpoint (expected a dict with format='vmunet' and 'model')")
    return ckpt
