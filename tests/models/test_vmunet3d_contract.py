"""The 3-D VM-UNet's contract: its checkpoint round trip, MONAI (bundle config, 3-D sliding
window, SupervisedTrainer) and torch.export."""

from __future__ import annotations

import pytest
import torch

import vmunet
from vmunet.models import build_model_from_checkpoint, read_checkpoint, save_checkpoint


def _tiny(**kw):
    return vmunet.create_model("vmunet3d_tiny", **kw)


def test_checkpoint_round_trip_rebuilds_the_3d_model(tmp_path):
    torch.manual_seed(0)
    model = _tiny(in_channels=1, out_channels=3, patch_size=(4, 2, 2), scan_directions=2).eval()
    spacing = [1.5, 1.5, 2.0]
    path = save_checkpoint(
        tmp_path / "m.pt", model, "vmunet3d_tiny", inference={"spacing": spacing, "input_size": [32, 32, 32]}
    )
    ckpt = read_checkpoint(path)
    kwargs = ckpt["arch"]["kwargs"]
    assert (
        kwargs["spatial_dims"] == 3 and kwargs["patch_size"] == [4, 2, 2] and kwargs["scan_directions"] == 2
    )
    assert "scan_backend" not in kwargs
    inf = ckpt["inference"]
    assert inf["spatial_dims"] == 3 and inf["input_size"] == [32, 32, 32] and inf["spacing"] == spacing
    assert inf["resize"] is False and inf["activation"] == "softmax"
    rebuilt, _ = build_model_from_checkpoint(path)
    assert rebuilt.spatial_dims == 3 and rebuilt.patch_size == (4, 2, 2) and rebuilt.scan_directions == 2
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_default_inference_of_a_3d_checkpoint(tmp_path):
    ckpt = read_checkpoint(save_checkpoint(tmp_path / "m.pt", _tiny(), "vmunet3d_tiny"))
    inf = ckpt["inference"]
    # the variant's ROI (vmunet3d_tiny: 32^3), sliding window, spacing left to the trainer
    assert inf["spatial_dims"] == 3 and inf["input_size"] == [32, 32, 32]
    assert inf["resize"] is False and inf["spacing"] is None
    two_d = read_checkpoint(
        save_checkpoint(tmp_path / "m2.pt", vmunet.create_model("vmunet_tiny"), "vmunet_tiny")
    )
    assert two_d["inference"]["spatial_dims"] == 2 and two_d["inference"]["input_size"] == [256, 256]
    assert "spacing" not in two_d["inference"]


def test_a_2d_checkpoint_does_not_load_into_a_3d_model():
    from vmunet.models import CheckpointMismatchError, load_checkpoint

    sd = vmunet.create_model("vmunet_tiny", in_channels=1, out_channels=2, dims=8).state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"patch_embed\.proj\.weight \(shape \(8, 1, 4, 4\)"):
        load_checkpoint(_tiny(), sd, strict=True)


def test_bundle_config_parser_instantiates_a_3d_vmunet():
    pytest.importorskip("monai")
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "vmunet.VMUNet",
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 4,
                "dims": 16,
                "depths": [1, 1, 1, 1],
                "depths_decoder": [1, 1, 1, 1],
                "d_state": 2,
                "patch_size": [4, 4, 2],
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, vmunet.VMUNet) and net.spatial_dims == 3
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 16)).shape == (1, 4, 32, 32, 16)


def test_sliding_window_inference_on_3d_rois():
    pytest.importorskip("monai")
    from monai.inferers import sliding_window_inference

    model = _tiny(out_channels=2).eval()
    with torch.no_grad():
        # one window the size of the volume: must equal the plain forward
        x = torch.randn(1, 1, 32, 32, 16)
        one = sliding_window_inference(x, roi_size=(32, 32, 16), sw_batch_size=1, predictor=model)
        torch.testing.assert_close(one, model(x))
        # a volume no multiple of the divisors, smaller than the ROI along depth (MONAI pads it)
        many = sliding_window_inference(
            torch.randn(1, 1, 40, 36, 12),
            roi_size=(32, 32, 16),
            sw_batch_size=2,
            predictor=model,
            overlap=0.25,
            mode="gaussian",
        )
    assert many.shape == (1, 2, 40, 36, 12) and torch.isfinite(many).all()


def test_supervised_trainer_one_iteration_3d():
    pytest.importorskip("monai")
    pytest.importorskip("ignite", reason="monai.engines needs pytorch-ignite (the [dev] extra)")
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss

    model = _tiny(in_channels=1, out_channels=3)
    data = [
        {"image": torch.randn(1, 32, 32, 16), "label": torch.randint(0, 3, (1, 32, 32, 16)).float()}
        for _ in range(2)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    before = model.final_conv.weight.detach().clone()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )
    trainer.run()
    assert trainer.state.iteration == 1
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert not torch.equal(before, model.final_conv.weight)


def test_torch_export_of_vmunet3d_tiny():
    model = _tiny(scan_backend="torch").eval()
    x = torch.randn(1, 1, 32, 32, 16)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(exported.module()(x), expected, rtol=1e-5, atol=1e-5)
