"""ONNX, TorchScript and pt2 export of a vmunet checkpoint, checked against PyTorch before it is kept.

The network is rebuilt from the checkpoint with the ``chunked`` selective-scan backend (plain
tensor ops: the other backends run inside custom ops no exporter can hold), exported with a
dynamic batch and dynamic spatial sizes (multiples of the model's ``size_divisors``: 32 per axis
for the 2-D VM-UNet, (32, 32, 16) for the 3-D one), then *run* by the matching runtime (ONNX
Runtime for ``onnx``, ``torch.jit.load`` for ``torchscript``, ``torch.export.load`` for ``pt2``) on
a random input at the checked size (default the checkpoint's window, ``inference.input_size``) and
on a second batch and spatial size.

The graph is traced at a size of at least twice the divisor on every axis (batch 2), so that no
size the graph derives from the input is 0 or 1: ``torch.export`` specialises those to constants,
which silently froze the spatial sizes of a graph traced at a 32 x 32 x 16 window (found by the
tests; the chunked scan pads its sequences by more than a chunk for the same reason).

``pt2`` programs have dynamic spatial sizes from twice the divisor up (:data:`PT2_MIN_UNITS`): at
one divisor the deepest stage is 1 voxel wide, and ``torch.export`` specialises a size of 1 and guards
it when the program runs. A checkpoint whose window is smaller than that on some axis gets a pt2
program with a dynamic batch only, at its window size. (ONNX graphs hold no guards and are checked
down to one divisor.)

The exported model's logits must equal the eager PyTorch model's (automatic backend, what
``vmunet segment`` runs) within ``tolerance * max(1, max |logit|)``; otherwise
:class:`ExportCheckError` is raised and nothing is
left at the output path. Files are written to a temporary name and renamed.

Opset: :data:`DEFAULT_OPSET` 18 is the opset PyTorch's dynamo ONNX exporter (torchlib) writes its
translations in, so no version conversion runs; ONNX Runtime has executed it since 1.14 and
TensorRT since 8.6. Newer opsets up to the exporter's maximum are accepted; older ones are
refused: torch would only try an automatic down-conversion that may fail or keep opset 18.

The preprocessing an exported model expects (the checkpoint's ``inference`` dict: channels,
normalisation, patch size, activation, class names) travels with it: ONNX ``metadata_props``,
a ``vmunet.json`` extra file inside TorchScript and pt2 archives, and a ``<output>.json`` sidecar.

Example:
    >>> from vmunet.export import export_checkpoint
    >>> res = export_checkpoint("best.pt", "best.onnx", format="onnx")  # doctest: +SKIP
    >>> res.max_rel_diff < res.tolerance  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmunet.errors import VmunetUserError
from vmunet.export._source import ExportSource, export_scan_backend, jsonable, load_source
from vmunet.utils.io import atomic_path, atomic_write_text

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "GRAPH_FORMATS",
    "MIN_OPSET",
    "ExportCheckError",
    "ExportResult",
    "check_opset",
    "export_checkpoint",
    "max_opset",
    "metadata_for",
    "run_exported",
]

logger = logging.getLogger(__name__)

GRAPH_FORMATS = ("onnx", "torchscript", "pt2")

#: a pt2 program's spatial sizes are dynamic from this many times the divisor up (below, the deepest
#: stage is 1 voxel wide, a size ``torch.export`` specialises and then guards at load time)
PT2_MIN_UNITS = 2

#: torchlib's own opset: the dynamo exporter's translations are written for it (no conversion).
DEFAULT_OPSET = 18
MIN_OPSET = 18
#: exported logits must satisfy max |exported - eager| <= DEFAULT_TOLERANCE * max(1, max |eager|)
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: name of the JSON metadata inside TorchScript / pt2 archives
EXTRA_FILE = "vmunet.json"
_EXPORT_BATCH = 2  # torch.export specialises a batch of 1; export with 2 keeps the batch dynamic


class ExportCheckError(VmunetUserError):
    """The exported model's logits differ from PyTorch's (or it would not run); nothing was kept."""


class _DoesNotRun(ExportCheckError):
    """The runtime refused the exported model on one input."""


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and how close the exported model came to PyTorch.

    Attributes:
        path: the exported file.
        format: ``"onnx"``, ``"torchscript"`` or ``"pt2"``.
        opset: the ONNX opset (``None`` for the other formats).
        dynamic: whether batch and spatial sizes are dynamic in the exported graph.
        input_shape: the shape the model was exported with.
        checks: ``(input shape, max |diff| / max(1, max |logit|))`` for each verified input.
        tolerance: the bound every check had to meet.
        sidecar: the ``.json`` written beside the file.
        dynamic_axes: the input axes that are dynamic (``["batch", "height", "width"]``, ``["batch"]``
            or none).

    Example:
        >>> r = ExportResult(Path("m.onnx"), "onnx", 18, True, (2, 1, 64, 64), [((2, 1, 64, 64), 3e-6)], 1e-4)
        >>> r.max_rel_diff
        3e-06
    """

    path: Path
    format: str
    opset: int | None
    dynamic: bool
    input_shape: tuple[int, ...]
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE
    sidecar: Path | None = None
    dynamic_axes: list[str] = field(default_factory=list)

    @property
    def max_rel_diff(self) -> float:
        """The largest relative difference over all checks."""
        return max((d for _, d in self.checks), default=0.0)


# --------------------------------------------------------------------------- arguments


def max_opset() -> int:
    """The newest opset both the installed exporter and the installed ``onnx`` can write."""
    import onnx
    from torch.onnx import _constants

    return int(min(_constants.ONNX_MAX_OPSET, onnx.defs.onnx_opset_version()))


def check_opset(opset: int | None) -> int:
    """``opset`` if the dynamo ONNX exporter can serve it (``None``: :data:`DEFAULT_OPSET`).

    Raises:
        VmunetUserError: one line naming the opset and the accepted range.
    """
    if opset is None:
        return DEFAULT_OPSET
    hi = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= hi:
        raise VmunetUserError(
            f"--opset {opset}: the ONNX exporter (torch {torch.__version__.split('+')[0]}, dynamo) "
            "writes opsets "
            f"{MIN_OPSET}..{hi}; older ones would need a down-conversion it cannot guarantee "
            f"(default {DEFAULT_OPSET})"
        )
    return int(opset)


def _check_tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise VmunetUserError(f"--tolerance must be a number in (0, 1), got {tolerance!r}")
    return float(tolerance)


def _input_size(src: ExportSource, input_size: Sequence[int] | None) -> tuple[int, ...]:
    nd = src.spec.spatial_dims
    div = src.size_divisors
    size = input_size if input_size is not None else src.spec.input_size
    if size is None:
        size = tuple(d * max(1, 64 // d) for d in div)
    try:
        size_t = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise VmunetUserError(f"--input-size must be {nd} integers, got {size!r}") from None
    if len(size_t) != nd or any(s < d or s % d for s, d in zip(size_t, div)):
        raise VmunetUserError(
            f"--input-size {' '.join(map(str, size_t))}: the model takes {nd} spatial sizes, multiples of "
            f"{' x '.join(map(str, div))}"
        )
    return size_t


def metadata_for(
    src: ExportSource, fmt: str, dynamic: bool, opset: int | None = None, spatial: bool = True
) -> dict[str, Any]:
    """The preprocessing / provenance record stored with an exported model (JSON-serialisable).

    ``dynamic``: the batch is dynamic; ``spatial``: so are the spatial sizes (multiples of
    ``size_divisors`` from ``min_input_size`` up).
    """
    from vmunet import __version__

    spec = src.spec
    nd = spec.spatial_dims
    axes = ["batch", "channel", *(["height", "width"] if nd == 2 else ["x", "y", "z"])]
    spatial = dynamic and spatial
    units = PT2_MIN_UNITS if fmt == "pt2" else 1
    return {
        "format": fmt,
        "vmunet_version": __version__,
        "torch_version": str(torch.__version__),
        "opset": opset,
        "arch": {"name": src.arch_name, "kwargs": src.arch_kwargs},
        "scan_backend": "chunked",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_axes": axes,
        "output": "logits (no activation); apply inference.activation, then threshold / argmax",
        "dynamic": dynamic,
        "dynamic_axes": (["batch", *axes[2:]] if spatial else ["batch"]) if dynamic else [],
        "size_divisors": list(src.size_divisors),
        "min_input_size": [units * d for d in src.size_divisors] if spatial else None,
        "inference": jsonable(src.checkpoint["inference"]),
    }


# --------------------------------------------------------------------------- export


def _sample(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32)


def _dynamic_shapes(src: ExportSource, spatial: bool = True, min_units: int = 1) -> tuple[dict[int, Any]]:
    """A dynamic batch, and (``spatial``) dynamic multiples of the divisors on every spatial axis,
    from ``min_units`` times the divisor up."""
    from torch.export import Dim

    top = 4096 if src.spec.spatial_dims == 2 else 1024
    dims: dict[int, Any] = {0: Dim("batch", min=1, max=1024)}
    for i, d in enumerate(src.size_divisors if spatial else ()):
        dims[2 + i] = Dim(f"n{i}", min=min_units, max=max(min_units + 1, top // d)) * d
    return (dims,)


def _pt2_spatial(shape: tuple[int, ...], div: tuple[int, ...]) -> bool:
    """Whether a pt2 program exported at ``shape`` can keep its spatial sizes dynamic."""
    return all(s >= PT2_MIN_UNITS * d for s, d in zip(shape[2:], div))


def _trace_shape(shape: tuple[int, ...], div: tuple[int, ...], dynamic: bool) -> tuple[int, ...]:
    """The input shape the graph is traced at: ``shape``, each axis raised to 2 x its divisor when dynamic."""
    if not dynamic:
        return shape
    return (shape[0], shape[1], *(max(s, 2 * d) for s, d in zip(shape[2:], div)))


def _export_onnx(src: ExportSource, x: torch.Tensor, tmp: Path, opset: int, dynamic: bool) -> None:
    import onnx

    kwargs: dict[str, Any] = {"dynamic_shapes": _dynamic_shapes(src)} if dynamic else {}
    torch.onnx.export(
        src.model,
        (x,),
        str(tmp),
        dynamo=True,
        # onnxscript's optimizer takes minutes on a graph this size (the chunked scan's steps are
        # unrolled); ONNX Runtime optimises the graph itself when it loads it
        optimize=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        external_data=False,
        verbose=False,
        **kwargs,
    )
    model = onnx.load(str(tmp))
    meta = metadata_for(src, "onnx", dynamic, opset)
    props = {
        "vmunet_inference": json.dumps(meta["inference"]),
        "vmunet_arch": json.dumps(meta["arch"]),
        "vmunet_version": meta["vmunet_version"],
        "vmunet_input_axes": ",".join(meta["input_axes"]),
        "vmunet_size_divisors": ",".join(map(str, meta["size_divisors"])),
        "vmunet_output": meta["output"],
    }
    onnx.helper.set_model_props(model, props)
    model.producer_name = "vmunet"
    onnx.save(model, str(tmp))


def _export_torchscript(src: ExportSource, x: torch.Tensor, tmp: Path, dynamic: bool) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(src.model, (x,), check_trace=False)
    meta = metadata_for(src, "torchscript", dynamic)
    torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: json.dumps(meta)})


def _export_pt2(src: ExportSource, x: torch.Tensor, tmp: Path, dynamic: bool, spatial: bool) -> None:
    kwargs: dict[str, Any] = {}
    if dynamic:
        kwargs["dynamic_shapes"] = _dynamic_shapes(src, spatial=spatial, min_units=PT2_MIN_UNITS)
    ep = torch.export.export(src.model, (x,), **kwargs)
    meta = metadata_for(src, "pt2", dynamic, spatial=spatial)
    torch.export.save(ep, str(tmp), extra_files={EXTRA_FILE: json.dumps(meta)})


def run_exported(path: str | os.PathLike[str], fmt: str, x: torch.Tensor) -> np.ndarray:
    """Run an exported model with its own runtime on ``x``; returns the logits as float32 numpy.

    Args:
        path: the exported file.
        fmt: ``"onnx"`` (ONNX Runtime, CPU), ``"torchscript"`` (``torch.jit.load``) or ``"pt2"``
            (``torch.export.load``).
        x: the input batch.
    """
    return _Runner(path, fmt)(x)


class _Runner:
    """An exported model loaded by its own runtime on first use, then called on each batch."""

    def __init__(self, path: str | os.PathLike[str], fmt: str) -> None:
        if fmt not in GRAPH_FORMATS:
            raise ValueError(f"fmt must be one of {GRAPH_FORMATS}, got {fmt!r}")
        self.path, self.fmt = str(path), fmt
        self._run: Any = None

    def _load(self) -> Any:
        if self.fmt == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            sess = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            return lambda x: sess.run(None, {name: x.numpy()})[0]
        if self.fmt == "torchscript":
            module = torch.jit.load(self.path, map_location="cpu")
        else:
            module = torch.export.load(self.path).module()
        return lambda x: module(x).float().numpy()

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        if self._run is None:
            self._run = self._load()
        with torch.no_grad():
            return np.asarray(self._run(x), dtype=np.float32)


def _reference_logits(src: ExportSource, x: torch.Tensor) -> np.ndarray:
    """Eager PyTorch logits with the automatic scan backend (what ``vmunet segment`` runs)."""
    model = src.model
    setter = getattr(model, "set_scan_backend", None)
    before = getattr(model, "config", {}).get("scan_backend") if setter is not None else None
    try:
        if setter is not None:
            setter(None)
        with torch.no_grad():
            return model(x).float().numpy()
    finally:
        if setter is not None:
            setter(before)


def _rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        return float("inf")
    scale = max(1.0, float(np.abs(want).max()))
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max() / scale)


def _verify(
    src: ExportSource, runner: _Runner, shapes: list[tuple[int, ...]], tolerance: float, out: Path
) -> list[tuple[tuple[int, ...], float]]:
    checks = []
    fmt = runner.fmt
    for i, shape in enumerate(shapes):
        x = _sample(shape, seed=i)
        want = _reference_logits(src, x)
        try:
            got = runner(x)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise _DoesNotRun(
                f"{out}: the exported {fmt} model does not run on an input of shape {list(shape)} "
                f"({type(exc).__name__}: {first}); nothing was written"
            ) from exc
        diff = _rel_diff(got, want)
        logger.info("%s: %s input %s: max |diff| / max(1, max |logit|) = %.3g", out, fmt, list(shape), diff)
        if not diff <= tolerance:
            raise ExportCheckError(
                f"{out}: the exported {fmt} model's logits differ from PyTorch's by {diff:.3g} "
                f"(relative to max(1, max |logit|)) on an input of shape {list(shape)}, above the tolerance "
                f"{tolerance:g}; nothing was written"
            )
        checks.append((tuple(shape), diff))
    return checks


def _second_shape(shape: tuple[int, ...], div: tuple[int, ...]) -> tuple[int, ...]:
    """Another batch size and spatial size (what the dynamic axes must serve)."""
    return (1, shape[1], *(s + d for s, d in zip(shape[2:], div)))


def export_checkpoint(
    checkpoint: str | os.PathLike[str] | dict[str, Any],
    output: str | os.PathLike[str],
    format: str = "onnx",
    *,
    opset: int | None = None,
    input_size: Sequence[int] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    dynamic: bool = True,
) -> ExportResult:
    """Export a vmunet checkpoint to ONNX, TorchScript or pt2 and check it against PyTorch.

    Args:
        checkpoint: a vmunet checkpoint (path or dict).
        output: the file to write (``.onnx``, ``.pt`` / ``.ts``, ``.pt2``); a ``.json`` sidecar with
            the preprocessing spec is written beside it (``<output>.json``).
        format: ``"onnx"``, ``"torchscript"`` or ``"pt2"``.
        opset: ONNX opset (``None``: :data:`DEFAULT_OPSET`); only for ``onnx``.
        input_size: the spatial size exported with and checked (default: the checkpoint's
            ``inference.input_size``); multiples of the model's ``size_divisors``.
        tolerance: the largest ``max |exported - eager| / max(1, max |eager logit|)`` accepted.
        dynamic: export a dynamic batch and spatial size (falls back to a static graph, with a
            warning, when the exporter cannot keep them dynamic).

    Returns:
        An :class:`ExportResult`.

    Raises:
        VmunetUserError: not a vmunet checkpoint, an unknown format, an opset the exporter cannot
            serve, a bad ``input_size`` / ``tolerance``; :class:`ExportCheckError` when the exported
            model does not reproduce PyTorch's logits. Nothing is left at ``output`` then.
    """
    if format not in GRAPH_FORMATS:
        raise VmunetUserError(f"--format {format!r}: expected one of {', '.join(GRAPH_FORMATS)} or bundle")
    if format == "onnx":
        opset_v: int | None = check_opset(opset)
    elif opset is not None:
        raise VmunetUserError(f"--opset applies to --format onnx only, not {format}")
    else:
        opset_v = None
    tol = _check_tolerance(tolerance)
    out = Path(output)
    if out.is_dir():
        raise VmunetUserError(f"--output {out}: is a folder, expected a file name for the {format} model")
    src = load_source(checkpoint)
    if hasattr(src.model, "set_scan_backend"):  # a VM-UNet: trace the scan as plain tensor ops
        src.model.set_scan_backend(export_scan_backend())
    size = _input_size(src, input_size)
    shape = (_EXPORT_BATCH, src.spec.in_channels, *size)
    div = src.size_divisors
    spatial = format != "pt2" or _pt2_spatial(shape, div)  # pt2: only from twice the divisor up

    def traced(dyn: bool) -> torch.Tensor:  # a TorchScript trace keeps the sizes it saw: trace at `shape`
        return _sample(_trace_shape(shape, div, dyn and format == "onnx"))

    writers = {
        "onnx": lambda t, dyn: _export_onnx(src, traced(dyn), t, opset_v, dyn),  # type: ignore[arg-type]
        "torchscript": lambda t, dyn: _export_torchscript(src, traced(dyn), t, dyn),
        "pt2": lambda t, dyn: _export_pt2(src, traced(dyn), t, dyn, spatial),
    }
    dyn = bool(dynamic)
    with atomic_path(out) as tmp:
        try:
            writers[format](tmp, dyn)
        except VmunetUserError:
            raise
        except Exception as exc:
            if not dyn or format == "torchscript":
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            logger.warning(
                "%s: the %s exporter could not keep the batch and spatial sizes dynamic (%s: %s); "
                "exporting a static graph for input shape %s",
                out,
                format,
                type(exc).__name__,
                first,
                list(shape),
            )
            dyn = False
            tmp.unlink(missing_ok=True)
            writers[format](tmp, dyn)
        runner = _Runner(tmp, format)  # loaded once for both checks (a pt2 program takes seconds to load)
        checks = _verify(src, runner, [shape], tol, out)
        if dyn:
            second = _second_shape(shape, div) if spatial else (1, *shape[1:])
            try:
                checks += _verify(src, runner, [second], tol, out)
            except _DoesNotRun as exc:
                if format != "torchscript":
                    raise
                # a trace may freeze sizes read from the input; it is kept for the traced shape only
                why = exc.__cause__ if exc.__cause__ is not None else exc
                logger.warning(
                    "%s: the traced graph runs at input shape %s only (at %s: %s)",
                    out,
                    list(shape),
                    list(second),
                    (str(why).strip().splitlines() or [""])[0][:200],
                )
                dyn = False
    sidecar = out.with_name(out.name + ".json")
    meta = metadata_for(src, format, dyn, opset_v, spatial=spatial)
    meta["checks"] = [{"input_shape": list(s), "max_rel_diff": d} for s, d in checks]
    meta["tolerance"] = tol
    atomic_write_text(sidecar, json.dumps(meta, indent=2) + "\n")
    return ExportResult(out, format, opset_v, dyn, shape, checks, tol, sidecar, meta["dynamic_axes"])
