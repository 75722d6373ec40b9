"""Split manifests of the public data sets (ISIC 2017, ISIC 2018, Synapse).

The JSON files ship inside the package (``vmunet/manifests/*.json``, listed in
``pyproject.toml`` package-data) so a non-editable install finds them; the
repository's ``data_manifests/`` folder holds the same files for reading.

Example:
    >>> m = load_manifest("synapse")
    >>> len(m["train"]), len(m["test"])
    (18, 12)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_manifest", "manifest_path", "seeded_split", "MANIFESTS", "synapse_label_lut"]

MANIFESTS = ("isic2017", "isic2018", "synapse")
_DIR = Path(__file__).resolve().parent.parent / "manifests"


def manifest_path(name: str) -> Path:
    """Path of the packaged manifest ``name``."""
    if name not in MANIFESTS:
        raise ValueError(f"manifest {name!r} is unknown; expected one of {list(MANIFESTS)}")
    return _DIR / f"{name}.json"


@functools.cache
def _load(name: str) -> str:
    return manifest_path(name).read_text()


def load_manifest(name: str) -> dict[str, Any]:
    """The manifest ``name`` as a fresh dict."""
    return json.loads(_load(name))


def seeded_split(
    ids: Sequence[str], ratios: dict[str, float] | None = None, seed: int = 42
) -> dict[str, list[str]]:
    """Split IDs into train / val / test deterministically (the ISIC 2018 rule).

    ``ids`` are sorted first, so the result does not depend on listing order.
    ``perm = default_rng(seed).permutation(N)``; the first ``floor(test * N)``
    go to test, the next ``floor(val * N)`` to val, the rest to train.

    Example:
        >>> s = seeded_split([f"{i:04d}" for i in range(10)], seed=0)
        >>> [len(s[k]) for k in ("train", "val", "test")]
        [7, 1, 2]
    """
    ratios = ratios or {"train": 0.7, "val": 0.1, "test": 0.2}
    if set(ratios) != {"train", "val", "test"} or abs(sum(ratios.values()) - 1) > 1e-6:
        raise ValueError(f"ratios must have keys train/val/test summing to 1, got {ratios}")
    ids = sorted(ids)
    n = len(ids)
    n_test = int(np.floor(ratios["test"] * n + 1e-9))
    n_val = int(np.floor(ratios["val"] * n + 1e-9))
    perm = np.random.default_rng(seed).permutation(n)
    test = sorted(ids[i] for i in perm[:n_test])
    val = sorted(ids[i] for i in perm[n_test : n_test + n_val])
    train = sorted(ids[i] for i in perm[n_test + n_val :])
    return {"train": train, "val": val, "test": test}


def synapse_label_lut() -> np.ndarray:
    """A 256-entry lookup table mapping raw BTCV labels (0-13) to the 8 Synapse organs (0 elsewhere)."""
    lut = np.zeros(256, dtype=np.uint8)
    for raw, new in load_manifest("synapse")["btcv_to_synapse"].items():
        lut[int(raw)] = new
    return lut
