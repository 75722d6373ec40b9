"""VM-UNet dropped into MONAI pipelines unchanged: sliding window, DiceCE, SupervisedTrainer, bundle."""

from __future__ import annotations

import pytest
import torch

import vmunet

monai = pytest.importorskip("monai")


def _tiny(**kw):
    return vmunet.create_model("vmunet_tiny", **kw)


def test_sliding_window_inference_equals_one_pass_on_a_fitting_image():
    from monai.inferers import sliding_window_inference

    model = _tiny(in_channels=1, out_channels=2).eval()
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        # a window the size of the image: one pass, so the result must equal the plain forward
        one = sliding_window_inference(x, roi_size=(64, 96), sw_batch_size=1, predictor=model)
        torch.testing.assert_close(one, model(x))
        # overlapping gaussian-weighted windows of a size the network accepts, on a larger image
        many = sliding_window_inference(
            torch.randn(1, 1, 64, 96),
            roi_size=(64, 64),
            sw_batch_size=2,
            predictor=model,
            overlap=0.25,
            mode="gaussian",
        )
    assert many.shape == (1, 2, 64, 96) and torch.isfinite(many).all()


def test_dicece_loss_trains_one_step():
    from monai.losses import DiceCELoss

    model = _tiny(in_channels=3, out_channels=3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 3, (2, 1, 32, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = loss_fn(model(x), y)
    loss.backward()
    before = model.final_conv.weight.detach().clone()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.final_conv.weight)


def test_supervised_trainer_one_iteration():
    pytest.importorskip("ignite", reason="monai.engines needs pytorch-ignite (the [dev] extra)")
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss

    model = _tiny(in_channels=1, out_channels=1)
    data = [
        {"image": torch.randn(1, 32, 32), "label": (torch.rand(1, 32, 32) > 0.5).float()} for _ in range(2)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    before = model.final_conv.weight.detach().clone()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_function=DiceCELoss(sigmoid=True),
    )
    trainer.run()
    assert trainer.state.iteration == 1
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert not torch.equal(before, model.final_conv.weight)


def test_bundle_config_parser_instantiates_vmunet():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "vmunet.VMUNet",
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 4,
                "dims": 16,
                "depths": [1, 1, 1, 1],
                "depths_decoder": [1, 1, 1, 1],
                "d_state": 4,
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, vmunet.VMUNet)
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 4, 32, 32)
