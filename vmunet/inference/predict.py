"""The prediction core: probabilities from any 2-D segmentation network.

Works on a plain ``torch.nn.Module`` that maps ``(B, C, H, W)`` to logits
``(B, K, H, W)``; knows nothing of files or checkpoints (see
:mod:`vmunet.inference.segmenter` for that).

Two ways to cover an image of any size, chosen by the checkpoint:

* sliding window (default): MONAI ``sliding_window_inference`` with the
  training patch size, Gaussian blending of the window logits and the given
  overlap. The image is first padded to a multiple of 32 (the network
  downsamples by 32) and the result cropped back;
* resize: the image is resized to the training input size, predicted whole,
  and the probabilities resized back (the ISIC / Synapse protocols of VM-UNet
  resize every image to 256x256 / 224x224).

Test-time augmentation (``tta=True``) predicts the identity and the three flips
(H, W, H and W), flips each back and averages the *probabilities*.

Volumes go through :func:`predict_volume`, slice by slice along one axis, in
batches of slices, with bounded memory (a float32 buffer per batch, the label
map as uint8 / uint16, probabilities only when asked).

Example:
    >>> import torch
    >>> from vmunet.inference.predict import predict_probabilities
    >>> net = torch.nn.Conv2d(1, 2, 1)
    >>> probs = predict_probabilities(net, torch.rand(1, 1, 70, 90), roi_size=(64, 64),
    ...                               activation="softmax")
    >>> tuple(probs.shape)
    (1, 2, 70, 90)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

__all__ = [
    "SIZE_MULTIPLE",
    "axial_axis",
    "labels_from_probabilities",
    "logits_to_probabilities",
    "pad_to_multiple",
    "predict_probabilities",
    "predict_volume",
]

logger = logging.getLogger(__name__)

#: The network halves the resolution five times (patch embed 4x, then 3 merges).
SIZE_MULTIPLE = 32

_ACTIVATIONS = ("sigmoid", "softmax")


def logits_to_probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Turn logits ``(B, K, ...)`` into probabilities with ``"sigmoid"`` or ``"softmax"`` over K."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")


def labels_from_probabilities(probs: torch.Tensor, activation: str, threshold: float = 0.5) -> torch.Tensor:
    """Label map ``(B, ...)`` from probabilities ``(B, K, ...)``.

    ``softmax``: argmax over K (labels 0..K-1). ``sigmoid`` with one channel:
    1 where the probability is >= ``threshold``. ``sigmoid`` with K > 1 channels
    (one-vs-rest): label k+1 for the most probable channel k when it reaches the
    threshold, else 0.
    """
    if activation == "softmax":
        return probs.argmax(dim=1)
    if activation != "sigmoid":
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if probs.shape[1] == 1:
        return (probs[:, 0] >= threshold).to(torch.int64)
    best, idx = probs.max(dim=1)
    return torch.where(best >= threshold, idx + 1, torch.zeros_like(idx))


def pad_to_multiple(
    x: torch.Tensor, multiple: int = SIZE_MULTIPLE, min_size: Sequence[int] | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two dimensions (at the end) up to a multiple of ``multiple``.

    Args:
        x: ``(B, C, H, W)``.
        multiple: the size multiple the network needs.
        min_size: optional ``(h, w)`` lower bound (e.g. the window size).

    Returns:
        The padded tensor and the original ``(H, W)`` to crop back to.
    """
    h, w = x.shape[-2:]
    th = -(-h // multiple) * multiple
    tw = -(-w // multiple) * multiple
    if min_size is not None:
        th = max(th, -(-int(min_size[0]) // multiple) * multiple)
        tw = max(tw, -(-int(min_size[1]) // multiple) * multiple)
    if (th, tw) != (h, w):
        x = F.pad(x, (0, tw - w, 0, th - h), mode="constant", value=0.0)
    return x, (h, w)


def _check_roi(roi_size: Sequence[int] | None) -> tuple[int, int] | None:
    if roi_size is None:
        return None
    roi = tuple(int(s) for s in roi_size)
    if len(roi) != 2 or any(s <= 0 for s in roi):
        raise ValueError(f"roi_size must be two positive integers (H, W), got {tuple(roi_size)!r}")
    if any(s % SIZE_MULTIPLE for s in roi):
        raise ValueError(f"roi_size must be a multiple of {SIZE_MULTIPLE} in each dimension, got {roi}")
    return roi  # type: ignore[return-value]


def _single_pass(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    roi: tuple[int, int] | None,
    resize: bool,
    overlap: float,
    sw_batch_size: int,
    activation: str,
) -> torch.Tensor:
    """Probabilities for one (possibly flipped) batch, at the batch's own size."""
    h, w = x.shape[-2:]
    if resize:
        if roi is None:
            raise ValueError("resize=True needs roi_size (the training input size)")
        xr = x if (h, w) == roi else F.interpolate(x, size=roi, mode="bilinear", align_corners=False)
        logits = model(xr)
        probs = logits_to_probabilities(logits.float(), activation)
        if (h, w) != roi:
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        return probs
    padded, _ = pad_to_multiple(x)
    ph, pw = padded.shape[-2:]
    if roi is None or (ph <= roi[0] and pw <= roi[1]):
        # The whole (padded) image fits into one window: predict it whole.
        # (A smaller-than-window image is padded up to the window, as MONAI would.)
        if roi is not None:
            padded, _ = pad_to_multiple(padded, min_size=roi)
        logits = model(padded)
    else:
        logits = sliding_window_inference(
            padded,
            roi_size=roi,
            sw_batch_size=sw_batch_size,
            predictor=model,
            overlap=overlap,
            mode="gaussian",
        )
    # Blend logits, then squash: the Gaussian weighting is applied to the raw
    # network output, as nnU-Net and MONAI do.
    probs = logits_to_probabilities(logits[..., :h, :w].float(), activation)
    return probs


_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@torch.inference_mode()
def predict_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    roi_size: Sequence[int] | None = None,
    resize: bool = False,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    activation: str = "sigmoid",
    tta: bool = False,
) -> torch.Tensor:
    """Class probabilities for a batch of normalised 2-D images.

    Args:
        model: maps ``(B, C, h, w)`` to logits ``(B, K, h, w)``; h, w multiples of 32.
        x: ``(B, C, H, W)`` float tensor, already normalised, on the model's device.
        roi_size: training patch size ``(h, w)``; ``None`` predicts the padded image whole.
        resize: resize to ``roi_size`` and back instead of sliding a window.
        overlap: window overlap in [0, 1) (sliding window only).
        sw_batch_size: windows per forward pass.
        activation: ``"sigmoid"`` or ``"softmax"``.
        tta: average the probabilities over the identity and the H, W and HW flips.

    Returns:
        ``(B, K, H, W)`` float32 probabilities on ``x``'s device.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if int(sw_batch_size) < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    roi = _check_roi(roi_size)
    kw = dict(
        roi=roi,
        resize=resize,
        overlap=float(overlap),
        sw_batch_size=int(sw_batch_size),
        activation=activation,
    )
    if not tta:
        return _single_pass(model, x, **kw)
    total: torch.Tensor | None = None
    for dims in _FLIPS:
        xf = torch.flip(x, dims) if dims else x
        p = _single_pass(model, xf, **kw)
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total.add_(p)
    assert total is not None
    return total.div_(len(_FLIPS))


def axial_axis(direction: np.ndarray | None = None, affine: np.ndarray | None = None) -> int:
    """The array axis whose direction is most aligned with the physical z (S-I) axis.

    Column j of a direction matrix (ITK) or of an affine's 3x3 part (NIfTI)
    is the physical direction of array axis j; both conventions put z in row 2.

    Args:
        direction: ``(3, 3)`` direction cosines.
        affine: ``(4, 4)`` voxel-to-world matrix (used when given; its columns are normalised).

    Returns:
        0, 1 or 2; 2 when neither is given.
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


def predict_volume(
    model: Callable[[torch.Tensor], torch.Tensor],
    volume: np.ndarray,
    *,
    axis: int,
    normalize: Callable[[np.ndarray], np.ndarray],
    in_channels: int = 1,
    out_channels: int,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    roi_size: Sequence[int] | None = None,
    resize: bool = False,
    overlap: float = 0.5,
    activation: str = "sigmoid",
    tta: bool = False,
    return_probabilities: bool = False,
    probability_dtype: str = "float32",
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment a 3-D volume with a 2-D network, slice by slice along ``axis``.

    Each batch of ``batch_size`` slices is cut out (``np.take`` along ``axis``;
    the other two axes keep their order as the slice's rows and columns),
    normalised with ``normalize`` (a pointwise map such as an HU window, or one
    whose statistics were fixed for the whole volume), predicted, and written
    into the label map. Only one batch is ever held in float32.

    Args:
        model: 2-D network (logits out).
        volume: ``(X, Y, Z)`` array (any numeric dtype), or ``(X, Y, Z, C)`` when ``in_channels > 1``.
        axis: the slicing axis (0, 1 or 2).
        normalize: maps a ``(B, h, w[, C])`` array to float32 of the same shape.
        in_channels: channels the model expects.
        out_channels: channels the model returns (K).
        device: where the model runs.
        batch_size: slices per forward pass (and windows per pass in the sliding window).
        roi_size, resize, overlap, activation, tta: see :func:`predict_probabilities`.
        return_probabilities: also return ``(X, Y, Z, K)`` probabilities.
        probability_dtype: ``"float32"`` or ``"uint8"`` (probability x 255, rounded).
        progress: called with the number of slices finished after each batch.

    Returns:
        ``(labels, probabilities)``: labels ``(X, Y, Z)`` uint8 (uint16 past 255 labels),
        probabilities ``(X, Y, Z, K)`` or ``None``.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if probability_dtype not in ("float32", "uint8"):
        raise ValueError(f"probability_dtype must be 'float32' or 'uint8', got {probability_dtype!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spatial = volume.shape[:3]
    n_labels = out_channels + 1 if (activation == "sigmoid" and out_channels > 1) else max(out_channels, 2)
    label_dtype = np.uint8 if n_labels <= 256 else np.uint16
    labels = np.zeros(spatial, dtype=label_dtype)
    probs_out = (
        np.zeros((*spatial, out_channels), dtype=np.dtype(probability_dtype))
        if return_probabilities
        else None
    )
    n = spatial[axis]
    for start in range(0, n, int(batch_size)):
        idx = np.arange(start, min(start + int(batch_size), n))
        block = np.moveaxis(np.take(volume, idx, axis=axis), axis, 0)  # (B, h, w[, C])
        block = np.asarray(normalize(block), dtype=np.float32)
        if block.ndim == 3:
            block = block[:, None]
        else:
            block = np.moveaxis(block, -1, 1)
        if block.shape[1] != in_channels:
            raise ValueError(f"slices have {block.shape[1]} channel(s), the model expects {in_channels}")
        xb = torch.from_numpy(np.ascontiguousarray(block)).to(device)
        p = predict_probabilities(
            model,
            xb,
            roi_size=roi_size,
            resize=resize,
            overlap=overlap,
            sw_batch_size=batch_size,
            activation=activation,
            tta=tta,
        )
        lab = labels_from_probabilities(p, activation).cpu().numpy().astype(label_dtype)
        # Put the batch back: (B, h, w) -> slices idx along axis.
        lab_view = np.moveaxis(labels, axis, 0)
        lab_view[idx] = lab
        if probs_out is not None:
            pc = p.permute(0, 2, 3, 1).cpu().numpy()  # (B, h, w, K)
            if probability_dtype == "uint8":
                pc = np.clip(np.rint(pc * 255.0), 0, 255).astype(np.uint8)
            np.moveaxis(probs_out, axis, 0)[idx] = pc
        del xb, p
        if progress is not None:
            progress(len(idx))
    return labels, probs_out
