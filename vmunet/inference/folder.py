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
  after every file.

An input whose label map (and requested extras) already exist is skipped
unless ``overwrite=True``, so an interrupted run resumes where it stopped.
Inputs are never written to.

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
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmunet.errors import VmunetUserError
from vmunet.utils.io import atomic_path, atomic_write_text

__all__ = [
    "FolderSummary",
    "InputItem",
    "SUMMARY_COLUMNS",
    "collect_inputs",
    "make_bar",
    "output_extension",
    "overlay_image",
    "segment_folder",
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


def _write_summary(path: Path, rows: list[dict[str, Any]], names: Sequence[str]) -> None:
    cols = list(SUMMARY_COLUMNS)
    cols += [f"voxels_{_safe(n)}" for n in names]
    if any(any(k.startswith("volume_ml_") for k in r) for r in rows):
        cols += [f"volume_ml_{_safe(n)}" for n in names]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- main loop


def _outputs_for(item: InputItem, out_dir: Path, probabilities: bool, overlay: bool) -> dict[str, Path]:
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


def _segment_one(
    segmenter: Any,
    item: InputItem,
    outs: dict[str, Path],
    probabilities: bool,
    overlay: bool,
    slice_bar: bool,
) -> dict[str, Any]:
    """Predict one input, write its outputs; returns its summary fields."""
    from vmunet.data import write_image

    pred = segmenter.predict(item.path, return_probabilities=probabilities, progress=slice_bar)
    img = pred.image
    write_image(outs["mask"], pred.labels, like=img)
    if probabilities and pred.probabilities is not None:
        _save_probabilities(outs["probabilities"], pred.probabilities, img)
    if overlay:
        _write_overlay(outs["overlay"], pred, dict(segmenter.spec.normalization))
    row = {"status": "ok", "shape": _fmt_tuple(img.spatial_shape), "spacing": _fmt_tuple(img.spacing)}
    row.update(_stats(pred.labels, img.spacing, img.is_volume, segmenter.class_names))
    return row


def segment_folder(
    segmenter: Any,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    probabilities: bool = False,
    overlay: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> FolderSummary:
    """Segment every input with ``segmenter`` into ``output_dir`` (layout: module docstring).

    A file that cannot be read or segmented is logged in one line and gets a
    ``failed`` row in the summary; the other inputs are still segmented.

    Args:
        segmenter: a :class:`~vmunet.inference.Segmenter`.
        inputs: files, folders (recursed) and DICOM series folders.
        output_dir: where to write; created if needed. Must not be an input folder.
        probabilities: also write probability maps.
        overlay: also write PNG overlays of the contours on the image.
        overwrite: redo inputs whose outputs already exist (else they are skipped).
        progress: a bar over files (and slices of large volumes) when stderr is a
            terminal, otherwise one log line per file.

    Returns:
        A :class:`FolderSummary`; ``summary.csv`` is in ``output_dir``.

    Raises:
        VmunetUserError: an input does not exist, or ``output_dir`` is an input folder.
    """
    out_dir = Path(output_dir)
    input_list = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for raw in input_list:
        if Path(raw).is_dir() and Path(raw).resolve() == out_dir.resolve():
            raise VmunetUserError(
                f"output folder {str(out_dir)!r} is also an input folder; "
                "choose another one so that the inputs stay untouched"
            )
    items = collect_inputs(input_list, exclude=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "summary.csv"
    names = segmenter.class_names
    summary = FolderSummary(csv_path=csv_path)
    input_paths = {it.path.resolve() for it in items}
    claimed: dict[Path, Path] = {}

    bar = make_bar(total=len(items), desc="segment", unit="file") if progress else None
    try:
        with _bar_logging(bar):
            for i, item in enumerate(items, 1):
                t0 = time.perf_counter()
                outs = _outputs_for(item, out_dir, probabilities, overlay)
                row: dict[str, Any] = {"file": str(item.path), "output": str(outs["mask"]), "error": ""}
                try:
                    _check_item(item, outs, input_paths, claimed)
                    existing = None if overwrite else _existing_output(outs)
                    if existing is not None:
                        row.update(_existing_row(existing, names))
                    else:
                        row.update(
                            _segment_one(
                                segmenter, item, outs, probabilities, overlay, bool(progress and bar)
                            )
                        )
                except Exception as exc:  # one bad input never stops the run
                    msg = (
                        str(exc)
                        if isinstance(exc, VmunetUserError)
                        else f"{item.path}: {type(exc).__name__}: {exc}"
                    )
                    row.update(status="failed", error=msg)
                    logger.error("%s", msg)
                row["seconds"] = round(time.perf_counter() - t0, 3)
                summary.rows.append(row)
                _write_summary(csv_path, summary.rows, names)
                if bar is not None:
                    bar.update(1)
                elif progress and row["status"] != "failed":
                    logger.info(
                        "[%d/%d] %s: %s (%.2f s)", i, len(items), item.path, row["status"], row["seconds"]
                    )
    finally:
        if bar is not None:
            bar.close()
    if not items:
        _write_summary(csv_path, summary.rows, names)
        logger.warning("no input images found in %s", ", ".join(str(p) for p in input_list))
    return summary
