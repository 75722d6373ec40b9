"""Tiny real checkpoints (vmunet_tiny, random weights) saved with the models package, built once."""

import pytest


@pytest.fixture(scope="session")
def ct_checkpoint(tmp_path_factory):
    """1 input channel, 3 classes (softmax), 64x64 sliding window, CT window normalisation."""
    import vmunet
    from vmunet.models import save_checkpoint

    model = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=3)
    path = tmp_path_factory.mktemp("ckpt") / "ct_tiny.pt"
    save_checkpoint(
        path,
        model,
        "vmunet_tiny",
        inference={
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 3,
            "input_size": [64, 64],
            "resize": False,
            "normalization": {"kind": "window", "min": -125, "max": 275},
            "class_names": ["background", "liver", "kidney"],
            "activation": "softmax",
        },
        epoch=1,
    )
    return path


@pytest.fixture(scope="session")
def rgb_checkpoint(tmp_path_factory):
    """3 input channels, 1 sigmoid output, resize to 64x64 (the ISIC protocol), ImageNet normalisation."""
    import vmunet
    from vmunet.models import save_checkpoint

    model = vmunet.create_model("vmunet_tiny", in_channels=3, out_channels=1)
    path = tmp_path_factory.mktemp("ckpt") / "rgb_tiny.pt"
    save_checkpoint(
        path,
        model,
        "vmunet_tiny",
        inference={
            "input_size": [64, 64],
            "resize": True,
            "normalization": {"kind": "imagenet"},
            "class_names": ["lesion"],
            "activation": "sigmoid",
        },
    )
    return path
