"""The end-to-end demo: real data in, a trained model, test scores and overlays out.

:func:`run_demo` chains the same library functions the CLI commands use, so a
user can repeat each step by hand:

1. :func:`vmunet.data.make_demo_data` builds the demo data set offline: axial
   slices of the MNI ICBM152 2009a brain template that ships inside nilearn, with
   background / grey matter / white matter labels (``vmunet prepare`` is not needed).
2. :func:`vmunet.train.train` trains the packaged ``demo`` recipe
   (``configs/demo.yaml``: the tiny VM-UNet) -- what ``vmunet train demo`` runs.
3. :func:`vmunet.train.evaluate.test_checkpoint` scores the best checkpoint on the
   held-out test slices with the ``standard`` protocol (per case and class Dice and
   HD95) -- what ``vmunet test`` runs.
4. :class:`vmunet.inference.Segmenter` segments the held-out test scans into
   NIfTI label maps with PNG overlays -- what ``vmunet segment`` runs -- and
   :func:`vmunet.metrics.evaluate_folders` scores those files against the labels
   -- what ``vmunet evaluate`` runs.

Output layout (``output_dir``)::

    demo_data/       the MNI152 slices and datalist.json (built once, reused)
    run/             config.yaml, best.pt, last.pt, metrics.csv/.jsonl, curves.png, val_samples.png
    test/            best.test.json / best.test.csv (step 3)
    test_scans/      copies of the held-out test images, named by case
    test_labels/     their labels, same names (the --label folder of vmunet evaluate)
    segmentations/   label maps, overlays/*.png and summary.csv (step 4)
    evaluation.json  segmentations scored against test_labels (and evaluation.csv)
    summary.json     what :func:`run_demo` returns, as JSON

Example:
    >>> from vmunet.demo import run_demo
    >>> summary = run_demo("demo_output")  # doctest: +SKIP
    >>> print(summary.format())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmunet.errors import VmunetUserError
from vmunet.utils.io import atomic_path, atomic_write_text

__all__ = ["DemoSummary", "QUICK_OVERRIDES", "run_demo"]

logger = logging.getLogger(__name__)

#: Config overrides of ``quick=True``: two steps at 32x32, enough to exercise every step.
QUICK_OVERRIDES: tuple[str, ...] = (
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "data.batch_size=4",
    "data.size=[32, 32]",
    "scheduler.t_max=1",
    "train.val_images=2",
)


@dataclass
class DemoSummary:
    """What :func:`run_demo` did and where it put things.

    Attributes:
        output_dir: the demo's folder.
        data_dir: the demo data (``datalist.json`` inside).
        run_dir: the training run (checkpoints, logs, plots).
        checkpoint: the best checkpoint (by validation Dice).
        epochs: epochs trained.
        best_val_dice: best validation Dice (mean over grey and white matter, pooled).
        best_epoch: the epoch that reached it.
        test_dice: test-split Dice per class (standard protocol, mean over cases).
        test_hd95: test-split HD95 per class (standard protocol, mean over cases), in ``hd95_unit``.
        hd95_unit: the unit of ``test_hd95`` (``"mm"``: the slices' own spacing).
        test_mean_dice: mean of ``test_dice`` over the classes.
        segment_mean_dice: mean Dice of the written segmentations against the test labels
            (``vmunet evaluate``, standard protocol). Both scores come from the same scans
            through the same inference path on the scans' own grid, so they agree.
        n_test_scans: held-out scans segmented.
        segmentation_dir: label maps (``overlays/`` inside holds the PNG overlays).
        files: other outputs by name (test results, evaluation, curves, ...).
        seconds: wall time per step (``data``, ``train``, ``test``, ``segment``, ``total``).
        n_train / n_val / n_test: slices per split.

    Example:
        >>> s = DemoSummary(output_dir=Path("out"), best_val_dice=0.8, test_mean_dice=0.79)
        >>> s.to_dict()["best_val_dice"]
        0.8
    """

    output_dir: Path
    data_dir: Path | None = None
    run_dir: Path | None = None
    checkpoint: Path | None = None
    epochs: int = 0
    best_val_dice: float = math.nan
    best_epoch: int = 0
    test_dice: dict[str, float] = field(default_factory=dict)
    test_hd95: dict[str, float] = field(default_factory=dict)
    hd95_unit: str = "mm"
    test_mean_dice: float = math.nan
    segment_mean_dice: float = math.nan
    n_test_scans: int = 0
    segmentation_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings, NaN as ``None``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return {k: clean(v) for k, v in asdict(self).items()}

    def format(self) -> str:
        """A short human-readable report (what ``vmunet demo`` prints)."""

        def f(x: float) -> str:
            return f"{x:.3f}" if math.isfinite(x) else "n/a"

        per_class = ", ".join(f"{k} {f(v)}" for k, v in self.test_dice.items())
        hd = ", ".join(f"{k} {f(v)}" for k, v in self.test_hd95.items())
        s = self.seconds
        lines = [
            f"demo data: {self.n_train} training / {self.n_val} validation / {self.n_test} test slices "
            f"of the MNI152 brain template ({self.data_dir})",
            f"trained {self.epochs} epoch(s): best validation Dice {f(self.best_val_dice)} "
            f"(epoch {self.best_epoch})",
            f"test split (vmunet test, standard protocol, on each scan's own grid): mean Dice "
            f"{f(self.test_mean_dice)} ({per_class}); HD95 in {self.hd95_unit}: {hd}",
            f"segmented {self.n_test_scans} held-out scans (vmunet segment + vmunet evaluate): mean Dice "
            f"{f(self.segment_mean_dice)} against their labels",
            f"outputs in {self.output_dir}:",
            f"  checkpoint     {self.checkpoint}",
            f"  curves         {self.files.get('curves')}",
            f"  test results   {self.files.get('test_json')}",
            f"  label maps     {self.segmentation_dir}",
            f"  overlays       {self.files.get('overlays')}",
            f"  summary        {self.files.get('summary')}",
            "time: "
            + ", ".join(f"{k} {s[k]:.0f} s" for k in ("data", "train", "test", "segment") if k in s)
            + f"; total {s.get('total', math.nan):.0f} s",
        ]
        return "\n".join(lines)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _stage_test_split(data_dir: Path, datalist: dict[str, Any], out: Path) -> tuple[Path, Path, int]:
    """Copy the test images and labels into two folders with matching case names."""
    from vmunet.data.io import split_extension

    scans, labels = out / "test_scans", out / "test_labels"
    for entry in datalist["test"]:
        img, lab = data_dir / entry["image"], data_dir / entry["label"]
        ext = split_extension(img)[1]
        case = str(entry.get("case") or split_extension(img)[0])
        for src, dst in ((img, scans / f"{case}{ext}"), (lab, labels / f"{case}{ext}")):
            if not dst.is_file():
                _copy(src, dst)
    return scans, labels, len(datalist["test"])


def _class_means(result: Any, metric: str) -> dict[str, float]:
    per_class = result.summary.get("per_class", {})
    return {name: float(stats[metric]["mean"]) for name, stats in per_class.items() if metric in stats}


def run_demo(
    output_dir: str | os.PathLike[str] = "demo_output",
    epochs: int | None = None,
    quick: bool = False,
    device: str = "auto",
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> DemoSummary:
    """Build the demo data, train, test, segment the held-out scans and score them.

    Args:
        output_dir: folder for everything the demo writes (layout: module docstring). The
            demo data inside it is reused when it is already there; the run is redone.
        epochs: training epochs (default: the ``demo`` recipe's ``train.epochs``).
        quick: a one-step-per-phase version for tests and smoke checks (:data:`QUICK_OVERRIDES`:
            one epoch of two steps at 32x32); the numbers it prints mean nothing.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        overrides: extra ``KEY=VALUE`` config overrides, applied last (e.g. ``["train.seed=1"]``).
        progress: show progress bars / per-file lines while segmenting.

    Returns:
        A :class:`DemoSummary` (also written to ``output_dir/summary.json``).

    Raises:
        VmunetUserError: a bad argument (e.g. ``epochs < 1``) or an unusable output folder.
    """
    from vmunet.config import load_config
    from vmunet.data import make_demo_data
    from vmunet.inference import Segmenter
    from vmunet.metrics import evaluate_folders
    from vmunet.train import train
    from vmunet.train.evaluate import test_checkpoint

    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise VmunetUserError(f"epochs must be a positive integer, got {epochs!r}")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise VmunetUserError(f"output folder {str(out)!r} exists and is not a folder")
    t_start = time.perf_counter()
    summary = DemoSummary(output_dir=out)

    # The config first: a bad override fails before any work.
    data_dir = out / "demo_data"
    opts = [f"data.datalist={data_dir / 'datalist.json'}", f"data.root={data_dir}", "data.kind=datalist"]
    if quick:
        opts += list(QUICK_OVERRIDES)
    if epochs is not None:
        opts += [f"train.epochs={epochs}", f"scheduler.t_max={epochs}"]
    opts += list(overrides)
    cfg = load_config("demo", opts)

    # 1. Data (real MNI152 template slices, offline).
    t0 = time.perf_counter()
    datalist_path = make_demo_data(data_dir)
    datalist = json.loads(datalist_path.read_text())
    summary.data_dir = data_dir
    summary.n_train, summary.n_val, summary.n_test = (
        len(datalist[k]) for k in ("training", "validation", "test")
    )
    summary.seconds["data"] = time.perf_counter() - t0

    # 2. Train the packaged demo recipe on it.
    t0 = time.perf_counter()
    run_dir = out / "run"
    result = train(cfg, output_dir=run_dir, device=device)
    summary.run_dir = run_dir
    summary.checkpoint = Path(result["best"])
    summary.epochs = int(result["epochs"])
    summary.best_val_dice = float(result["best_val_dice"])
    summary.best_epoch = int(result["best_epoch"])
    summary.files["curves"] = run_dir / "curves.png"
    summary.files["val_samples"] = run_dir / "val_samples.png"
    summary.seconds["train"] = time.perf_counter() - t0

    # 3. Held-out test split, standard protocol (what `vmunet test` runs).
    t0 = time.perf_counter()
    tested = test_checkpoint(cfg, summary.checkpoint, split="test", device=device, output_dir=out / "test")
    res = tested["result"]
    summary.test_dice = _class_means(res, "dice")
    summary.test_hd95 = _class_means(res, "hd95")
    summary.hd95_unit = res.hd95_unit
    summary.test_mean_dice = float(res.summary.get("mean", {}).get("dice", math.nan))
    summary.files["test_json"] = Path(tested["files"]["json"])
    summary.files["test_csv"] = Path(tested["files"]["csv"])
    summary.seconds["test"] = time.perf_counter() - t0

    # 4. Segment the held-out scans (what `vmunet segment` runs), score the files (`vmunet evaluate`).
    t0 = time.perf_counter()
    scans, labels, n = _stage_test_split(data_dir, datalist, out)
    seg_dir = out / "segmentations"
    segmenter = Segmenter(summary.checkpoint, device=device)
    seg = segmenter.segment_folder(scans, seg_dir, overlay=True, overwrite=True, progress=progress)
    if seg.n_failed:
        raise VmunetUserError(f"{seg.n_failed} demo test scan(s) could not be segmented; see {seg_dir}")
    names = {i: name for i, name in enumerate(segmenter.class_names) if i > 0}
    evaluation = evaluate_folders(seg_dir, labels, protocol="standard", labels=names, progress=False)
    csv_path, json_path = evaluation.save(out / "evaluation.json")
    summary.segment_mean_dice = float(evaluation.summary.get("mean", {}).get("dice", math.nan))
    summary.n_test_scans = n
    summary.segmentation_dir = seg_dir
    summary.files.update(
        test_scans=scans,
        test_labels=labels,
        overlays=seg_dir / "overlays",
        evaluation_json=json_path,
        evaluation_csv=csv_path,
    )
    summary.seconds["segment"] = time.perf_counter() - t0

    summary.seconds["total"] = time.perf_counter() - t_start
    summary.files["summary"] = out / "summary.json"
    atomic_write_text(out / "summary.json", json.dumps(summary.to_dict(), indent=2) + "\n")
    logger.info("demo finished in %.0f s", summary.seconds["total"])
    return summary
