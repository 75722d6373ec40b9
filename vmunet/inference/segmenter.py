"""``Segmenter``: a trained checkpoint turned into label maps for images and volumes.

The checkpoint carries everything inference needs (architecture, channels,
classes, training input size, whether training resized, intensity
normalisation, activation) in its ``"inference"`` dict, so no config file is
needed. See ``docs/contracts.md`` for the checkpoint format.

Example:
    >>> from vmunet.inference import Segmenter
    >>> seg = Segmenter("runs/synapse/best.pt", device="auto", tta=False)  # doctest: +SKIP
    >>> pred = seg.predict("scans/case0001.nii.gz")  # doctest: +SKIP
    >>> pred.labels.shape == pred.image.spatial_shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmunet.errors import InputFileError, VmunetUserError
from vmunet.inference.predict import (
    SIZE_MULTIPLE,
    axial_axis,
    labels_from_probabilities,
    predict_probabilities,
    predict_volume,
)

__all__ = ["InferenceSpec", "Prediction", "Segmenter", "resolve_device"]

logger = logging.getLogger(__name__)

# (channels in the file, channels the model takes) pairs converted like the training datasets.
_CONVERTIBLE = {(1, 3), (4, 3), (3, 1), (4, 1)}

#: Volumes with at least this many slices get their own progress bar (when bars are on).
SLICE_BAR_MIN = 32


# --------------------------------------------------------------------------- inference spec


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

    Example:
        >>> spec = InferenceSpec.from_dict({"in_channels": 1, "out_channels": 2, "input_size": [64, 64]})
        >>> spec.activation, spec.class_names
        ('softmax', ('background', 'class_1'))
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


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; checks that a requested CUDA device exists."""
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VmunetUserError(f"device {str(device)!r} was requested but no CUDA GPU is available; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


def _load_checkpoint(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any], **overrides: Any
) -> tuple[torch.nn.Module, dict]:
    """Build the model a checkpoint describes; user mistakes become one-line errors."""
    source = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
    if not isinstance(checkpoint, Mapping):
        p = Path(checkpoint)
        if not p.exists():
            raise VmunetUserError(f"checkpoint {source}: no such file")
        if p.is_dir():
            raise VmunetUserError(f"checkpoint {source}: is a folder, expected a .pt file")
    elif checkpoint.get("format") != "vmunet":
        raise VmunetUserError(
            "checkpoint dict is not a vmunet checkpoint (no 'format': 'vmunet'); "
            "expected one written by vmunet.models.save_checkpoint or the trainer"
        )
    try:
        from vmunet.models import build_model_from_checkpoint
    except ImportError as exc:  # pragma: no cover - the models floor is part of the package
        raise VmunetUserError(f"cannot load checkpoints: {exc}") from exc
    try:
        model, ckpt = build_model_from_checkpoint(
            checkpoint if not isinstance(checkpoint, Mapping) else dict(checkpoint),
            map_location="cpu",
            **overrides,
        )
    except VmunetUserError:
        raise
    except Exception as exc:
        raise VmunetUserError(
            f"checkpoint {source}: not a usable vmunet checkpoint ({type(exc).__name__}: {exc}); "
            "expected a file written by vmunet.models.save_checkpoint or the trainer"
        ) from exc
    if "inference" not in ckpt:
        raise VmunetUserError(
            f"checkpoint {source}: has no 'inference' section; re-save it with save_checkpoint"
        )
    return model, ckpt


# --------------------------------------------------------------------------- segmenter


class Segmenter:
    """Segment 2-D images and 3-D volumes with a trained VM-UNet checkpoint (2-D or 3-D).

    With a 2-D checkpoint, 2-D images of any size go through a Gaussian-blended sliding
    window with the training patch size (padded to a multiple of 32 and cropped back), or
    are resized to the training input size and back when the checkpoint says ``resize``.
    Volumes are segmented slice by slice along ``axis`` (default: the axis closest to the
    physical S-I direction) in batches of slices.

    With a 3-D checkpoint (``inference.spatial_dims: 3``) each volume is resampled to the
    training spacing, predicted whole by a gaussian 3-D sliding window with ``overlap``
    (``tta``: averaged over flips of each axis) and its probabilities resampled back onto
    the input grid; 2-D pictures are refused with one message. The two paths are strategy
    objects (:mod:`vmunet.inference.volumetric`) chosen once from ``spatial_dims``.

    Args:
        checkpoint: path to a vmunet checkpoint, a loaded checkpoint dict, or an
            ``nn.Module`` (then ``inference`` is required).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: slices (volumes) and windows (sliding window) per forward pass.
        overlap: sliding-window overlap in [0, 1).
        tta: average probabilities over the identity and the H, W and HW flips.
        axis: slicing axis for volumes (0, 1 or 2); ``None`` picks the axial one.
        inference: the ``"inference"`` dict when ``checkpoint`` is a module.
        probability_dtype: ``"float32"`` or ``"uint8"`` (p x 255) for returned probabilities.
        scan_backend: selective-scan backend for the rebuilt model (``None``: automatic;
            see :func:`vmunet.ops.available_backends`).

    Raises:
        ValueError: a bad argument (names it and the allowed values).
        VmunetUserError: missing / unusable checkpoint, CUDA asked for but absent.

    Example:
        >>> import torch
        >>> net = torch.nn.Conv2d(1, 2, 1)
        >>> seg = Segmenter(net, inference={"in_channels": 1, "out_channels": 2, "input_size": [64, 64]})
        >>> pred = seg.predict(torch.rand(100, 80).numpy())
        >>> pred.labels.shape
        (100, 80)
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | Mapping[str, Any] | torch.nn.Module,
        device: str | torch.device = "auto",
        batch_size: int = 4,
        overlap: float = 0.5,
        tta: bool = False,
        axis: int | None = None,
        *,
        inference: Mapping[str, Any] | None = None,
        probability_dtype: str = "float32",
        scan_backend: str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        try:
            overlap_f = float(overlap)
        except (TypeError, ValueError):
            raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}") from None
        if not 0.0 <= overlap_f < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        if axis is not None and axis not in (0, 1, 2):
            raise ValueError(f"axis must be None, 0, 1 or 2, got {axis!r}")
        if probability_dtype not in ("float32", "uint8"):
            raise ValueError(f"probability_dtype must be 'float32' or 'uint8', got {probability_dtype!r}")
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.overlap = overlap_f
        self.tta = bool(tta)
        self.axis = axis
        self.probability_dtype = probability_dtype
        self.checkpoint_path: Path | None = None
        if isinstance(checkpoint, torch.nn.Module):
            if inference is None:
                raise ValueError("inference must be given (the checkpoint's 'inference' dict) with a module")
            model, info = checkpoint, inference
            source = type(checkpoint).__name__
        else:
            overrides = {"scan_backend": scan_backend} if scan_backend is not None else {}
            model, ckpt = _load_checkpoint(checkpoint, **overrides)
            info = inference if inference is not None else ckpt["inference"]
            if not isinstance(checkpoint, Mapping):
                self.checkpoint_path = Path(checkpoint)
            source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "checkpoint"
        self.spec = InferenceSpec.from_dict(info, source=f"checkpoint {source}")
        self.model = model.to(self.device).eval()
        from vmunet.inference.volumetric import strategy_for

        self._strategy = strategy_for(self.spec.spatial_dims)(self)

    # ------------------------------------------------------------------ public

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each label value (0 is the background)."""
        return self.spec.class_names

    def predict(
        self,
        image: Any,
        *,
        is_volume: bool | None = None,
        return_probabilities: bool = False,
        axis: int | None = None,
        progress: bool | Callable[[int], None] = False,
    ) -> Prediction:
        """Segment one image or volume.

        Args:
            image: a path (any format :func:`vmunet.data.read_image` reads, or a
                DICOM series folder), an :class:`~vmunet.data.ImageData`, a numpy
                array or a tensor. Arrays: 2-D images ``(H, W)`` / ``(H, W, C)``,
                volumes ``(X, Y, Z)``.
            is_volume: for a 3-D array, whether it is a volume; ``None`` guesses
                (``(H, W, C)`` when the last axis has 1, 3 or 4 entries, else a volume).
            return_probabilities: also return class probabilities.
            axis: slicing axis for this volume (overrides the segmenter's).
            progress: ``True`` shows a bar over the slices of a large volume; or a
                callback taking the number of slices just finished.

        Returns:
            A :class:`Prediction` with a label map in the input's spatial shape.

        Raises:
            InputFileError: unreadable file, no pixels, NaN / infinite values, or a
                channel count the model cannot take (``ValueError`` for arrays).
        """
        t0 = time.perf_counter()
        img = self._as_image(image, is_volume)
        where = str(img.path) if img.path is not None else "input array"
        arr = img.array
        if arr.size == 0:
            raise self._bad(img, f"image has no pixels (shape {arr.shape})")
        _check_finite(arr, lambda why: self._bad(img, why))
        labels, probs, used_axis = self._strategy.predict(img, return_probabilities, axis, progress)
        dt = time.perf_counter() - t0
        logger.debug("%s: predicted %s in %.2f s", where, labels.shape, dt)
        return Prediction(labels, probs, img, self.class_names, used_axis, dt)

    def segment_folder(
        self,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        output_dir: str | os.PathLike[str],
        probabilities: bool = False,
        overlay: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> Any:
        """Segment files, folders (recursed) and DICOM series folders into ``output_dir``.

        See :func:`vmunet.inference.folder.segment_folder` for the output layout.

        Returns:
            A :class:`~vmunet.inference.folder.FolderSummary`.
        """
        from vmunet.inference.folder import segment_folder

        return segment_folder(
            self,
            inputs,
            output_dir,
            probabilities=probabilities,
            overlay=overlay,
            overwrite=overwrite,
            progress=progress,
        )

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _bad(img: Any, why: str) -> Exception:
        if getattr(img, "path", None) is not None:
            return InputFileError(img.path, why)
        return ValueError(f"input array: {why}")

    def _as_image(self, image: Any, is_volume: bool | None) -> Any:
        from vmunet.data import ImageData, read_image

        if isinstance(image, ImageData):
            return image
        if isinstance(image, (str, os.PathLike)):
            return read_image(image)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if not isinstance(image, np.ndarray):
            raise TypeError(
                f"image must be a path, ImageData, numpy array or tensor, got {type(image).__name__}"
            )
        if image.ndim == 2:
            return ImageData(image, format="npy")
        if image.ndim == 3:
            if is_volume is None:
                is_volume = image.shape[-1] not in (1, 3, 4)
            if is_volume:
                return ImageData(image, spacing=(1.0, 1.0, 1.0), format="nifti")
            return ImageData(image, format="npy")
        if image.ndim == 4 and is_volume is not False:
            return ImageData(image, spacing=(1.0, 1.0, 1.0), format="nifti")
        raise ValueError(
            f"input array: expected (H, W), (H, W, C) or a volume (X, Y, Z[, C]), got shape {image.shape}"
        )

    def _check_channels(self, img: Any, arr: np.ndarray, spatial: int) -> int:
        """Channels of ``arr`` (``spatial`` spatial axes); raise when the model cannot take them."""
        if arr.ndim == spatial:
            have = 1
        elif arr.ndim == spatial + 1:
            have = int(arr.shape[-1])
        else:
            raise self._bad(img, f"expected {spatial} spatial axes (+ channels), got shape {arr.shape}")
        want = self.spec.in_channels
        if (have, want) not in _CONVERTIBLE and have != want:
            kind = {1: "grayscale", 2: "2-channel", 3: "RGB", 4: "RGBA"}.get(have, f"{have}-channel")
            raise self._bad(
                img,
                f"image has {have} channel(s) ({kind}, shape {arr.shape}) but the model expects {want}",
            )
        return have

    def _to_model_channels(self, arr: np.ndarray, spatial: int) -> np.ndarray:
        """``(..spatial..[, C])`` -> ``(..spatial.., in_channels)``, converted as the training datasets do.

        Same rule as ``vmunet.data.datasets`` (``_as_channels``): grayscale is repeated
        to 3 channels, RGBA loses its alpha, RGB(A) becomes grayscale by the channel mean.
        """
        if arr.ndim == spatial:
            arr = arr[..., None]
        have, want = arr.shape[-1], self.spec.in_channels
        if have == want:
            return arr
        if want == 3 and have == 1:
            return np.repeat(arr, 3, axis=-1)
        if want == 3 and have == 4:
            return arr[..., :3]
        if want == 1 and have in (3, 4):
            return arr[..., :3].mean(axis=-1, keepdims=True, dtype=np.float32)
        raise ValueError(f"cannot turn {have} channel(s) into {want}")  # guarded by _check_channels

    def _predict_2d(self, img: Any, return_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        from vmunet.data import normalize_intensity

        self._check_channels(img, img.array, 2)
        arr = self._to_model_channels(img.array, 2)  # (H, W, C)
        x = normalize_intensity(arr if arr.shape[-1] > 1 else arr[..., 0], self.spec.normalization)
        x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)  # (C, H, W)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)
        p = predict_probabilities(
            self.model,
            xt,
            roi_size=self.spec.input_size,
            resize=self.spec.resize,
            overlap=self.overlap,
            sw_batch_size=self.batch_size,
            activation=self.spec.activation,
            tta=self.tta,
        )
        labels = labels_from_probabilities(p, self.spec.activation)[0].cpu().numpy()
        labels = labels.astype(np.uint8 if self.spec.n_labels <= 256 else np.uint16)
        probs = None
        if return_probabilities:
            probs = p[0].permute(1, 2, 0).cpu().numpy()  # (H, W, K)
            if self.probability_dtype == "uint8":
                probs = np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)
            else:
                probs = np.ascontiguousarray(probs, dtype=np.float32)
        return labels, probs

    def _volume_axis(self, img: Any, axis: int | None) -> int:
        if axis is None:
            axis = self.axis
        if axis is None:
            if img.format == "h5":
                return 2  # TransUNet volumes are (H, W, Z): slices are array[..., k]
            return axial_axis(direction=img.direction, affine=img.affine)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be None, 0, 1 or 2, got {axis!r}")
        return axis

    def _predict_volume(
        self,
        img: Any,
        return_probabilities: bool,
        axis: int | None,
        progress: bool | Callable[[int], None],
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        from vmunet.data import normalize_intensity

        arr = img.array
        self._check_channels(img, arr, 3)
        ax = self._volume_axis(img, axis)
        spec = self.spec.normalization

        def normalize(block: np.ndarray) -> np.ndarray:
            # Each slice on its own, as the training slice datasets do (matters for zscore / minmax).
            out = [normalize_intensity(self._to_model_channels(sl, 2), spec) for sl in block]
            return np.stack(out)

        n_slices = arr.shape[ax]
        bar = None
        callback: Callable[[int], None] | None
        if callable(progress):
            callback = progress
        elif progress and n_slices >= SLICE_BAR_MIN:
            from vmunet.inference.folder import make_bar

            bar = make_bar(total=n_slices, desc="slices", unit="slice", leave=False)
            callback = bar.update if bar is not None else None
        else:
            callback = None
        try:
            labels, probs = predict_volume(
                self.model,
                arr,
                axis=ax,
                normalize=normalize,
                in_channels=self.spec.in_channels,
                out_channels=self.spec.out_channels,
                device=self.device,
                batch_size=self.batch_size,
                roi_size=self.spec.input_size,
                resize=self.spec.resize,
                overlap=self.overlap,
                activation=self.spec.activation,
                tta=self.tta,
                return_probabilities=return_probabilities,
                probability_dtype=self.probability_dtype,
                progress=callback,
            )
        finally:
            if bar is not None:
                bar.close()
        return labels, probs, ax


def _check_finite(arr: np.ndarray, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(reason)`` when a float array holds NaN or infinite values (checked in chunks)."""
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.complexfloating):
        return
    flat = arr.reshape(-1) if arr.flags.c_contiguous else None
    chunks = (
        (flat[i : i + (1 << 22)] for i in range(0, flat.size, 1 << 22))
        if flat is not None
        else (arr[i] for i in range(arr.shape[0]))
    )
    n_nan = n_inf = 0
    for c in chunks:
        n_nan += int(np.count_nonzero(np.isnan(c)))
        n_inf += int(np.count_nonzero(np.isinf(c)))
    if n_nan or n_inf:
        parts = []
        if n_nan:
            parts.append(f"{n_nan} NaN value(s)")
        if n_inf:
            parts.append(f"{n_inf} infinite value(s)")
        raise fail(f"image holds {' and '.join(parts)}; clean or mask the scan before segmenting it")
