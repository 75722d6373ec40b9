"""MONAI baselines beside VM-UNet: BasicUNet, SegResNet and SwinUNETR, in 2-D and 3-D.

Naming convention: ``monai_<family>_<2d|3d>``, the family being MONAI's class name in lower
case (``basicunet``, ``segresnet``, ``swinunetr``) and the suffix fixing ``spatial_dims``:

=======================  ==========================================  ============
name                     network                                     size divisor
=======================  ==========================================  ============
``monai_basicunet_2d``   ``monai.networks.nets.BasicUNet``, 2-D      16
``monai_basicunet_3d``   ``monai.networks.nets.BasicUNet``, 3-D      16
``monai_segresnet_2d``   ``monai.networks.nets.SegResNet``, 2-D      8
``monai_segresnet_3d``   ``monai.networks.nets.SegResNet``, 3-D      8
``monai_swinunetr_2d``   ``monai.networks.nets.SwinUNETR``, 2-D      32
``monai_swinunetr_3d``   ``monai.networks.nets.SwinUNETR``, 3-D      32
=======================  ==========================================  ============

They are built like VM-UNet (``create_model(name, in_channels=..., out_channels=...)``, any
further MONAI constructor argument as a keyword), train / test / segment with every recipe
through ``--set model.name=...``, and are saved in vmunet's own checkpoint format (``arch``
name + the constructor arguments, rebuilt by :func:`vmunet.models.build_model_from_checkpoint`).
They have no VMamba / VM-UNet pretrained weights. MONAI is imported inside the builders only,
so ``import vmunet`` stays light.

Each network is wrapped in :class:`MonaiBaseline`, which gives it the attributes the trainer
and the inference code read from a VM-UNet (``spatial_dims``, ``in_channels``,
``out_channels``, ``size_divisor``, ``size_divisors`` (one per spatial axis), ``config``) and
an input check that names the offending dimension. The MONAI network is ``.net`` (its state-
dict keys start with ``net.``).

One model family per file, in timm's order: the wrapper, the checkpoint filter, default
configs, a private builder, the registered variants.

Example:
    >>> import torch, vmunet
    >>> net = vmunet.create_model("monai_basicunet_2d", in_channels=1, out_channels=3,
    ...                           features=(8, 8, 16, 32, 64, 8))
    >>> net(torch.randn(1, 1, 32, 32)).shape
    torch.Size([1, 3, 32, 32])
    >>> net.size_divisor, net.spatial_dims
    (16, 2)
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch
from torch import nn

from .registry import register_model

__all__ = [
    "MonaiBaseline",
    "checkpoint_filter_fn",
    "default_cfgs",
    "monai_basicunet_2d",
    "monai_basicunet_3d",
    "monai_segresnet_2d",
    "monai_segresnet_3d",
    "monai_swinunetr_2d",
    "monai_swinunetr_3d",
]

#: VM-UNet constructor arguments (a recipe's model.overrides) that no baseline takes.
_VMUNET_ARGS = {
    "depths_decoder",
    "dims",
    "d_state",
    "ssm_ratio",
    "dt_rank",
    "d_conv",
    "drop_path_rate",
    "patch_size",
    "full_res_skip",
}

_AXIS_NAMES = {2: ("height", "width"), 3: ("depth", "height", "width")}


class MonaiBaseline(nn.Module):
    """A MONAI network with the attributes and input checks vmunet's trainer and inference expect.

    Args:
        net: the MONAI network (``.net``).
        arch: registered name it was built under (``monai_basicunet_2d``...).
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits).
        size_divisor: every spatial size must be a multiple of this.
        config: the constructor arguments to rebuild it with (``in_channels``, ``out_channels``
            and the MONAI arguments given), saved as the checkpoint's ``arch.kwargs``.

    Example:
        >>> import torch
        >>> m = MonaiBaseline(torch.nn.Conv2d(1, 2, 1), "demo", 2, 1, 2, 1, {})
        >>> m(torch.zeros(1, 1, 5, 5)).shape
        torch.Size([1, 2, 5, 5])
    """

    def __init__(
        self,
        net: nn.Module,
        arch: str,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        size_divisor: int,
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        #: every spatial size must be a multiple of this ...
        self.size_divisor = size_divisor
        #: ... per axis (the 3-D pipeline reads this tuple).
        self.size_divisors = (size_divisor,) * spatial_dims
        self.config = dict(config)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, *spatial)`` with sizes that fit."""
        want = 2 + self.spatial_dims
        if x.dim() != want:
            layout = ", ".join(("batch", "channels", *_AXIS_NAMES[self.spatial_dims]))
            raise ValueError(f"{self.arch} expects a {want}-D input ({layout}), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channel(s) (dim 1 of shape {tuple(x.shape)}), "
                f"{self.arch} was built with in_channels={self.in_channels}"
            )
        for axis, (name, k) in enumerate(zip(_AXIS_NAMES[self.spatial_dims], self.size_divisors), start=2):
            size = int(x.shape[axis])
            if size == 0 or size % k:
                below, above = (size // k) * k, (size // k + 1) * k
                fits = f"{below} or {above}" if below > 0 else f"{above}"
                raise ValueError(
                    f"input {name} (dim {axis}) is {size}, which is not a multiple of {k} ({self.arch}); "
                    f"nearest sizes that fit: {fits} (pad or resize; vmunet.inference pads automatically)"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial) -> (B, out_channels, *spatial)`` logits."""
        self.check_input(x)
        return self.net(x)


# --------------------------------------------------------------------------- checkpoint filter

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")
_NATIVE_KEY = re.compile(r"^net\.")


def checkpoint_filter_fn(
    state_dict: dict[str, Any],
    model: nn.Module,
    skipped: dict[str, str] | None = None,
    adapted: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Map a checkpoint onto a :class:`MonaiBaseline`'s keys, checking every shape.

    Accepts this package's checkpoints (``{"format": "vmunet", "model": ...}``), a bare state
    dict of the wrapper (keys ``net.*``), or one of the MONAI network itself (keys without the
    ``net.`` prefix, which is added); DDP / ``torch.compile`` prefixes are dropped. A tensor
    whose shape differs from the model's is left out and recorded in ``skipped``.

    Args:
        state_dict: the checkpoint (a state dict, or a dict holding one).
        model: the :class:`MonaiBaseline` to load into.
        skipped: if given, filled with ``{checkpoint key: why it was left out}``.
        adapted: unused (nothing is adapted); kept for the same signature as VM-UNet's filter.

    Returns:
        A state dict holding only keys of ``model`` with tensors of the right shapes.
    """
    skipped = {} if skipped is None else skipped
    sd: dict[str, Any] = state_dict
    for key in _STATE_DICT_KEYS:
        inner = sd.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            sd = inner
            break
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(str(k).startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    if sd and not any(_NATIVE_KEY.match(str(k)) for k in sd):
        sd = {f"net.{k}": v for k, v in sd.items()}  # the bare MONAI network's state dict
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            skipped[key] = f"not a tensor ({type(value).__name__})"
        elif key not in target:
            skipped[key] = "no parameter of this name in the model"
        elif value.shape != target[key].shape:
            want = tuple(target[key].shape)
            skipped[key] = f"shape {tuple(value.shape)} in the checkpoint, the model has {want}"
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- default configs


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"url": None, "pretrained": False, **kwargs}  # no weights: trained from scratch


default_cfgs: dict[str, dict[str, Any]] = {
    "basicunet": _cfg(
        network="monai.networks.nets.BasicUNet",
        paper="Falk et al., U-Net: deep learning for cell counting, detection, and morphometry, "
        "Nature Methods 16 (2019); MONAI's BasicUNet",
        defaults={"features": (32, 32, 64, 128, 256, 32)},
    ),
    "segresnet": _cfg(
        network="monai.networks.nets.SegResNet",
        paper="Myronenko, 3D MRI brain tumor segmentation using autoencoder regularization, "
        "arXiv:1810.11654 (2018)",
        defaults={"init_filters": 8, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
    ),
    "swinunetr": _cfg(
        network="monai.networks.nets.SwinUNETR",
        paper="Hatamizadeh et al., Swin UNETR: Swin transformers for semantic segmentation of brain "
        "tumors in MRI images, arXiv:2201.01266 (2022)",
        defaults={"feature_size": 24, "patch_size": 2},
    ),
}


# --------------------------------------------------------------------------- builder and variants


def _plain(value: Any) -> Any:
    """Tuples to lists (a checkpoint's ``arch.kwargs`` must load with ``weights_only=True``)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _create_baseline(family: str, spatial_dims: int, /, **kwargs: Any) -> MonaiBaseline:
    name = f"monai_{family}_{spatial_dims}d"
    if "spatial_dims" in kwargs and kwargs.pop("spatial_dims") != spatial_dims:
        raise ValueError(f"spatial_dims is fixed by the name {name!r} ({spatial_dims}); use the other one")
    if kwargs.pop("scan_backend", None) is not None:
        raise ValueError(f"scan_backend applies to VM-UNet only; {name} has no selective scan")
    for key in ("in_channels", "out_channels"):
        v = kwargs.get(key, 1)  # the defaults below are VM-UNet's: 3 in, 1 out
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
    in_channels = int(kwargs.pop("in_channels", 3))
    out_channels = int(kwargs.pop("out_channels", 1))
    args = {**default_cfgs[family]["defaults"], **kwargs}

    from monai.networks import nets  # lazily: ``import vmunet`` never imports MONAI

    cls = {"basicunet": nets.BasicUNet, "segresnet": nets.SegResNet, "swinunetr": nets.SwinUNETR}[family]
    if family == "swinunetr":
        # MONAI < 1.5 required the input size up front; later versions dropped img_size.
        if "img_size" in inspect.signature(cls.__init__).parameters and "img_size" not in args:
            args["img_size"] = (96,) * spatial_dims
        divisor = int(args.get("patch_size", 2)) ** 5
    elif family == "segresnet":
        divisor = 2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1)
    else:
        divisor = 16  # four 2x poolings
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(args) - accepted)
    if unknown:
        hint = ""
        if set(unknown) & _VMUNET_ARGS:
            hint = (
                "; these are VM-UNet arguments, e.g. from a recipe's model.overrides: set "
                "model.overrides={} when switching a recipe to a baseline"
            )
        raise ValueError(
            f"{name}: {unknown} not accepted by {default_cfgs[family]['network']} "
            f"(its arguments: {', '.join(sorted(accepted))}){hint}"
        )
    net = cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)
    config = {"in_channels": in_channels, "out_channels": out_channels, **_plain(args)}
    model = MonaiBaseline(net, name, spatial_dims, in_channels, out_channels, divisor, config)
    model.pretrained_cfg = default_cfgs[family]
    return model


@register_model
def monai_basicunet_2d(**kwargs: Any) -> MonaiBaseline:
    """MONAI ``BasicUNet`` in 2-D (features 32, 32, 64, 128, 256, 32: about 2 M parameters)."""
    return _create_baseline("basicunet", 2, **kwargs)


@register_model
def monai_basicunet_3d(**kwargs: Any) -> MonaiBaseline:
    """MONAI ``BasicUNet`` in 3-D (features 32, 32, 64, 128, 256, 32)."""
    return _create_baseline("basicunet", 3, **kwargs)


@register_model
def monai_segresnet_2d(**kwargs: Any) -> MonaiBaseline:
    """MONAI ``SegResNet`` in 2-D (init_filters 8, blocks_down 1, 2, 2, 4)."""
    return _create_baseline("segresnet", 2, **kwargs)


@register_model
def monai_segresnet_3d(**kwargs: Any) -> MonaiBaseline:
    """MONAI ``SegResNet`` in 3-D (init_filters 8, blocks_down 1, 2, 2, 4)."""
    return _create_baseline("segresnet", 3, **kwargs)


@register_model
def monai_swinunetr_2d(**kwargs: Any) -> MonaiBaseline:
    """MONAI ``SwinUNETR`` in 2-D (feature_size 24, patch 2: sizes multiples of 32)."""
    return _create_baseline("swinunetr", 2, **kwargs)


@register_model
def monai_swinunetr_3d(**kwargs: Any) -> MonaiBaseline:
    """MONAI ``SwinUNETR`` in 3-D (feature_size 24, patch 2: sizes multiples of 32)."""
    return _create_baseline("swinunetr", 3, **kwargs)
