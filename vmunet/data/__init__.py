"""vmunet.data: readers and writers that keep geometry, normalisation, datasets, demo data.

Example:
    >>> from vmunet.data import read_image, write_image, normalize_intensity
    >>> img = read_image("scan.nii.gz")  # doctest: +SKIP
"""

from vmunet.data.demo import make_demo_data, make_synthetic_lesions
from vmunet.data.io import (
    SUPPORTED_EXTENSIONS,
    ImageData,
    case_name,
    is_supported,
    read_image,
    split_extension,
    write_image,
)
from vmunet.data.transforms import normalize_intensity

__all__ = [
    "ImageData",
    "read_image",
    "write_image",
    "is_supported",
    "case_name",
    "split_extension",
    "SUPPORTED_EXTENSIONS",
    "normalize_intensity",
    "make_demo_data",
    "make_synthetic_lesions",
    "build_dataset",
    "build_transforms",
    "build_volume_transforms",
    "prepare_dataset",
    "load_manifest",
    "VolumeSliceDataset",
    "PairedImageDataset",
]

# Heavier pieces (torch datasets, albumentations) load on first use.
_LAZY = {
    "build_dataset": "vmunet.data.factory",
    "VolumeSliceDataset": "vmunet.data.dataset_classes",
    "PairedImageDataset": "vmunet.data.dataset_classes",
    "build_transforms": "vmunet.data.augment",
    "build_volume_transforms": "vmunet.data.augment",
    "prepare_dataset": "vmunet.data.prepare",
    "load_manifest": "vmunet.data.manifests",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vmunet.data' has no attribute {name!r}")
