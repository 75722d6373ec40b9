"""Intensity normalisation described by a small, serialisable spec dict.

The same spec is stored in checkpoints (``ckpt["inference"]["normalization"]``)
so inference normalises exactly as training did. Kinds (``docs/contracts.md``):

* ``{"kind": "imagenet"}``: ImageNet mean/std for 0-255 RGB (channels last).
* ``{"kind": "meanstd", "mean": [...], "std": [...]}``: per-channel (channels last),
  or one value for all channels. Values are in the array's own units (0-255 for RGB).
* ``{"kind": "window", "min": -125, "max": 275}``: clip, then scale to [0, 1]
  (the TransUNet CT window for Synapse).
* ``{"kind": "zscore"}``: subtract the mean, divide by the std of the whole array;
  ``"nonzero": true`` takes the statistics over non-zero voxels only.
* ``{"kind": "ct", "min": lo, "max": hi, "mean": m, "std": s}``: clip to ``[lo, hi]``, then
  ``(x - m) / s`` (nnU-Net's CT scheme; ``vmunet plan`` fills in the data set's foreground statistics).
* ``{"kind": "minmax"}``: scale to [0, 1]; optional ``"percentiles": [lo, hi]``
  clips to those percentiles first.
* ``{"kind": "none"}``: cast to float32.

Example:
    >>> import numpy as np
    >>> x = np.array([-200.0, -125.0, 75.0, 400.0])
    >>> normalize_intensity(x, {"kind": "window", "min": -125, "max": 275}).tolist()
    [0.0, 0.0, 0.5, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "as_channels",
    "normalize_intensity",
    "check_normalization",
    "NORMALIZATION_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

# torchvision's ImageNet statistics, expressed for 0-255 pixel values.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

NORMALIZATION_KINDS = ("imagenet", "meanstd", "window", "zscore", "minmax", "ct", "none")
_ALLOWED_KEYS = {
    "imagenet": set(),
    "meanstd": {"mean", "std"},
    "window": {"min", "max"},
    "zscore": {"nonzero"},
    "minmax": {"percentiles"},
    # nnU-Net's CT scheme: clip to the data set's foreground percentiles, then z-score with its
    # foreground mean / std (the same numbers for every scan)
    "ct": {"min", "max", "mean", "std"},
    "none": set(),
}


def _per_channel(array: np.ndarray, values: Sequence[float] | float, name: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(values, dtype=np.float32))
    if v.size == 1:
        return v.reshape(())
    if array.ndim < 3 or array.shape[-1] != v.size:
        raise ValueError(
            f"normalization {name!r} has {v.size} values but the image has shape {array.shape}; "
            f"expected {v.size} channels last"
        )
    return v


def check_normalization(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a normalisation spec (kind, keys, required values) without data; returns a copy.

    Raises:
        ValueError: naming the bad kind or key.
    """
    spec = dict(spec or {"kind": "none"})
    kind = spec.get("kind")
    if kind not in _ALLOWED_KEYS:
        raise ValueError(
            f"normalization kind {kind!r} is unknown; expected one of {list(NORMALIZATION_KINDS)}"
        )
    extra = set(spec) - _ALLOWED_KEYS[kind] - {"kind"}
    if extra:
        raise ValueError(
            f"normalization {kind!r} got unknown key(s) {sorted(extra)}; "
            f"allowed: {sorted(_ALLOWED_KEYS[kind])}"
        )
    needs = {"meanstd": ("mean", "std"), "window": ("min", "max"), "ct": ("min", "max", "mean", "std")}
    required = needs.get(kind, ())
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"normalization {kind!r} needs {list(required)}; missing {missing}")
    return spec


def normalize_intensity(array: np.ndarray, spec: Mapping[str, Any] | None) -> np.ndarray:
    """Normalise ``array`` as ``spec`` describes; returns a new float32 array.

    Args:
        array: image, channels last for multi-channel pictures.
        spec: a dict with ``"kind"`` in :data:`NORMALIZATION_KINDS` plus that kind's
            keys (see the module docstring). ``None`` means ``{"kind": "none"}``.

    Raises:
        ValueError: unknown kind, unknown or missing key, or channel count mismatch.
    """
    spec = check_normalization(spec)
    kind = spec.pop("kind")
    x = np.asarray(array, dtype=np.float32)
    if kind == "none":
        return x.copy()
    if kind in ("imagenet", "meanstd"):
        if kind == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            if "mean" not in spec or "std" not in spec:
                raise ValueError("normalization 'meanstd' needs both 'mean' and 'std'")
            mean, std = spec["mean"], spec["std"]
        m = _per_channel(x, mean, "mean")
        s = _per_channel(x, std, "std")
        if np.any(s == 0):
            raise ValueError(f"normalization {kind!r}: std must be non-zero, got {std}")
        return (x - m) / s
    if kind == "window":
        if "min" not in spec or "max" not in spec:
            raise ValueError("normalization 'window' needs 'min' and 'max'")
        lo, hi = float(spec["min"]), float(spec["max"])
        if not hi > lo:
            raise ValueError(f"normalization 'window': 'max' ({hi}) must be greater than 'min' ({lo})")
        return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if kind == "ct":
        lo, hi, std = float(spec["min"]), float(spec["max"]), float(spec["std"])
        if not hi >= lo or not std > 0:
            raise ValueError(f"normalization 'ct': need max >= min and std > 0, got {spec}")
        return ((np.clip(x, lo, hi) - float(spec["mean"])) / std).astype(np.float32)
    if kind == "zscore":
        sel = x[x != 0] if spec.get("nonzero") else x
        if sel.size == 0:
            return np.zeros_like(x)
        mean = float(sel.mean(dtype=np.float64))
        std = float(sel.std(dtype=np.float64))
        return ((x - mean) / std).astype(np.float32) if std > 0 else (x - mean).astype(np.float32)
    # minmax
    if "percentiles" in spec:
        lo_p, hi_p = spec["percentiles"]
        lo, hi = np.percentile(x, [lo_p, hi_p])
        x = np.clip(x, lo, hi)
    else:
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return ((x - lo) / (hi - lo)).astype(np.float32)


#: (channels in the file, channels the model takes) pairs that :func:`as_channels` converts.
CONVERTIBLE_CHANNELS = frozenset({(1, 3), (4, 3), (3, 1), (4, 1)})

_CHANNEL_KIND = {1: "grayscale", 2: "2-channel", 3: "RGB", 4: "RGBA"}


def as_channels(image: np.ndarray, channels: int | None, where: object, spatial_ndim: int = 2) -> np.ndarray:
    """``(*spatial[, C])`` -> ``(*spatial, channels)``: the one channel rule of training and inference.

    Grayscale is repeated to 3 channels, RGBA loses its alpha, RGB(A) becomes grayscale by the
    channel mean (float32); an equal count passes unchanged; ``channels=None`` keeps the file's.

    Args:
        image: ``spatial_ndim`` spatial axes, optionally followed by one channel axis.
        channels: the channel count wanted (the model's ``in_channels``), or ``None``.
        where: the file (or a description) named in the error.
        spatial_ndim: 2 for pictures and slices, 3 for volumes.

    Raises:
        InputFileError: the shape has the wrong number of axes, or the channels cannot be converted.

    Example:
        >>> as_channels(np.zeros((4, 5)), 3, "a.png").shape
        (4, 5, 3)
    """
    from vmunet.errors import InputFileError

    if image.ndim == spatial_ndim:
        image = image[..., None]
    if image.ndim != spatial_ndim + 1:
        axes = "(H, W) or (H, W, C)" if spatial_ndim == 2 else "(X, Y, Z) or (X, Y, Z, C)"
        raise InputFileError(where, f"expected {spatial_ndim} spatial axes {axes}, got shape {image.shape}")
    have = int(image.shape[-1])
    if channels is None or have == channels:
        return image
    if (have, channels) not in CONVERTIBLE_CHANNELS:
        kind = _CHANNEL_KIND.get(have, f"{have}-channel")
        raise InputFileError(
            where,
            f"image has {have} channel(s) ({kind}, shape {image.shape}) but the model expects {channels}",
        )
    if channels == 3 and have == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3 and have == 4:
        return image[..., :3]
    return image[..., :3].mean(axis=-1, keepdims=True, dtype=np.float32)
