"""Augmentation recipes, selectable by name from a config.

2-D recipes are albumentations pipelines called as ``t(image=img, mask=mask)``
on numpy arrays (image ``(H, W)`` or ``(H, W, C)``, mask ``(H, W)``); the same
random geometry is applied to both, with nearest-neighbour interpolation for
the mask. The intensity normalisation (:func:`vmunet.data.normalize_intensity`
spec) runs first, as in the public VM-UNet pipeline, so rotation fill is 0 in
normalised units.

Recipes (``train=True``; with ``train=False`` every recipe is normalise + resize):

* ``"isic"``: the VM-UNet ISIC recipe (JCruan519/VM-UNet ``configs/config_setting.py``):
  normalise, horizontal flip p=0.5, vertical flip p=0.5, rotation p=0.5 by an
  angle drawn afresh for each sample from [0, 360), resize to ``size`` (256).
* ``"synapse"``: the TransUNet / VM-UNet Synapse ``RandomGenerator``: with
  p=0.5 a random multiple of 90 degrees plus a random flip, otherwise with
  p=0.5 a rotation within +-20 degrees (nearest, as the original), then resize
  to ``size`` (224; cubic for the image, nearest for the label).
* ``"light"``: horizontal flip p=0.5 and rotation within +-15 degrees, resize
  (used by the demo).
* ``"none"``: normalise and resize only.

:func:`build_volume_transforms` gives a small 3-D MONAI recipe for volumes.

Example:
    >>> import numpy as np
    >>> t = build_transforms("isic", size=64, train=True)
    >>> out = t(image=np.zeros((80, 90, 3), np.uint8), mask=np.zeros((80, 90), np.uint8))
    >>> out["image"].shape, out["mask"].shape
    ((64, 64, 3), (64, 64))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from vmunet.data.transforms import check_normalization, normalize_intensity  # noqa: E402

__all__ = ["build_transforms", "build_volume_transforms", "RECIPES"]

RECIPES = ("isic", "synapse", "light", "none")


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    s = tuple(int(v) for v in size)
    if len(s) != 2 or min(s) < 1:
        raise ValueError(f"size must be an int or [H, W] of positive ints, got {size!r}")
    return s  # type: ignore[return-value]


def _normalizer(spec: Mapping[str, Any] | None) -> A.BasicTransform:
    spec = dict(spec) if spec else None
    if spec:
        check_normalization(spec)  # fail at build time, not in a worker process

    def fn(image: np.ndarray, **_: Any) -> np.ndarray:
        return normalize_intensity(image, spec) if spec else np.asarray(image, dtype=np.float32)

    return A.Lambda(image=fn, name="normalize_intensity", p=1.0)


def build_transforms(
    name: str,
    size: int | Sequence[int],
    train: bool,
    normalization: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> Callable[..., dict[str, np.ndarray]]:
    """Build a named 2-D recipe.

    Args:
        name: one of :data:`RECIPES`.
        size: output ``H`` (square) or ``[H, W]``.
        train: random augmentation (True) or deterministic evaluation pipeline (False).
        normalization: a :func:`~vmunet.data.normalize_intensity` spec applied
            first; ``None`` only casts to float32.
        seed: seed of the pipeline's own generator (albumentations ``Compose(seed=...)``).

    Returns:
        An ``albumentations.Compose``: call it as ``t(image=..., mask=...)``.

    Raises:
        ValueError: unknown recipe name or bad size.
    """
    if name not in RECIPES:
        raise ValueError(f"augmentation {name!r} is unknown; expected one of {list(RECIPES)}")
    h, w = _size2(size)
    ops: list[Any] = [_normalizer(normalization)]
    if train and name == "isic":
        ops += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Rotate(
                limit=(0, 360),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
        ]
    elif train and name == "synapse":
        rot_flip = A.Sequential(
            [A.RandomRotate90(p=1.0), A.OneOf([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)], p=1.0)],
            p=2 / 3,
        )
        rotate = A.Rotate(
            limit=(-20, 20),
            interpolation=cv2.INTER_NEAREST,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=1 / 3,
        )
        # OneOf weights 2/3 : 1/3 with p=0.75 -> rot90+flip 0.5, rotate 0.25, nothing 0.25,
        # the probabilities of the public RandomGenerator.
        ops += [A.OneOf([rot_flip, rotate], p=0.75)]
    elif train and name == "light":
        ops += [
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=(-15, 15), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5),
        ]
    interp = cv2.INTER_CUBIC if name == "synapse" else cv2.INTER_LINEAR
    ops.append(A.Resize(h, w, interpolation=interp, mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    return A.Compose(ops, seed=seed, strict=False)


def build_volume_transforms(
    size: Sequence[int],
    train: bool,
    keys: Sequence[str] = ("image", "label"),
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A small 3-D MONAI recipe for channel-first volumes ``(C, X, Y, Z)``.

    Training: pad to ``size``, random crop of ``size`` (foreground-centred half
    of the time), random flips on each axis and a random 90-degree turn in the
    axial plane (p=0.5 each), random intensity scale and shift (+-10 %).
    Evaluation: nothing (sliding-window inference takes whole volumes).

    Example:
        >>> import numpy as np
        >>> t = build_volume_transforms((16, 16, 8), train=True)
        >>> out = t({"image": np.zeros((1, 20, 20, 10), np.float32), "label": np.zeros((1, 20, 20, 10))})
        >>> tuple(out["image"].shape)
        (1, 16, 16, 8)
    """
    from monai import transforms as mt

    keys = list(keys)
    if not train:
        return mt.Compose([mt.EnsureTyped(keys=keys, track_meta=False)])
    size = [int(s) for s in size]
    pipeline = mt.Compose(
        [
            mt.EnsureTyped(keys=keys, track_meta=False),
            mt.SpatialPadd(keys=keys, spatial_size=size),
            mt.RandCropByPosNegLabeld(
                keys=keys,
                label_key=keys[1],
                spatial_size=size,
                pos=1,
                neg=1,
                num_samples=1,
                allow_smaller=True,
            ),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            mt.RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),
            mt.RandScaleIntensityd(keys=keys[0], factors=0.1, prob=0.5),
            mt.RandShiftIntensityd(keys=keys[0], offsets=0.1, prob=0.5),
        ]
    )
    return _FirstSample(pipeline)


class _FirstSample:
    # RandCropByPosNegLabeld returns a list of num_samples dicts; we ask for one.
    def __init__(self, pipeline: Callable[[dict[str, Any]], Any]) -> None:
        self.pipeline = pipeline

    def set_random_state(self, seed: int | None = None) -> _FirstSample:
        self.pipeline.set_random_state(seed=seed)
        return self

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = self.pipeline(data)
        return out[0] if isinstance(out, list) else out
