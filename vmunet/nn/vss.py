"""SS2D / SS3D (2-D / 3-D selective scan), the VSS block and the encoder / decoder stages of VM-UNet.

The layer structure, parameter names and shapes follow the public VM-UNet implementation
(JCruan519/VM-UNet, ``models/vmunet/vmamba.py``, itself VMamba v0), so that public
checkpoints map one to one; the initialisation is Mamba's (state-spaces/mamba
``mamba_simple.py``: dt projection uniform in +-dt_rank**-0.5, dt bias = softplus^-1 of a
log-uniform dt in [dt_min, dt_max], A = -[1..N] stored as ``A_log``, D = 1).

Tensors are channels-last ``(B, H, W, C)`` (2-D) or ``(B, H, W, D, C)`` (3-D) between blocks.
Every module is written once for both and takes ``spatial_dims``: the 3-D block is the 2-D one
with a depthwise ``Conv3d`` and the 3-D cross-scan (:func:`vmunet.ops.cross_scan_3d`, six or two
flattened orders of the token grid); the scan itself is the same 1-D selective scan, so every
scan backend runs it unchanged.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from vmunet import ops
from vmunet.ops.scan_orders import scan_index

from .patch import CONV, PatchExpand, PatchMerging

__all__ = [
    "SSND",
    "SS2D",
    "SS3D",
    "VSSBlock",
    "VSSStage",
    "VSSUpStage",
    "DropPath",
    "NUM_SCAN_DIRECTIONS",
    "SCAN_DIRECTIONS",
    "FUSED_ENV_VAR",
]

#: The four scan orders of the 2-D cross-scan: row-major, column-major and both reversed.
NUM_SCAN_DIRECTIONS = 4
#: Allowed numbers of scan directions per ``spatial_dims``, the default first.
SCAN_DIRECTIONS: dict[int, tuple[int, ...]] = {2: (NUM_SCAN_DIRECTIONS,), 3: (6, 2)}

#: Environment variable, read once at import: "0" turns the fused cross-scan path of the "cpu"
#: backend off by default (``SSND.fused_scan`` still overrides it per module).
FUSED_ENV_VAR = "VMUNET_FUSED_SCAN"
_FUSED_DEFAULT = os.environ.get(FUSED_ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


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


@functools.lru_cache(maxsize=64)
def _scan_index_cpu(size: tuple[int, ...], k: int) -> torch.Tensor:
    """``scan_index`` on the CPU, built once per grid (the fused op only reads it). Built outside
    inference mode, so that a map first made under ``torch.inference_mode`` can still be saved for a
    later backward."""
    with torch.inference_mode(False):
        return scan_index(size, k)


class SSND(nn.Module):
    """Selective scan over a 2-D or 3-D token grid (the "SS2D" module of VMamba / VM-UNet, and SS3D).

    ``in_proj`` (C -> 2 * d_inner, x and z branches) -> depthwise conv + SiLU on x ->
    K-direction cross-scan -> per-direction ``x_proj`` (d_inner -> dt_rank + 2 * d_state)
    and ``dt_proj`` (dt_rank -> d_inner) -> selective scan (``delta_softplus=True``, float32) ->
    cross-merge (sum of the K directions mapped back) -> LayerNorm(d_inner) -> times SiLU(z)
    -> ``out_proj`` (d_inner -> C) -> dropout.

    In 2-D, K = 4 (:func:`vmunet.ops.cross_scan_2d`) and the depthwise conv is ``conv2d``, the
    public names and shapes. In 3-D, K = 6 or 2 (:func:`vmunet.ops.cross_scan_3d`) and the conv
    is a depthwise ``Conv3d`` named ``conv3d``; the per-direction parameters are stacked the same
    way (``x_proj_weight`` (K, ...), ``A_logs`` (K * d_inner, N), ...).

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
        spatial_dims: 2 (input ``(B, H, W, C)``) or 3 (``(B, H, W, D, C)``).
        scan_directions: number of scan orders K: 4 in 2-D; 6 (default) or 2 in 3-D
            (``None``: the default).

    With the "cpu" scan backend on CPU tensors the cross-scan, the K scans and the merge run as one
    fused op (:func:`vmunet.ops.cross_selective_scan_packed`, same results, no scanned copies);
    the attribute ``fused_scan`` (``None``: on unless ``$VMUNET_FUSED_SCAN`` is "0" at import,
    ``False``: always the unfused path) selects it.

    Example:
        >>> ss3d = SSND(d_model=16, d_state=4, spatial_dims=3)
        >>> ss3d(torch.randn(1, 4, 4, 2, 16)).shape
        torch.Size([1, 4, 4, 2, 16])
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
        spatial_dims: int = 2,
        scan_directions: int | None = None,
    ) -> None:
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if isinstance(spatial_dims, bool) or spatial_dims not in SCAN_DIRECTIONS:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        allowed = SCAN_DIRECTIONS[spatial_dims]
        k = allowed[0] if scan_directions is None else scan_directions
        if isinstance(k, bool) or k not in allowed:
            raise ValueError(
                f"scan_directions must be one of {allowed} for spatial_dims={spatial_dims}, "
                f"got {scan_directions!r}"
            )
        self.spatial_dims = int(spatial_dims)
        self.scan_directions = int(k)
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self.fused_scan: bool | None = None
        self._dt_init = (dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

        d_inner, r, n = self.d_inner, self.dt_rank, self.d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        # named conv2d / conv3d: "conv2d" is the public VM-UNet's parameter name
        self._conv_name = f"conv{self.spatial_dims}d"
        conv = CONV[self.spatial_dims](
            d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
        )
        self.add_module(self._conv_name, conv)
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
        """Cross-scan, selective scan, cross-merge: ``(B, d_inner, *S) -> (B, d_inner, prod(S))`` float32."""
        b, d = x.shape[:2]
        size = tuple(x.shape[2:])
        k, length = self.scan_directions, math.prod(size)
        if self.spatial_dims == 2:
            xs = ops.cross_scan_2d(x)  # (B, K, D, L)
        else:
            xs = ops.cross_scan_3d(x, k)
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
        if self.spatial_dims == 2:
            return ops.cross_merge_2d(ys.reshape(b, k, d, length), *size)
        return ops.cross_merge_3d(ys.reshape(b, k, d, length), *size)

    def _fused(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or not (_FUSED_DEFAULT if self.fused_scan is None else self.fused_scan):
            return False
        return ops.resolve_backend(self.scan_backend, x) == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused(x):
            return self._forward_fused(x)
        b, *size, _ = x.shape
        n = len(size)
        x, z = self.in_proj(x).chunk(2, dim=-1)
        conv = getattr(self, self._conv_name)
        x = self.act(conv(x.permute(0, n + 1, *range(1, n + 1)).contiguous()))
        y = self.forward_core(x)  # (B, D, L) float32
        y = self.out_norm(y.transpose(1, 2).reshape(b, *size, -1))
        y = y * F.silu(z)
        return self.dropout(self.out_proj(y))

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation channels-last, with the K directions fused into one scan op.

        x_proj acts per position, so its output for every direction is computed on the un-scanned
        map (one matmul for all K); the op reads it, and the one shared u, at each direction's
        positions (:func:`vmunet.ops.scan_orders.scan_index`), expands the time steps through
        dt_proj inside the kernels and returns the merged sum.
        The depthwise conv runs channels-last (measured faster than channels-first here), so its
        output is already the (B, L, d) layout the op takes.
        """
        b, *size, _ = x.shape
        n = len(size)
        d, k, r, ns = self.d_inner, self.scan_directions, self.dt_rank, self.d_state
        L = math.prod(size)
        xz = self.in_proj(x)
        xi, z = xz.chunk(2, dim=-1)
        conv = getattr(self, self._conv_name)
        fmt = torch.channels_last if n == 2 else torch.channels_last_3d
        u = self.act(conv(xi.permute(0, n + 1, *range(1, n + 1)).contiguous(memory_format=fmt)))
        u = u.permute(0, *range(2, n + 2), 1).reshape(b, L, d)  # a view when the conv kept channels-last
        c = r + 2 * ns
        x_dbl = (u.reshape(b * L, d) @ self.x_proj_weight.reshape(k * c, d).t()).view(b, L, k, c)
        args = (
            u,
            x_dbl,
            self.dt_projs_weight,
            -torch.exp(self.A_logs.float()),
            self.Ds.float(),
            self.dt_projs_bias.float().reshape(-1),
            _scan_index_cpu(tuple(size), k),
        )
        if self._gate_fused(x):  # inference: the norm and the gate run inside the op, in one pass
            xz = xz.view(b, L, 2 * d)
            y = ops.cross_selective_scan_gated(*args, xz, self.out_norm, delta_softplus=True)
            return self.dropout(self.out_proj(y.view(b, *size, d)))
        y = ops.cross_selective_scan_packed(*args, delta_softplus=True)
        y = self.out_norm(y.view(b, *size, d))
        y = y * F.silu(z)
        return self.dropout(self.out_proj(y))

    def _gate_fused(self, x: torch.Tensor) -> bool:
        """Whether no gradient is needed here (then the output gate is fused into the scan op)."""
        if x.dtype != torch.float32 or not isinstance(self.out_norm, nn.LayerNorm):
            return False
        if not torch.is_grad_enabled():
            return True
        return not (x.requires_grad or any(p.requires_grad for p in self.parameters()))


class SS2D(SSND):
    """2-D selective scan (the "SS2D" module of VMamba / VM-UNet): :class:`SSND` with ``spatial_dims=2``.

    Takes the arguments of :class:`SSND` (without ``spatial_dims``); four scan directions.

    Example:
        >>> ss2d = SS2D(d_model=32, d_state=4)
        >>> ss2d(torch.randn(1, 8, 8, 32)).shape
        torch.Size([1, 8, 8, 32])
    """

    def __init__(self, d_model: int, *args: object, **kwargs: object) -> None:
        super().__init__(d_model, *args, spatial_dims=2, **kwargs)  # type: ignore[arg-type]


class SS3D(SSND):
    """3-D selective scan: :class:`SSND` with ``spatial_dims=3``, six (default) or two scan directions.

    Takes the arguments of :class:`SSND` (without ``spatial_dims``); input ``(B, H, W, D, C)``.

    Example:
        >>> ss3d = SS3D(d_model=16, d_state=4, scan_directions=2)
        >>> ss3d(torch.randn(1, 4, 4, 2, 16)).shape
        torch.Size([1, 4, 4, 2, 16])
    """

    def __init__(self, d_model: int, *args: object, **kwargs: object) -> None:
        super().__init__(d_model, *args, spatial_dims=3, **kwargs)  # type: ignore[arg-type]


_SS_CLASS: dict[int, type[SSND]] = {2: SS2D, 3: SS3D}


class VSSBlock(nn.Module):
    """Visual state-space block: ``x + DropPath(SS(LayerNorm(x)))`` (no MLP, as in VM-UNet).

    ``SS`` is :class:`SS2D` or :class:`SS3D` after ``spatial_dims``.

    Args:
        d_model: channels C.
        drop_path: stochastic-depth probability of the residual branch.
        attn_drop_rate: dropout inside SS2D (on its output).
        d_state: SSM state size N.
        norm_eps: eps of the LayerNorm (1e-5, what the public VM-UNet passes down).
        spatial_dims: 2 (``(B, H, W, C)`` tokens) or 3 (``(B, H, W, D, C)``).
        **ssm_kwargs: further :class:`SSND` arguments (ssm_ratio, dt_rank, d_conv, scan_backend,
            scan_directions, ...).

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
        spatial_dims: int = 2,
        **ssm_kwargs: object,
    ) -> None:
        super().__init__()
        if isinstance(spatial_dims, bool) or spatial_dims not in _SS_CLASS:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.ln_1 = nn.LayerNorm(d_model, eps=norm_eps)
        ss_class = _SS_CLASS[spatial_dims]
        self.self_attention = ss_class(d_model=d_model, d_state=d_state, dropout=attn_drop_rate, **ssm_kwargs)
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
        downsample: end with :class:`PatchMerging` (2x down on every axis).
        use_checkpoint: gradient checkpointing of each block while training.
        spatial_dims: 2 or 3.
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
        spatial_dims: int = 2,
        **block_kwargs: object,
    ) -> None:
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                VSSBlock(d_model=dim, drop_path=rates[i], spatial_dims=spatial_dims, **block_kwargs)
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim, spatial_dims) if downsample else None

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
        upsample: open with :class:`PatchExpand` (2x up on every axis).
        use_checkpoint: gradient checkpointing of each block while training.
        spatial_dims: 2 or 3.
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
        spatial_dims: int = 2,
        **block_kwargs: object,
    ) -> None:
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        self.use_checkpoint = use_checkpoint
        self.upsample = PatchExpand(dim, spatial_dims) if upsample else None
        self.blocks = nn.ModuleList(
            [
                VSSBlock(d_model=dim, drop_path=rates[i], spatial_dims=spatial_dims, **block_kwargs)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        return _run_blocks(self.blocks, x, self.use_checkpoint)
