"""Train several models under one recipe and score them on the held-out split: a fair comparison.

:func:`compare_models` is what ``vmunet compare`` runs. Every model gets the same recipe (data,
augmentation, loss, optimiser, schedule, seed) and the same number of epochs; only
``model.name`` changes. The recipe's ``model.overrides`` apply to the recipe's own model only
(they are usually that architecture's arguments); every other model is built with its
registered defaults and the recipe's channels. Each model trains and is tested in its own
subprocess (``multiprocessing`` spawn), so that its peak memory can be measured alone:

* on the CPU, the process's resident-set high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``)
  at the end of training and testing, which includes the Python, PyTorch and data-loading
  footprint shared by all rows (``rss_before_mb``, measured after the imports, is also given);
* on a CUDA device, ``torch.cuda.max_memory_allocated`` over training and testing.

``best.pt`` (by validation Dice) of each model is then scored on ``data.test_split`` with the
recipe's ``eval.protocol`` (what ``vmunet test`` runs): mean Dice and mean HD95 over the
classes. Time per epoch is the mean wall time of an epoch (training plus its validation).

Outputs in ``output_dir``: ``<model>/`` (each run: checkpoints, curves, test results),
``comparison.csv``, ``comparison.md``, ``comparison.json`` and ``comparison.png``.

Example:
    >>> from vmunet.train.compare import compare_models
    >>> names = ["vmunet_tiny", "monai_basicunet_2d"]
    >>> result = compare_models("demo", names, "runs/compare")  # doctest: +SKIP
    >>> print(result.format_table())  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmunet.config import Config, config_from_dict, config_to_dict, load_config
from vmunet.errors import VmunetUserError
from vmunet.utils.io import atomic_path, atomic_write_text

__all__ = ["CompareResult", "compare_models"]

logger = logging.getLogger("vmunet.train")

COLUMNS = (
    ("model", "model"),
    ("params", "parameters"),
    ("seconds_per_epoch", "s / epoch"),
    ("peak_memory_mb", "peak memory (MB)"),
    ("best_val_dice", "best val Dice"),
    ("test_dice", "test Dice"),
    ("test_hd95", "test HD95"),
    ("test_hd95_unit", "HD95 unit"),
)


@dataclass
class CompareResult:
    """What :func:`compare_models` measured, one row per model.

    Attributes:
        rows: per model: ``model``, ``params``, ``epochs``, ``seconds_per_epoch``, ``train_seconds``,
            ``peak_memory_mb``, ``rss_before_mb``, ``memory_kind``, ``best_val_dice``, ``best_epoch``,
            ``test_dice``, ``test_hd95``, ``test_dice_per_class``, ``run_dir``, ``error``.
        protocol: the evaluation protocol of the test split.
        split: the split the models were tested on.
        files: ``csv``, ``markdown``, ``json``, ``plot`` paths.

    Example:
        >>> r = CompareResult(rows=[{"model": "a", "params": 10, "test_dice": 0.5}], protocol="standard")
        >>> "| a |" in r.format_table()
        True
    """

    rows: list[dict[str, Any]]
    protocol: str = ""
    split: str = "test"
    memory_kind: str = ""
    files: dict[str, Path] = field(default_factory=dict)

    def format_table(self) -> str:
        """A markdown table (what ``vmunet compare`` prints and writes to ``comparison.md``)."""

        def cell(key: str, v: Any) -> str:
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                return "n/a"
            if key == "params":
                return f"{v / 1e6:.2f} M"
            if key in ("seconds_per_epoch", "test_hd95"):
                return f"{v:.1f}" if key == "seconds_per_epoch" else f"{v:.2f}"
            if key == "peak_memory_mb":
                return f"{v:.0f}"
            if isinstance(v, float):
                return f"{v:.3f}"
            return str(v)

        head = "| " + " | ".join(label for _, label in COLUMNS) + " |"
        sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
        lines = [head, sep]
        for row in self.rows:
            if row.get("error"):
                lines.append(f"| {row['model']} | failed: {row['error']} |" + " |" * (len(COLUMNS) - 2))
                continue
            lines.append("| " + " | ".join(cell(k, row.get(k)) for k, _ in COLUMNS) + " |")
        return "\n".join(lines)


def _peak_rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _scores(result: Any) -> tuple[float, float, dict[str, float]]:
    summary = result.summary
    mean = summary.get("mean") or {}
    dice = mean.get("dice", (summary.get("pooled") or {}).get("dsc", math.nan))
    hd95 = mean.get("hd95", math.nan)
    per_class = {
        name: float(stats["dice"]["mean"])
        for name, stats in (summary.get("per_class") or {}).items()
        if "dice" in stats
    }
    return float(dice), float(hd95), per_class


def _run_one(cfg_dict: dict[str, Any], name: str, run_dir: str, device: str, result_path: str) -> None:
    """Child process: train ``name`` under the recipe, test ``best.pt``, write a JSON row."""
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    row: dict[str, Any] = {"model": name, "run_dir": run_dir}
    rss_before = _peak_rss_mb()
    try:
        from vmunet.train import Trainer
        from vmunet.train.evaluate import test_checkpoint

        cfg = config_from_dict(cfg_dict, source=f"compare ({name})")
        trainer = Trainer(cfg, output_dir=run_dir, device=device)
        cuda = trainer.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        row["params"] = int(sum(p.numel() for p in trainer.raw_model.parameters()))
        t0 = time.perf_counter()
        summary = trainer.fit()
        row["train_seconds"] = time.perf_counter() - t0
        times = [float(r["epoch_time_s"]) for r in trainer.history if "epoch_time_s" in r]
        row["epochs"] = int(summary["epochs"])
        row["seconds_per_epoch"] = sum(times) / len(times) if times else math.nan
        row["best_val_dice"] = float(summary["best_val_dice"])
        row["best_epoch"] = int(summary["best_epoch"])
        tested = test_checkpoint(cfg, summary["best"], split=cfg.data.test_split, device=device)
        row["test_dice"], row["test_hd95"], row["test_dice_per_class"] = _scores(tested["result"])
        row["test_hd95_unit"] = tested["result"].hd95_unit
        row["protocol"] = cfg.eval.protocol
        if cuda:
            row["peak_memory_mb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
            row["memory_kind"] = "torch.cuda.max_memory_allocated"
        else:
            row["peak_memory_mb"] = _peak_rss_mb()
            row["memory_kind"] = "peak RSS of the model's process"
        row["rss_before_mb"] = rss_before
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other models still run
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    atomic_write_text(result_path, json.dumps(row) + "\n")


def _model_config(base: Config, name: str, epochs: int | None, data_root: Path | None) -> Config:
    cfg = config_from_dict(config_to_dict(base), source="compare")
    if name != base.model.name:
        cfg.model.overrides = {}  # the recipe's overrides belong to the recipe's own model
        cfg.model.pretrained = None
    cfg.model.name = name
    if epochs is not None:
        cfg.train.epochs = epochs
        cfg.scheduler.t_max = epochs
    if data_root is not None:
        cfg.data.root = str(data_root)
    return cfg


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    names = [r["model"] for r in ok]
    panels = (
        ("test_dice", "test Dice (higher is better)"),
        ("test_hd95", "test HD95 (lower is better)"),
        ("seconds_per_epoch", "seconds per epoch"),
        ("params", "parameters (M)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        vals = [float(r.get(key, math.nan)) / (1e6 if key == "params" else 1) for r in ok]
        ax.bar(
            range(len(ok)),
            [v if math.isfinite(v) else 0 for v in vals],
            color=[f"C{i}" for i in range(len(ok))],
        )
        for i, v in enumerate(vals):
            ax.text(
                i,
                v if math.isfinite(v) else 0,
                f"{v:.3g}" if math.isfinite(v) else "n/a",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(ok)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def compare_models(
    config: Config | str | os.PathLike[str],
    models: Sequence[str],
    output_dir: str | os.PathLike[str],
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
) -> CompareResult:
    """Train each of ``models`` under one recipe with equal epochs, test each, write a table and a plot.

    Args:
        config: a :class:`~vmunet.config.Config`, or a recipe path / packaged name (``"demo"``).
        models: registered model names (``vmunet.list_models()``), e.g. ``["vmunet_tiny",
            "monai_basicunet_2d"]``; each at most once.
        output_dir: where the runs and the comparison files go.
        epochs: epochs for every model (also the cosine period); default: the recipe's.
        overrides: ``KEY=VALUE`` config overrides for every model (applied when ``config`` is a path).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        A :class:`CompareResult` (rows in the order of ``models``).

    Raises:
        VmunetUserError: no model, a repeated or unknown name, ``epochs < 1``, or every model failed.
    """
    from vmunet.models import list_models

    models = [str(m).strip() for m in models if str(m).strip()]
    if not models:
        raise VmunetUserError("compare: give at least one model name (vmunet.list_models())")
    dup = sorted({m for m in models if models.count(m) > 1})
    if dup:
        raise VmunetUserError(f"compare: model(s) named twice: {dup}")
    unknown = [m for m in models if ":" not in m and m not in list_models()]
    if unknown:
        raise VmunetUserError(f"compare: unknown model(s) {unknown}; registered: {', '.join(list_models())}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise VmunetUserError(f"compare: epochs must be a positive integer, got {epochs!r}")
    base = config if isinstance(config, Config) else load_config(config, list(overrides))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The demo data is built once and shared (else each run would build its own copy).
    data_root = out / "demo_data" if base.data.kind == "demo" and not base.data.root else None
    if data_root is not None:
        from vmunet.data import make_demo_data

        make_demo_data(data_root)

    ctx = mp.get_context("spawn")
    rows = []
    for name in models:
        cfg = _model_config(base, name, epochs, data_root)
        run_dir = out / name.replace(":", "_")
        result_path = run_dir / "compare_row.json"
        run_dir.mkdir(parents=True, exist_ok=True)
        if result_path.exists():
            result_path.unlink()
        logger.info("compare: training %s for %d epochs -> %s", name, cfg.train.epochs, run_dir)
        proc = ctx.Process(
            target=_run_one, args=(config_to_dict(cfg), name, str(run_dir), device, str(result_path))
        )
        proc.start()
        proc.join()
        if result_path.is_file():
            row = json.loads(result_path.read_text())
        else:
            row = {
                "model": name,
                "run_dir": str(run_dir),
                "error": f"process exited with code {proc.exitcode}",
            }
        rows.append(row)
        if row.get("error"):
            logger.warning("compare: %s failed: %s", name, row["error"])
        else:
            logger.info(
                "compare: %s: test Dice %.3f, HD95 %.2f %s, %.1f s/epoch",
                name,
                row["test_dice"],
                row["test_hd95"],
                row.get("test_hd95_unit", ""),
                row["seconds_per_epoch"],
            )
    if all(r.get("error") for r in rows):
        raise VmunetUserError(
            "compare: every model failed: " + "; ".join(f"{r['model']}: {r['error']}" for r in rows)
        )

    kinds = sorted({r["memory_kind"] for r in rows if r.get("memory_kind")})
    result = CompareResult(
        rows=rows, protocol=base.eval.protocol, split=base.data.test_split, memory_kind=", ".join(kinds)
    )
    fields = [
        "model",
        "params",
        "epochs",
        "seconds_per_epoch",
        "train_seconds",
        "peak_memory_mb",
        "rss_before_mb",
        "memory_kind",
        "best_val_dice",
        "best_epoch",
        "test_dice",
        "test_hd95",
        "test_hd95_unit",
        "error",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    result.files["csv"] = out / "comparison.csv"
    atomic_write_text(result.files["csv"], buf.getvalue())
    note = (
        f"\n\nSame recipe and epochs for every model; scored on the `{result.split}` split "
        f"({result.protocol} protocol: mean over classes). Peak memory: {result.memory_kind}.\n"
    )
    result.files["markdown"] = out / "comparison.md"
    atomic_write_text(result.files["markdown"], result.format_table() + note)
    result.files["json"] = out / "comparison.json"
    atomic_write_text(
        result.files["json"], json.dumps({"rows": rows, "protocol": result.protocol}, indent=1) + "\n"
    )
    result.files["plot"] = out / "comparison.png"
    _plot(rows, result.files["plot"], f"{result.split} split, {result.protocol} protocol, equal epochs")
    return result
