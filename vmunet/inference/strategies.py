"""Prediction strategies behind :class:`~vmunet.inference.Segmenter`: preprocess -> inferer -> postprocess.

A strategy knows the checkpoint's :class:`~vmunet.inference.spec.InferenceSpec` and the
run's :class:`RunOptions`, nothing else (no reference to the segmenter): it turns one
:class:`~vmunet.data.ImageData` into the network's input, hands it to an inferer of
:mod:`vmunet.inference.inferers`, and turns the probabilities into a label map on the
input's own grid.

The two halves are separate steps so that decoding and preprocessing can run in background
workers while the network predicts the previous input: :meth:`prepare` (CPU only, no
network: channel checks, normalisation, resampling) returns a :class:`PreparedInput`, and
:meth:`infer` (the inferer, then post-processing) turns it into labels
(:meth:`Segmenter.predict <vmunet.inference.Segmenter.predict>` is the two in turn); there is one
inference path whichever process prepared the input.

* :class:`PlanarStrategy` (2-D checkpoints): pictures through the 2-D inferer (sliding
  window, or resize when the checkpoint says so), volumes slice by slice
  (:class:`~vmunet.inference.inferers.SliceInferer`, bounded memory).
* :class:`VolumetricStrategy` (3-D checkpoints): each volume is resampled to the training
  spacing (MONAI ``Spacing``, bilinear), windowed like the training data, predicted whole
  by the 3-D gaussian sliding window, and the class probabilities are resampled back onto
  the input's own grid (``SpatialResample`` to the input affine and shape, bilinear)
  before the argmax, so the label map has the input's size, spacing, origin and direction.

Example:
    >>> from vmunet.inference.strategies import strategy_for
    >>> strategy_for(2).__name__
    'PlanarStrategy'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vmunet.data.io import spacing_is_known
from vmunet.data.transforms import as_channels, normalize_intensity
from vmunet.errors import InputFileError
from vmunet.inference.inferers import (
    SliceInferer,
    SlidingWindowInferer2D,
    SlidingWindowInferer3D,
    VmunetInferer,
    WholeImageInferer,
    label_dtype,
    labels_from_probabilities,
    probabilities_to_numpy,
)
from vmunet.inference.spec import InferenceSpec

__all__ = [
    "PlanarStrategy",
    "PreparedInput",
    "RunOptions",
    "VolumetricStrategy",
    "axial_axis",
    "input_error",
    "strategy_for",
]

logger = logging.getLogger(__name__)

#: Volumes with at least this many slices get their own progress bar (when bars are on).
SLICE_BAR_MIN = 32

Progress = bool | Callable[[int], None]


@dataclass(frozen=True)
class RunOptions:
    """How a segmentation run goes (the segmenter's arguments; the checkpoint supplies the rest).

    Attributes:
        device: where the network runs.
        batch_size: slices (volumes, 2-D model) per forward pass, and sliding windows per
            forward pass unless ``sw_batch_size`` is given.
        overlap: sliding-window overlap in [0, 1).
        threshold: sigmoid models: foreground from this probability.
        tta: flip test-time augmentation.
        axis: slicing axis of volumes for 2-D models (``None``: the axial one).
        probability_dtype: ``"float32"`` or ``"uint8"`` (p x 255) for returned probabilities.
        sw_batch_size: sliding windows per forward pass (MONAI ``sliding_window_inference``'s
            ``sw_batch_size``); ``None``: ``batch_size``.

    Example:
        >>> RunOptions(torch.device("cpu")).windows_per_pass
        4
    """

    device: torch.device
    batch_size: int = 4
    overlap: float = 0.5
    threshold: float = 0.5
    tta: bool = False
    axis: int | None = None
    probability_dtype: str = "float32"
    sw_batch_size: int | None = None

    @property
    def windows_per_pass(self) -> int:
        """Sliding windows per forward pass (``sw_batch_size``, else ``batch_size``)."""
        return self.batch_size if self.sw_batch_size is None else self.sw_batch_size


@dataclass
class PreparedInput:
    """One input decoded and preprocessed for the network, not yet predicted (:meth:`_Strategy.prepare`).

    Picklable (numpy arrays and CPU tensors), so a background worker can prepare it.

    Attributes:
        image: the input with its geometry (:class:`~vmunet.data.ImageData`).
        x: the network input ``(1, C, *spatial)`` on the CPU, or ``None`` for a volume a 2-D
            model segments slice by slice (its slices are preprocessed batch by batch).
        axis: the slicing axis (2-D model, volume) or the axial axis (3-D model), else ``None``.
        extra: strategy-specific values for post-processing (e.g. the resampling grid).
        seconds: time spent decoding and preparing.

    Example:
        >>> PreparedInput(image=None, x=torch.zeros(1, 1, 8, 8)).axis is None
        True
    """

    image: Any
    x: torch.Tensor | None = None
    axis: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def input_error(img: Any, why: str) -> Exception:
    """An :class:`InputFileError` naming the file, or a ``ValueError`` for an in-memory array."""
    if getattr(img, "path", None) is not None:
        return InputFileError(img.path, why)
    return ValueError(f"input array: {why}")


def _where(img: Any) -> object:
    return img.path if getattr(img, "path", None) is not None else "input array"


def _model_channels(img: Any, arr: np.ndarray, want: int, spatial: int) -> np.ndarray:
    """``arr`` with the model's channel count (:func:`vmunet.data.as_channels`), errors naming it."""
    try:
        return as_channels(arr, want, _where(img), spatial)
    except InputFileError as exc:
        raise input_error(img, exc.reason) from None


def _check_channels(img: Any, arr: np.ndarray, want: int, spatial: int) -> None:
    """Fail early (one message) when ``arr`` cannot become ``want`` channels; converts nothing."""
    _model_channels(img, arr[(slice(0, 1),) * min(spatial, arr.ndim)], want, spatial)


def axial_axis(direction: np.ndarray | None = None, affine: np.ndarray | None = None) -> int:
    """The array axis whose direction is most aligned with the physical z (S-I) axis.

    Column j of a direction matrix (ITK) or of an affine's 3x3 part (NIfTI) is the physical
    direction of array axis j; both conventions put z in row 2.

    Args:
        direction: ``(3, 3)`` direction cosines.
        affine: ``(4, 4)`` voxel-to-world matrix (used when given; its columns are normalised).

    Returns:
        0, 1 or 2; 2 when neither is given.

    Example:
        >>> axial_axis(direction=np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]))
        0
    """
    m: np.ndarray | None = None
    if affine is not None:
        m = np.asarray(affine, dtype=np.float64)[:3, :3]
    elif direction is not None:
        m = np.asarray(direction, dtype=np.float64)
        if m.shape != (3, 3):
            return 2
    if m is None:
        return 2
    norms = np.linalg.norm(m, axis=0)
    norms[norms == 0] = 1.0
    return int(np.argmax(np.abs(m[2] / norms)))


class _Strategy:
    spatial_dims = 2

    def __init__(self, spec: InferenceSpec, options: RunOptions) -> None:
        self.spec = spec
        self.options = options

    def prepare(self, img: Any, axis: int | None = None) -> PreparedInput:  # pragma: no cover - abstract
        """Decode-side work for one image (CPU, no network): checks, channels, normalisation, grid."""
        raise NotImplementedError

    def infer(
        self, prepared: PreparedInput, network: Any, return_probabilities: bool, progress: Progress = False
    ) -> tuple[np.ndarray, np.ndarray | None, int | None]:  # pragma: no cover - abstract
        """``(labels, probabilities or None, axis)`` of a prepared input: inferer, then post-processing."""
        raise NotImplementedError

    def _labels(self, probs: torch.Tensor) -> np.ndarray:
        """``(b, K, ...)`` probabilities -> ``(b, ...)`` label map in the spec's label dtype."""
        labels = labels_from_probabilities(probs, self.spec.activation, self.options.threshold)
        return labels.cpu().numpy().astype(label_dtype(self.spec.n_labels))

    def _probabilities(self, probs: torch.Tensor) -> np.ndarray:
        """``(b, K, ...)`` -> ``(b, ..., K)`` in the run's probability dtype."""
        return probabilities_to_numpy(probs, self.options.probability_dtype, channel_axis=1)


class PlanarStrategy(_Strategy):
    """2-D checkpoints: pictures through the 2-D inferer, volumes slice by slice.

    Args:
        spec: the checkpoint's inference spec.
        options: the run's options.

    Example:
        >>> spec = InferenceSpec.from_dict({"in_channels": 1, "out_channels": 2, "input_size": [64, 64]})
        >>> type(PlanarStrategy(spec, RunOptions(torch.device("cpu"))).inferer).__name__
        'SlidingWindowInferer2D'
    """

    spatial_dims = 2

    def __init__(self, spec: InferenceSpec, options: RunOptions) -> None:
        super().__init__(spec, options)
        act, tta = spec.activation, options.tta
        if spec.resize:
            self.inferer: VmunetInferer = WholeImageInferer(spec.input_size, True, activation=act, tta=tta)
        elif spec.input_size is not None:
            self.inferer = SlidingWindowInferer2D(
                spec.input_size, options.overlap, options.windows_per_pass, activation=act, tta=tta
            )
        else:
            self.inferer = WholeImageInferer(None, activation=act, tta=tta)

    def prepare(self, img: Any, axis: int | None = None) -> PreparedInput:
        """A picture normalised into ``(1, C, H, W)``; a volume checked (slices are prepared per batch)."""
        if img.is_volume:
            arr = img.array
            if arr.ndim not in (3, 4):
                raise input_error(img, f"expected 3 spatial axes (+ channels), got shape {arr.shape}")
            _check_channels(img, arr, self.spec.in_channels, 3)
            return PreparedInput(img, None, self.volume_axis(img, axis))
        arr = _model_channels(img, img.array, self.spec.in_channels, 2)
        x = normalize_intensity(arr if arr.shape[-1] > 1 else arr[..., 0], self.spec.normalization)
        x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)  # (C, H, W)
        return PreparedInput(img, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None])

    def infer(
        self, prepared: PreparedInput, network: Any, return_probabilities: bool, progress: Progress = False
    ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """``(labels, probabilities or None, slicing axis or None)`` of one prepared image or volume."""
        if prepared.x is None:
            assert prepared.axis is not None  # prepare resolved the slicing axis
            return self._volume(prepared.image, network, return_probabilities, prepared.axis, progress)
        p = self.inferer(prepared.x.to(self.options.device), network)
        probs = self._probabilities(p)[0] if return_probabilities else None
        return self._labels(p)[0], probs, None

    def volume_axis(self, img: Any, axis: int | None) -> int:
        """The slicing axis of a volume: the argument, the run's, else the axial one."""
        if axis is None:
            axis = self.options.axis
        if axis is None:
            if img.format == "h5":
                return 2  # TransUNet volumes are (H, W, Z): slices are array[..., k]
            return axial_axis(direction=img.direction, affine=img.affine)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be None, 0, 1 or 2, got {axis!r}")
        return int(axis)

    def _volume(
        self, img: Any, network: Any, return_probabilities: bool, ax: int, progress: Progress
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Slice by slice along ``ax`` (resolved by :meth:`prepare`)."""
        arr = img.array
        spec, where = self.spec, _where(img)

        def preprocess(block: np.ndarray) -> np.ndarray:
            # Each slice on its own, as the training slice datasets do (matters for zscore / minmax).
            out = [
                normalize_intensity(as_channels(sl, spec.in_channels, where, 2), spec.normalization)
                for sl in block
            ]
            return np.moveaxis(np.stack(out), -1, 1)  # (b, C, h, w)

        spatial = arr.shape[:3]
        labels = np.zeros(spatial, dtype=label_dtype(spec.n_labels))
        probs_out = None
        if return_probabilities:
            probs_out = np.zeros(
                (*spatial, spec.out_channels), dtype=np.dtype(self.options.probability_dtype)
            )
        slicer = SliceInferer(self.inferer, axis=ax, batch_size=self.options.batch_size)
        callback, bar = _slice_progress(progress, spatial[ax])
        try:
            for idx, p in slicer.iter_batches(arr, network, preprocess, self.options.device):
                np.moveaxis(labels, ax, 0)[idx] = self._labels(p)
                if probs_out is not None:
                    np.moveaxis(probs_out, ax, 0)[idx] = self._probabilities(p)
                if callback is not None:
                    callback(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return labels, probs_out, ax


def _slice_progress(progress: Progress, n_slices: int) -> tuple[Callable[[int], None] | None, Any]:
    if callable(progress):
        return progress, None
    if progress and n_slices >= SLICE_BAR_MIN:
        from vmunet.inference.folder import make_bar

        bar = make_bar(total=n_slices, desc="slices", unit="slice", leave=False)
        return (bar.update if bar is not None else None), bar
    return None, None


class VolumetricStrategy(_Strategy):
    """3-D checkpoints: whole volumes at the training spacing, a gaussian sliding window, the input grid.

    A 2-D picture is refused with one message; a volume without spacing information is
    named in a warning and treated as 1 mm; a volume smaller than the ROI is padded by
    the sliding window and cropped back.

    Args:
        spec: the checkpoint's inference spec (``spatial_dims`` 3).
        options: the run's options.

    Example:
        >>> VolumetricStrategy.spatial_dims
        3
    """

    spatial_dims = 3

    def inferer(self, progress: bool = False) -> SlidingWindowInferer3D:
        """The 3-D sliding-window inferer of this run (blended output kept on the CPU)."""
        return SlidingWindowInferer3D(
            self.spec.input_size,  # type: ignore[arg-type]
            self.options.overlap,
            self.options.windows_per_pass,
            sw_device=self.options.device,
            device=torch.device("cpu"),
            progress=progress,
            activation=self.spec.activation,
            tta=self.options.tta,
        )

    def prepare(self, img: Any, axis: int | None = None) -> PreparedInput:
        """The volume resampled to the training spacing and windowed: ``(1, C, *grid)`` on the CPU."""
        from monai import transforms as mt
        from monai.data import MetaTensor

        from vmunet.data.volumes3d import intensity_transform

        spec = self.spec
        arr = img.array
        if not img.is_volume:
            raise input_error(
                img,
                f"is a 2-D image (shape {arr.shape}) but the checkpoint holds a 3-D model (spatial_dims 3) "
                "that segments volumes only; use a 2-D checkpoint for pictures and slices",
            )
        if arr.ndim not in (3, 4):
            raise input_error(img, f"expected 3 spatial axes (+ channels), got shape {arr.shape}")
        _check_channels(img, arr, spec.in_channels, 3)
        spacing = tuple(float(s) for s in img.spacing)
        if not spacing_is_known(img):
            logger.warning("%s: no voxel spacing in the file; treating it as 1 mm", _where(img))
            spacing = (1.0, 1.0, 1.0)
        x = np.asarray(_model_channels(img, arr, spec.in_channels, 3), dtype=np.float32)  # (X, Y, Z, C)
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
        extra = {"affine": affine, "grid_affine": grid_affine, "shape": shape, "resample": resample}
        return PreparedInput(
            img, xt.contiguous(), axial_axis(direction=img.direction, affine=img.affine), extra
        )

    @staticmethod
    def to_input_grid(probs: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        """Probabilities ``(1, K, *grid)`` on the prepared grid -> ``(1, K, *shape)`` on the input's grid.

        ``extra`` is :meth:`prepare`'s record (``affine``, ``grid_affine``, ``shape``, ``resample``).
        """
        from monai import transforms as mt
        from monai.data import MetaTensor

        shape = tuple(int(s) for s in extra["shape"])
        if extra["resample"]:
            back = mt.SpatialResample(mode="bilinear", padding_mode="border")
            probs = back(
                MetaTensor(probs[0], affine=extra["grid_affine"]),
                dst_affine=extra["affine"],
                spatial_size=shape,
            )
            probs = (probs.as_tensor() if isinstance(probs, MetaTensor) else probs)[None]
        if tuple(probs.shape[2:]) != shape:  # guards against an off-by-one grid
            probs = torch.nn.functional.interpolate(probs, size=shape, mode="trilinear", align_corners=False)
        return probs

    def infer(
        self, prepared: PreparedInput, network: Any, return_probabilities: bool, progress: Progress = False
    ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """``(labels, probabilities or None, axial axis)`` of one prepared volume on its own grid."""
        assert prepared.x is not None
        probs = self.inferer(bool(progress) and not callable(progress))(prepared.x, network)  # (1, K, *grid)
        probs = self.to_input_grid(probs, prepared.extra)
        out_probs = self._probabilities(probs)[0] if return_probabilities else None
        if callable(progress):
            progress(int(prepared.extra["shape"][-1]))
        return self._labels(probs)[0], out_probs, prepared.axis


def strategy_for(spatial_dims: int) -> type[_Strategy]:
    """The strategy class for a checkpoint's ``spatial_dims`` (2 or 3)."""
    if spatial_dims == 3:
        return VolumetricStrategy
    return PlanarStrategy
