"""``vmunet test``: score a trained checkpoint on a held-out split with the recipe's protocol.

Every prediction goes through the inferers of :mod:`vmunet.inference.inferers`, the same
ones training validation and ``vmunet segment`` use.

* ``standard`` (2-D and 3-D checkpoints): each case of the split is segmented from its
  files by the same :class:`~vmunet.inference.Segmenter` path as ``vmunet segment``
  (the checkpoint's resize or sliding window, on the scan's own grid; a volume slice by
  slice with a 2-D model, whole with a 3-D one) and scored against its label on that
  grid: Dice, and HD95 in the file's physical units (mm), in pixels only where a format
  stores no spacing (PNG, JPEG, NumPy, HDF5), and then labelled so. On the same scans
  ``vmunet test`` and ``vmunet segment`` + ``vmunet evaluate`` give the same numbers.
* ``isic`` (the VM-UNet paper's convention): 2-D images at the network size (as the
  public VM-UNet test does), sigmoid probabilities pooled into one confusion matrix
  (:func:`vmunet.metrics.isic_protocol`).
* ``synapse`` (the TransUNet / VM-UNet papers' convention) with a 2-D checkpoint: whole
  volumes slice by slice along the last axis: each slice resized to the network size
  (cubic), the label map resized back (nearest), then Dice and HD95 in voxels per organ
  per volume (:func:`vmunet.metrics.synapse_protocol`), as the public
  ``test_single_volume`` does. With a 3-D checkpoint: whole volumes on their own grid,
  HD95 in mm.

Example:
    >>> from vmunet.config import load_config
    >>> from vmunet.train.evaluate import test_checkpoint, format_table
    >>> res = test_checkpoint(load_config("isic17"), "runs/isic17/best.pt")  # doctest: +SKIP
    >>> print(format_table(res))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
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

__all__ = [
    "format_table",
    "iter_scored_cases",
    "load_model_for_test",
    "synapse_paper_labels",
    "test_checkpoint",
]

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


def synapse_paper_labels(
    model: nn.Module,
    image: np.ndarray,
    size: tuple[int, int],
    activation: str,
    device: torch.device,
    batch_size: int = 16,
    threshold: float = 0.5,
) -> np.ndarray:
    """The Synapse papers' label map of a ``(C, X, Y, Z)`` volume, slice by slice along Z.

    Each slice is resized to ``size`` with cubic interpolation, predicted whole (the
    :class:`~vmunet.inference.inferers.WholeImageInferer`, its activation and label rule),
    and the label map is resized back with nearest-neighbour interpolation: the public
    TransUNet / VM-UNet ``test_single_volume`` procedure, kept exactly for the paper protocol.
    """
    from scipy.ndimage import zoom

    from vmunet.inference.inferers import WholeImageInferer, labels_from_probabilities

    inferer = WholeImageInferer(None, activation=activation)
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
        pred = labels_from_probabilities(inferer(batch, model), activation, threshold).cpu().numpy()
        for j, k in enumerate(idx):
            lab = pred[j]
            if lab.shape != (x, y):
                lab = zoom(lab, (x / lab.shape[0], y / lab.shape[1]), order=0)
            out[..., k] = lab
    return out


def iter_scored_cases(dataset: Any, split: str = "test") -> Iterator[tuple[str, Any, np.ndarray, Any]]:
    """``(case, image, label, spacing or None)`` for every case of a split, on the case's own grid.

    ``image`` is an :class:`~vmunet.data.ImageData` as read from the case's files (channels
    as the model takes them), ``label`` the label map converted as training converts it
    (0/255 masks, BTCV labels, ...), ``spacing`` the label file's in mm, or ``None`` when
    the format stores none (the scores are then in pixels). Volumes come whole; 2-D pairs
    one by one; prepared arrays as stored.

    Raises:
        VmunetUserError: a case has no label, or the data set holds no files to read.
    """
    from vmunet.data import ImageData, read_image
    from vmunet.data.io import spacing_is_known

    def no_label(where: Any) -> VmunetUserError:
        return VmunetUserError(f"{where}: split {split!r} has a case without a label; cannot score it")

    if hasattr(dataset, "sources"):  # volumes (slice datasets, whole-volume datasets)
        from vmunet.data.dataset_classes import VolumeDataset
        from vmunet.data.volumes3d import read_labelled_volume

        for src in dataset.sources:
            if src.label is None:
                raise no_label(src.image)
            if src.zfirst:  # prepared (Z, X, Y) memmaps: read as the volume dataset reads them
                item = VolumeDataset([src], None, dataset.label_mode, dataset.num_classes)[0]
                img = ImageData(
                    item["image"][0].numpy(), spacing=item["spacing"], format="nifti", path=src.image
                )
                yield src.case, img, item["label"][0].numpy(), tuple(item["spacing"])
                continue
            img, lab = read_labelled_volume(src, dataset.label_mode, dataset.num_classes)
            yield src.case, img, lab, tuple(img.spacing) if spacing_is_known(img) else None
        return
    if hasattr(dataset, "pairs") and hasattr(dataset, "load"):  # 2-D file pairs
        for i, pair in enumerate(dataset.pairs):
            image, mask, case = dataset.load(i)
            first = pair.image[0] if isinstance(pair.image, tuple) else pair.image
            if mask is None:
                raise no_label(first)
            geo = read_image(pair.label if pair.label is not None else first)  # the label's geometry
            img = ImageData(
                image,
                spacing=geo.spacing,
                origin=geo.origin,
                direction=geo.direction,
                format=geo.format,
                path=Path(first),
                meta=geo.meta,
            )
            yield case, img, mask, tuple(geo.spacing) if spacing_is_known(geo) else None
        return
    if hasattr(dataset, "ids") and hasattr(dataset, "_arrays"):  # prepared 2-D arrays (no geometry)
        images, labels = dataset._arrays()
        for i, case in enumerate(dataset.ids):
            yield str(case), ImageData(np.array(images[i]), format="npy"), np.array(labels[i]), None
        return
    raise VmunetUserError(
        f"split {split!r}: {type(dataset).__name__} holds no files to score on their own grid; "
        "use a file-backed layout (datalist, folder, nnU-Net, ISIC, Synapse)"
    )


def test_checkpoint(
    config: Config,
    checkpoint: str | os.PathLike[str],
    split: str | None = None,
    device: str = "auto",
    output_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` (default ``data.test_split``) with ``eval.protocol``.

    The recipe's ``eval.threshold`` and ``eval.overlap`` apply (by default the values the
    checkpoint was trained with).

    Returns:
        ``{"result": EvaluationResult, "summary": dict, "files": {"json", "csv"}, "split", "protocol"}``;
        the JSON / CSV go beside the checkpoint (or into ``output_dir``) as ``<name>.<split>.json/.csv``.

    Raises:
        VmunetUserError: the checkpoint does not fit the config (channel counts or dimensions differ).
    """
    from vmunet.metrics import isic_protocol, synapse_protocol

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
    spatial_dims = int(inf.get("spatial_dims", 2))
    if spatial_dims == 3 and config.data.spatial_dims != 3:
        raise VmunetUserError(
            "the checkpoint holds a 3-D model (spatial_dims 3) but the config is a 2-D recipe; "
            "use the 3-D recipe it was trained with (data.spatial_dims: 3)"
        )
    protocol = config.eval.protocol
    thr = config.eval.threshold
    activation = "sigmoid" if out_ch == 1 else "softmax"
    names = list(config.data.class_names) or None
    n_labels = out_ch + 1 if out_ch == 1 else out_ch
    if names and len(names) == n_labels:
        classes = {i: n for i, n in enumerate(names) if i > 0}
    elif out_ch == 1:
        classes = {1: "foreground"}
    else:
        classes = {i: f"class_{i}" for i in range(1, n_labels)}
    folder_of_run = Path(checkpoint).parent
    logger.info("testing %s on split %r with the %s protocol", checkpoint, split, protocol)

    if protocol == "synapse" and spatial_dims == 2:
        ds = build_split_dataset(config, split, train=False, output_dir=folder_of_run, volumes=True)
        size = tuple(config.data.size)
        preds, labels, spacings, cases = [], [], [], []
        for i in range(len(ds)):
            item = ds[i]
            image = item["image"].numpy() if torch.is_tensor(item["image"]) else np.asarray(item["image"])
            if image.ndim != 4:
                raise VmunetUserError(
                    f"the synapse protocol needs whole volumes (C, X, Y, Z); split {split!r} "
                    f"gives {image.shape}"
                )
            preds.append(
                synapse_paper_labels(model, image, size, activation, dev, config.data.batch_size, thr)
            )
            labels.append(np.asarray(item["label"])[0])
            spacings.append(item.get("spacing"))
            cases.append(str(item.get("case", i)))
        paper = classes if names and len(names) == out_ch else None
        result = synapse_protocol(preds, labels, spacings=spacings, case_names=cases, classes=paper)
    elif protocol == "isic":
        if out_ch != 1:
            raise VmunetUserError("eval.protocol 'isic' is for binary models (model.out_channels: 1)")
        from vmunet.inference.inferers import WholeImageInferer

        inferer = WholeImageInferer(None, activation="sigmoid")
        ds = build_split_dataset(config, split, train=False, output_dir=folder_of_run)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=config.data.val_batch_size or config.data.batch_size, num_workers=0
        )
        preds, labels, cases = [], [], []
        for batch in loader:
            p = inferer(batch["image"].float().to(dev), model)[:, 0].cpu().numpy()
            lab = batch["label"].numpy()[:, 0]
            for j in range(len(p)):
                preds.append(p[j])
                labels.append((lab[j] > 0).astype(np.uint8))
                case = batch.get("case")
                cases.append(str(case[j]) if case is not None else str(len(cases)))
        result = isic_protocol(preds, labels, threshold=thr, case_names=cases)
    else:
        result = _test_on_own_grid(config, model, ckpt, split, dev, folder_of_run, classes)

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


def _inference_settings(config: Config, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's inference dict; keys an older or hand-made one lacks come from the recipe."""
    info = dict(ckpt.get("inference") or {})
    info.setdefault("in_channels", config.model.in_channels)
    info.setdefault("out_channels", config.model.out_channels)
    info.setdefault("normalization", dict(config.data.normalization))
    if config.data.class_names:
        info.setdefault("class_names", list(config.data.class_names))
    return info


def _test_on_own_grid(
    config: Config,
    model: nn.Module,
    ckpt: dict[str, Any],
    split: str,
    device: torch.device,
    output_dir: Path,
    classes: dict[int, str],
) -> Any:
    """Each case segmented as ``vmunet segment`` does it, scored on its own grid.

    ``standard``: Dice and HD95 in the label file's units (mm; pixels where the format has
    no spacing). ``synapse`` with a 3-D checkpoint: the Synapse empty-mask rule, HD95 in mm.
    """
    from vmunet.inference import Segmenter
    from vmunet.metrics import standard_protocol, synapse_protocol

    volumes = config.data.spatial_dims == 3 or config.eval.protocol == "synapse"
    ds = build_split_dataset(config, split, train=False, output_dir=output_dir, volumes=volumes)
    seg = Segmenter(
        model,
        device=device,
        batch_size=config.eval.sw_batch_size if config.data.spatial_dims == 3 else 4,
        overlap=config.eval.overlap,
        threshold=config.eval.threshold,
        inference=_inference_settings(config, ckpt),
    )
    preds, labels, spacings, cases = [], [], [], []
    for case, img, lab, spacing in iter_scored_cases(ds, split):
        preds.append(seg.predict(img).labels.astype(np.int64))
        labels.append(np.asarray(lab).astype(np.int64))
        spacings.append(spacing)
        cases.append(case)
    if config.eval.protocol == "synapse":
        spacings = [s if s is not None else (1.0,) * preds[i].ndim for i, s in enumerate(spacings)]
        return synapse_protocol(
            preds, labels, spacings=spacings, case_names=cases, classes=classes, hd95_units="mm"
        )
    return standard_protocol(preds, labels, spacings=spacings, case_names=cases, classes=classes)


def format_table(res: dict[str, Any]) -> str:
    """The protocol's table as printed by ``vmunet test``."""
    return f"split: {res['split']}\n" + res["result"].format_table()
