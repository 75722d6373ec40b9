"""Reading the checkpoint an export starts from: the model, its arguments and its inference spec.

Only this package's own checkpoints (``{"format": "vmunet", ...}``, written by
:func:`vmunet.models.save_checkpoint` or the trainer) can be exported: they alone carry the
architecture and the preprocessing an exported file has to describe.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vmunet.errors import VmunetUserError

__all__ = ["EXPORT_SCAN_BACKEND", "ExportSource", "export_scan_backend", "jsonable", "load_source"]

#: The selective-scan backend exported graphs are traced with: plain tensor ops, no custom op.
EXPORT_SCAN_BACKEND = "chunked"


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (arrays and tensors as lists, anything else unknown as its str).

    Example:
        >>> import numpy as np
        >>> jsonable({"spacing": np.array([1.5, 2.0])})
        {'spacing': [1.5, 2.0]}
    """
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def export_scan_backend() -> str:
    """``"chunked"`` when :mod:`vmunet.ops` has it; else one clear error (custom ops cannot be exported).

    Raises:
        VmunetUserError: this vmunet has no exportable scan backend.
    """
    from vmunet.ops import BACKENDS

    if EXPORT_SCAN_BACKEND not in BACKENDS:
        raise VmunetUserError(
            f"this vmunet has no {EXPORT_SCAN_BACKEND!r} selective-scan backend "
            f"(backends: {', '.join(BACKENDS)}); "
            "the others run inside custom ops that ONNX / TorchScript / pt2 cannot hold: upgrade vmunet"
        )
    return EXPORT_SCAN_BACKEND


@dataclass
class ExportSource:
    """A checkpoint ready to export.

    Attributes:
        path: the checkpoint file (``None`` for an in-memory dict).
        model: the rebuilt network, in eval mode, on the CPU.
        checkpoint: the checkpoint dict (``arch``, ``model``, ``inference``, ...).
        spec: the validated :class:`~vmunet.inference.InferenceSpec`.

    Example:
        >>> src = load_source("runs/demo/best.pt", scan_backend="torch")  # doctest: +SKIP
        >>> src.arch_name, src.spec.spatial_dims  # doctest: +SKIP
        ('vmunet_tiny', 2)
    """

    path: Path | None
    model: torch.nn.Module
    checkpoint: dict[str, Any]
    spec: Any

    @property
    def arch_name(self) -> str:
        """The registered architecture name (``vmunet_small``...)."""
        return str(self.checkpoint["arch"]["name"])

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """The constructor arguments, without ``scan_backend`` (a choice of the machine that runs it)."""
        kw = dict(self.checkpoint["arch"].get("kwargs") or {})
        kw.pop("scan_backend", None)
        return kw

    @property
    def size_divisors(self) -> tuple[int, ...]:
        """Per spatial axis, what every input size must be a multiple of."""
        div = getattr(self.model, "size_divisors", None)
        if div is None:
            return (32,) * self.spec.spatial_dims
        return tuple(int(d) for d in div)

    @property
    def source_name(self) -> str:
        """The checkpoint's file name (or ``"checkpoint"``)."""
        return self.path.name if self.path is not None else "checkpoint"


def load_source(
    checkpoint: str | os.PathLike[str] | dict[str, Any], scan_backend: str | None = None
) -> ExportSource:
    """Rebuild a vmunet checkpoint's model (strictly) and validate its inference spec.

    Args:
        checkpoint: a path to a vmunet checkpoint, or its dict.
        scan_backend: the selective-scan backend to build with (``None``: the automatic choice).

    Returns:
        An :class:`ExportSource`.

    Raises:
        VmunetUserError: a missing file, a folder, a file that is not a vmunet checkpoint (a random
            ``.pt``, a text file...), or one without an ``inference`` section; one line naming the file.
    """
    from vmunet.inference.segmenter import _load_checkpoint
    from vmunet.inference.spec import InferenceSpec

    overrides = {"scan_backend": scan_backend} if scan_backend is not None else {}
    model, ckpt = _load_checkpoint(checkpoint, **overrides)
    path = None if isinstance(checkpoint, dict) else Path(checkpoint)
    where = f"checkpoint {path}" if path is not None else "checkpoint"
    spec = InferenceSpec.from_dict(ckpt["inference"], source=where)
    return ExportSource(path=path, model=model.cpu().eval(), checkpoint=ckpt, spec=spec)
