"""The result of an evaluation: per-case rows, a summary, and what was skipped; CSV / JSON / table output."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmunet.utils.io import atomic_write_text

__all__ = ["EvaluationResult"]


def _jsonable(value: Any) -> Any:
    """NaN / inf become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


@dataclass
class EvaluationResult:
    """Scores of a set of cases under one protocol.

    Attributes:
        protocol: ``"standard"``, ``"isic"`` or ``"synapse"``.
        metrics: the per-case metric columns of ``rows``.
        classes: class value -> name of the classes scored.
        rows: one dict per case and class: ``case``, ``class_id``, ``class_name`` and one value per metric
            (NaN where the protocol's empty-mask rule says the case cannot be scored).
        summary: the protocol's aggregate numbers (see each protocol's docstring).
        settings: the conventions used (HD95 mode and units, empty-mask rule, threshold, ...).
        skipped: one dict per case or file that was not scored: ``case``, ``file``, ``reason``.

    Example:
        >>> from vmunet.metrics import standard_protocol
        >>> import numpy as np
        >>> lab = np.zeros((6, 6), np.uint8); lab[1:4, 1:4] = 1
        >>> res = standard_protocol([lab], [lab], case_names=["a"])
        >>> res.summary["mean"]["dice"]
        1.0
    """

    protocol: str
    metrics: tuple[str, ...]
    classes: dict[int, str]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def n_scored(self) -> int:
        """Number of cases scored."""
        return len({r["case"] for r in self.rows})

    @property
    def n_skipped(self) -> int:
        """Number of cases / files skipped."""
        return len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (NaN as null)."""
        from vmunet._version import __version__

        reasons: dict[str, int] = {}
        for s in self.skipped:
            key = s.get("kind", "other")
            reasons[key] = reasons.get(key, 0) + 1
        return _jsonable(
            {
                "protocol": self.protocol,
                "vmunet_version": __version__,
                "n_scored": self.n_scored,
                "n_skipped": self.n_skipped,
                "skipped_by_reason": reasons,
                "skipped": self.skipped,
                "classes": {str(k): v for k, v in self.classes.items()},
                "settings": self.settings,
                "summary": self.summary,
            }
        )

    def csv_text(self) -> str:
        """The per-case rows as CSV text (NaN written as ``nan``)."""
        buf = io.StringIO()
        cols = ["case", "class_id", "class_name", *self.metrics]
        extra = sorted({k for r in self.rows for k in r} - set(cols))
        writer = csv.DictWriter(buf, fieldnames=cols + extra, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        return buf.getvalue()

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the per-case rows to ``path`` (atomically)."""
        return atomic_write_text(path, self.csv_text())

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the summary (see :meth:`to_dict`) to ``path`` (atomically)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def save(self, output: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write the per-case CSV and the summary JSON.

        Args:
            output: a file name ending in ``.json`` or ``.csv`` (both files are written, with the two
                extensions), or a folder (``per_case.csv`` and ``summary.json`` inside it).

        Returns:
            ``(csv_path, json_path)``.
        """
        out = Path(output)
        if out.suffix.lower() in (".json", ".csv"):
            csv_path, json_path = out.with_suffix(".csv"), out.with_suffix(".json")
        else:
            csv_path, json_path = out / "per_case.csv", out / "summary.json"
        return self.to_csv(csv_path), self.to_json(json_path)

    @property
    def hd95_unit(self) -> str:
        """Short unit of the HD95 values: ``"mm"``, ``"px"``, ``"voxel"`` or ``"mm/px"`` (mixed)."""
        units = str(self.settings.get("hd95_units", ""))
        return {"mm": "mm", "pixel": "px", "voxel": "voxel"}.get(
            units, "mm/px" if "pixel" in units else units
        )

    def metric_label(self, metric: str) -> str:
        """``metric`` with its unit where it has one (``"hd95 mm"``); others unchanged."""
        if metric.startswith("hd95") and self.hd95_unit:
            return f"{metric} {self.hd95_unit}"
        return metric

    def format_table(self) -> str:
        """A plain-text table of the summary, for the terminal."""
        lines = []
        if self.protocol == "isic":
            pooled = self.summary.get("pooled", {})
            lines.append(
                f"ISIC protocol (the VM-UNet paper's conventions): {self.n_scored} images pooled, "
                f"threshold {self.settings.get('threshold')}"
            )
            for key in ("miou", "dsc", "accuracy", "sensitivity", "specificity"):
                lines.append(f"  {key:<12} {_fmt(pooled.get(key, math.nan))}")
            conf = self.summary.get("confusion", {})
            lines.append(
                "  confusion    " + "  ".join(f"{k}={conf.get(k)}" for k in ("tp", "fp", "fn", "tn"))
            )
        else:
            per_class = self.summary.get("per_class", {})
            metrics = list(self.summary.get("mean", {}))
            head = f"{'class':<16}" + "".join(
                f"{self.metric_label(m) + ' mean':>16}{'std':>9}{'n':>5}{'nan':>5}" for m in metrics
            )
            paper = " (the TransUNet / VM-UNet papers' conventions)" if self.protocol == "synapse" else ""
            lines.append(
                f"{self.protocol} protocol{paper}: {self.n_scored} cases; " + _settings_line(self.settings)
            )
            lines.append(head)
            for name, stats in per_class.items():
                cells = ""
                for m in metrics:
                    s = stats[m]
                    cells += f"{_fmt(s['mean']):>16}{_fmt(s['std']):>9}{s['n']:>5}{s['n_nan']:>5}"
                lines.append(f"{name[:16]:<16}{cells}")
            lines.append(
                f"{'mean':<16}" + "".join(f"{_fmt(self.summary['mean'][m]):>16}{'':>19}" for m in metrics)
            )
        if self.skipped:
            lines.append(f"skipped {self.n_skipped} case(s):")
            lines.extend(f"  {s.get('file') or s.get('case')}: {s['reason']}" for s in self.skipped)
        return "\n".join(lines)


def _settings_line(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if not k.endswith("_dir"))
