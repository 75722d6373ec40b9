"""``vmunet test``: score a trained checkpoint on a held-out split with the dataset's protocol.

* ``isic``: 2-D images at the network size (as the public VM-UNet test does), sigmoid
  probabilities pooled into one confusion matrix (:func:`vmunet.metrics.isic_protocol`).
* ``synapse``: whole volumes, slice by slice along the last axis: each slice resized to the
  network size (cubic), argmax, the label map resized back (nearest), then Dice and HD95 per
  organ per volume (:func:`vmunet.metrics.synapse_protocol`), as the public
  ``test_single_volume`` does.
* ``standard``: per case and class Dice / HD95 on the 2-D samples (:func:`vmunet.metrics.standard_protocol`).
* 3-D checkpoints (``inference.spatial_dims: 3``): whole volumes through the 3-D
  :class:`~vmunet.inference.Segmenter` (resampled to the training spacing, gaussian sliding
  window, probabilities resampled back), scored on each volume's own grid: ``synapse``
  gives Dice and HD95 in mm per organ per volume, ``standard`` Dice and HD95 in mm per case.

Example:
    >>> from vmunet.config import load_config
    >>> from vmunet.train.evaluate import test_checkpoint, format_table
    >>> res = test_checkpoint(load_config("isic17"), "runs/isic17/best.pt")  # doctest: +SKIP
    >>> print(format_table(res))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vmunet.config.schema import Config
from vmunet.errors import VmunetUserError
from vmunet.train.builders import _import_callable, build_split_dataset
from vmunet.train.checkpoint import load_training_checkpoint
from vmunet.train.distributed import pick_device

__all__ = ["format_table", "load_model_for_test", "predict_volume", "test_checkpoint"]

logger = logging.getLogger("vmunet.train")


def load_model_for_test(
    path: str | os.PathLike[str], device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a trainer checkpoint describes (registered or ``module:callable``); eval mode."""
    ckpt = load_training_checkpoint(path)
    name = ckpt.get("arch", {}).get("name", "")
    if ":" in name:
        model = _import_callable(name)(**ckpt["arch"].get("kwargs", {}))
        model.load_state_dict(ckpt["model"])
    else:
        from vmunet.models import build_model_from_checkpoint

        model, _ = build_model_from_checkpoint(ckpt)
    return model.to(device).eval(), ckpt


@torch.no_grad()
def _forward(model: nn.Module, x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Probabilities (binary: (B, H, W) sigmoid) or label maps (multi-class: (B, H, W) argmax)."""
    logits = model(x).float()
    if out_channels == 1:
        return torch.sigmoid(logits[:, 0])
    return logits.argmax(1)


def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    size: tuple[int, int],
    out_channels: int,
    device: torch.device,
    batch_size: int = 16,
    threshold: float = 0.5,
) -> np.ndarray:
    """Label map of a ``(C, X, Y, Z)`` volume, predicted slice by slice along Z at ``size``.

    Each slice is resized to ``size`` with cubic interpolation, predicted, and the label map is
    resized back with nearest-neighbour interpolation (the public Synapse test procedure).
    """
    from scipy.ndimage import zoom

    c, x, y, z = image.shape
    out = np.zeros((x, y, z), dtype=np.int64)
    for start in range(0, z, batch_size):
        idx = range(start, min(z, start + batch_size))
        slices = []
        for k in idx:
            sl = image[..., k]
            if (x, y) != tuple(size):
                sl = zoom(sl, (1, size[0] / x, size[1] / y), order=3)
            slices.append(sl)
        batch = torch.from_numpy(np.stack(slices).astype(np.float32)).to(device)
        pred = _forward(model, batch, out_channels)
        if out_channels == 1:
            pred = (pred >= threshold).long()
        pred = pred.cpu().numpy()
        for j, k in enumerate(idx):
            p = pred[j]
            if p.shape != (x, y):
                p = zoom(p, (x / p.shape[0], y / p.shape[1]), order=0)
            out[..., k] = p
    return out


def test_checkpoint(
    config: Config,
    checkpoint: str | os.PathLike[str],
    split: str | None = None,
    device: str = "auto",
    output_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` (default ``data.test_split``) with ``eval.protocol``.

    Returns:
        ``{"result": EvaluationResult, "summary": dict, "files": {"json", "csv"}, "split", "protocol"}``;
        the JSON / CSV go beside the checkpoint (or into ``output_dir``) as ``<name>.<split>.json/.csv``.

    Raises:
        VmunetUserError: the checkpoint does not fit the config (channel counts differ).
    """
    from vmunet.metrics import isic_protocol, standard_protocol, synapse_protocol

    split = split or config.data.test_split
    dev = pick_device(device)
    model, ckpt = load_model_for_test(checkpoint, dev)
    inf = ckpt.get("inference", {})
    out_ch = int(inf.get("out_channels", config.model.out_channels))
    if out_ch != config.model.out_channels:
        raise VmunetUserError(
            f"{checkpoint}: the checkpoint has {out_ch} output channel(s) but the config's "
            f"model.out_channels is {config.model.out_channels}; use the config it was trained with"
        )
    protocol = config.eval.protocol
    thr = config.eval.threshold
    size = tuple(config.data.size)
    names = list(config.data.class_names) or None
    logger.info("testing %s on split %r with the %s protocol", checkpoint, split, protocol)

    if int(inf.get("spatial_dims", 2)) == 3:
        result = _test_volumes_3d(config, model, ckpt, split, dev, Path(checkpoint).parent, names, out_ch)
    elif protocol == "synapse":
        ds = build_split_dataset(config, split, train=False, output_dir=Path(checkpoint).parent, volumes=True)
        preds, labels, spacings, cases = [], [], [], []
        for i in range(len(ds)):
            item = ds[i]
            image = item["image"].numpy() if torch.is_tensor(item["image"]) else np.asarray(item["image"])
            if image.ndim != 4:
                raise VmunetUserError(
                    f"the synapse protocol needs whole volumes (C, X, Y, Z); split {split!r} "
                    f"gives {image.shape}"
                )
            preds.append(predict_volume(model, image, size, out_ch, dev, config.data.batch_size, thr))
            labels.append(np.asarray(item["label"])[0])
            spacings.append(item.get("spacing"))
            cases.append(str(item.get("case", i)))
        classes = {i: n for i, n in enumerate(names) if i > 0} if names and len(names) == out_ch else None
        result = synapse_protocol(preds, labels, spacings=spacings, case_names=cases, classes=classes)
    else:
        ds = build_split_dataset(config, split, train=False, output_dir=Path(checkpoint).parent)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=config.data.val_batch_size or config.data.batch_size, num_workers=0
        )
        preds, labels, cases = [], [], []
        for batch in loader:
            x = batch["image"].float().to(dev)
            p = _forward(model, x, out_ch).cpu().numpy()
            lab = batch["label"].numpy()[:, 0]
            for j in range(len(p)):
                preds.append(p[j])
                labels.append(lab[j])
                case = batch.get("case")
                cases.append(str(case[j]) if case is not None else str(len(cases)))
        if protocol == "isic":
            if out_ch != 1:
                raise VmunetUserError("eval.protocol 'isic' is for binary models (model.out_channels: 1)")
            result = isic_protocol(
                preds, [(lab > 0).astype(np.uint8) for lab in labels], threshold=thr, case_names=cases
            )
        else:
            if out_ch == 1:
                preds = [(p >= thr).astype(np.int64) for p in preds]
                classes = {1: names[1] if names else "foreground"}
            else:
                classes = {i: (names[i] if names else f"class_{i}") for i in range(1, out_ch)}
            result = standard_protocol(preds, labels, case_names=cases, classes=classes)

    ckpt_path = Path(checkpoint)
    folder = Path(output_dir) if output_dir is not None else ckpt_path.parent
    csv_path, json_path = result.save(folder / f"{ckpt_path.stem}.{split}.json")
    return {
        "result": result,
        "summary": result.to_dict(),
        "files": {"json": str(json_path), "csv": str(csv_path)},
        "split": split,
        "protocol": protocol,
    }


def _test_volumes_3d(
    config: Config,
    model: nn.Module,
    ckpt: dict[str, Any],
    split: str,
    device: torch.device,
    output_dir: Path,
    names: list[str] | None,
    out_ch: int,
) -> Any:
    """Whole volumes through the 3-D segmenter (resampled, sliding window, back on the input grid).

    Scored on each volume's own grid with the config's protocol: ``synapse`` (Dice, and HD95 in
    mm) or ``standard`` (Dice, HD95 in mm); the spacing is the label file's.
    """
    from vmunet.data.volumes3d import read_labelled_volume, spacing_is_known
    from vmunet.inference import Segmenter
    from vmunet.metrics import standard_protocol, synapse_protocol

    if config.data.spatial_dims != 3:
        raise VmunetUserError(
            "the checkpoint holds a 3-D model (spatial_dims 3) but the config is a 2-D recipe; "
            "use the 3-D recipe it was trained with (data.spatial_dims: 3)"
        )
    ds = build_split_dataset(config, split, train=False, output_dir=output_dir, volumes=True)
    seg = Segmenter(
        model,
        device=device,
        batch_size=config.eval.sw_batch_size,
        overlap=config.eval.overlap,
        inference=ckpt["inference"],
    )
    preds, labels, spacings, cases = [], [], [], []
    for src in ds.sources:
        img, lab = read_labelled_volume(src, ds.label_mode, ds.num_classes)
        if lab is None:
            raise VmunetUserError(
                f"{src.image}: split {split!r} has a volume without a label; cannot score it"
            )
        preds.append(seg.predict(img).labels.astype(np.int64))
        labels.append(lab.astype(np.int64))
        spacings.append(tuple(float(s) for s in img.spacing) if spacing_is_known(img) else (1.0, 1.0, 1.0))
        cases.append(src.case)
    n_labels = out_ch + 1 if out_ch == 1 else out_ch
    if names and len(names) == n_labels:
        classes = {i: n for i, n in enumerate(names) if i > 0}
    else:
        classes = {i: f"class_{i}" for i in range(1, n_labels)}
    if config.eval.protocol == "synapse":
        return synapse_protocol(
            preds, labels, spacings=spacings, case_names=cases, classes=classes, hd95_units="mm"
        )
    return standard_protocol(preds, labels, spacings=spacings, case_names=cases, classes=classes)


def format_table(res: dict[str, Any]) -> str:
    """The protocol's table as printed by ``vmunet test``."""
    return f"split: {res['split']}\n" + res["result"].format_table()
