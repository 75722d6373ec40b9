"""MONAI bundle components: vmunet's own preprocessing and postprocessing as MONAI transforms.

A bundle written by :func:`vmunet.export.export_bundle` names these with ``_target_`` in
``configs/inference.json`` so that ``python -m monai.bundle run`` segments a folder exactly as
``vmunet segment`` does (same voxels): the bundle's ``preprocessing`` reads each scan with
vmunet's reader and applies the checkpoint's channel rule, normalisation and (3-D) resampling to
the training spacing; its ``inferer`` is the very vmunet inferer ``vmunet segment`` uses (a MONAI
:class:`~monai.inferers.Inferer`: sliding window, activation); its ``postprocessing`` resamples
the probabilities back onto the scan's grid (3-D), thresholds / argmaxes them and writes a label
map with the input's geometry and name into ``output_dir``.

Example:
    >>> from vmunet.export.monai_components import VmunetLabelsd
    >>> import torch
    >>> out = VmunetLabelsd("pred", activation="softmax")({"pred": torch.tensor([[[0.2]], [[0.8]]])})
    >>> out["pred"].tolist()
    [[1]]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

__all__ = [
    "LoadVmunetImaged",
    "PrepareImage",
    "VmunetLabelsd",
    "VmunetPreprocessd",
    "VmunetResampleBackd",
    "VmunetSaveLabelsd",
    "list_inputs",
]

logger = logging.getLogger(__name__)

_IMAGE_DATA = "_vmunet_image"  # the ImageData between the loader and the preprocessing (never collated)


def list_inputs(
    dataset_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None = None
) -> list:
    """The bundle's ``datalist``: ``[{"image": path, "rel_dir": sub folder}]`` of every scan in a folder.

    The same discovery as ``vmunet segment`` (:func:`vmunet.inference.folder.collect_inputs`):
    folders are recursed, DICOM series folders are one input, non-image files are left out.

    Example:
        >>> list_inputs("scans/")  # doctest: +SKIP
        [{'image': 'scans/case1.nii.gz', 'rel_dir': '.'}]
    """
    from vmunet.inference.folder import collect_inputs

    items = collect_inputs(str(dataset_dir), exclude=output_dir)
    return [{"image": str(it.path), "rel_dir": str(it.rel_dir)} for it in items if it.supported]


class LoadVmunetImaged(MapTransform):
    """Read ``d[key]`` (a path) with :func:`vmunet.data.read_image`, keeping its geometry.

    Args:
        keys: the path key(s) (``"image"``).

    Example:
        >>> LoadVmunetImaged("image")({"image": "scan.nii.gz"})["image_path"]  # doctest: +SKIP
        'scan.nii.gz'
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from vmunet.data import read_image

        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            img = read_image(path)
            d[f"{key}_path"] = path
            d[_IMAGE_DATA] = img
            d[key] = img.array
        return d


class VmunetPreprocessd(MapTransform):
    """The checkpoint's preprocessing: the network input ``(C, *spatial)`` float32, as ``vmunet segment``.

    Runs the ``prepare`` half of the segmenter's strategy (:mod:`vmunet.inference.strategies`):
    2-D checkpoints: pictures get the channel rule and the normalisation. 3-D checkpoints: volumes
    are resampled to the training spacing and normalised; the grids needed to go back are kept in
    ``vmunet_affine``, ``vmunet_grid_affine``, ``vmunet_shape`` and ``vmunet_resample``.

    Args:
        keys: the image key (``"image"``), loaded by :class:`LoadVmunetImaged`.
        inference: the checkpoint's ``inference`` dict.

    Example:
        >>> t = VmunetPreprocessd("image", {"in_channels": 1, "out_channels": 2})
        >>> t.spec.spatial_dims
        2
    """

    def __init__(self, keys: Any, inference: Mapping[str, Any]) -> None:
        super().__init__(keys)
        from vmunet.inference.segmenter import Preparer
        from vmunet.inference.spec import InferenceSpec
        from vmunet.inference.strategies import RunOptions, strategy_for

        self.spec = InferenceSpec.from_dict(inference, source="bundle inference")
        # the preparation half of vmunet segment (checks, then the strategy's prepare; CPU only)
        strategy = strategy_for(self.spec.spatial_dims)(self.spec, RunOptions(torch.device("cpu")))
        self._prepare = Preparer(strategy)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from vmunet.inference.strategies import input_error

        d = dict(data)
        img = d.pop(_IMAGE_DATA)
        for key in self.key_iterator(d):
            if self.spec.spatial_dims == 2 and img.is_volume:
                raise input_error(
                    img,
                    "is a volume but this bundle holds a 2-D model that segments pictures; segment volumes "
                    "slice by slice with vmunet segment",
                )
            prepared = self._prepare(img)
            if self.spec.spatial_dims == 3:
                self._keep_grids(prepared, d)
            d[key] = prepared.x[0]
        return d

    @staticmethod
    def _keep_grids(prepared: Any, d: dict[Hashable, Any]) -> None:
        extra = prepared.extra
        d["vmunet_affine"] = extra["affine"]
        d["vmunet_grid_affine"] = torch.as_tensor(extra["grid_affine"], dtype=torch.float64)
        d["vmunet_shape"] = torch.tensor(extra["shape"], dtype=torch.int64)
        d["vmunet_resample"] = torch.tensor(bool(extra["resample"]))


class PrepareImage:
    """The evaluator's ``prepare_batch``: the image batch as a plain tensor (no label).

    Args:
        to_device: move the batch to the evaluator's device (2-D); a 3-D volume stays on the CPU
            and only its windows go to the device (``sw_device``), as ``vmunet segment`` does.

    Example:
        >>> x, y = PrepareImage(to_device=True)({"image": torch.zeros(1, 1, 4, 4)}, torch.device("cpu"))
        >>> tuple(x.shape), y
        ((1, 1, 4, 4), None)
    """

    def __init__(self, to_device: bool = True) -> None:
        self.to_device = bool(to_device)

    def __call__(
        self, batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, None]:
        """``(image batch, None)``."""
        x = batchdata["image"]
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
        if self.to_device and device is not None:
            x = x.to(device=device, non_blocking=non_blocking)
        return x, None


class VmunetResampleBackd(MapTransform):
    """3-D: resample the probabilities ``(K, *grid)`` back onto the input's grid (bilinear), as ``segment``.

    Reads ``vmunet_grid_affine``, ``vmunet_affine``, ``vmunet_shape`` and ``vmunet_resample`` from
    the item (written by :class:`VmunetPreprocessd`); items without them pass unchanged.

    Example:
        >>> p = torch.rand(2, 4, 4, 4)
        >>> VmunetResampleBackd("pred")({"pred": p})["pred"] is p
        True
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from vmunet.inference.strategies import VolumetricStrategy

        d = dict(data)
        if "vmunet_shape" not in d:
            return d
        extra = {
            "shape": torch.as_tensor(d["vmunet_shape"]).reshape(-1).tolist(),
            "resample": bool(torch.as_tensor(d["vmunet_resample"]).item()),
            "grid_affine": torch.as_tensor(d["vmunet_grid_affine"], dtype=torch.float64),
            "affine": torch.as_tensor(d["vmunet_affine"], dtype=torch.float64),
        }
        for key in self.key_iterator(d):  # vmunet segment's own way back onto the input's grid
            probs = torch.as_tensor(d[key]).float().cpu()
            d[key] = VolumetricStrategy.to_input_grid(probs[None], extra)[0]
        return d


class VmunetLabelsd(MapTransform):
    """Probabilities ``(K, *spatial)`` -> a label map (sigmoid: ``p >= threshold``; softmax: argmax).

    Args:
        keys: the prediction key (``"pred"``).
        activation: ``"sigmoid"`` or ``"softmax"`` (the checkpoint's).
        threshold: sigmoid models: foreground from this probability.

    Example:
        >>> VmunetLabelsd("pred", "sigmoid", 0.5)({"pred": torch.tensor([[[0.7, 0.2]]])})["pred"].tolist()
        [[1, 0]]
    """

    def __init__(self, keys: Any, activation: str = "sigmoid", threshold: float = 0.5) -> None:
        super().__init__(keys)
        self.activation = activation
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from vmunet.inference.inferers import label_dtype, labels_from_probabilities

        d = dict(data)
        for key in self.key_iterator(d):
            probs = torch.as_tensor(d[key])
            labels = labels_from_probabilities(probs[None], self.activation, self.threshold)[0]
            n_labels = probs.shape[0] + 1 if self.activation == "sigmoid" else probs.shape[0]
            d[key] = labels.cpu().numpy().astype(label_dtype(n_labels))
        return d


class VmunetSaveLabelsd(MapTransform):
    """Write the label map with the input's geometry and name into ``output_dir``, as ``vmunet segment``.

    The file is ``output_dir/<sub folder>/<case><ext>`` (:func:`vmunet.inference.folder.output_extension`:
    NIfTI stays NIfTI, a JPEG becomes PNG, a DICOM series becomes ``.nii.gz``), written atomically.

    Args:
        keys: the label-map key (``"pred"``).
        output_dir: the folder to write into.
        path_key: the item key holding the input's path.

    Example:
        >>> VmunetSaveLabelsd("pred", "out/").output_dir  # doctest: +SKIP
        PosixPath('out')
    """

    def __init__(self, keys: Any, output_dir: str | os.PathLike[str], path_key: str = "image_path") -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from vmunet.data import read_image, write_image
        from vmunet.data.io import case_name
        from vmunet.inference.folder import output_extension

        d = dict(data)
        path = Path(_one(d[self.path_key]))
        rel = Path(_one(d.get("rel_dir", ".")))
        case = case_name(path) if path.is_file() else path.name
        like = read_image(path)
        for key in self.key_iterator(d):
            out = self.output_dir / rel / f"{case}{output_extension(path)}"
            write_image(out, np.asarray(d[key]), like=like)
            d[f"{key}_file"] = str(out)
            logger.info("%s -> %s", path, out)
        return d


def _one(v: Any) -> Any:
    """A value that a DataLoader may have wrapped in a one-element list."""
    if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and len(v) == 1:
        return v[0]
    return v
