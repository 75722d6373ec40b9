"""The prediction core over plain stand-in modules whose output can be computed by hand."""

import numpy as np
import pytest
import torch

from vmunet.inference.inferers import (
    SliceInferer,
    SlidingWindowInferer3D,
    WholeImageInferer,
    labels_from_probabilities,
    pad_to_multiple,
    predict_probabilities,
    probabilities_to_numpy,
)
from vmunet.inference.strategies import axial_axis


class Recorder(torch.nn.Module):
    """Wraps a module and records the spatial size of every input it sees."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        return self.inner(x)


def _pointwise(in_ch=1, out_ch=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(in_ch, out_ch, 1).eval()


def _softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _pointwise_np(net, x):
    """The same 1x1 conv in float64 numpy: (B, C, H, W) -> logits (B, K, H, W)."""
    w = net.weight.detach().double().numpy()[:, :, 0, 0]
    b = net.bias.detach().double().numpy()
    return np.einsum("kc,bchw->bkhw", w, x.astype(np.float64)) + b[None, :, None, None]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.75])
@pytest.mark.parametrize("size", [(100, 150), (64, 64), (37, 45)])
def test_sliding_window_equals_whole_image_for_pointwise_model(overlap, size):
    # A 1x1 conv sees no neighbours, so any tiling, padding and Gaussian blending
    # must give back exactly softmax(conv(x)) at every pixel.
    net = Recorder(_pointwise())
    x = np.random.default_rng(1).normal(size=(2, 1, *size)).astype(np.float32)
    probs = predict_probabilities(
        net, torch.from_numpy(x), roi_size=(64, 64), overlap=overlap, sw_batch_size=3, activation="softmax"
    )
    assert probs.shape == (2, 3, *size)
    ref = _softmax_np(_pointwise_np(net.inner, x))
    np.testing.assert_allclose(probs.numpy(), ref, atol=1e-5)
    # Every window the model saw is the training patch size (a multiple of 32).
    assert set(net.shapes) == {(64, 64)}


def test_whole_image_mode_pads_to_multiple_of_32_and_crops_back():
    net = Recorder(_pointwise(out_ch=1))
    x = torch.randn(1, 1, 70, 33)
    probs = predict_probabilities(net, x, roi_size=None, activation="sigmoid")
    assert net.shapes == [(96, 64)]
    assert probs.shape == (1, 1, 70, 33)
    ref = 1 / (1 + np.exp(-_pointwise_np(net.inner, x.numpy())))
    np.testing.assert_allclose(probs.numpy(), ref, atol=1e-6)


def test_pad_to_multiple():
    x = torch.ones(1, 1, 33, 64)
    y, hw = pad_to_multiple(x)
    assert y.shape[-2:] == (64, 64) and hw == (33, 64)
    assert y[..., 33:, :].abs().sum() == 0 and y[..., :33, :].min() == 1


def test_resize_mode_sees_training_size_and_keeps_alignment():
    # A linear ramp survives bilinear down- and up-sampling almost unchanged, so a
    # pointwise model's output after resize-predict-resize must match the direct
    # output closely; a transposed size or misaligned grid would not.
    net = Recorder(_pointwise(out_ch=2))
    h, w = 90, 130
    yy, xx = np.meshgrid(np.linspace(-2, 2, h), np.linspace(-1, 3, w), indexing="ij")
    x = (yy + 0.5 * xx).astype(np.float32)[None, None]
    probs = predict_probabilities(
        net, torch.from_numpy(x), roi_size=(64, 96), resize=True, activation="softmax"
    )
    assert net.shapes == [(64, 96)]
    assert probs.shape == (1, 2, h, w)
    ref = _softmax_np(_pointwise_np(net.inner, x))
    # Border pixels extrapolate; compare the interior tightly and everything loosely.
    np.testing.assert_allclose(probs.numpy()[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3], atol=2e-2)
    np.testing.assert_allclose(probs.numpy(), ref, atol=0.1)


def _symmetric_conv(seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        k = conv.weight
        conv.weight.copy_(k + k.flip(-1) + k.flip(-2) + k.flip(-1, -2))
    return conv.eval()


def test_tta_with_flip_equivariant_model_changes_nothing():
    net = _symmetric_conv()
    x = torch.randn(1, 1, 64, 96)
    plain = predict_probabilities(net, x, roi_size=(64, 64), overlap=0.5, activation="softmax")
    tta = predict_probabilities(net, x, roi_size=(64, 64), overlap=0.5, activation="softmax", tta=True)
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=0)


def test_tta_averages_probabilities_over_the_four_flips():
    torch.manual_seed(3)
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()  # not flip-equivariant
    x = torch.randn(1, 1, 64, 64)
    got = predict_probabilities(net, x, roi_size=(64, 64), activation="softmax", tta=True).numpy()
    # By hand: flip the numpy image, run the net, softmax, flip back, average.
    xn = x.numpy()
    acc = np.zeros((1, 2, 64, 64))
    for axes in [(), (3,), (2,), (2, 3)]:
        xf = np.flip(xn, axes) if axes else xn
        with torch.no_grad():
            logits = net(torch.from_numpy(np.ascontiguousarray(xf))).double().numpy()
        p = _softmax_np(logits)
        acc += np.flip(p, axes) if axes else p
    np.testing.assert_allclose(got, acc / 4, atol=1e-5)
    plain = predict_probabilities(net, x, roi_size=(64, 64), activation="softmax").numpy()
    assert np.abs(plain - got).max() > 1e-3  # TTA did change something for this model


def test_bad_arguments_are_named():
    net = _pointwise()
    x = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match="overlap"):
        predict_probabilities(net, x, roi_size=(32, 32), overlap=1.0)
    with pytest.raises(ValueError, match="roi_size"):
        predict_probabilities(net, x, roi_size=(30, 32))
    with pytest.raises(ValueError, match="activation"):
        predict_probabilities(net, x, roi_size=(32, 32), activation="relu")


def test_labels_from_probabilities():
    p = torch.tensor([[[[0.2, 0.5, 0.9]]]])
    assert labels_from_probabilities(p, "sigmoid").tolist() == [[[0, 1, 1]]]
    p2 = torch.tensor([[[[0.1, 0.7]], [[0.3, 0.6]]]])  # two sigmoid channels
    assert labels_from_probabilities(p2, "sigmoid").tolist() == [[[0, 1]]]
    sm = torch.tensor([[[[0.1, 0.6]], [[0.9, 0.4]]]])
    assert labels_from_probabilities(sm, "softmax").tolist() == [[[1, 0]]]


def test_axial_axis_from_orientation():
    assert axial_axis() == 2
    assert axial_axis(direction=np.eye(3)) == 2
    # Array axis 0 runs along physical z (a sagittal-first layout).
    d = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)
    assert axial_axis(direction=d) == 0
    # Oblique affine with anisotropic spacing: axis 1 is the one closest to z.
    aff = np.array([[0.7, 0.0, 0.3, 0], [0.1, 0.5, 2.4, 0], [0.05, 3.0, 0.4, 0], [0, 0, 0, 1]])
    assert axial_axis(affine=aff) == 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_inferer_streams_a_volume_matching_a_voxelwise_reference(axis):
    net = _pointwise(out_ch=3)
    vol = np.random.default_rng(4).integers(-300, 400, size=(9, 7, 5)).astype(np.int16)
    seen = []

    def preprocess(block):
        seen.append(block.shape)
        return np.clip((block.astype(np.float32) + 125) / 400, 0, 1)[:, None]

    inner = WholeImageInferer(None, activation="softmax")
    slicer = SliceInferer(inner, axis=axis, batch_size=2)
    labels = np.zeros(vol.shape, np.uint8)
    probs = np.zeros((*vol.shape, 3), np.uint8)
    for idx, p in slicer.iter_batches(vol, net, preprocess):
        np.moveaxis(labels, axis, 0)[idx] = labels_from_probabilities(p, "softmax").numpy()
        np.moveaxis(probs, axis, 0)[idx] = probabilities_to_numpy(p, "uint8", channel_axis=1)
    # Voxel-wise reference on the whole volume, no slicing at all.
    xn = np.clip((vol.astype(np.float64) + 125) / 400, 0, 1)
    ref = _softmax_np(_pointwise_np(net, xn.reshape(1, 1, -1, 1))).reshape(3, *vol.shape)
    np.testing.assert_array_equal(labels, ref.argmax(0))
    assert np.abs(probs.astype(float) / 255 - np.moveaxis(ref, 0, -1)).max() <= 1 / 255 + 1e-6
    # Batches of at most 2 slices, each the other two axes in order.
    other = tuple(s for a, s in enumerate(vol.shape) if a != axis)
    assert all(s[1:] == other and s[0] <= 2 for s in seen)
    assert sum(s[0] for s in seen) == vol.shape[axis]
    # The tensor form gives the same probabilities as the stream.
    x = torch.from_numpy(np.clip((vol.astype(np.float32) + 125) / 400, 0, 1))[None, None]
    whole = slicer(x, net)
    np.testing.assert_allclose(whole[0].numpy(), ref, atol=1e-5)


def test_resize_inferer_runs_each_slice_at_input_size():
    net = Recorder(_pointwise(out_ch=1))
    vol = torch.rand(1, 1, 40, 50, 3)
    slicer = SliceInferer(WholeImageInferer((64, 64), resize=True), axis=2, batch_size=4)
    probs = slicer(vol, net)
    assert probs.shape == (1, 1, 40, 50, 3)
    assert net.shapes == [(64, 64)]


def test_3d_inferer_tta_averages_the_flip_of_each_axis():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()  # not flip-equivariant
    x = torch.randn(1, 1, 16, 16, 8)
    inf = SlidingWindowInferer3D((16, 16, 8), overlap=0.0, activation="softmax", tta=True)
    got = inf(x, net).numpy()
    acc = np.zeros((1, 2, 16, 16, 8))
    for axes in [(), (2,), (3,), (4,)]:  # by hand, in numpy
        xf = np.ascontiguousarray(np.flip(x.numpy(), axes) if axes else x.numpy())
        with torch.no_grad():
            p = _softmax_np(net(torch.from_numpy(xf)).double().numpy())
        acc += np.flip(p, axes) if axes else p
    np.testing.assert_allclose(got, acc / 4, atol=1e-5)


def test_gaussian_blending_weights_the_window_centre():
    # A model whose output is 1 inside every window except near its border (0):
    # Gaussian blending must favour window centres, so the blended map stays > 0.5
    # wherever some window covers a pixel near its centre.
    class BorderZero(torch.nn.Module):
        def forward(self, x):
            out = torch.full((x.shape[0], 1, *x.shape[-2:]), 10.0)
            out[..., :4, :] = -10
            out[..., -4:, :] = -10
            out[..., :, :4] = -10
            out[..., :, -4:] = -10
            return out

    x = torch.zeros(1, 1, 64, 128)
    p = predict_probabilities(BorderZero(), x, roi_size=(64, 64), overlap=0.5, activation="sigmoid")
    # Columns 60-68 are at a window border for one window but the centre of another.
    assert (p[0, 0, 8:-8, 56:72] > 0.9).all()


def test_prediction_runs_under_inference_mode():
    # segmentation needs no autograd record at all: the forward runs under torch.inference_mode
    import torch

    from vmunet.inference.inferers import predict_probabilities

    seen = []

    def net(x):
        seen.append(torch.is_inference_mode_enabled())
        return x[:, :1] * 2.0

    probs = predict_probabilities(net, torch.rand(1, 1, 64, 64))
    assert seen and all(seen)
    assert probs.shape == (1, 1, 64, 64)
