"""Segment many files: input discovery, output naming, resume, summary CSV, overlays.

Output layout under ``output_dir`` (subfolders of an input folder are mirrored):

* ``<rel>/<case><ext>``: the label map, same name as the input, same format
  (NIfTI stays NIfTI, NRRD stays NRRD, PNG stays PNG, ...) and exactly the
  input's geometry. A DICOM series (or single ``.dcm`` file) becomes
  ``<series folder name>.nii.gz``; a JPEG becomes ``.png`` (labels must not go
  through lossy compression). Label values are ``0 .. n_labels-1`` (0 is the
  background; a one-channel sigmoid model writes 0/1).
* ``probabilities/<rel>/<case><ext>``: class probabilities when asked, float32,
  class axis last (dropped for one-channel models); pictures (PNG/JPEG/BMP)
  get a float32 ``.tif``.
* ``overlays/<rel>/<case>.png``: label contours drawn on the image when asked;
  a volume shows three representative slices side by side.
* ``summary.csv``: one row per input (see :data:`SUMMARY_COLUMNS`), rewritten
  after every file (under torchrun: each rank's part in ``.vmunet-parts/``, and
  ``summary.csv`` once at the end).
* extra outputs of :class:`OutputWriter` s (e.g. a DICOM-SEG), where they say.

An input whose label map (and requested extras) already exist is skipped
unless ``overwrite=True``, so an interrupted run resumes where it stopped.
Inputs are never written to.

One input goes through three steps: :func:`plan_folder` (find it, name its
outputs, skip it when done), the segmenter (decode and prepare, then predict:
``Segmenter.load`` / ``Segmenter.predict_prepared``), and :func:`write_prediction`
(the label map, probabilities, overlay, then any extra writer). They run in one
thread (``workers=0``), overlapped with background decoding workers and a writer
thread (``workers=N``), on torchrun ranks, or on Ray actors
(:mod:`vmunet.inference.engines`); every file is written to a temporary name and
renamed, so a process that dies leaves no half-written output and a rerun
finishes its inputs.

Example:
    >>> from vmunet.inference import Segmenter
    >>> seg = Segmenter("best.pt")  # doctest: +SKIP
    >>> summary = seg.segment_folder(["scans/"], "masks/", overlay=True)  # doctest: +SKIP
    >>> summary.n_failed  # doctest: +SKIP
    0
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vmunet.errors import VmunetUserError
from vmunet.utils.io import atomic_path, atomic_write_text

__all__ = [
    "FileTask",
    "FolderPlan",
    "FolderSummary",
    "InputItem",
    "OutputWriter",
    "PARTS_DIR",
    "RayFilePredictor",
    "SUMMARY_COLUMNS",
    "collect_inputs",
    "make_bar",
    "output_extension",
    "overlay_image",
    "plan_folder",
    "segment_folder",
    "write_prediction",
]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("file", "output", "status", "error", "shape", "spacing", "seconds")
"""Fixed summary columns; then ``voxels_<class>`` per label and, for volumes, ``volume_ml_<class>``."""

#: Files next to images that are not images: ignored when a folder is recursed.
_SIDECAR_EXTENSIONS = {".json", ".txt", ".csv", ".md", ".yaml", ".yml", ".raw", ".zraw", ".log", ".pkl"}

#: Output extension per input format (others keep their own extension).
_OUTPUT_EXT = {"dicom": ".nii.gz", "jpeg": ".png", "nrrd": ".nrrd"}

_PICTURE_FORMATS = {"png", "jpeg", "bmp"}

# Tableau 10 colours (matplotlib's "tab10"), one per foreground class, cycled.
_COLOURS = np.array(
    [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class InputItem:
    """One thing to segment: a file or a DICOM series folder, and where its outputs go."""

    path: Path
    rel_dir: Path  # sub-folder of the output folder (mirrors the input tree)
    supported: bool = True


@dataclass
class FolderSummary:
    """What :func:`segment_folder` did.

    Attributes:
        rows: one dict per input (keys: :data:`SUMMARY_COLUMNS` plus per-class columns).
        csv_path: where the summary CSV was written.

    Example:
        >>> s = FolderSummary(rows=[{"status": "ok"}, {"status": "failed"}])
        >>> s.n_ok, s.n_failed, s.ok
        (1, 1, False)
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    csv_path: Path | None = None

    def _count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.get("status") == status)

    @property
    def n_ok(self) -> int:
        """Inputs segmented in this run."""
        return self._count("ok")

    @property
    def n_skipped(self) -> int:
        """Inputs whose outputs already existed."""
        return self._count("skipped")

    @property
    def n_failed(self) -> int:
        """Inputs that could not be segmented."""
        return self._count("failed")

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return self.n_failed == 0


# --------------------------------------------------------------------------- discovery


def _looks_like_dicom_dir(d: Path, files: Sequence[str]) -> bool:
    from vmunet.data.io import image_format, split_extension

    candidates = [
        f for f in files if not f.startswith(".") and split_extension(f)[1].lower() in (".dcm", "", ".ima")
    ]
    return bool(candidates) and image_format(d) == "dicom"


def collect_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    exclude: str | os.PathLike[str] | None = None,
) -> list[InputItem]:
    """Expand files, folders (recursed, sorted) and DICOM series folders into inputs.

    Hidden files and folders, well-known non-image files (``.json``, ``.txt``,
    ``.csv``, ``.raw`` data of ``.mhd`` headers, ...) and anything under
    ``exclude`` (the output folder) are left out. Other files with an
    unsupported extension are kept with ``supported=False`` so that they get a
    summary row.

    Raises:
        VmunetUserError: an input path does not exist, or nothing was given.
    """
    from vmunet.data.io import is_supported, split_extension

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise VmunetUserError("no input given: pass files, folders or DICOM series folders")
    excl = Path(exclude).resolve() if exclude is not None else None

    def excluded(p: Path) -> bool:
        if excl is None:
            return False
        rp = p.resolve()
        return rp == excl or excl in rp.parents

    items: list[InputItem] = []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            raise VmunetUserError(f"input {str(root)!r}: no such file or folder")
        if root.is_file():
            items.append(InputItem(root, Path(), is_supported(root)))
            continue
        if _looks_like_dicom_dir(root, sorted(os.listdir(root))):
            items.append(InputItem(root, Path()))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and not excluded(d / n))
            rel = d.relative_to(root)
            files = sorted(filenames)
            if d != root and _looks_like_dicom_dir(d, files):
                items.append(InputItem(d, rel.parent))
                files = [f for f in files if split_extension(f)[1].lower() not in (".dcm", "", ".ima")]
            for name in files:
                if name.startswith("."):
                    continue
                f = d / name
                ext = split_extension(name)[1].lower()
                if is_supported(f) and ext != ".dcm":
                    items.append(InputItem(f, rel))
                elif ext == ".dcm":
                    items.append(InputItem(f, rel))  # a lone DICOM file (a whole series is found above)
                elif ext not in _SIDECAR_EXTENSIONS and not excluded(f):
                    items.append(InputItem(f, rel, supported=False))
    return items


def output_extension(path: str | os.PathLike[str]) -> str:
    """The extension of the label map written for input ``path`` (see the module docstring)."""
    from vmunet.data.io import image_format, split_extension

    fmt = image_format(path)
    if fmt in _OUTPUT_EXT:
        return _OUTPUT_EXT[fmt]
    ext = split_extension(path)[1]
    return ext if ext else ".nii.gz"


def _probability_extension(item_path: Path, mask_ext: str) -> str:
    from vmunet.data.io import image_format

    fmt = image_format(item_path)
    return ".tif" if fmt in _PICTURE_FORMATS else mask_ext


# --------------------------------------------------------------------------- progress


def make_bar(total: int, desc: str, unit: str, leave: bool = True) -> Any:
    """A tqdm bar on stderr when stderr is a terminal; ``None`` otherwise (plain log lines instead)."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True)


@contextlib.contextmanager
def _bar_logging(bar: Any) -> Iterator[None]:
    if bar is None:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield


# --------------------------------------------------------------------------- overlays


def _display_gray(slice_: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """Map one 2-D (or RGB) slice to uint8 for display."""
    a = np.asarray(slice_)
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8:
        return a[..., :3]
    if a.ndim == 3:
        a = a[..., :3] if a.shape[-1] >= 3 else a[..., 0]
    a = a.astype(np.float32)
    if spec and spec.get("kind") == "window":
        lo, hi = float(spec["min"]), float(spec["max"])
    else:
        finite = a[np.isfinite(a)]
        lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)) if a.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    g = np.clip((np.nan_to_num(a) - lo) / (hi - lo), 0, 1)
    return (g * 255 + 0.5).astype(np.uint8)


def overlay_image(
    image: np.ndarray, labels: np.ndarray, intensity_window: dict[str, Any] | None = None
) -> np.ndarray:
    """Draw the contour of each label (>0) on a 2-D image; returns ``(H, W, 3)`` uint8.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` image (any dtype).
        labels: ``(H, W)`` label map.
        intensity_window: a ``{"kind": "window", "min", "max"}`` spec to display
            with (else the 1st-99th percentile range).
    """
    from skimage.segmentation import find_boundaries

    g = _display_gray(image, intensity_window)
    rgb = np.repeat(g[..., None], 3, axis=-1) if g.ndim == 2 else g.copy()
    for lab in np.unique(labels):
        if lab == 0:
            continue
        edge = find_boundaries(labels == lab, mode="inner")
        rgb[edge] = _COLOURS[(int(lab) - 1) % len(_COLOURS)]
    return rgb


def _representative_slices(labels: np.ndarray, axis: int, n: int = 3) -> list[int]:
    """Slices at the quartiles of the labelled extent along ``axis`` (of the volume when empty)."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    area = np.count_nonzero(labels, axis=other)
    idx = np.flatnonzero(area)
    lo, hi = (int(idx[0]), int(idx[-1])) if idx.size else (0, labels.shape[axis] - 1)
    picks = sorted({int(round(lo + (hi - lo) * q)) for q in np.linspace(0.25, 0.75, n)})
    return picks


def _write_overlay(path: Path, pred: Any, norm: dict[str, Any] | None) -> None:
    from vmunet.data import write_image

    img = pred.image
    window = norm if norm and norm.get("kind") == "window" else None
    if pred.axis is None:
        rgb = overlay_image(img.array, pred.labels, window)
    else:
        arr = img.array if img.array.ndim == 3 else img.array[..., 0]
        panels = []
        for k in _representative_slices(pred.labels, pred.axis):
            # Shown transposed: rows follow the second remaining axis (ITK / radiological display).
            im = np.take(arr, k, axis=pred.axis).T
            lab = np.take(pred.labels, k, axis=pred.axis).T
            panels.append(overlay_image(im, lab, window))
        gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        rgb = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    write_image(path, np.ascontiguousarray(rgb))


# --------------------------------------------------------------------------- summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _stats(labels: np.ndarray, spacing: Sequence[float], is_volume: bool, names: Sequence[str]) -> dict:
    counts = np.bincount(labels.ravel(), minlength=len(names))
    row: dict[str, Any] = {}
    for i, name in enumerate(names):
        row[f"voxels_{_safe(name)}"] = int(counts[i]) if i < counts.size else 0
    if is_volume:
        voxel_ml = float(np.prod(spacing)) / 1000.0  # mm^3 -> mL
        for i, name in enumerate(names):
            row[f"volume_ml_{_safe(name)}"] = round(float(counts[i]) * voxel_ml, 4)
    return row


def _fmt_tuple(t: Sequence[Any]) -> str:
    return "x".join(str(int(v)) if float(v).is_integer() and abs(v) > 0.5 else f"{v:.6g}" for v in t)


def _write_summary(
    path: Path, rows: list[dict[str, Any]], names: Sequence[str], extra: Sequence[str] = ()
) -> None:
    cols = list(SUMMARY_COLUMNS)
    cols += [f"voxels_{_safe(n)}" for n in names]
    if any(any(k.startswith("volume_ml_") for k in r) for r in rows):
        cols += [f"volume_ml_{_safe(n)}" for n in names]
    cols += list(extra)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- plan: what to do with each input


class OutputWriter(Protocol):
    """An extra output written for each segmented input, beside the label map (e.g. a DICOM-SEG object).

    ``segment_folder(..., writers=[w])`` asks ``w.output_path`` where input ``item``'s output goes
    (``None``: this writer does not apply to the input, e.g. a DICOM-SEG for a NIfTI file); the
    path counts for resume like the label map's, and after the label map is written
    ``w.write(path, prediction, item)`` writes it (to a temporary name, then renamed; see
    :func:`vmunet.utils.io.atomic_path`). Writers must be picklable for the Ray engine.

    Attributes:
        key: a short name, unique among the writers (``"dicom_seg"``).

    Example:
        >>> class LabelsAsNpy:
        ...     key = "npy"
        ...     def output_path(self, item, output_dir, case):
        ...         return output_dir / "npy" / item.rel_dir / f"{case}.npy"
        ...     def write(self, path, prediction, item):
        ...         with atomic_path(path) as tmp:
        ...             np.save(tmp, prediction.labels)
        >>> LabelsAsNpy().key
        'npy'
    """

    key: str

    def output_path(self, item: InputItem, output_dir: Path, case: str) -> Path | None:
        """Where this writer's output for ``item`` goes, or ``None`` when it does not apply."""
        ...

    def write(self, path: Path, prediction: Any, item: InputItem) -> None:
        """Write the output of one :class:`~vmunet.inference.Prediction` to ``path``."""
        ...


@dataclass(frozen=True)
class FileTask:
    """One input to segment: its position in the sorted input list and its output paths.

    Attributes:
        index: position among all inputs of the run (the summary's row order).
        item: the input.
        outputs: ``{"mask": ..., "probabilities"?: ..., "overlay"?: ..., <writer key>?: ...}``.
    """

    index: int
    item: InputItem
    outputs: dict[str, Path]


@dataclass
class FolderPlan:
    """What :func:`plan_folder` decided before any prediction.

    Attributes:
        items: every input, sorted as :func:`collect_inputs` returns them.
        rows: one entry per input: its finished summary row when already decided (skipped
            because its outputs exist, or failed a check), else ``None``.
        tasks: the inputs left to segment.
        csv_path: where the summary goes.
        class_names: label names (summary columns).
    """

    items: list[InputItem]
    rows: list[dict[str, Any] | None]
    tasks: list[FileTask]
    csv_path: Path
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class _FileOptions:
    """What every per-file step needs besides the segmenter (picklable: goes to workers and actors)."""

    probabilities: bool = False
    overlay: bool = False
    writers: tuple[Any, ...] = ()


def _outputs_for(
    item: InputItem, out_dir: Path, probabilities: bool, overlay: bool, writers: Sequence[Any] = ()
) -> dict[str, Path]:
    from vmunet.data.io import case_name

    ext = output_extension(item.path)
    case = case_name(item.path) if item.path.is_file() else item.path.name
    outs = {"mask": out_dir / item.rel_dir / f"{case}{ext}"}
    if probabilities:
        outs["probabilities"] = (
            out_dir / "probabilities" / item.rel_dir / f"{case}{_probability_extension(item.path, ext)}"
        )
    if overlay:
        outs["overlay"] = out_dir / "overlays" / item.rel_dir / f"{case}.png"
    for w in writers:
        if w.key in outs:
            raise ValueError(f"writers: key {w.key!r} is already used; give each writer its own key")
        extra = w.output_path(item, out_dir, case)
        if extra is not None:
            outs[w.key] = Path(extra)
    return outs


def _save_probabilities(path: Path, probs: np.ndarray, like: Any) -> None:
    from vmunet.data import write_image
    from vmunet.data.io import VOLUME_FORMATS

    if probs.shape[-1] == 1:
        probs = probs[..., 0]
    if path.suffix.lower() in (".tif", ".tiff") and like.format not in VOLUME_FORMATS:
        # Class axis last as samples of one page (not RGB), so K=3 does not read as a colour image.
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(
                str(tmp),
                np.ascontiguousarray(probs),
                photometric="minisblack",
                planarconfig="contig" if probs.ndim == 3 else None,
                compression="zlib",
            )
        return
    write_image(path, np.ascontiguousarray(probs), like=like)


def _check_item(item: InputItem, outs: dict[str, Path], input_paths: set[Path], claimed: dict) -> None:
    """Refuse unsupported files, outputs that would land on an input, and output name clashes."""
    if not item.supported:
        from vmunet.data.io import SUPPORTED_EXTENSIONS

        raise VmunetUserError(
            f"{item.path}: unsupported file type; expected one of "
            f"{', '.join(SUPPORTED_EXTENSIONS)} or a DICOM series folder"
        )
    target = outs["mask"].resolve()
    if any(p.resolve() in input_paths for p in outs.values()):
        raise VmunetUserError(f"{item.path}: its output {target} would overwrite an input")
    if target in claimed:
        raise VmunetUserError(
            f"{item.path}: output name {outs['mask'].name} is already used by {claimed[target]}; "
            "rename one of them"
        )
    claimed[target] = item.path


def _existing_output(outs: dict[str, Path]) -> Any:
    """The finished label map when every requested output exists (resume), else ``None``."""
    from vmunet.data import read_image

    if not all(p.exists() for p in outs.values()):
        return None
    try:
        return read_image(outs["mask"])
    except Exception:  # an unreadable leftover is segmented again
        return None


def _existing_row(existing: Any, names: Sequence[str]) -> dict[str, Any]:
    labels = np.asarray(existing.array)
    if labels.ndim > existing.spatial_ndim:
        labels = labels[..., 0]
    row = {
        "status": "skipped",
        "shape": _fmt_tuple(existing.spatial_shape),
        "spacing": _fmt_tuple(existing.spacing),
    }
    row.update(_stats(labels.astype(np.int64), existing.spacing, existing.is_volume, names))
    return row


def _base_row(item: InputItem, outputs: dict[str, Path]) -> dict[str, Any]:
    """The summary fields every row starts with (the input and its label map as the user named them)."""
    return {"file": str(item.path), "output": str(outputs["mask"]), "error": ""}


def _error_message(item: InputItem, exc: BaseException) -> str:
    if isinstance(exc, VmunetUserError):
        return str(exc)
    return f"{item.path}: {type(exc).__name__}: {exc}"


def _check_output_dir(input_list: Sequence[Any], out_dir: Path) -> None:
    for raw in input_list:
        if Path(raw).is_dir() and Path(raw).resolve() == out_dir.resolve():
            raise VmunetUserError(
                f"output folder {str(out_dir)!r} is also an input folder; "
                "choose another one so that the inputs stay untouched"
            )


def plan_folder(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    class_names: Sequence[str],
    probabilities: bool = False,
    overlay: bool = False,
    overwrite: bool = False,
    writers: Sequence[OutputWriter] = (),
) -> FolderPlan:
    """Find the inputs, name their outputs, and decide which are already done (resume) or refused.

    Runs once per run (on rank 0 under torchrun, on the driver with Ray), before any
    prediction, so that every process works from the same list. Refused inputs are logged
    (one line each) and get a ``failed`` row; inputs whose outputs all exist get a
    ``skipped`` row unless ``overwrite``.

    Raises:
        VmunetUserError: an input does not exist, or ``output_dir`` is an input folder.
    """
    out_dir = Path(output_dir)
    input_list = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    _check_output_dir(input_list, out_dir)
    items = collect_inputs(input_list, exclude=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = tuple(class_names)
    input_paths = {it.path.resolve() for it in items}
    claimed: dict[Path, Path] = {}
    rows: list[dict[str, Any] | None] = []
    tasks: list[FileTask] = []
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        outs = _outputs_for(item, out_dir, probabilities, overlay, writers)
        row = _base_row(item, outs)
        try:
            _check_item(item, outs, input_paths, claimed)
            existing = None if overwrite else _existing_output(outs)
        except Exception as exc:
            msg = _error_message(item, exc)
            row.update(status="failed", error=msg)
            logger.error("%s", msg)
        else:
            if existing is None:
                rows.append(None)
                tasks.append(FileTask(i, item, outs))
                continue
            row.update(_existing_row(existing, names))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    if not items:
        logger.warning("no input images found in %s", ", ".join(str(p) for p in input_list))
    return FolderPlan(items, rows, tasks, out_dir / "summary.csv", names)


# --------------------------------------------------------------------------- the per-file steps


def write_prediction(
    prediction: Any,
    outputs: dict[str, Path],
    item: InputItem | None = None,
    *,
    normalization: dict[str, Any] | None = None,
    writers: Sequence[OutputWriter] = (),
) -> dict[str, Any]:
    """Write one prediction's outputs (each to a temporary name, then renamed); returns its summary fields.

    The label map goes to ``outputs["mask"]``, probabilities and the overlay to theirs when
    present, then every extra writer whose key is in ``outputs`` (e.g. a DICOM-SEG) writes
    its own file: the one place an extra output format hooks in.

    Args:
        prediction: a :class:`~vmunet.inference.Prediction` (with probabilities when asked).
        outputs: paths by kind (see :class:`FileTask`).
        item: the input (passed on to the extra writers).
        normalization: the checkpoint's intensity normalisation (overlay display window).
        writers: extra :class:`OutputWriter` s.
    """
    from vmunet.data import write_image

    img = prediction.image
    write_image(outputs["mask"], prediction.labels, like=img)
    if "probabilities" in outputs and prediction.probabilities is not None:
        _save_probabilities(outputs["probabilities"], prediction.probabilities, img)
    if "overlay" in outputs:
        _write_overlay(outputs["overlay"], prediction, normalization)
    for w in writers:  # extra output formats (DICOM-SEG, ...): after the label map, same prediction
        if w.key in outputs:
            w.write(outputs[w.key], prediction, item)
    row = {"status": "ok", "shape": _fmt_tuple(img.spatial_shape), "spacing": _fmt_tuple(img.spacing)}
    row.update(_stats(prediction.labels, img.spacing, img.is_volume, prediction.class_names))
    return row


def _failed_row(task: FileTask, msg: str, seconds: float, log: bool = True) -> dict[str, Any]:
    if log:
        logger.error("%s", msg)
    row = _base_row(task.item, task.outputs)
    return {**row, "status": "failed", "error": msg, "seconds": round(seconds, 3)}


def _write_task(
    segmenter: Any, task: FileTask, pred: Any, opts: _FileOptions, seconds: float, log: bool = True
) -> dict:
    """The write half of one input: its outputs and its summary row (a failure becomes a failed row)."""
    t0 = time.perf_counter()
    try:
        row = {
            **_base_row(task.item, task.outputs),
            **write_prediction(
                pred,
                task.outputs,
                task.item,
                normalization=dict(segmenter.spec.normalization),
                writers=opts.writers,
            ),
        }
    except Exception as exc:
        return _failed_row(task, _error_message(task.item, exc), seconds + time.perf_counter() - t0, log)
    row["seconds"] = round(seconds + time.perf_counter() - t0, 3)
    return row


def _segment_task(
    segmenter: Any, task: FileTask, opts: _FileOptions, slice_bar: bool, log: bool = True
) -> dict[str, Any]:
    """One input start to end in this thread: read, predict, write (``workers=0``, Ray actors)."""
    t0 = time.perf_counter()
    try:
        pred = segmenter.predict(task.item.path, return_probabilities=opts.probabilities, progress=slice_bar)
    except Exception as exc:  # one bad input never stops the run
        return _failed_row(task, _error_message(task.item, exc), time.perf_counter() - t0, log)
    return _write_task(segmenter, task, pred, opts, time.perf_counter() - t0, log)


def _identity(x: Any) -> Any:
    return x


class _PrepareDataset:
    """Map-style dataset for the background workers: task ``i`` -> ``(index, prepared or None, error)``."""

    def __init__(self, preparer: Any, tasks: Sequence[FileTask]) -> None:
        self.preparer = preparer
        self.tasks = list(tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None, float]:
        task = self.tasks[i]
        t0 = time.perf_counter()
        try:
            return task.index, self.preparer(task.item.path), None, 0.0
        except Exception as exc:  # reported by the main process, in order
            return task.index, None, _error_message(task.item, exc), time.perf_counter() - t0


class _Writer:
    """A background thread writing finished predictions in order, behind a bounded queue."""

    def __init__(self, segmenter: Any, opts: _FileOptions, on_row: Any, depth: int = 2) -> None:
        self.segmenter, self.opts, self.on_row = segmenter, opts, on_row
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="vmunet-writer", daemon=True)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            task, pred, failure, seconds = job
            try:
                if pred is None:
                    row = _failed_row(task, failure, seconds)
                else:
                    row = _write_task(self.segmenter, task, pred, self.opts, seconds)
                self.on_row(task, row)
            except BaseException as exc:  # e.g. the summary cannot be written: re-raised in the main thread
                if self.error is None:
                    self.error = exc

    def put(self, job: tuple) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(job)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def _run_tasks(
    segmenter: Any,
    tasks: Sequence[FileTask],
    opts: _FileOptions,
    on_row: Any,
    workers: int = 0,
    slice_bar: bool = False,
) -> None:
    """Segment ``tasks`` in this process, calling ``on_row(task, row)`` for each, in order.

    ``workers=0``: each input read, predicted and written in turn. ``workers=N``: N
    DataLoader worker processes decode and prepare the next inputs (at most ``2 N`` wait
    in memory) while this process predicts, and a writer thread writes the outputs behind
    a queue of two predictions.
    """
    if workers <= 0 or not tasks:
        for task in tasks:
            on_row(task, _segment_task(segmenter, task, opts, slice_bar))
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _PrepareDataset(segmenter.preparer(), tasks),  # type: ignore[arg-type]
        batch_size=None,
        shuffle=False,
        num_workers=int(workers),
        collate_fn=_identity,
        prefetch_factor=2,
        persistent_workers=False,
    )
    by_index = {t.index: t for t in tasks}
    batches = iter(loader)  # the workers are forked here, before the writer thread exists
    writer = _Writer(segmenter, opts, on_row)
    writer.thread.start()
    try:
        for index, prepared, failure, seconds in batches:
            task = by_index[index]
            if prepared is None:
                writer.put((task, None, failure, seconds))
                continue
            t0 = time.perf_counter()
            try:
                pred = segmenter.predict_prepared(
                    prepared, return_probabilities=opts.probabilities, progress=slice_bar
                )
            except Exception as exc:
                spent = prepared.seconds + time.perf_counter() - t0
                writer.put((task, None, _error_message(task.item, exc), spent))
                continue
            writer.put((task, pred, None, prepared.seconds + time.perf_counter() - t0))
    finally:
        del batches  # stops the worker processes
        writer.close()
    if writer.error is not None:
        raise writer.error


# --------------------------------------------------------------------------- engines


class _Progress:
    """A files bar (terminal) or one log line per file; silent when off."""

    def __init__(self, enabled: bool, total: int, desc: str = "segment") -> None:
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.bar = make_bar(total=total, desc=desc, unit="file") if enabled else None

    def __call__(self, row: dict[str, Any]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and row.get("status") != "failed":
            logger.info(
                "[%d/%d] %s: %s (%.2f s)", self.done, self.total, row["file"], row["status"], row["seconds"]
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _decided(rows: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
    return [r for r in rows if r is not None]


def _segment_local(
    segmenter: Any, plan: FolderPlan, opts: _FileOptions, workers: int, progress: bool
) -> FolderSummary:
    rows = list(plan.rows)
    names = plan.class_names
    prog = _Progress(progress, len(plan.items))
    try:
        with _bar_logging(prog.bar):
            for row in _decided(rows):
                prog(row)

            def on_row(task: FileTask, row: dict[str, Any]) -> None:
                rows[task.index] = row
                _write_summary(plan.csv_path, _decided(rows), names)
                prog(row)

            _write_summary(plan.csv_path, _decided(rows), names)
            _run_tasks(segmenter, plan.tasks, opts, on_row, workers, bool(progress and prog.bar))
    finally:
        prog.close()
    done = _decided(rows)
    _write_summary(plan.csv_path, done, names)
    return FolderSummary(rows=done, csv_path=plan.csv_path)


#: Hidden folder of the output folder holding each rank's summary part (``summary.rank{r}.csv``).
PARTS_DIR = ".vmunet-parts"


def _segment_ranks(
    segmenter: Any,
    env: Any,
    plan_args: dict[str, Any],
    opts: _FileOptions,
    workers: int,
    progress: bool,
) -> FolderSummary:
    """torchrun: rank 0 plans, every rank segments its share, rank 0 writes the one summary."""
    from vmunet.inference.engines import RankGroup, shard

    with RankGroup(env) as group:
        payload: Any = None
        if env.is_main:
            try:
                payload = plan_folder(**plan_args)
                parts = payload.csv_path.parent / PARTS_DIR
                for stale in parts.glob("summary.rank*.csv") if parts.is_dir() else ():
                    stale.unlink()
            except VmunetUserError as exc:
                payload = ("error", str(exc))
        payload = group.broadcast(payload)
        if isinstance(payload, tuple):
            raise VmunetUserError(payload[1])
        plan: FolderPlan = payload
        mine = shard(plan.tasks, env.rank, env.world_size)
        logger.debug("rank %d/%d: %d of %d inputs", env.rank, env.world_size, len(mine), len(plan.tasks))
        part_path = plan.csv_path.parent / PARTS_DIR / f"summary.rank{env.rank}.csv"
        my_rows: dict[int, dict[str, Any]] = {}
        show = progress and env.is_main
        prog = _Progress(show, len(mine), desc=f"segment (rank 0 of {env.world_size})")

        def on_row(task: FileTask, row: dict[str, Any]) -> None:
            my_rows[task.index] = {**row, "rank": env.rank}
            _write_summary(part_path, [my_rows[i] for i in sorted(my_rows)], plan.class_names, ("rank",))
            prog(row)

        try:
            with _bar_logging(prog.bar):
                _write_summary(part_path, [], plan.class_names, ("rank",))
                _run_tasks(segmenter, mine, opts, on_row, workers, bool(show and prog.bar))
        finally:
            prog.close()
        rows = list(plan.rows)
        for part in group.all_gather(my_rows):
            for index, row in part.items():
                rows[index] = {k: v for k, v in row.items() if k != "rank"}
        done = _decided(rows)
        if env.is_main:
            _write_summary(plan.csv_path, done, plan.class_names)
        group.barrier()  # the summary exists before any rank returns
    return FolderSummary(rows=done, csv_path=plan.csv_path)


class RayFilePredictor:
    """Ray Data predictor: one segmenter per actor; each batch row is one :class:`FileTask` (JSON).

    Built by :func:`vmunet.inference.engines.ray_map` once per actor; not meant to be called
    directly.

    Args:
        factory: the segmenter class (``Segmenter``).
        config: its keyword arguments (:meth:`Segmenter.replica_config`).
        options: what to write.
        device: the actor's device (``"cuda"`` when Ray gave it a GPU).

    Example:
        >>> RayFilePredictor.__name__
        'RayFilePredictor'
    """

    def __init__(self, factory: Any, config: dict[str, Any], options: _FileOptions, device: str) -> None:
        from vmunet.inference.engines import share_cpu_threads

        share_cpu_threads()
        self.segmenter = factory(**config, device=device)
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"index", "task"}`` -> ``{"index", "row"}`` (the summary row as JSON)."""
        rows = []
        for text in batch["task"]:
            task = _task_from_json(str(text))
            # Failures are logged once, by the driver (it names the file as the user gave it).
            rows.append(json.dumps(_segment_task(self.segmenter, task, self.options, False, log=False)))
        return {"index": np.asarray(batch["index"]), "row": np.asarray(rows, dtype=object)}


def _task_to_json(task: FileTask) -> str:
    return json.dumps(
        {
            "index": task.index,
            "path": str(task.item.path.resolve()),
            "rel_dir": str(task.item.rel_dir),
            "outputs": {k: str(v.resolve()) for k, v in task.outputs.items()},
        }
    )


def _task_from_json(text: str) -> FileTask:
    d = json.loads(text)
    item = InputItem(Path(d["path"]), Path(d["rel_dir"]))
    return FileTask(int(d["index"]), item, {k: Path(v) for k, v in d["outputs"].items()})


def _segment_ray(
    segmenter: Any,
    plan: FolderPlan,
    opts: _FileOptions,
    progress: bool,
    address: str | None,
    num_cpus: int | None,
    use_gpus: bool,
) -> FolderSummary:
    """Ray: the driver plans and writes the summary; actors segment the tasks."""
    from vmunet.inference.engines import ray_map

    rows = list(plan.rows)
    by_index = {t.index: t for t in plan.tasks}
    records = [{"index": t.index, "task": _task_to_json(t)} for t in plan.tasks]
    kwargs = {"factory": type(segmenter), "config": segmenter.replica_config(), "options": opts}
    prog = _Progress(progress, len(plan.items))
    try:
        with _bar_logging(prog.bar):
            for row in _decided(rows):
                prog(row)
            _write_summary(plan.csv_path, _decided(rows), plan.class_names)
            results = ray_map(
                records, RayFilePredictor, kwargs, address=address, num_cpus=num_cpus, use_gpus=use_gpus
            )
            for out in results:
                index = int(out["index"])
                row = json.loads(str(out["row"]))
                task = by_index[index]
                row.update(
                    file=str(task.item.path), output=str(task.outputs["mask"])
                )  # as the user gave them
                if row["status"] == "failed":
                    row["error"] = row["error"].replace(str(task.item.path.resolve()), str(task.item.path))
                    logger.error("%s", row["error"])
                rows[index] = row
                _write_summary(plan.csv_path, _decided(rows), plan.class_names)
                prog(row)
    finally:
        prog.close()
    missing = [t.item.path for t in plan.tasks if rows[t.index] is None]
    if missing:  # pragma: no cover - Ray returns every row or raises
        raise RuntimeError(f"ray: no result for {len(missing)} input(s), e.g. {missing[0]}")
    done = _decided(rows)
    _write_summary(plan.csv_path, done, plan.class_names)
    return FolderSummary(rows=done, csv_path=plan.csv_path)


def segment_folder(
    segmenter: Any,
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
    writers: Sequence[OutputWriter] = (),
) -> FolderSummary:
    """Segment every input with ``segmenter`` into ``output_dir`` (layout: module docstring).

    A file that cannot be read or segmented is logged in one line and gets a
    ``failed`` row in the summary; the other inputs are still segmented.

    Where the work runs:

    * one process (``engine="local"``), with ``workers`` background processes decoding
      and preprocessing the next inputs and a writer thread writing the last ones
      (``workers=0``: each input in turn, in this thread);
    * under ``torchrun`` (detected from ``RANK`` / ``WORLD_SIZE``), every rank runs this
      same call: rank 0 finds the inputs and the finished ones (resume), input ``i`` of
      the rest goes to rank ``i % WORLD_SIZE``, each rank writes its part of the summary
      to ``<output>/.vmunet-parts/summary.rank<r>.csv`` as it goes, and rank 0 writes the
      one ``summary.csv`` once all ranks are done. Each rank returns the whole summary.
    * ``engine="ray"``: Ray Data actors, one model each (see
      :func:`vmunet.inference.engines.ray_map`), the summary written here.

    Args:
        segmenter: a :class:`~vmunet.inference.Segmenter`.
        inputs: files, folders (recursed) and DICOM series folders.
        output_dir: where to write; created if needed. Must not be an input folder.
        probabilities: also write probability maps.
        overlay: also write PNG overlays of the contours on the image.
        overwrite: redo inputs whose outputs already exist (else they are skipped).
        progress: a bar over files (and slices of large volumes) when stderr is a
            terminal, otherwise one log line per file (rank 0 only under torchrun).
        workers: background processes decoding and preprocessing inputs (0: none).
        engine: ``"local"`` (this process, or the torchrun ranks) or ``"ray"``.
        ray_address: ``engine="ray"``: an existing cluster (``None``: a local instance).
        ray_num_cpus: ``engine="ray"``: CPUs of the local instance (default: all).
        ray_use_gpus: ``engine="ray"``: one GPU per actor when the cluster has GPUs.
        writers: extra outputs per input (:class:`OutputWriter`, e.g. a DICOM-SEG writer).

    Returns:
        A :class:`FolderSummary`; ``summary.csv`` is in ``output_dir``.

    Raises:
        VmunetUserError: an input does not exist, ``output_dir`` is an input folder,
            ``engine="ray"`` without Ray installed or under torchrun.
        ValueError: a bad ``engine`` or ``workers``.
    """
    from vmunet.inference.engines import check_engine, torchrun_env

    env = torchrun_env()
    check_engine(engine, env)  # before planning: Ray missing, or Ray under torchrun
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    writers = tuple(writers)
    opts = _FileOptions(probabilities=probabilities, overlay=overlay, writers=writers)
    plan_args = {
        "inputs": inputs,
        "output_dir": output_dir,
        "class_names": segmenter.class_names,
        "probabilities": probabilities,
        "overlay": overlay,
        "overwrite": overwrite,
        "writers": writers,
    }
    if engine == "ray":
        plan = plan_folder(**plan_args)
        return _segment_ray(segmenter, plan, opts, progress, ray_address, ray_num_cpus, ray_use_gpus)
    if env is not None and env.world_size > 1:
        return _segment_ranks(segmenter, env, plan_args, opts, int(workers), progress)
    return _segment_local(segmenter, plan_folder(**plan_args), opts, int(workers), progress)
