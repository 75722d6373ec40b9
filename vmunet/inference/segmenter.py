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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmunet.errors import VmunetUserError
from vmunet.inference.inferers import _check_batch, _check_overlap, _check_threshold
from vmunet.inference.spec import InferenceSpec, Prediction
from vmunet.inference.strategies import PreparedInput, RunOptions, input_error, strategy_for

__all__ = ["InferenceSpec", "Prediction", "Preparer", "Segmenter", "resolve_device"]

logger = logging.getLogger(__name__)


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
    the input grid; 2-D pictures are refused with one message. The two paths are strategies
    (:mod:`vmunet.inference.strategies`: preprocess -> inferer -> postprocess) chosen once
    from ``spatial_dims``; the inferers (:mod:`vmunet.inference.inferers`) are the same
    ones training validation and ``vmunet test`` use.

    The sliding-window overlap and the sigmoid threshold default to the checkpoint's
    (``inference.overlap`` / ``inference.threshold``, written from the recipe's ``eval``
    section), else 0.5.

    Args:
        checkpoint: path to a vmunet checkpoint, a loaded checkpoint dict, or an
            ``nn.Module`` (then ``inference`` is required).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: slices (volumes) per forward pass, and windows (sliding window) per
            forward pass unless ``sw_batch_size`` is given.
        overlap: sliding-window overlap in [0, 1) (``None``: the checkpoint's).
        tta: average probabilities over the identity and the H, W and HW flips (3-D: each axis).
        axis: slicing axis for volumes (0, 1 or 2); ``None`` picks the axial one.
        inference: the ``"inference"`` dict when ``checkpoint`` is a module.
        probability_dtype: ``"float32"`` or ``"uint8"`` (p x 255) for returned probabilities.
        scan_backend: selective-scan backend for the rebuilt model (``None``: automatic;
            see :func:`vmunet.ops.available_backends`).
        threshold: sigmoid models: foreground from this probability (``None``: the checkpoint's).
        sw_batch_size: sliding windows per forward pass (MONAI's ``sw_batch_size``;
            ``None``: ``batch_size``, as before this option existed).

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
        overlap: float | None = None,
        tta: bool = False,
        axis: int | None = None,
        *,
        inference: Mapping[str, Any] | None = None,
        probability_dtype: str = "float32",
        scan_backend: str | None = None,
        threshold: float | None = None,
        sw_batch_size: int | None = None,
    ) -> None:
        batch = _check_batch(batch_size, "batch_size")
        sw_batch = None if sw_batch_size is None else _check_batch(sw_batch_size, "sw_batch_size")
        overlap_f = None if overlap is None else _check_overlap(overlap)
        threshold_f = None if threshold is None else _check_threshold(threshold)
        if axis is not None and axis not in (0, 1, 2):
            raise ValueError(f"axis must be None, 0, 1 or 2, got {axis!r}")
        if probability_dtype not in ("float32", "uint8"):
            raise ValueError(f"probability_dtype must be 'float32' or 'uint8', got {probability_dtype!r}")
        self.device = resolve_device(device)
        self.checkpoint_path: Path | None = None
        # What rebuilds this segmenter in another process (a Ray actor): everything but the device.
        self._replica: dict[str, Any] = {
            "checkpoint": checkpoint,
            "batch_size": batch,
            "overlap": overlap_f,
            "tta": bool(tta),
            "axis": axis,
            "inference": inference,
            "probability_dtype": probability_dtype,
            "scan_backend": scan_backend,
            "threshold": threshold_f,
            "sw_batch_size": sw_batch,
        }
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
        self.options = RunOptions(
            device=self.device,
            batch_size=batch,
            overlap=self.spec.overlap if overlap_f is None else overlap_f,
            threshold=self.spec.threshold if threshold_f is None else threshold_f,
            tta=bool(tta),
            axis=axis,
            probability_dtype=probability_dtype,
            sw_batch_size=sw_batch,
        )
        self.strategy = strategy_for(self.spec.spatial_dims)(self.spec, self.options)

    @property
    def overlap(self) -> float:
        """The sliding-window overlap in use."""
        return self.options.overlap

    @property
    def threshold(self) -> float:
        """The sigmoid threshold in use."""
        return self.options.threshold

    @property
    def axis(self) -> int | None:
        """The slicing axis of volumes (2-D checkpoints); ``None``: the axial one of each volume."""
        return self.options.axis

    @property
    def probability_dtype(self) -> str:
        """``"float32"`` or ``"uint8"``: the dtype of returned probabilities."""
        return self.options.probability_dtype

    @property
    def tta(self) -> bool:
        """Whether flip TTA is on."""
        return self.options.tta

    @property
    def batch_size(self) -> int:
        """Slices (and, without ``sw_batch_size``, windows) per forward pass."""
        return self.options.batch_size

    @property
    def sw_batch_size(self) -> int:
        """Sliding windows per forward pass."""
        return self.options.windows_per_pass

    def replica_config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this segmenter elsewhere (``Segmenter(**config, device=...)``).

        Used by the Ray engine: each actor loads its own copy of the model on its own device.
        """
        return dict(self._replica)

    def preparer(self) -> Preparer:
        """A picklable callable that decodes and prepares inputs for this segmenter (no model inside)."""
        return Preparer(self.strategy)

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
        prepared = self.load(image, is_volume=is_volume, axis=axis)
        return self.predict_prepared(
            prepared,
            return_probabilities=return_probabilities,
            progress=progress,
            extra_seconds=prepared.seconds,
        )

    def load(self, image: Any, *, is_volume: bool | None = None, axis: int | None = None) -> PreparedInput:
        """Decode and preprocess one input for the network (CPU only; the first half of :meth:`predict`).

        Raises the same errors as :meth:`predict` for an unreadable or unusable input.
        """
        return self.preparer()(image, is_volume=is_volume, axis=axis)

    def predict_prepared(
        self,
        prepared: PreparedInput,
        *,
        return_probabilities: bool = False,
        progress: bool | Callable[[int], None] = False,
        extra_seconds: float = 0.0,
    ) -> Prediction:
        """The second half of :meth:`predict`: the network and post-processing of a :meth:`load` result."""
        t0 = time.perf_counter()
        img = prepared.image
        labels, probs, used_axis = self.strategy.infer(prepared, self.model, return_probabilities, progress)
        dt = time.perf_counter() - t0 + extra_seconds
        where = str(img.path) if img.path is not None else "input array"
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
        *,
        workers: int = 0,
        engine: str = "local",
        ray_address: str | None = None,
        ray_num_cpus: int | None = None,
        ray_use_gpus: bool = True,
        writers: Sequence[Any] = (),
    ) -> Any:
        """Segment files, folders (recursed) and DICOM series folders into ``output_dir``.

        See :func:`vmunet.inference.folder.segment_folder` for the output layout and the
        keyword-only options: ``workers`` (background decoding processes), ``engine``
        (``"local"`` or ``"ray"``), ``ray_address``, ``ray_num_cpus``, ``ray_use_gpus`` and
        ``writers`` (extra outputs). Under torchrun each rank segments its share.

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
            workers=workers,
            engine=engine,
            ray_address=ray_address,
            ray_num_cpus=ray_num_cpus,
            ray_use_gpus=ray_use_gpus,
            writers=writers,
        )


class Preparer:
    """Decode and preprocess inputs for a segmenter's strategy; picklable, holds no model.

    The first half of :meth:`Segmenter.predict`: reads the file (or wraps the array), refuses
    empty and non-finite inputs, and runs the strategy's ``prepare`` step. Background workers
    (``segment_folder(..., workers=N)``) call it while the network predicts.

    Args:
        strategy: the segmenter's strategy (:mod:`vmunet.inference.strategies`).

    Example:
        >>> import torch
        >>> seg = Segmenter(torch.nn.Conv2d(1, 2, 1), inference={"in_channels": 1, "out_channels": 2})
        >>> tuple(seg.preparer()(np.zeros((40, 30), np.float32)).x.shape)
        (1, 1, 40, 30)
    """

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    def __call__(
        self, image: Any, *, is_volume: bool | None = None, axis: int | None = None
    ) -> PreparedInput:
        """The :class:`~vmunet.inference.strategies.PreparedInput` of one path, image or array."""
        t0 = time.perf_counter()
        img = _as_image(image, is_volume)
        arr = img.array
        if arr.size == 0:
            raise input_error(img, f"image has no pixels (shape {arr.shape})")
        _check_finite(arr, lambda why: input_error(img, why))
        prepared = self.strategy.prepare(img, axis)
        prepared.seconds = time.perf_counter() - t0
        return prepared


def _as_image(image: Any, is_volume: bool | None) -> Any:
    from vmunet.data import ImageData, read_image

    if isinstance(image, ImageData):
        return image
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a path, ImageData, numpy array or tensor, got {type(image).__name__}")
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
