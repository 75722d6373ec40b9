"""SS2D (2-D selective scan), the VSS block and the encoder / decoder stages of VM-UNet.

The layer structure, parameter names and shapes follow the public VM-UNet implementation
(JCruan519/VM-UNet, ``models/vmunet/vmamba.py``, itself VMamba v0), so that public
checkpoints map one to one; the initialisation is Mamba's (state-spaces/mamba
``mamba_simple.py``: dt projection uniform in +-dt_rank**-0.5, dt bias = softplus^-1 of a
log-uniform dt in [dt_min, dt_max], A = -[1..N] stored as ``A_log``, D = 1).

Tensors are channels-last ``(B, H, W, C)`` between blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from vmunet import ops

from .patch import PatchExpand2D, PatchMerging2D

__all__ = ["SS2D", "VSSBlock", "VSSStage", "VSSUpStage", "DropPath", "NUM_SCAN_DIRECTIONS"]

#: The four scan orders of the 2-D cross-scan: row-major, column-major and both reversed.
NUM_SCAN_DIRECTIONS = 4


class DropPath(nn.Module):
    """Stochastic depth per sample (timm semantics): while training, zero a sample's residual
    branch with probability ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``.

    Written here rather than imported from MONAI (same semantics, ``monai.networks.layers.DropPath``)
    because importing MONAI costs seconds, and ``import vmunet`` should not.

    Args:
        drop_prob: probability of dropping the branch, in [0, 1).

    Example:
        >>> DropPath(0.2).eval()(torch.ones(2, 3)).sum().item()
        6.0
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class SS2D(nn.Module):
    """2-D selective scan (the "SS2D" module of VMamba / VM-UNet).

    ``in_proj`` (C -> 2 * d_inner, x and z branches) -> depthwise conv + SiLU on x ->
    four-direction cross-scan -> per-direction ``x_proj`` (d_inner -> dt_rank + 2 * d_state)
    and ``dt_proj`` (dt_rank -> d_inner) -> selective scan (``delta_softplus=True``, float32) ->
    cross-merge (sum of the four directions mapped back) -> LayerNorm(d_inner) -> times SiLU(z)
    -> ``out_proj`` (d_inner -> C) -> dropout.

    Args:
        d_model: channels C of the input and output.
        d_state: SSM state size N.
        ssm_ratio: expansion d_inner = int(ssm_ratio * d_model).
        dt_rank: rank of the dt projection; ``"auto"`` means ceil(d_model / 16).
        d_conv: kernel size of the depthwise convolution.
        conv_bias: whether the depthwise convolution has a bias.
        bias: whether ``in_proj`` / ``out_proj`` have a bias.
        dropout: dropout probability on the output.
        dt_min: smallest initial dt.
        dt_max: largest initial dt.
        dt_init: ``"random"`` (uniform) or ``"constant"`` initialisation of the dt projection.
        dt_scale: scale of the dt projection initialisation.
        dt_init_floor: floor of the initial dt.
        scan_backend: selective-scan backend name passed to :func:`vmunet.ops.selective_scan`
            (``None``: chosen automatically).

    Example:
        >>> ss2d = SS2D(d_model=32, d_state=4)
        >>> ss2d(torch.randn(1, 8, 8, 32)).shape
        torch.Size([1, 8, 8, 32])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        k = NUM_SCAN_DIRECTIONS
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self._dt_init = (dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

        d_inner, r, n = self.d_inner, self.dt_rank, self.d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
        )
        self.act = nn.SiLU()
        # One projection per scan direction, stored stacked (names/shapes of the public code).
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, n))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.A_logs._no_weight_decay = True  # type: ignore[attr-defined]
        self.Ds._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """(Re-)initialise the SSM parameters as Mamba does (x_proj as a default ``nn.Linear``)."""
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor = self._dt_init
        # x_proj: nn.Linear's default init (kaiming-uniform, a=sqrt(5)) -> U(-1/sqrt(fan_in), +).
        bound = 1.0 / math.sqrt(self.d_inner)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_projs_weight, std)
        else:
            nn.init.uniform_(self.dt_projs_weight, -std, std)
        # dt log-uniform in [dt_min, dt_max]; the bias is its softplus inverse.
        dt = torch.exp(
            torch.rand(self.dt_projs_bias.shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_logs.copy_(torch.log(a).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-scan, selective scan, cross-merge: ``(B, d_inner, H, W) -> (B, d_inner, H*W)`` float32."""
        b, d, h, w = x.shape
        k, length = NUM_SCAN_DIRECTIONS, h * w
        xs = ops.cross_scan_2d(x)  # (B, K, D, L)
        # per-direction projections as broadcast matmuls: (K, c, d) @ (B, K, d, L) -> (B, K, c, L),
        # contiguous, so the float32 views below need no copy
        x_dbl = torch.matmul(self.x_proj_weight, xs)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)
        ys = ops.selective_scan(
            xs.float().reshape(b, k * d, length),
            dts.float().reshape(b, k * d, length),
            -torch.exp(self.A_logs.float()),
            bs.float().contiguous(),
            cs.float().contiguous(),
            self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().reshape(-1),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return ops.cross_merge_2d(ys.reshape(b, k, d, length), h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.forward_core(x)  # (B, D, L) float32
        y = self.out_norm(y.transpose(1, 2).reshape(b, h, w, -1))
        y = y * F.silu(z)
        return self.dropout(self.out_proj(y))


class VSSBlock(nn.Module):
    """Visual state-space block: ``x + DropPath(SS2D(LayerNorm(x)))`` (no MLP, as in VM-UNet).

    Args:
        d_model: channels C.
        drop_path: stochastic-depth probability of the residual branch.
        attn_drop_rate: dropout inside SS2D (on its output).
        d_state: SSM state size N.
        norm_eps: eps of the LayerNorm (1e-5, what the public VM-UNet passes down).
        **ssm_kwargs: further :class:`SS2D` arguments (ssm_ratio, dt_rank, d_conv, scan_backend, ...).

    Example:
        >>> block = VSSBlock(d_model=32, d_state=4)
        >>> block(torch.randn(2, 8, 8, 32)).shape
        torch.Size([2, 8, 8, 32])
    """

    def __init__(
        self,
        d_model: int,
        drop_path: float = 0.0,
        attn_drop_rate: float = 0.0,
        d_state: int = 16,
        norm_eps: float = 1e-5,
        **ssm_kwargs: object,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.self_attention = SS2D(d_model=d_model, d_state=d_state, dropout=attn_drop_rate, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    for blk in blocks:
        if use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
            x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


class VSSStage(nn.Module):
    """Encoder stage: ``depth`` VSS blocks, then optional patch merging (2x down, C -> 2C).

    Args:
        dim: channels C of the stage.
        depth: number of VSS blocks.
        drop_path: one stochastic-depth rate per block (or one for all).
        downsample: end with :class:`PatchMerging2D`.
        use_checkpoint: gradient checkpointing of each block while training.
        **block_kwargs: further :class:`VSSBlock` arguments.

    Example:
        >>> stage = VSSStage(dim=32, depth=1, downsample=True, d_state=4)
        >>> stage(torch.randn(1, 8, 8, 32)).shape
        torch.Size([1, 4, 4, 64])
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: float | Sequence[float] = 0.0,
        downsample: bool = False,
        use_checkpoint: bool = False,
        **block_kwargs: object,
    ) -> None:
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [VSSBlock(d_model=dim, drop_path=rates[i], **block_kwargs) for i in range(depth)]
        )
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _run_blocks(self.blocks, x, self.use_checkpoint)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class VSSUpStage(nn.Module):
    """Decoder stage: optional patch expand (2x up, 2C -> C) first, then ``depth`` VSS blocks.

    Args:
        dim: channels C of the stage (the patch expand takes 2C).
        depth: number of VSS blocks.
        drop_path: one stochastic-depth rate per block (or one for all).
        upsample: open with :class:`PatchExpand2D`.
        use_checkpoint: gradient checkpointing of each block while training.
        **block_kwargs: further :class:`VSSBlock` arguments.

    Example:
        >>> stage = VSSUpStage(dim=32, depth=1, upsample=True, d_state=4)
        >>> stage(torch.randn(1, 4, 4, 64)).shape
        torch.Size([1, 8, 8, 32])
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: float | Sequence[float] = 0.0,
        upsample: bool = False,
        use_checkpoint: bool = False,
        **block_kwargs: object,
    ) -> None:
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        self.use_checkpoint = use_checkpoint
        self.upsample = PatchExpand2D(dim) if upsample else None
        self.blocks = nn.ModuleList(
            [VSSBlock(d_model=dim, drop_path=rates[i], **block_kwargs) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        return _run_blocks(self.blocks, x, self.use_checkpoint)
