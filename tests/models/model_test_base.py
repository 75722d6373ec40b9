"""One shared model test class (segmentation_models.pytorch ``tests/models/base.py`` style).

A subclass names a registered model and the small inputs it runs on; every test here then
runs for it: forward/backward at two resolutions and batch sizes, every parameter receives
a gradient, no NaN, channels in/out, determinism for a seed, input-size errors, and
``torch.compile`` / ``torch.export``.
"""

from __future__ import annotations

import pytest
import torch

import vmunet


class ModelTestBase:
    model_name: str = ""
    #: small (H, W) inputs the model accepts (multiples of its size divisor)
    sizes: tuple[tuple[int, int], ...] = ((32, 32), (64, 96))
    batch_sizes: tuple[int, ...] = (1, 2)
    default_in_channels: int = 3

    def make(self, **kwargs) -> torch.nn.Module:
        return vmunet.create_model(self.model_name, **kwargs)

    @pytest.mark.parametrize("case", [0, 1])
    def test_forward_backward_shapes(self, case):
        (h, w), batch = self.sizes[case], self.batch_sizes[case]
        model = self.make(in_channels=self.default_in_channels, out_channels=2).train()
        x = torch.randn(batch, self.default_in_channels, h, w)
        out = model(x)
        assert out.shape == (batch, 2, h, w)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        out.square().mean().backward()

    def test_every_parameter_gets_a_gradient(self):
        # drop_path 0: a dropped branch would legitimately get a zero gradient. The larger size:
        # at 32x32 the deepest stage is 1x1, a one-step scan, where A cannot matter (h0 = 0).
        model = self.make(in_channels=self.default_in_channels, out_channels=2, drop_path_rate=0.0).train()
        x = torch.randn(2, self.default_in_channels, *self.sizes[1])
        model(x).square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{name} received no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"

    @pytest.mark.parametrize("in_channels", [1, 3])
    @pytest.mark.parametrize("out_channels", [1, 9])
    def test_channels(self, in_channels, out_channels):
        model = self.make(in_channels=in_channels, out_channels=out_channels).eval()
        with torch.no_grad():
            out = model(torch.randn(1, in_channels, *self.sizes[0]))
        assert out.shape == (1, out_channels, *self.sizes[0])
        # logits, not probabilities: an untrained net still gives values outside [0, 1]
        assert torch.isfinite(out).all()

    def test_returns_logits_not_probabilities(self):
        model = self.make(out_channels=1).eval()
        with torch.no_grad():
            model.final_conv.bias.fill_(5.0)  # a sigmoid would squash this below 1
            out = model(torch.randn(1, self.default_in_channels, *self.sizes[0]))
        assert out.max() > 1.0

    def test_deterministic_for_a_seed(self):
        x = torch.randn(1, self.default_in_channels, *self.sizes[0])
        outs = []
        for _ in range(2):
            torch.manual_seed(123)
            model = self.make().eval()
            with torch.no_grad():
                outs.append(model(x))
        torch.manual_seed(124)
        other = self.make().eval()
        with torch.no_grad():
            different = other(x)
        assert torch.equal(outs[0], outs[1])
        assert not torch.allclose(outs[0], different)

    def test_eval_is_deterministic_train_is_stochastic(self):
        model = self.make(drop_path_rate=0.5).eval()
        x = torch.randn(4, self.default_in_channels, *self.sizes[0])
        with torch.no_grad():
            assert torch.equal(model(x), model(x))
            model.train()
            assert not torch.equal(model(x), model(x))

    @pytest.mark.parametrize("axis, name", [(2, "height"), (3, "width")])
    def test_bad_input_size_names_dimension_and_fits(self, axis, name):
        model = self.make().eval()
        shape = [1, self.default_in_channels, 64, 64]
        shape[axis] = 72
        with pytest.raises(ValueError, match=rf"{name} \(dim {axis}\) is 72.*64 or 96"):
            model(torch.randn(*shape))

    def test_bad_input_channels(self):
        model = self.make(in_channels=3).eval()
        with pytest.raises(ValueError, match=r"1 channel\(s\).*in_channels=3"):
            model(torch.randn(1, 1, 64, 64))

    def test_bad_input_rank(self):
        with pytest.raises(ValueError, match="4-D input"):
            self.make()(torch.randn(3, 64, 64))

    def test_torch_export_cpu(self):
        model = self.make(scan_backend="torch").eval()
        x = torch.randn(1, self.default_in_channels, *self.sizes[0])
        exported = torch.export.export(model, (x,))
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(exported.module()(x), expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.slow
    def test_torch_compile_graph_capture_matches_eager(self):
        # dynamo graph capture (fullgraph: no graph breaks) without inductor code generation;
        # slow only because tracing takes ~45 s on a loaded 2-core machine
        torch._dynamo.reset()
        model = self.make(scan_backend="torch").eval()
        x = torch.randn(1, self.default_in_channels, *self.sizes[0])
        with torch.no_grad():
            expected = model(x)
            got = torch.compile(model, backend="eager", fullgraph=True)(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.slow
    def test_torch_compile_matches_eager(self):
        # inductor (C++ code generation): ~10 minutes on a loaded 2-core machine
        model = self.make(scan_backend="torch").eval()
        x = torch.randn(1, self.default_in_channels, *self.sizes[0])
        with torch.no_grad():
            expected = model(x)
            got = torch.compile(model)(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
