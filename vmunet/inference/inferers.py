"""Inferers: the one place a network meets an image.

Each inferer is stateless in MONAI's sense (:class:`monai.inferers.Inferer`):
``inferer(x, network) -> probabilities``. It owns, once for the whole toolkit, the
three things every caller used to repeat: how the image is covered (whole, resized,
sliding window, slice by slice), flip test-time augmentation, and the activation
(``sigmoid`` / ``softmax`` over the class axis). Training validation, ``vmunet test``
and ``vmunet segment`` all go through these classes; label maps and quantised
probabilities come from :func:`labels_from_probabilities` and
:func:`probabilities_to_numpy`, also defined once here.

* :class:`WholeImageInferer`: a 2-D batch predicted whole, either padded to a multiple
  of 32 and cropped back, or resized to the training size and the probabilities
  resized back (the ISIC / Synapse recipes resize every image).
* :class:`SlidingWindowInferer2D`: MONAI ``sliding_window_inference`` with Gaussian
  blending of the window logits, on the image padded to a multiple of 32.
* :class:`SliceInferer`: a volume slice by slice along one axis through a 2-D
  inferer, in batches of slices, with bounded memory (:meth:`SliceInferer.iter_batches`).
* :class:`SlidingWindowInferer3D`: MONAI's gaussian 3-D sliding window over a whole volume.

Flip TTA averages the *probabilities* of the identity and the flipped inputs, each
flipped back: 2-D inferers use the H, W and HW flips, the 3-D one the flip of each
axis. Window logits are blended before the activation, as nnU-Net and MONAI do.

Example:
    >>> import torch
    >>> from vmunet.inference.inferers import SlidingWindowInferer2D
    >>> net = torch.nn.Conv2d(1, 2, 1)
    >>> inferer = SlidingWindowInferer2D((64, 64), overlap=0.5, activation="softmax")
    >>> tuple(inferer(torch.rand(1, 1, 70, 90), net).shape)
    (1, 2, 70, 90)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer, sliding_window_inference

__all__ = [
    "ACTIVATIONS",
    "SIZE_MULTIPLE",
    "SliceInferer",
    "SlidingWindowInferer2D",
    "SlidingWindowInferer3D",
    "VmunetInferer",
    "WholeImageInferer",
    "label_dtype",
    "labels_from_probabilities",
    "logits_to_probabilities",
    "pad_to_multiple",
    "predict_probabilities",
    "probabilities_to_numpy",
]

#: The 2-D network halves the resolution five times (patch embed 4x, then 3 merges).
SIZE_MULTIPLE = 32

ACTIVATIONS = ("sigmoid", "softmax")

Network = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- activation and labels


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def logits_to_probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Probabilities from logits ``(B, K, ...)``: ``"sigmoid"`` per channel or ``"softmax"`` over K."""
    _check_activation(activation)
    logits = logits.float()
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)


def labels_from_probabilities(probs: torch.Tensor, activation: str, threshold: float = 0.5) -> torch.Tensor:
    """Label map ``(B, ...)`` from probabilities ``(B, K, ...)``.

    ``softmax``: argmax over K (labels 0..K-1). ``sigmoid`` with one channel: 1 where the
    probability is >= ``threshold``. ``sigmoid`` with K > 1 channels (one-vs-rest): label
    k+1 for the most probable channel k when it reaches the threshold, else 0.
    """
    if _check_activation(activation) == "softmax":
        return probs.argmax(dim=1)
    if probs.shape[1] == 1:
        return (probs[:, 0] >= threshold).to(torch.int64)
    best, idx = probs.max(dim=1)
    return torch.where(best >= threshold, idx + 1, torch.zeros_like(idx))


def label_dtype(n_labels: int) -> type:
    """``np.uint8`` for up to 256 label values, else ``np.uint16``."""
    return np.uint8 if n_labels <= 256 else np.uint16


def probabilities_to_numpy(probs: torch.Tensor, dtype: str = "float32", channel_axis: int = 0) -> np.ndarray:
    """Probabilities with the class axis at ``channel_axis`` -> a numpy array with it last.

    The values are float32, or uint8 (p x 255, rounded) with ``dtype="uint8"``: ``(K, *spatial)``
    becomes ``(*spatial, K)`` (``(b, K, h, w)`` with ``channel_axis=1`` becomes ``(b, h, w, K)``).

    Example:
        >>> probabilities_to_numpy(torch.tensor([[[0.0, 0.5, 1.0]]]), "uint8").ravel().tolist()
        [0, 128, 255]
    """
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"probability dtype must be 'float32' or 'uint8', got {dtype!r}")
    p = torch.movedim(probs.detach().float(), channel_axis, -1).cpu().numpy()
    if dtype == "uint8":
        return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(p, dtype=np.float32)


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


def _check_size(
    size: Sequence[int] | None, n: int, name: str, multiple: int | None
) -> tuple[int, ...] | None:
    if size is None:
        return None
    try:
        out = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {n} positive integers, got {size!r}") from None
    if len(out) != n or any(s <= 0 for s in out):
        raise ValueError(f"{name} must be {n} positive integers, got {tuple(size)!r}")
    if multiple and any(s % multiple for s in out):
        raise ValueError(f"{name} must be a multiple of {multiple} in each dimension, got {out}")
    return out


def _check_overlap(overlap: float) -> float:
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return value


def _check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if isinstance(threshold, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


def _check_batch(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


# --------------------------------------------------------------------------- the base class


class VmunetInferer(Inferer):
    """Base of the vmunet inferers: flip TTA and the activation, once.

    Subclasses implement :meth:`logits` (one pass over ``x``, no flips) and may override
    :meth:`_probabilities` (one pass to probabilities; the resize inferer activates before
    resizing back). ``inferer(x, network)`` runs under :func:`torch.inference_mode` and
    returns float32 probabilities with ``x``'s batch and spatial shape.

    Args:
        activation: ``"sigmoid"`` or ``"softmax"``.
        tta: average the probabilities over the flips of :attr:`flips`.

    Example:
        >>> inferer = WholeImageInferer(activation="sigmoid", tta=True)
        >>> inferer.flips
        ((), (-1,), (-2,), (-2, -1))
    """

    spatial_dims = 2

    def __init__(self, activation: str = "sigmoid", tta: bool = False) -> None:
        super().__init__()
        self.activation = _check_activation(activation)
        self.tta = bool(tta)

    @property
    def flips(self) -> tuple[tuple[int, ...], ...]:
        """The flipped axes of each TTA pass (the identity first)."""
        if not self.tta:
            return ((),)
        if self.spatial_dims == 2:
            return ((), (-1,), (-2,), (-2, -1))
        return ((), (-3,), (-2,), (-1,))

    def logits(self, x: torch.Tensor, network: Network) -> torch.Tensor:  # pragma: no cover - abstract
        """Float32 logits ``(B, K, *spatial)`` of one pass (no flips, no activation)."""
        raise NotImplementedError

    def _probabilities(self, x: torch.Tensor, network: Network) -> torch.Tensor:
        return logits_to_probabilities(self.logits(x, network), self.activation)

    def _check_input(self, x: torch.Tensor) -> None:
        want = self.spatial_dims + 2
        if x.ndim != want:
            axes = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, X, Y, Z)"
            raise ValueError(f"x must be {axes}, got shape {tuple(x.shape)}")

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, network: Network, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Probabilities ``(B, K, *spatial)`` of ``inputs`` (flip-averaged when ``tta``)."""
        self._check_input(inputs)
        total: torch.Tensor | None = None
        for dims in self.flips:
            xf = torch.flip(inputs, dims) if dims else inputs
            p = self._probabilities(xf, network)
            p = torch.flip(p, dims) if dims else p
            total = p if total is None else total.add_(p)
        assert total is not None
        return total if len(self.flips) == 1 else total.div_(len(self.flips))


# --------------------------------------------------------------------------- 2-D


class WholeImageInferer(VmunetInferer):
    """A 2-D batch predicted whole: padded to a multiple of 32, or resized to ``size`` and back.

    Args:
        size: with ``resize``: the training input ``(H, W)`` every image is resized to
            (bilinear), the probabilities resized back. Without: the padded image is
            predicted whole (padded at least to ``size`` when given).
        resize: resize to ``size`` instead of padding.
        activation, tta: see :class:`VmunetInferer`.

    Example:
        >>> import torch
        >>> net = torch.nn.Conv2d(3, 1, 1)
        >>> tuple(WholeImageInferer((64, 64), resize=True)(torch.rand(2, 3, 90, 70), net).shape)
        (2, 1, 90, 70)
    """

    def __init__(
        self,
        size: Sequence[int] | None = None,
        resize: bool = False,
        activation: str = "sigmoid",
        tta: bool = False,
    ) -> None:
        super().__init__(activation, tta)
        self.size = _check_size(size, 2, "size", SIZE_MULTIPLE)
        self.resize = bool(resize)
        if self.resize and self.size is None:
            raise ValueError("resize=True needs size (the training input size)")

    def _resized(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def _back(self, t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if tuple(t.shape[-2:]) == hw:
            return t
        return F.interpolate(t, size=hw, mode="bilinear", align_corners=False)

    def logits(self, x: torch.Tensor, network: Network) -> torch.Tensor:
        """Logits at ``x``'s size (resized back in resize mode; cropped after padding otherwise)."""
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.resize:
            return self._back(network(self._resized(x)).float(), hw)
        padded, _ = pad_to_multiple(x, min_size=self.size)
        return network(padded)[..., : hw[0], : hw[1]].float()

    def _probabilities(self, x: torch.Tensor, network: Network) -> torch.Tensor:
        if not self.resize:
            return super()._probabilities(x, network)
        # Activate at the network's size, then resize the probabilities back.
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        probs = logits_to_probabilities(network(self._resized(x)), self.activation)
        return self._back(probs, hw)


class SlidingWindowInferer2D(VmunetInferer):
    """MONAI's Gaussian-blended sliding window over a 2-D image padded to a multiple of 32.

    An image whose padded size fits into one window is predicted whole (padded up to the window).

    Args:
        roi_size: the window ``(H, W)``, multiples of 32 (the training patch size).
        overlap: window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        activation, tta: see :class:`VmunetInferer`.

    Example:
        >>> import torch
        >>> inferer = SlidingWindowInferer2D((64, 64), overlap=0.25, activation="softmax")
        >>> tuple(inferer(torch.rand(1, 1, 100, 150), torch.nn.Conv2d(1, 3, 1)).shape)
        (1, 3, 100, 150)
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        overlap: float = 0.5,
        sw_batch_size: int = 4,
        activation: str = "sigmoid",
        tta: bool = False,
    ) -> None:
        super().__init__(activation, tta)
        roi = _check_size(roi_size, 2, "roi_size", SIZE_MULTIPLE)
        if roi is None:
            raise ValueError("roi_size must be given (the training patch size (H, W))")
        self.roi_size: tuple[int, int] = roi  # type: ignore[assignment]
        self.overlap = _check_overlap(overlap)
        self.sw_batch_size = _check_batch(sw_batch_size, "sw_batch_size")

    def logits(self, x: torch.Tensor, network: Network) -> torch.Tensor:
        """Blended window logits at ``x``'s size."""
        h, w = x.shape[-2:]
        padded, _ = pad_to_multiple(x)
        ph, pw = padded.shape[-2:]
        if ph <= self.roi_size[0] and pw <= self.roi_size[1]:
            padded, _ = pad_to_multiple(padded, min_size=self.roi_size)
            logits = network(padded)
        else:
            logits = sliding_window_inference(
                padded,
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=network,
                overlap=self.overlap,
                mode="gaussian",
            )
        return logits[..., :h, :w].float()  # type: ignore[index]


class SliceInferer(VmunetInferer):
    """A volume slice by slice along one spatial axis, through a 2-D inferer, in batches of slices.

    ``inferer(x, network)`` takes ``(B, C, X, Y, Z)`` and returns ``(B, K, X, Y, Z)``
    probabilities; :meth:`iter_batches` streams a numpy volume of any dtype in batches of
    ``batch_size`` slices (preprocessed one batch at a time), so only one batch is held in
    float32. TTA and the activation are the inner inferer's.

    Args:
        inferer: the 2-D inferer each batch of slices goes through.
        axis: the slicing axis (0, 1 or 2 of ``(X, Y, Z)``); the other two keep their order
            as the slice's rows and columns.
        batch_size: slices per forward pass.

    Example:
        >>> import torch
        >>> inner = WholeImageInferer(activation="softmax")
        >>> inferer = SliceInferer(inner, axis=2, batch_size=4)
        >>> tuple(inferer(torch.rand(1, 1, 40, 30, 5), torch.nn.Conv2d(1, 2, 1)).shape)
        (1, 2, 40, 30, 5)
    """

    spatial_dims = 3

    def __init__(self, inferer: VmunetInferer, axis: int = 2, batch_size: int = 4) -> None:
        if not isinstance(inferer, VmunetInferer) or inferer.spatial_dims != 2:
            raise ValueError(f"inferer must be a 2-D vmunet inferer, got {type(inferer).__name__}")
        super().__init__(inferer.activation, False)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
        self.inner = inferer
        self.axis = int(axis)
        self.batch_size = _check_batch(batch_size, "batch_size")

    def iter_batches(
        self,
        volume: np.ndarray,
        network: Network,
        preprocess: Callable[[np.ndarray], np.ndarray],
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(slice indices, probabilities (b, K, h, w))`` batch by batch.

        Args:
            volume: ``(X, Y, Z[, C])`` array.
            network: the 2-D network.
            preprocess: maps a raw ``(b, h, w[, C])`` block to the float ``(b, C, h, w)`` input.
            device: where the network runs.
        """
        n = volume.shape[self.axis]
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, n))
            block = np.moveaxis(np.take(volume, idx, axis=self.axis), self.axis, 0)
            x = torch.from_numpy(np.ascontiguousarray(preprocess(block), dtype=np.float32)).to(device)
            yield idx, self.inner(x, network)

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, network: Network, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Probabilities ``(B, K, X, Y, Z)`` of whole volumes, slice by slice."""
        self._check_input(inputs)
        ax = self.axis + 2
        out: torch.Tensor | None = None
        for b in range(inputs.shape[0]):
            vol = torch.movedim(inputs[b], ax - 1, 0)  # (n, C, h, w)
            for start in range(0, vol.shape[0], self.batch_size):
                p = self.inner(vol[start : start + self.batch_size], network)  # (s, K, h, w)
                if out is None:
                    shape = (inputs.shape[0], p.shape[1], *inputs.shape[2:])
                    out = torch.empty(shape, dtype=torch.float32, device=p.device)
                torch.movedim(out[b], ax - 1, 0)[start : start + p.shape[0]] = p
        assert out is not None
        return out

    def logits(self, x: torch.Tensor, network: Network) -> torch.Tensor:  # pragma: no cover - unused
        raise NotImplementedError("SliceInferer returns probabilities; use the inner inferer for logits")


# --------------------------------------------------------------------------- 3-D


class SlidingWindowInferer3D(VmunetInferer):
    """MONAI's gaussian 3-D sliding window over whole ``(B, C, X, Y, Z)`` volumes.

    Volumes smaller than the window are padded by MONAI and cropped back.

    Args:
        roi_size: the patch ``(X, Y, Z)`` the network was trained on.
        overlap: window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        sw_device: where the windows run (default: the input's device).
        device: where the blended output is kept (default: the input's device; the CPU
            keeps a large volume off the GPU).
        progress: a progress bar over the windows.
        activation, tta: see :class:`VmunetInferer` (TTA flips each axis in turn).

    Example:
        >>> import torch
        >>> inferer = SlidingWindowInferer3D((32, 32, 16), overlap=0.25, activation="softmax")
        >>> tuple(inferer(torch.rand(1, 1, 40, 30, 20), torch.nn.Conv3d(1, 2, 1)).shape)
        (1, 2, 40, 30, 20)
    """

    spatial_dims = 3

    def __init__(
        self,
        roi_size: Sequence[int],
        overlap: float = 0.5,
        sw_batch_size: int = 2,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        activation: str = "softmax",
        tta: bool = False,
    ) -> None:
        super().__init__(activation, tta)
        roi = _check_size(roi_size, 3, "roi_size", None)
        if roi is None:
            raise ValueError("roi_size must be given (the training patch (X, Y, Z))")
        self.roi_size = roi
        self.overlap = _check_overlap(overlap)
        self.sw_batch_size = _check_batch(sw_batch_size, "sw_batch_size")
        self.sw_device = sw_device
        self.device = device
        self.progress = bool(progress)

    def logits(self, x: torch.Tensor, network: Network) -> torch.Tensor:
        """Blended window logits of the whole volume."""
        out = sliding_window_inference(
            x,
            self.roi_size,
            self.sw_batch_size,
            network,
            overlap=self.overlap,
            mode="gaussian",
            sw_device=self.sw_device,
            device=self.device,
            progress=self.progress,
        )
        return out.float()  # type: ignore[union-attr]


# --------------------------------------------------------------------------- convenience


def predict_probabilities(
    model: Network,
    x: torch.Tensor,
    *,
    roi_size: Sequence[int] | None = None,
    resize: bool = False,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    activation: str = "sigmoid",
    tta: bool = False,
) -> torch.Tensor:
    """Class probabilities of a batch of normalised 2-D images through the matching inferer.

    ``roi_size`` with ``resize``: :class:`WholeImageInferer` resizing to it; ``roi_size``
    alone: :class:`SlidingWindowInferer2D`; neither: the padded image whole.

    Example:
        >>> import torch
        >>> probs = predict_probabilities(torch.nn.Conv2d(1, 2, 1), torch.rand(1, 1, 70, 90),
        ...                               roi_size=(64, 64), activation="softmax")
        >>> tuple(probs.shape)
        (1, 2, 70, 90)
    """
    if resize or roi_size is None:
        inferer: VmunetInferer = WholeImageInferer(roi_size, resize=resize, activation=activation, tta=tta)
    else:
        inferer = SlidingWindowInferer2D(roi_size, overlap, sw_batch_size, activation=activation, tta=tta)
    return inferer(x, model)
