"""Compatibility door: the dataset names as they were before the split into modules.

The code now lives in :mod:`vmunet.data.dataset_classes` (the Dataset classes),
:mod:`vmunet.data.layouts` (one finder module per data-set family) and
:mod:`vmunet.data.factory` (:func:`build_dataset`, the trainer's only door).

Example:
    >>> from vmunet.data.datasets import build_dataset  # doctest: +SKIP
"""

from __future__ import annotations

from vmunet.data.dataset_classes import (
    NpzSliceDataset as _NpzSliceDataset,
)
from vmunet.data.dataset_classes import (
    Pair,
    PairedImageDataset,
    PreparedArrayDataset,
    VolumeDataset,
    VolumeSliceDataset,
    VolumeSource,
    check_binary_mask,
)
from vmunet.data.factory import DATASET_KINDS, build_dataset
from vmunet.data.layouts.datalist import datalist_pairs
from vmunet.data.layouts.folder import SPLIT_ALIASES, find_folder_pairs
from vmunet.data.layouts.isic import _isic_challenge_dirs, _isic_images, find_isic_pairs
from vmunet.data.layouts.nnunet import nnunet_pairs
from vmunet.data.layouts.synapse import (
    SYNAPSE_HU_WINDOW,
    SYNAPSE_NORMALIZATION,
    _synapse_case,
    _synapse_split_cases,
    find_btcv_root,
    find_synapse_volumes,
)

__all__ = [
    "Pair",
    "PairedImageDataset",
    "PreparedArrayDataset",
    "VolumeSliceDataset",
    "VolumeDataset",
    "VolumeSource",
    "check_binary_mask",
    "find_isic_pairs",
    "find_folder_pairs",
    "find_synapse_volumes",
    "find_btcv_root",
    "datalist_pairs",
    "nnunet_pairs",
    "build_dataset",
    "DATASET_KINDS",
    "SPLIT_ALIASES",
    "SYNAPSE_HU_WINDOW",
    "SYNAPSE_NORMALIZATION",
]

# private names kept for callers that imported them before the split (vmunet.data.prepare)
_COMPAT = (_NpzSliceDataset, _isic_challenge_dirs, _isic_images, _synapse_case, _synapse_split_cases)
