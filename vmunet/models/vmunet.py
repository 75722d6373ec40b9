"""VM-UNet: Vision Mamba UNet for medical image segmentation (Ruan & Xiang, 2024).

One model family per file, ending in the same order every time (timm ``mambaout.py``):
the model, the checkpoint filter, default configs, a private builder, the registered
variants, a tiny variant for tests.

The architecture, parameter names and shapes are those of the public implementation
(JCruan519/VM-UNet, ``models/vmunet/vmunet.py`` + ``vmamba.py``): a checkpoint of that code
loads after dropping its ``vmunet.`` prefix, and gives the same logits.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vmunet.nn import SCAN_DIRECTIONS, FinalPatchExpand, PatchEmbed, VSSStage, VSSUpStage
from vmunet.nn.patch import CONV

from .registry import register_model

__all__ = [
    "VMUNet",
    "checkpoint_filter_fn",
    "default_cfgs",
    "vmunet_small",
    "vmunet_base",
    "vmunet_tiny",
    "vmunet3d_small",
    "vmunet3d_tiny",
]

logger = logging.getLogger(__name__)

#: Fewest channels the final patch expansion may leave per voxel in 3-D (dims[0] // max(patch)).
#: A LayerNorm over c channels maps onto a (c - 2)-sphere: 2 channels give only +-1.
MIN_FULL_RES_CHANNELS = 3

#: The public (2-D) patch size.
PATCH_SIZE = 4
#: The default 3-D patch, (H, W, D) = in-plane 4 x 4, through-plane 2 (see :class:`VMUNet`).
PATCH_SIZE_3D = (4, 4, 2)
_AXIS_NAMES = ("height", "width", "depth")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


_INSTANCE_NORM: dict[int, type[nn.Module]] = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _conv_block(
    spatial_dims: int, in_channels: int, out_channels: int, mid_channels: int | None = None
) -> nn.Sequential:
    """3x3(x3) conv, InstanceNorm, LeakyReLU, once (twice with ``mid_channels``): the full-res path."""
    layers: list[nn.Module] = []
    for cin, cout in ((in_channels, mid_channels), (mid_channels or in_channels, out_channels)):
        if cout is None:
            continue
        layers += [
            CONV[spatial_dims](cin, cout, kernel_size=3, padding=1),
            _INSTANCE_NORM[spatial_dims](cout, affine=True),
            nn.LeakyReLU(0.1, inplace=True),
        ]
    return nn.Sequential(*layers)


class VMUNet(nn.Module):
    """VM-UNet: a U-shaped network of visual state-space (VSS) blocks, for 2-D or 3-D segmentation.

    Patch embedding (4x4 conv, stride 4, LayerNorm) -> encoder stages of VSS blocks with patch
    merging after all but the last -> decoder stages of VSS blocks; each decoder stage after
    the first adds the encoder feature of the same resolution (additive skip) and then patch-
    expands x2 -> final patch expand x4 -> 1x1 convolution. Returns logits (never a sigmoid).

    ``spatial_dims=3`` builds the same network one dimension up: a Conv3d patch embedding,
    2x2x2 patch merging (8C -> 2C) and expanding, a depthwise Conv3d in every block, the SS3D
    scan over six (or two) flattened orders of the token grid (:func:`vmunet.ops.cross_scan_3d`),
    a final expansion by the patch size on each axis and a 1x1x1 convolution. Volumes are
    ``(B, C, H, W, D)``: MONAI's axis order, the one ``LoadImage`` / :func:`vmunet.data.read_image`
    give (X, Y, Z; the slice axis last).

    The default 3-D patch is ``(4, 4, 2)``: half as long through-plane as in-plane. CT is
    anisotropic (in-plane pixels ~0.7-1.5 mm, slices 2-5 mm apart); even after resampling to the
    BTCV recipe's 1.5 x 1.5 x 2.0 mm, a (4, 4, 2) patch covers 6 x 6 x 4 mm, close to a cube,
    where 4 x 4 x 4 would cover 6 x 6 x 8 mm and blur organ boundaries between slices. It also
    keeps the first stage long enough to be worth scanning: a 96^3 ROI gives a 24 x 24 x 48 grid
    (27,648 tokens) instead of 24^3 (13,824). Every later stage merges 2x2x2, so the size
    divisors are (32, 32, 16) for four stages.

    Based on: Ruan J., Xiang S., "VM-UNet: Vision Mamba UNet for Medical Image Segmentation",
    arXiv:2402.02491 (2024); reference code JCruan519/VM-UNet.

    Args:
        spatial_dims: number of spatial dimensions, 2 (images ``(B, C, H, W)``) or 3 (volumes
            ``(B, C, H, W, D)``).
        in_channels: input image channels (any; a 3-channel checkpoint loads into 1 channel by
            summing the patch-embedding weights, see :func:`vmunet.models.load_checkpoint`).
        out_channels: output channels (logits): 1 for binary (sigmoid), else classes (softmax).
        depths: VSS blocks per encoder stage. The paper's runs use (2, 2, 2, 2); the public
            class default is (2, 2, 9, 2).
        depths_decoder: VSS blocks per decoder stage, deepest first. The paper's runs use
            (2, 2, 2, 1); the public class default is (2, 9, 2, 2).
        dims: channels of the first stage (doubled at every later stage), or one width per stage
            (each twice the previous one).
        d_state: SSM state size N of every SS2D.
        ssm_ratio: SS2D expansion d_inner = ssm_ratio * d_model.
        dt_rank: rank of the dt projection, ``"auto"`` = ceil(d_model / 16).
        d_conv: kernel of the depthwise convolution inside SS2D.
        drop_rate: dropout after the patch embedding.
        attn_drop_rate: dropout on the output of every SS2D.
        drop_path_rate: stochastic depth, rising linearly over the encoder blocks from 0 and
            mirrored over the decoder blocks.
        use_checkpoint: gradient checkpointing of the VSS blocks while training.
        scan_backend: selective-scan backend (``"triton"``, ``"cuda"``, ``"cpu"``, ``"torch"``,
            ``"reference"``; ``None`` = automatic, see :func:`vmunet.ops.resolve_backend`).
        patch_size: side(s) of the patch embedding, one int or one per axis; ``None`` = 4 in 2-D
            (the public architecture) and ``(4, 4, 2)`` in 3-D (see above).
        scan_directions: scan orders K of every SS block: 4 in 2-D; 6 (each axis in turn the
            fastest, forward and reversed) or 2 (the memory order, forward and reversed; a third
            of the scan cost) in 3-D. ``None`` = 4 / 6.
        full_res_skip: channels of an optional full-resolution convolutional skip path (0, the
            default, is the public architecture). When > 0, two 3x3 (3x3x3 in 3-D) conv layers on
            the input image give a full-resolution feature that is concatenated with the final patch
            expansion's output and fused by one more conv before the 1x1 head: the head then sees
            pixel-level detail that the patch-``patch_size`` token grid cannot carry (without it
            contours follow a ``patch_size``-pixel staircase on small images). See
            benchmarks/RESULTS.md, "Demo ablation".

    Attributes:
        size_divisors: per axis, what every input size must be a multiple of (patch side times
            2 ** (stages - 1)); e.g. (32, 32) in 2-D, (32, 32, 16) for the default 3-D patch.
        size_divisor: one int every axis may be a multiple of (the lcm of ``size_divisors``;
            32 in both cases above).

    Raises:
        ValueError: an argument outside its allowed values (the message names it).

    Examples::

        # binary lesion segmentation of RGB images, the paper's configuration
        >>> net = VMUNet(spatial_dims=2, in_channels=3, out_channels=1)
        >>> sum(p.numel() for p in net.parameters())
        27427561

        # 9-class abdominal CT, a small network
        >>> net = VMUNet(in_channels=1, out_channels=9, dims=16, depths=(1, 1, 1, 1),
        ...              depths_decoder=(1, 1, 1, 1), d_state=4)
        >>> net(torch.randn(2, 1, 64, 64)).shape
        torch.Size([2, 9, 64, 64])

        # a small 3-D network for CT volumes (B, C, H, W, D)
        >>> net = VMUNet(spatial_dims=3, in_channels=1, out_channels=9, dims=16, depths=(1, 1, 1, 1),
        ...              depths_decoder=(1, 1, 1, 1), d_state=2, scan_directions=2)
        >>> net.size_divisors
        (32, 32, 16)
        >>> net(torch.randn(1, 1, 32, 32, 16)).shape
        torch.Size([1, 9, 32, 32, 16])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        depths: Sequence[int] = (2, 2, 2, 2),
        depths_decoder: Sequence[int] = (2, 2, 2, 1),
        dims: int | Sequence[int] = 96,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        use_checkpoint: bool = False,
        scan_backend: str | None = None,
        patch_size: int | Sequence[int] | None = None,
        scan_directions: int | None = None,
        full_res_skip: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        patch = self._check_patch_size(patch_size, spatial_dims)
        allowed_k = SCAN_DIRECTIONS[spatial_dims]
        if scan_directions is not None and (
            isinstance(scan_directions, bool) or scan_directions not in allowed_k
        ):
            raise ValueError(
                f"scan_directions must be None or one of {allowed_k} for spatial_dims={spatial_dims}, "
                f"got {scan_directions!r}"
            )
        k_dirs = allowed_k[0] if scan_directions is None else int(scan_directions)
        depths, depths_decoder, dims = self._check_layout(depths, depths_decoder, dims, max(patch))
        if spatial_dims == 3 and dims[0] // max(patch) < MIN_FULL_RES_CHANNELS:
            # The final expansion leaves dims[0] / max(patch) channels per voxel and normalises them
            # with a LayerNorm: over 2 channels its output is +-1 (one bit per voxel, the head then
            # tells at most 2 classes apart: the demo3d net never predicted white matter); over 1 it
            # is a constant. (2-D keeps the public rule for checkpoint compatibility.)
            raise ValueError(
                f"dims[0] must be at least {MIN_FULL_RES_CHANNELS} x the largest patch side "
                f"({MIN_FULL_RES_CHANNELS * max(patch)} for patch_size {list(patch)}) in 3-D, got {dims[0]}: "
                f"the final patch expansion would leave {dims[0] // max(patch)} channel(s) per voxel, "
                "which its LayerNorm collapses to at most two values"
            )
        _check_int("d_state", d_state, 1)
        _check_int("d_conv", d_conv, 1)
        if d_conv % 2 == 0:
            raise ValueError(f"d_conv must be odd (the depthwise conv keeps the size), got {d_conv}")
        if isinstance(ssm_ratio, bool) or not isinstance(ssm_ratio, (int, float)) or ssm_ratio <= 0:
            raise ValueError(f"ssm_ratio must be a number > 0, got {ssm_ratio!r}")
        if dt_rank != "auto":
            _check_int("dt_rank", dt_rank, 1)
        for name, rate in (
            ("drop_rate", drop_rate),
            ("attn_drop_rate", attn_drop_rate),
            ("drop_path_rate", drop_path_rate),
        ):
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}")
        self._check_backend(scan_backend)
        _check_int("full_res_skip", full_res_skip, 0)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depths = depths
        self.depths_decoder = depths_decoder
        self.dims = dims
        self.num_layers = len(depths)
        self.patch_size = patch
        self.scan_directions = k_dirs
        #: per axis: sizes must be multiples of this (the patch side times the 2x downsamplings)
        self.size_divisors = tuple(p * 2 ** (self.num_layers - 1) for p in patch)
        #: one int all axes may be multiples of (the public 2-D value: 32)
        self.size_divisor = math.lcm(*self.size_divisors)
        self.config: dict[str, Any] = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "depths": list(depths),
            "depths_decoder": list(depths_decoder),
            "dims": list(dims),
            "d_state": d_state,
            "ssm_ratio": ssm_ratio,
            "dt_rank": dt_rank,
            "d_conv": d_conv,
            "drop_rate": drop_rate,
            "attn_drop_rate": attn_drop_rate,
            "drop_path_rate": drop_path_rate,
            "use_checkpoint": use_checkpoint,
            "scan_backend": scan_backend,
            "patch_size": patch[0] if len(set(patch)) == 1 else list(patch),
            "scan_directions": k_dirs,
            "full_res_skip": full_res_skip,
        }

        block_kwargs = {
            "d_state": d_state,
            "ssm_ratio": ssm_ratio,
            "dt_rank": dt_rank,
            "d_conv": d_conv,
            "attn_drop_rate": attn_drop_rate,
            "scan_backend": scan_backend,
            "scan_directions": k_dirs,
        }
        dims_decoder = dims[::-1]
        self.patch_embed = PatchEmbed(spatial_dims, patch, in_channels, dims[0])
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        # device="cpu": also right under a ``torch.device("meta")`` context
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        dpr_decoder = torch.linspace(0, drop_path_rate, sum(depths_decoder), device="cpu").tolist()[::-1]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(
                VSSStage(
                    dims[i],
                    depths[i],
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < self.num_layers - 1,
                    use_checkpoint=use_checkpoint,
                    spatial_dims=spatial_dims,
                    **block_kwargs,
                )
            )
        self.layers_up = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers_up.append(
                VSSUpStage(
                    dims_decoder[i],
                    depths_decoder[i],
                    drop_path=dpr_decoder[sum(depths_decoder[:i]) : sum(depths_decoder[: i + 1])],
                    upsample=i > 0,
                    use_checkpoint=use_checkpoint,
                    spatial_dims=spatial_dims,
                    **block_kwargs,
                )
            )
        self.final_up = FinalPatchExpand(dims_decoder[-1], spatial_dims, dim_scale=patch)
        head_in = self.final_up.out_dim
        self.full_res_skip = full_res_skip
        if full_res_skip:
            self.skip_stem = _conv_block(spatial_dims, in_channels, full_res_skip, full_res_skip)
            self.skip_fuse = _conv_block(spatial_dims, head_in + full_res_skip, full_res_skip)
            head_in = full_res_skip
        self.final_conv = CONV[spatial_dims](head_in, out_channels, kernel_size=1)
        self.apply(self._init_weights)

    @staticmethod
    def _check_patch_size(patch_size: int | Sequence[int] | None, spatial_dims: int) -> tuple[int, ...]:
        if patch_size is None:
            return (PATCH_SIZE,) * 2 if spatial_dims == 2 else PATCH_SIZE_3D
        if isinstance(patch_size, int) and not isinstance(patch_size, bool):
            patch = (patch_size,) * spatial_dims
        elif isinstance(patch_size, Sequence) and not isinstance(patch_size, (str, bytes)):
            patch = tuple(patch_size)
        else:
            patch = ()
        if len(patch) != spatial_dims or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in patch
        ):
            raise ValueError(
                f"patch_size must be None, an integer >= 1 or {spatial_dims} integers >= 1 (one per axis), "
                f"got {patch_size!r}"
            )
        return patch

    @staticmethod
    def _check_layout(
        depths: Sequence[int],
        depths_decoder: Sequence[int],
        dims: int | Sequence[int],
        multiple: int = PATCH_SIZE,
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        for name, seq in (("depths", depths), ("depths_decoder", depths_decoder)):
            if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or len(seq) == 0:
                raise ValueError(f"{name} must be a non-empty sequence of block counts, got {seq!r}")
            for d in seq:
                if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                    raise ValueError(f"{name} must hold integers >= 0, got {list(seq)!r}")
        if len(depths_decoder) != len(depths):
            raise ValueError(
                f"depths_decoder must have as many stages as depths ({len(depths)}), "
                f"got {len(depths_decoder)}: {list(depths_decoder)!r}"
            )
        n = len(depths)
        if isinstance(dims, int) and not isinstance(dims, bool):
            if dims < multiple or dims % multiple:
                raise ValueError(
                    f"dims must be a positive multiple of {multiple} (the largest patch side), got {dims}"
                )
            dims = [dims * 2**i for i in range(n)]
        elif isinstance(dims, Sequence) and not isinstance(dims, (str, bytes)):
            dims = list(dims)
            if len(dims) != n or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                raise ValueError(f"dims must be an int or {n} integers (one per stage), got {dims!r}")
            if dims[0] < multiple or dims[0] % multiple:
                raise ValueError(
                    f"dims[0] must be a positive multiple of {multiple} (the largest patch side), "
                    f"got {dims[0]}"
                )
            if any(dims[i + 1] != 2 * dims[i] for i in range(n - 1)):
                raise ValueError(
                    f"dims must double from stage to stage (patch merging maps C to 2C), got {dims!r}"
                )
        else:
            raise ValueError(f"dims must be an int or a sequence of {n} integers, got {dims!r}")
        return tuple(depths), tuple(depths_decoder), tuple(dims)

    @staticmethod
    def _check_backend(scan_backend: str | None) -> None:
        if scan_backend is None:
            return
        from vmunet import ops

        known = ops.available_backends() if hasattr(ops, "available_backends") else []
        names = ops.BACKENDS
        if scan_backend not in names:
            raise ValueError(
                f"scan_backend must be None (automatic) or one of {sorted(names)}, got {scan_backend!r}"
                + (f" (available here: {known})" if known else "")
            )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # As the public VSSM: Linear ~ trunc_normal(0.02), zero bias; LayerNorm 1 / 0; convs and
        # the SSM parameters (not Linear modules) keep their own initialisation.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_scan_backend(self, scan_backend: str | None) -> VMUNet:
        """Use ``scan_backend`` in every SS2D from now on (``None``: automatic). Returns self."""
        self._check_backend(scan_backend)
        for m in self.modules():
            if hasattr(m, "scan_backend") and m is not self:
                m.scan_backend = scan_backend
        self.config["scan_backend"] = scan_backend
        return self

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        """Parameter-name fragments an optimiser should not decay (the SSM's A_log and D, as Mamba)."""
        return {"A_logs", "Ds"}

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, *spatial)`` fitting ``size_divisors``."""
        n = self.spatial_dims
        if x.dim() != n + 2:
            axes = ", ".join(_AXIS_NAMES[:n])
            hint = (
                " (a 3-D model takes volumes; segment 2-D images with a 2-D model)"
                if n == 3 and x.dim() == 4
                else " (a 2-D model takes images; volumes go slice by slice)"
                if n == 2 and x.dim() == 5
                else ""
            )
            raise ValueError(
                f"VMUNet(spatial_dims={n}) expects a {n + 2}-D input (batch, channels, {axes}), "
                f"got shape {tuple(x.shape)}{hint}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channel(s) (dim 1 of shape {tuple(x.shape)}), "
                f"the model was built with in_channels={self.in_channels}"
            )
        for i, (k, name) in enumerate(zip(self.size_divisors, _AXIS_NAMES)):
            axis = 2 + i
            size = x.shape[axis]  # not int(): that would freeze a symbolic size under torch.export
            if size % k or size == 0:
                size = int(size)
                below, above = (size // k) * k, (size // k + 1) * k
                fits = f"{below} or {above}" if below > 0 else f"{above}"
                raise ValueError(
                    f"input {name} (dim {axis}) is {size}, which is not a multiple of {k}; nearest sizes "
                    f"that fit: {fits} (pad or resize; vmunet.inference pads automatically)"
                )

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder: returns the deepest feature and the skip features (channels-last)."""
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x)  # skips[0] (the patch embedding) is never used, as in the public code
            x = layer(x)
        return x, skips

    def forward_features_up(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decoder: stage 0 on the encoder output; stage i adds the skip of the same size first."""
        for i, layer_up in enumerate(self.layers_up):
            x = layer_up(x) if i == 0 else layer_up(x + skips[-i])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S) -> (B, out_channels, *S)`` logits; S multiples of ``size_divisors``."""
        self.check_input(x)
        image = x
        x, skips = self.forward_features(x)
        x = self.forward_features_up(x, skips)
        x = self.final_up(x)
        x = x.permute(0, x.dim() - 1, *range(1, x.dim() - 1))
        if self.full_res_skip:
            x = self.skip_fuse(torch.cat([x, self.skip_stem(image)], dim=1))
        return self.final_conv(x)


# --------------------------------------------------------------------------- checkpoint filter

# Prefixes a wrapper adds in front of our keys: DDP / DataParallel, torch.compile, the public
# VM-UNet wrapper (its ``VMUNet`` holds the network as ``self.vmunet``).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "vmunet.")
# Keys of the VMamba ImageNet classifier that have no counterpart in the segmentation network.
_CLASSIFIER_KEY = re.compile(r"^(norm|head|classifier)\.")
_ENCODER_STAGE_KEY = re.compile(r"^layers\.(\d+)\.(.*)$")
_BLOCK_KEY = re.compile(r"^layers(_up)?\.(\d+)\.blocks\.(\d+)\.")
_NEWER_VMAMBA_KEY = re.compile(r"\.blocks\.\d+\.(op|mlp|norm2?)\.")
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "model_ema", "state_dict_ema")


def _unwrap(checkpoint: dict[str, Any]) -> dict[str, Any]:
    if checkpoint.get("format") == "vmunet" and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    for key in _STATE_DICT_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return checkpoint


def _strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def is_vmamba_encoder_checkpoint(state_dict: dict[str, Any]) -> bool:
    """True for a VMamba (classification) state dict: encoder ``layers.*`` but no ``layers_up.*``."""
    keys = list(state_dict)
    return any(k.startswith("layers.") for k in keys) and not any(k.startswith("layers_up.") for k in keys)


def _mirror_vmamba(state_dict: dict[str, Any], num_layers: int, skipped: dict[str, str]) -> dict[str, Any]:
    """Encoder keys as they are, plus each encoder block copied into decoder stage n-1-i.

    What the public ``VMUNet.load_from`` does with ``vmamba_small_e238_ema.pth``: first the
    encoder (``patch_embed.*``, ``layers.i.blocks.j.*``, ``layers.i.downsample.*``), then every
    ``layers.i.*`` key renamed to ``layers_up.(3-i).*`` (only the blocks exist there; the
    decoder's patch-expand layers stay as initialised).
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if _CLASSIFIER_KEY.match(key):
            skipped[key] = "ImageNet classifier head of the VMamba checkpoint: no counterpart in VM-UNet"
            continue
        out[key] = value
        m = _ENCODER_STAGE_KEY.match(key)
        if m and m.group(2).startswith("blocks."):
            stage = int(m.group(1))
            if stage < num_layers:
                out[f"layers_up.{num_layers - 1 - stage}.{m.group(2)}"] = value
    return out


def _adapt_patch_embed(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    # A 3-channel patch embedding into a 1-channel model: the public model repeats a 1-channel
    # image to 3 channels, and conv(w, [x, x, x]) == conv(w.sum(1), x).
    if (
        key == "patch_embed.proj.weight"
        and value.dim() == 4
        and target.dim() == 4
        and target.shape[1] == 1
        and value.shape[1] == 3
        and value.shape[0] == target.shape[0]
        and value.shape[2:] == target.shape[2:]
    ):
        return value.sum(dim=1, keepdim=True)
    return None


def _why_no_target(key: str, target: dict[str, torch.Tensor]) -> str:
    m = _BLOCK_KEY.match(key)
    if m:
        stage_prefix = f"layers{m.group(1) or ''}.{m.group(2)}.blocks."
        blocks = {int(k[len(stage_prefix) :].split(".", 1)[0]) for k in target if k.startswith(stage_prefix)}
        if blocks and int(m.group(3)) > max(blocks):
            where = "decoder" if m.group(1) else "encoder"
            return (
                f"the model's {where} stage {m.group(2)} has no block {m.group(3)} "
                "(the checkpoint is deeper there)"
            )
    if _NEWER_VMAMBA_KEY.search(key):
        return (
            "no parameter of this name in the model (a VMamba v2+ block layout, norm/op/mlp; "
            "VM-UNet uses the v0 layout ln_1/self_attention, e.g. vmamba_small_e238_ema.pth)"
        )
    return "no parameter of this name in the model"


def checkpoint_filter_fn(
    state_dict: dict[str, Any],
    model: nn.Module,
    skipped: dict[str, str] | None = None,
    adapted: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Map a checkpoint onto ``model``'s keys: rename, check every shape, adapt what is safe.

    Accepts this package's checkpoints, the public VM-UNet's (keys ``vmunet.*``, a bare state
    dict or ``{"model_state_dict": ...}``) and VMamba ImageNet checkpoints (``{"model": ...}``,
    encoder only, mirrored into the decoder as the public ``load_from`` does). Nothing is
    matched by name alone: a tensor whose shape differs from the model's is left out (and
    recorded in ``skipped`` with the reason), except a 3-channel patch embedding loaded into a
    1-channel model, which is summed over its input channels (recorded in ``adapted``).

    Args:
        state_dict: the checkpoint (a state dict, or a dict holding one).
        model: the :class:`VMUNet` to load into.
        skipped: if given, filled with ``{checkpoint key: why it was left out}``.
        adapted: if given, filled with ``{model key: what was changed}``.

    Returns:
        A state dict holding only keys of ``model`` with tensors of the right shapes.
    """
    skipped = {} if skipped is None else skipped
    adapted = {} if adapted is None else adapted
    state_dict = _strip_prefixes(_unwrap(state_dict))
    target = model.state_dict()
    # Native keys with the right shapes: nothing to do (timm's early return).
    if set(state_dict) == set(target) and all(
        isinstance(v, torch.Tensor) and v.shape == target[k].shape for k, v in state_dict.items()
    ):
        return dict(state_dict)
    if is_vmamba_encoder_checkpoint(state_dict):
        num_layers = getattr(model, "num_layers", 4)
        state_dict = _mirror_vmamba(state_dict, num_layers, skipped)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            skipped[key] = f"not a tensor ({type(value).__name__})"
            continue
        if key not in target:
            skipped[key] = _why_no_target(key, target)
            continue
        want = target[key]
        if value.shape != want.shape:
            fixed = _adapt_patch_embed(key, value, want)
            if fixed is not None:
                adapted[key] = (
                    f"summed the checkpoint's {value.shape[1]} input channels into 1 "
                    "(what repeating a 1-channel image to 3 channels computes)"
                )
                out[key] = fixed
                continue
            skipped[key] = f"shape {tuple(value.shape)} in the checkpoint, the model has {tuple(want.shape)}"
            continue
        out[key] = value
    return out


# --------------------------------------------------------------------------- default configs

#: Parameters of ``vmunet3d_small(in_channels=1, out_channels=9)`` (tests/models check it).
VMUNET3D_SMALL_PARAMS = 9_307_293


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "paper": "arXiv:2402.02491",
        "spatial_dims": 2,
        "input_size": (3, 256, 256),
        "size_divisor": 32,
        "num_classes": 1,
        "url": None,  # no weights are downloaded; pass checkpoint=PATH to create_model
        **kwargs,
    }


def _cfg3d(**kwargs: Any) -> dict[str, Any]:
    # the UNETR / SwinUNETR BTCV protocol: 96^3 ROIs at 1.5 x 1.5 x 2.0 mm, 13 organs + background
    base = {
        "spatial_dims": 3,
        "input_size": (1, 96, 96, 96),
        "size_divisor": 32,
        "size_divisors": (32, 32, 16),
        "spacing": (1.5, 1.5, 2.0),
        "num_classes": 9,
    }
    return _cfg(**{**base, **kwargs})


default_cfgs: dict[str, dict[str, Any]] = {
    "vmunet_small": _cfg(
        notes="the configuration of the paper's runs (JCruan519/VM-UNet configs/config_setting*.py), "
        "initialised there from VMamba-S (vmamba_small_e238_ema.pth)",
        num_params=27_427_561,
    ),
    "vmunet_base": _cfg(notes="the default of the public VMUNet class", num_params=44_273_833),
    "vmunet_tiny": _cfg(notes="tiny, random weights: tests and smoke runs only", input_size=(3, 64, 64)),
    "vmunet3d_small": _cfg3d(
        notes="native 3-D VM-UNet sized against MONAI's SwinUNETR(feature_size=48) on 96^3 CT patches "
        "(benchmarks/model3d.py); random weights",
        num_params=VMUNET3D_SMALL_PARAMS,
    ),
    "vmunet3d_tiny": _cfg3d(
        notes="tiny 3-D, random weights: tests and smoke runs only", input_size=(1, 32, 32, 32)
    ),
}


# --------------------------------------------------------------------------- builder and variants


def _create_vmunet(variant: str, **kwargs: Any) -> VMUNet:
    model = VMUNet(**kwargs)
    model.pretrained_cfg = default_cfgs[variant]
    return model


@register_model
def vmunet_small(**kwargs: Any) -> VMUNet:
    """The paper's VM-UNet: depths (2, 2, 2, 2), decoder (2, 2, 2, 1), dims 96 (27.4 M parameters)."""
    args: dict[str, Any] = {"depths": (2, 2, 2, 2), "depths_decoder": (2, 2, 2, 1), "dims": 96}
    return _create_vmunet("vmunet_small", **{**args, **kwargs})


@register_model
def vmunet_base(**kwargs: Any) -> VMUNet:
    """The public class default: depths (2, 2, 9, 2), decoder (2, 9, 2, 2), dims 96 (44.3 M parameters)."""
    args: dict[str, Any] = {"depths": (2, 2, 9, 2), "depths_decoder": (2, 9, 2, 2), "dims": 96}
    return _create_vmunet("vmunet_base", **{**args, **kwargs})


@register_model
def vmunet3d_small(**kwargs: Any) -> VMUNet:
    """The native 3-D VM-UNet: depths (2, 2, 2, 2), decoder (2, 2, 2, 1), dims 48, patch (4, 4, 2), K = 6.

    9,307,293 parameters (9.3 M) at 1 channel in and 9 out. The width is SwinUNETR's
    ``feature_size=48`` (62.2 M parameters), the model it is measured against on 96^3 CT patches
    (benchmarks/model3d.py): at 48 it stays well inside that goal on a CPU (faster, less memory);
    dims 32 (4.6 M) is about a third faster again.

    Volumes ``(B, C, H, W, D)``, sizes multiples of (32, 32, 16); 1 channel in and 9 classes out by
    default (the BTCV / Synapse 8 organs and background).
    """
    args: dict[str, Any] = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 9,
        "depths": (2, 2, 2, 2),
        "depths_decoder": (2, 2, 2, 1),
        "dims": 48,
        "patch_size": PATCH_SIZE_3D,
        "scan_directions": 6,
    }
    return _create_vmunet("vmunet3d_small", **{**args, **kwargs})


@register_model
def vmunet_tiny(**kwargs: Any) -> VMUNet:
    """A tiny VM-UNet for tests and smoke runs: one block per stage, dims 16, d_state 4."""
    args: dict[str, Any] = {
        "depths": (1, 1, 1, 1),
        "depths_decoder": (1, 1, 1, 1),
        "dims": 16,
        "d_state": 4,
        "drop_path_rate": 0.1,
    }
    return _create_vmunet("vmunet_tiny", **{**args, **kwargs})


@register_model
def vmunet3d_tiny(**kwargs: Any) -> VMUNet:
    """A tiny 3-D VM-UNet for tests and smoke runs: one block per stage, dims 16, d_state 4, K = 6.

    Patch (4, 4, 2), sizes multiples of (32, 32, 16). dims 16 leaves 4 channels per voxel after the
    final expansion (dims 8 left 2, which its LayerNorm collapses to +-1: see ``MIN_FULL_RES_CHANNELS``).
    """
    args: dict[str, Any] = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "depths": (1, 1, 1, 1),
        "depths_decoder": (1, 1, 1, 1),
        "dims": 16,
        "d_state": 4,
        "patch_size": PATCH_SIZE_3D,
        "drop_path_rate": 0.1,
    }
    return _create_vmunet("vmunet3d_tiny", **{**args, **kwargs})
