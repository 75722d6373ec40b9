"""A vmunet checkpoint as a MONAI bundle that ``python -m monai.bundle run`` runs.

Layout (the MONAI model zoo's, e.g. ``spleen_ct_segmentation``)::

    DIR/
      configs/metadata.json    schema URL, version, changelog, monai / pytorch / numpy versions,
                               required_packages_version, task, description, authors, copyright,
                               network_data_format (inputs / outputs)
      configs/inference.json   bundle_root, output_dir, dataset_dir, datalist, device, network_def,
                               network, preprocessing, dataset, dataloader, inferer, postprocessing,
                               handlers, evaluator, checkpointloader, initialize, run
      models/model.pt          the network's state dict (MONAI's CheckpointLoader reads it)
      docs/README.md           what it is and how to run it
      LICENSE

``configs/inference.json`` builds the network with ``vmunet.create_model`` (the checkpoint's
architecture and arguments), reads every scan under ``dataset_dir`` with vmunet's reader, applies
the checkpoint's preprocessing, runs vmunet's own sliding-window inferer with the checkpoint's
window, overlap and activation, and writes label maps into ``output_dir`` with each input's
name and geometry (:mod:`vmunet.export.monai_components`), the same voxels ``vmunet segment``
writes::

    python -m monai.bundle run --config_file DIR/configs/inference.json \\
        --dataset_dir scans/ --output_dir masks/

``bundle_root`` is written as the bundle's absolute path; a moved bundle takes
``--bundle_root NEW_DIR``. The bundle is assembled in a hidden sibling folder and renamed into
place, so an interrupted export leaves nothing under ``DIR``.

Example:
    >>> from vmunet.export import export_bundle
    >>> res = export_bundle("best.pt", "bundles/my_model")  # doctest: +SKIP
    >>> sorted(p.name for p in res.path.iterdir())  # doctest: +SKIP
    ['LICENSE', 'configs', 'docs', 'models']
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vmunet.errors import VmunetUserError
from vmunet.export._source import ExportSource, jsonable, load_source

__all__ = [
    "BUNDLE_SCHEMA_URL",
    "BUNDLE_VERSION",
    "BundleResult",
    "export_bundle",
    "inference_config",
    "metadata",
]

#: The MONAI bundle metadata schema the model zoo's current bundles name.
BUNDLE_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
BUNDLE_VERSION = "0.1.0"
_COMPONENTS = "vmunet.export.monai_components"


@dataclass
class BundleResult:
    """What :func:`export_bundle` wrote.

    Attributes:
        path: the bundle folder.
        inference_config: ``configs/inference.json``.
        metadata: ``configs/metadata.json``.
        weights: ``models/model.pt``.

    Example:
        >>> r = BundleResult(Path("b"), Path("b/configs/inference.json"), Path("b/configs/metadata.json"),
        ...                  Path("b/models/model.pt"))
        >>> r.inference_config.name
        'inference.json'
    """

    path: Path
    inference_config: Path
    metadata: Path
    weights: Path


def _versions() -> dict[str, str]:
    import monai
    import numpy

    from vmunet import __version__

    return {
        "monai": str(monai.__version__),
        "torch": str(torch.__version__).split("+")[0],
        "numpy": str(numpy.__version__),
        "vmunet": __version__,
    }


def _inferer(src: ExportSource) -> dict[str, Any]:
    spec = src.spec
    overlap = float(spec.overlap)
    if spec.spatial_dims == 3:
        return {
            "_target_": "vmunet.inference.inferers.SlidingWindowInferer3D",
            "roi_size": list(spec.input_size),
            "overlap": overlap,
            "sw_batch_size": "@sw_batch_size",
            "sw_device": "@device",
            "device": "$torch.device('cpu')",
            "activation": spec.activation,
            "tta": False,
        }
    if spec.resize:
        return {
            "_target_": "vmunet.inference.inferers.WholeImageInferer",
            "size": list(spec.input_size),
            "resize": True,
            "activation": spec.activation,
            "tta": False,
        }
    if spec.input_size is not None:
        return {
            "_target_": "vmunet.inference.inferers.SlidingWindowInferer2D",
            "roi_size": list(spec.input_size),
            "overlap": overlap,
            "sw_batch_size": "@sw_batch_size",
            "activation": spec.activation,
            "tta": False,
        }
    return {"_target_": "vmunet.inference.inferers.WholeImageInferer", "activation": spec.activation}


def inference_config(src: ExportSource, bundle_root: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``configs/inference.json`` of a checkpoint's bundle (see the module docstring)."""
    spec = src.spec
    inference = jsonable(src.checkpoint["inference"])
    post: list[dict[str, Any]] = []
    if spec.spatial_dims == 3:
        post.append({"_target_": f"{_COMPONENTS}.VmunetResampleBackd", "keys": "pred"})
    post += [
        {
            "_target_": f"{_COMPONENTS}.VmunetLabelsd",
            "keys": "pred",
            "activation": spec.activation,
            "threshold": "@threshold",
        },
        {"_target_": f"{_COMPONENTS}.VmunetSaveLabelsd", "keys": "pred", "output_dir": "@output_dir"},
    ]
    return {
        "imports": [
            "$import glob",
            "$import os",
            "$import torch",
            "$import vmunet",
            f"$import {_COMPONENTS}",
        ],
        "bundle_root": str(Path(bundle_root).resolve()),
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": f"$({_COMPONENTS}.list_inputs(@dataset_dir, @output_dir))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "sw_batch_size": 4,
        "threshold": float(spec.threshold),
        "network_def": {
            "_target_": "vmunet.create_model",
            "name": src.arch_name,
            **jsonable(src.arch_kwargs),
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": f"{_COMPONENTS}.LoadVmunetImaged", "keys": "image"},
                {"_target_": f"{_COMPONENTS}.VmunetPreprocessd", "keys": "image", "inference": inference},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": _inferer(src),
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "prepare_batch": {"_target_": f"{_COMPONENTS}.PrepareImage", "to_device": spec.spatial_dims == 2},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "prepare_batch": "@prepare_batch",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
            "map_location": "@device",
            "strict": True,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def metadata(src: ExportSource, version: str = BUNDLE_VERSION) -> dict[str, Any]:
    """The ``configs/metadata.json`` of a checkpoint's bundle (MONAI's bundle metadata schema)."""
    spec = src.spec
    v = _versions()
    nd = spec.spatial_dims
    div = list(src.size_divisors)
    size = list(spec.input_size) if spec.input_size is not None else [f"{d}*n" for d in div]
    if nd == 3 or (spec.input_size is not None and not spec.resize):
        patch = True
    else:
        patch = False
    norm = dict(spec.normalization)
    labels = {str(i): n for i, n in enumerate(spec.class_names)}
    out_def = (
        {"0": spec.class_names[1]} if spec.activation == "sigmoid" and spec.out_channels == 1 else None
    ) or {str(i): spec.class_names[i] for i in range(spec.out_channels)}
    kind = "volumes (3-D)" if nd == 3 else "2-D images"
    return {
        "schema": BUNDLE_SCHEMA_URL,
        "version": version,
        "changelog": {version: f"exported from {src.source_name} by vmunet {v['vmunet']}"},
        "monai_version": v["monai"],
        "pytorch_version": v["torch"],
        "numpy_version": v["numpy"],
        "required_packages_version": {"vmunet": v["vmunet"], "pytorch-ignite": _ignite_version()},
        "name": f"vmunet {src.arch_name}",
        "task": f"{'Volumetric (3-D)' if nd == 3 else '2-D'} segmentation with VM-UNet ({src.arch_name})",
        "description": (
            f"A {src.arch_name} VM-UNet (vision Mamba U-Net) exported from the vmunet checkpoint "
            f"{src.source_name}: segments {kind} into {spec.n_labels} labels "
            f"({', '.join(spec.class_names)}) with the checkpoint's preprocessing "
            f"(normalisation {norm.get('kind')}) and "
            f"{'resize' if spec.resize else 'sliding window'} inference."
        ),
        "authors": "vmunet exporter (the checkpoint's owner trained the weights)",
        "copyright": "Copyright (c) the checkpoint's owner; vmunet code Apache-2.0",
        "data_type": "nibabel" if nd == 3 else "image files (PNG / JPEG / TIFF / NIfTI ...)",
        "image_classes": f"{spec.in_channels} channel(s), normalised with {json.dumps(norm)}",
        "pred_classes": (
            f"{spec.out_channels} channel(s) of logits, {spec.activation}; labels {json.dumps(labels)}"
        ),
        "intended_use": "Research only; not for diagnostic purposes",
        "references": [
            "Ruan J., Li J., Xiang S. VM-UNet: Vision Mamba UNet for Medical Image Segmentation. "
            "arXiv:2402.02491 (2024)."
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "CT/MR" if nd == 3 else "image",
                    "num_channels": spec.in_channels,
                    "spatial_shape": size,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": patch,
                    "channel_def": {str(i): "image" for i in range(spec.in_channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": spec.out_channels,
                    "spatial_shape": size,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": patch,
                    "channel_def": out_def,
                }
            },
        },
        "vmunet_inference": jsonable(src.checkpoint["inference"]),
    }


def _ignite_version() -> str:
    try:
        import ignite

        return str(ignite.__version__)
    except ImportError:  # pragma: no cover - monai's evaluator needs it
        return "unknown"


def _readme(src: ExportSource, root: Path) -> str:
    spec = src.spec
    resample = "" if spec.spatial_dims == 2 else f", resampling to {spec.spacing}"
    if spec.resize:
        infer = f"resize to {list(spec.input_size)}"
    else:
        infer = f"sliding window {list(spec.input_size or [])}, overlap {spec.overlap}"
    return f"""# vmunet {src.arch_name} (MONAI bundle)

Exported by `vmunet export {src.source_name} --format bundle`.

- Network: `vmunet.create_model({src.arch_name!r}, ...)` ({spec.spatial_dims}-D, {spec.in_channels} input
  channel(s), {spec.out_channels} output channel(s), {spec.activation}).
- Labels: {", ".join(f"{i} = {n}" for i, n in enumerate(spec.class_names))}.
- Preprocessing: vmunet's reader, the checkpoint's channel rule and normalisation
  (`{json.dumps(dict(spec.normalization))}`){resample}.
- Inference: {infer}.
- Output: one label map per scan in `output_dir`, with the scan's name and geometry (as `vmunet segment`).

Requires `vmunet` (and MONAI, pytorch-ignite) installed.

## Run

    python -m monai.bundle run --config_file {root}/configs/inference.json \\
        --dataset_dir SCANS/ --output_dir MASKS/

A moved bundle also takes `--bundle_root NEW_DIR`. Override the device with
`--device "\\$torch.device('cpu')"`.
"""


_LICENSE = """The vmunet code this bundle runs is licensed under the Apache License, Version 2.0
(https://www.apache.org/licenses/LICENSE-2.0).

The weights in models/model.pt belong to whoever trained the checkpoint they were exported from;
their terms are theirs to state. Research use only; not for diagnostic purposes.
"""


def export_bundle(
    checkpoint: str | os.PathLike[str] | dict[str, Any],
    output: str | os.PathLike[str],
    *,
    version: str = BUNDLE_VERSION,
) -> BundleResult:
    """Write a vmunet checkpoint as a MONAI bundle folder (see the module docstring).

    Args:
        checkpoint: a vmunet checkpoint (path or dict).
        output: the bundle folder to create; it must not exist yet (or be empty).
        version: the bundle's version in ``metadata.json``.

    Returns:
        A :class:`BundleResult`.

    Raises:
        VmunetUserError: not a vmunet checkpoint, or ``output`` exists and is not an empty folder.
    """
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VmunetUserError(
            f"--output {out}: already exists{' and is not empty' if out.is_dir() else ' (a file)'}; "
            "a bundle goes into a new folder"
        )
    src = load_source(checkpoint)
    final = out.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        (tmp / "configs").mkdir(parents=True)
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        (tmp / "configs" / "inference.json").write_text(
            json.dumps(inference_config(src, final), indent=4) + "\n", encoding="utf-8"
        )
        (tmp / "configs" / "metadata.json").write_text(
            json.dumps(metadata(src, version), indent=4) + "\n", encoding="utf-8"
        )
        state = {k: v.detach().cpu().contiguous() for k, v in src.model.state_dict().items()}
        torch.save(state, tmp / "models" / "model.pt")
        (tmp / "docs" / "README.md").write_text(_readme(src, final), encoding="utf-8")
        (tmp / "LICENSE").write_text(_LICENSE, encoding="utf-8")
        if final.exists():
            final.rmdir()  # empty (checked above)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BundleResult(
        final,
        final / "configs" / "inference.json",
        final / "configs" / "metadata.json",
        final / "models" / "model.pt",
    )
