"""Prediction strategies behind :class:`~vmunet.inference.Segmenter`, one per ``spatial_dims``.

* :class:`PlanarStrategy` (2-D checkpoints): pictures through the 2-D sliding window (or
  resize), volumes slice by slice, as before.
* :class:`VolumetricStrategy` (3-D checkpoints): each volume is resampled to the training
  spacing (MONAI ``Spacing``, bilinear), windowed like the training data, predicted whole
  by MONAI's gaussian ``sliding_window_inference`` with ``overlap`` (optionally averaged
  over flips of each axis), and the class probabilities are resampled back onto the
  input's own grid (``SpatialResample`` to the input affine and shape, bilinear) before
  the argmax, so the label map has the input's size, spacing, origin and direction.

Example:
    >>> from vmunet.inference.volumetric import strategy_for
    >>> strategy_for(2).__name__
    'PlanarStrategy'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vmunet.inference.predict import axial_axis, labels_from_probabilities

__all__ = ["PlanarStrategy", "VolumetricStrategy", "strategy_for"]

logger = logging.getLogger(__name__)


class PlanarStrategy:
    """2-D checkpoints: images whole (sliding window / resize), volumes slice by slice.

    Args:
        segmenter: the :class:`~vmunet.inference.Segmenter` it works for.

    Example:
        >>> PlanarStrategy.spatial_dims
        2
    """

    spatial_dims = 2

    def __init__(self, segmenter: Any) -> None:
        self.seg = segmenter

    def predict(
        self,
        img: Any,
        return_probabilities: bool,
        axis: int | None,
        progress: bool | Callable[[int], None],
    ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """``(labels, probabilities or None, slicing axis or None)`` of one image or volume."""
        if img.is_volume:
            return self.seg._predict_volume(img, return_probabilities, axis, progress)
        labels, probs = self.seg._predict_2d(img, return_probabilities)
        return labels, probs, None


class VolumetricStrategy:
    """3-D checkpoints: whole volumes at the training spacing, a gaussian sliding window, the input grid.

    A 2-D picture is refused with one message; a volume without spacing information is
    named in a warning and treated as 1 mm; a volume smaller than the ROI is padded by
    the sliding window and cropped back.

    Args:
        segmenter: the :class:`~vmunet.inference.Segmenter` it works for (model, spec,
            device, overlap, batch size, TTA).

    Example:
        >>> VolumetricStrategy.spatial_dims
        3
    """

    spatial_dims = 3

    def __init__(self, segmenter: Any) -> None:
        self.seg = segmenter

    def predict(
        self,
        img: Any,
        return_probabilities: bool,
        axis: int | None,
        progress: bool | Callable[[int], None],
    ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """``(labels, probabilities or None, axial axis)`` of one volume on its own grid."""
        from monai import transforms as mt
        from monai.data import MetaTensor

        from vmunet.data.volumes3d import intensity_transform, spacing_is_known

        seg, spec = self.seg, self.seg.spec
        arr = img.array
        if not img.is_volume:
            raise seg._bad(
                img,
                f"is a 2-D image (shape {arr.shape}) but the checkpoint holds a 3-D model (spatial_dims 3) "
                "that segments volumes only; use a 2-D checkpoint for pictures and slices",
            )
        seg._check_channels(img, arr, 3)
        spacing = tuple(float(s) for s in img.spacing)
        if not spacing_is_known(img):
            where = str(img.path) if img.path is not None else "input array"
            logger.warning("%s: no voxel spacing in the file; treating it as 1 mm", where)
            spacing = (1.0, 1.0, 1.0)
        x = np.asarray(seg._to_model_channels(arr, 3), dtype=np.float32)  # (X, Y, Z, C)
        x = np.moveaxis(x, -1, 0)
        shape = tuple(int(s) for s in x.shape[1:])
        affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
        vol = MetaTensor(torch.from_numpy(np.ascontiguousarray(x)), affine=affine)
        target = spec.spacing
        resample = target is not None and not np.allclose(target, spacing, rtol=1e-4, atol=1e-6)
        if resample:
            vol = mt.Spacing(pixdim=target, mode="bilinear")(vol)
        norm = intensity_transform(spec.normalization)
        if norm is not None:
            vol = norm({"image": vol})["image"]
        grid_affine = vol.affine.clone() if isinstance(vol, MetaTensor) else affine
        xt = (vol.as_tensor() if isinstance(vol, MetaTensor) else torch.as_tensor(vol)).float()[None]
        probs = self._probabilities(xt, bool(progress) and not callable(progress))  # (1, K, *grid)
        if resample:
            back = mt.SpatialResample(mode="bilinear", padding_mode="border")
            probs = back(MetaTensor(probs[0], affine=grid_affine), dst_affine=affine, spatial_size=shape)
            probs = (probs.as_tensor() if isinstance(probs, MetaTensor) else probs)[None]
        if tuple(probs.shape[2:]) != shape:  # guards against an off-by-one grid
            probs = torch.nn.functional.interpolate(probs, size=shape, mode="trilinear", align_corners=False)
        labels = labels_from_probabilities(probs, spec.activation, getattr(spec, "threshold", 0.5))
        labels = labels[0].cpu().numpy().astype(np.uint8 if spec.n_labels <= 256 else np.uint16)
        out_probs = None
        if return_probabilities:
            p = probs[0].permute(1, 2, 3, 0).cpu().numpy()
            if seg.probability_dtype == "uint8":
                out_probs = np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
            else:
                out_probs = np.ascontiguousarray(p, dtype=np.float32)
        if callable(progress):
            progress(shape[-1])
        return labels, out_probs, axial_axis(direction=img.direction, affine=img.affine)

    @torch.inference_mode()
    def _probabilities(self, x: torch.Tensor, bar: bool) -> torch.Tensor:
        """Class probabilities ``(1, K, *spatial)`` on the CPU; flip TTA averages 4 passes."""
        from monai.inferers import sliding_window_inference

        seg, spec = self.seg, self.seg.spec
        flips: list[tuple[int, ...]] = [()] + ([(2,), (3,), (4,)] if seg.tta else [])
        total = None
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            logits = sliding_window_inference(
                xi,
                spec.input_size,
                seg.batch_size,
                seg.model,
                overlap=seg.overlap,
                mode="gaussian",
                sw_device=seg.device,
                device=torch.device("cpu"),
                progress=bar,
            )
            logits = logits.float()  # type: ignore[union-attr]
            p = torch.sigmoid(logits) if spec.activation == "sigmoid" else torch.softmax(logits, dim=1)
            p = torch.flip(p, dims) if dims else p
            total = p if total is None else total + p
        return total / len(flips)  # type: ignore[operator]


def strategy_for(spatial_dims: int) -> type:
    """The strategy class for a checkpoint's ``spatial_dims`` (2 or 3)."""
    if spatial_dims == 3:
        return VolumetricStrategy
    return PlanarStrategy
