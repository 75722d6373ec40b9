"""What a checkpoint says about running its model, and what a prediction returns.

* :class:`InferenceSpec`: the checkpoint's ``"inference"`` dict, validated (errors name the key).
* :class:`Prediction`: a label map (and optionally probabilities) for one image or volume.

See ``docs/contracts.md`` for the checkpoint format.

Example:
    >>> spec = InferenceSpec.from_dict({"in_channels": 1, "out_channels": 1, "threshold": 0.3})
    >>> spec.activation, spec.threshold
    ('sigmoid', 0.3)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vmunet.errors import VmunetUserError
from vmunet.inference.inferers import SIZE_MULTIPLE

__all__ = ["InferenceSpec", "Prediction"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceSpec:
    """What a checkpoint says about how to run its model (``ckpt["inference"]``).

    Attributes:
        in_channels: channels the model expects.
        out_channels: channels (K) of the logits.
        input_size: training patch ``(H, W)``; ``None`` predicts each image whole.
        resize: resize every image to ``input_size`` and back (else sliding window).
        normalization: :func:`vmunet.data.normalize_intensity` spec.
        class_names: one name per label value (``0 .. n_labels-1``).
        activation: ``"sigmoid"`` or ``"softmax"``.
        spatial_dims: 2 (pictures; volumes slice by slice) or 3 (volumes whole, sliding window).
        spacing: 3-D only: the training voxel size ``(X, Y, Z)`` in mm volumes are resampled
            to (``None``: each volume is predicted on its own grid).
        threshold: sigmoid models: the probability from which a pixel is foreground
            (``eval.threshold`` of the training recipe).
        overlap: sliding-window overlap in [0, 1) (``eval.overlap`` of the recipe).

    Example:
        >>> spec = InferenceSpec.from_dict({"in_channels": 1, "out_channels": 2, "input_size": [64, 64]})
        >>> spec.activation, spec.class_names, spec.threshold, spec.overlap
        ('softmax', ('background', 'class_1'), 0.5, 0.5)
    """

    in_channels: int
    out_channels: int
    input_size: tuple[int, ...] | None = None
    resize: bool = False
    normalization: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})
    class_names: tuple[str, ...] = ()
    activation: str = "sigmoid"
    spatial_dims: int = 2
    spacing: tuple[float, float, float] | None = None
    threshold: float = 0.5
    overlap: float = 0.5

    @property
    def n_labels(self) -> int:
        """Number of label values in the label map (background included)."""
        if self.activation == "sigmoid":
            return self.out_channels + 1
        return self.out_channels

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "checkpoint") -> InferenceSpec:
        """Validate a checkpoint's ``"inference"`` dict; errors name the key."""

        def bad(key: str, why: str) -> VmunetUserError:
            return VmunetUserError(f"{source}: inference.{key} {why}")

        if not isinstance(d, Mapping):
            raise VmunetUserError(f"{source}: 'inference' must be a dict, got {type(d).__name__}")
        sd = d.get("spatial_dims", 2)
        if sd not in (2, 3):
            raise bad("spatial_dims", f"must be 2 or 3, got {sd!r}")
        sd = int(sd)
        out: dict[str, Any] = {"spatial_dims": sd}
        for key in ("in_channels", "out_channels"):
            v = d.get(key)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise bad(key, f"must be a positive integer, got {v!r}")
            out[key] = int(v)
        size = d.get("input_size")
        if sd == 3:
            try:
                roi = tuple(int(s) for s in size)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise bad("input_size", f"must be the 3-D patch [X, Y, Z], got {size!r}") from None
            if len(roi) != 3 or any(s < 1 for s in roi):
                raise bad("input_size", f"must be the 3-D patch [X, Y, Z], got {size!r}")
            out["input_size"] = roi
            sp = d.get("spacing")
            if sp is not None:
                try:
                    sp_t = tuple(float(s) for s in sp)
                except (TypeError, ValueError):
                    raise bad("spacing", f"must be [X, Y, Z] in mm, got {sp!r}") from None
                if len(sp_t) != 3 or any(not s > 0 for s in sp_t):
                    raise bad("spacing", f"must be three positive mm values [X, Y, Z], got {sp!r}")
                out["spacing"] = sp_t
            if d.get("resize"):
                raise bad("resize", "must be false for a 3-D model (volumes go through a sliding window)")
            size = None
        elif size is not None:
            try:
                size_t = tuple(int(s) for s in size)
            except (TypeError, ValueError):
                raise bad("input_size", f"must be [H, W], got {size!r}") from None
            if len(size_t) != 2 or any(s < SIZE_MULTIPLE or s % SIZE_MULTIPLE for s in size_t):
                raise bad("input_size", f"must be [H, W], multiples of {SIZE_MULTIPLE}, got {size!r}")
            out["input_size"] = size_t
        out["resize"] = bool(d.get("resize", False)) and sd == 2
        if out["resize"] and size is None:
            raise bad("resize", "is true but inference.input_size is missing")
        norm = d.get("normalization") or {"kind": "none"}
        if not isinstance(norm, Mapping) or "kind" not in norm:
            raise bad("normalization", f"must be a dict with a 'kind', got {norm!r}")
        out["normalization"] = dict(norm)
        act = d.get("activation") or ("sigmoid" if out["out_channels"] == 1 else "softmax")
        if act not in ("sigmoid", "softmax"):
            raise bad("activation", f"must be 'sigmoid' or 'softmax', got {act!r}")
        if act == "softmax" and out["out_channels"] < 2:
            raise bad("activation", "is 'softmax' but out_channels is 1 (use 'sigmoid')")
        out["activation"] = act
        n_labels = out["out_channels"] + 1 if act == "sigmoid" else out["out_channels"]
        names = [str(n) for n in (d.get("class_names") or [])]
        if len(names) == n_labels - 1:
            names = ["background", *names]
        if len(names) != n_labels:
            if names:
                logger.warning(
                    "%s: inference.class_names has %d names for %d labels; using generic names",
                    source,
                    len(names),
                    n_labels,
                )
            names = ["background"] + [f"class_{i}" for i in range(1, n_labels)]
        out["class_names"] = tuple(names)
        for key, default, ok, allowed in (
            ("threshold", 0.5, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("overlap", 0.5, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
        ):
            v = d.get(key)
            if v is None:
                out[key] = default
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not ok(v):
                raise bad(key, f"must be a number {allowed}, got {v!r}")
            out[key] = float(v)
        return cls(**out)


# --------------------------------------------------------------------------- prediction


@dataclass
class Prediction:
    """A label map (and optionally probabilities) for one image or volume.

    Attributes:
        labels: ``uint8`` (``uint16`` past 255 labels) label map with the input's spatial shape.
        probabilities: ``(*spatial, K)`` float32 (or uint8 = p x 255) class probabilities, or ``None``.
        image: the input with its geometry (the array may be dropped to save memory).
        class_names: name of each label value.
        axis: slicing axis used for a volume, else ``None``.
        seconds: time spent predicting.

    Example:
        >>> import numpy as np
        >>> p = Prediction(np.array([[0, 1], [1, 1]], np.uint8), None, None, ("background", "lesion"))
        >>> p.voxel_counts()
        {'background': 1, 'lesion': 3}
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    image: Any
    class_names: tuple[str, ...]
    axis: int | None = None
    seconds: float = 0.0

    def voxel_counts(self) -> dict[str, int]:
        """Number of pixels / voxels per label value, by class name."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}
