"""Where the per-file work of ``vmunet segment`` runs: one process, torchrun ranks, or a Ray cluster.

The work itself (decode, predict, write one input) lives in :mod:`vmunet.inference.folder`;
this module only knows how to spread a list of picklable tasks over processes and bring
the results back, and holds nothing specific to images:

* **torchrun** (``torchrun --nproc_per_node N -m vmunet segment ...``): detected from the
  environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; multi-node runs go
  through torchrun's own rendezvous, nothing more is needed here). :class:`RankGroup`
  opens a ``gloo`` process group from ``env://`` (only Python objects are exchanged:
  the plan, then the summary rows; the network itself needs no collectives, so NCCL
  would bring nothing), :func:`shard` deals task ``i`` to rank ``i % world_size``, and
  :func:`rank_device` puts each rank on ``cuda:LOCAL_RANK`` (CPU without CUDA).
* **Ray** (``--engine ray``, optional extra ``vmunet[ray]``): :func:`ray_map` runs the
  tasks through Ray Data ``map_batches`` with a class-based predictor (one model per
  actor, a fixed :class:`ray.data.ActorPoolStrategy` pool, one GPU per actor when the
  cluster has GPUs) on a local Ray instance, or on an existing cluster (``address``).

Example:
    >>> from vmunet.inference.engines import shard
    >>> shard(list("abcde"), rank=1, world_size=2)
    ['b', 'd']
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from vmunet.errors import VmunetUserError

__all__ = [
    "ENGINES",
    "RankGroup",
    "TorchrunEnv",
    "check_engine",
    "import_ray",
    "rank_device",
    "ray_map",
    "shard",
    "share_cpu_threads",
    "torchrun_env",
]

logger = logging.getLogger(__name__)

#: Values of ``segment_folder(engine=...)`` / ``vmunet segment --engine``.
ENGINES = ("local", "ray")

#: How long a rank waits for the others at the end of a run (a slow rank may have a long volume).
RANK_TIMEOUT = datetime.timedelta(hours=24)

T = TypeVar("T")


def check_engine(engine: str, env: TorchrunEnv | None) -> None:
    """Refuse an engine this process cannot run, before any model is loaded or input read.

    Raises:
        ValueError: ``engine`` is not one of :data:`ENGINES`.
        VmunetUserError: ``"ray"`` under torchrun, or Ray is not installed.

    Example:
        >>> check_engine("local", None)
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray":
        if env is not None and env.world_size > 1:
            raise VmunetUserError("--engine ray cannot run under torchrun; use one or the other")
        import_ray()


def share_cpu_threads() -> int:
    """Give the numba scan kernels as many threads as PyTorch has here; returns that number.

    torchrun (``OMP_NUM_THREADS=1`` per rank unless set) and Ray (``OMP_NUM_THREADS`` = the
    actor's CPUs) size PyTorch's pool for processes that share a machine, but numba sizes its
    pool to every core of the machine, and its idle workers spin: N processes would each keep
    one busy thread per core (measured: a 2-rank run on 2 cores spent its time in the kernel,
    several times slower than one process). So ``NUMBA_NUM_THREADS`` is set to PyTorch's
    thread count before numba is first imported (and lowered with ``numba.set_num_threads``
    when it already is). Called on every torchrun rank and Ray actor; a no-op without numba.
    An explicit ``NUMBA_NUM_THREADS`` is kept.

    Example:
        >>> share_cpu_threads() >= 1
        True
    """
    import sys

    import torch

    n = max(1, torch.get_num_threads())
    if "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(n))
    from vmunet.ops._backends import numba_kernels

    mod, _ = numba_kernels()
    if mod is not None:
        import numba

        n_numba = min(n, int(numba.config.NUMBA_NUM_THREADS))
        mod.set_num_threads(n_numba)
        logger.debug("scan kernels: %d numba thread(s), %d torch thread(s)", n_numba, n)
    return n


# --------------------------------------------------------------------------- torchrun


@dataclass(frozen=True)
class TorchrunEnv:
    """The rank of this process in a torchrun job (from its environment variables).

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes in the job (all nodes).
        local_rank: rank on this node (picks the GPU).

    Example:
        >>> TorchrunEnv(rank=0, world_size=2, local_rank=0).is_main
        True
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: plans the run, shows progress and writes the summary."""
        return self.rank == 0


def torchrun_env(environ: Mapping[str, str] | None = None) -> TorchrunEnv | None:
    """The torchrun rank of this process, or ``None`` when not started by torchrun.

    Raises:
        VmunetUserError: the variables are present but not integers in range.

    Example:
        >>> torchrun_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
        TorchrunEnv(rank=1, world_size=2, local_rank=1)
        >>> torchrun_env({}) is None
        True
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise VmunetUserError(
            f"environment RANK={env.get('RANK')!r} WORLD_SIZE={env.get('WORLD_SIZE')!r} "
            f"LOCAL_RANK={env.get('LOCAL_RANK')!r}: expected integers (as torchrun sets them)"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise VmunetUserError(
            f"environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}: expected 0 <= RANK < WORLD_SIZE"
        )
    return TorchrunEnv(rank, world, local)


def rank_device(device: str, env: TorchrunEnv | None) -> str:
    """The device a rank runs on: ``auto`` / ``cuda`` become ``cuda:LOCAL_RANK`` when CUDA is available.

    ``auto`` without CUDA is the CPU; an explicit ``cpu`` or ``cuda:N`` is kept as given.

    Example:
        >>> rank_device("cpu", TorchrunEnv(1, 2, 1))
        'cpu'
    """
    if env is None:
        return device
    name = str(device).strip().lower()
    if name not in ("auto", "cuda"):
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{env.local_rank % max(1, torch.cuda.device_count())}"
    return "cpu" if name == "auto" else device


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Item ``i`` goes to rank ``i % world_size``: deterministic, disjoint, and together complete.

    Example:
        >>> [shard(range(5), r, 2) for r in (0, 1)]
        [[0, 2, 4], [1, 3]]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return list(items[rank::world_size])


class RankGroup:
    """The torchrun ranks of one run, for exchanging Python objects (gloo over ``env://``).

    Opens the default process group unless one is already open (then it is reused and
    left open); use as a context manager, which closes what it opened.

    Args:
        env: this process's rank (:func:`torchrun_env`).

    Example:
        >>> with RankGroup(env) as group:  # doctest: +SKIP
        ...     plan = group.broadcast(plan if env.is_main else None)
    """

    def __init__(self, env: TorchrunEnv) -> None:
        self.env = env
        self._opened = False

    def __enter__(self) -> RankGroup:
        import torch.distributed as dist

        if not dist.is_available():  # pragma: no cover - every standard torch build has it
            raise VmunetUserError("torchrun: this PyTorch build has no torch.distributed")
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", init_method="env://", timeout=RANK_TIMEOUT)
            self._opened = True
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        if self._opened and dist.is_initialized():
            dist.destroy_process_group()
        self._opened = False

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pass anything on the others)."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank is here."""
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- Ray


def import_ray() -> Any:
    """``import ray`` (with Ray Data), or one line saying how to install it.

    Raises:
        VmunetUserError: Ray is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the engine)
    except ImportError:
        raise VmunetUserError(
            "--engine ray needs Ray Data, which is not installed: pip install vmunet[ray]"
        ) from None
    return ray


@contextlib.contextmanager
def _ray_session(address: str | None, num_cpus: int | None) -> Iterator[Any]:
    """A connected Ray: an existing one, the cluster at ``address``, or a local instance (shut down after)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = int(num_cpus) if num_cpus else (os.cpu_count() or 1)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise VmunetUserError(f"--engine ray: cannot start or reach {where}: {exc}".splitlines()[0]) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_map(
    records: Sequence[Mapping[str, Any]],
    predictor: type,
    constructor_kwargs: Mapping[str, Any],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    use_gpus: bool = True,
    actors: int | None = None,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Run ``predictor`` over ``records`` with Ray Data; yields one output record per input, as they finish.

    ``predictor`` is a class: ``predictor(**constructor_kwargs, device=...)`` is built once per
    actor (one model per actor) and called with batches of one record
    (``{column: array of 1}``), returning a batch of the same form.

    Args:
        records: one dict per task (plain values: strings, numbers).
        predictor: the callable class (importable by module path on the workers).
        constructor_kwargs: its keyword arguments (pickled to every actor).
        address: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``, ...); ``None``
            starts a local instance with ``num_cpus`` CPUs, shut down at the end.
        num_cpus: CPUs of the local instance (default: all of this machine's).
        use_gpus: give each actor one GPU when the cluster has GPUs (else CPU actors).
        actors: actor pool size (default: one per GPU, else one per CPU, at most one per task).
        progress: Ray Data's progress bars.

    Raises:
        VmunetUserError: Ray is not installed, or the cluster cannot be reached.
    """
    if not records:
        return
    with _ray_session(address, num_cpus) as ray:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(progress)
        resources = ray.cluster_resources()
        n_gpus = int(resources.get("GPU", 0)) if use_gpus else 0
        n_cpus = max(1, int(resources.get("CPU", 1)))
        size = actors or (n_gpus if n_gpus else n_cpus)
        size = max(1, min(int(size), len(records)))
        device = "cuda" if n_gpus else "cpu"
        logger.info("ray: %d actor(s) on %s (cluster: %d CPU, %d GPU)", size, device, n_cpus, n_gpus)
        ds = ray.data.from_items([dict(r) for r in records], override_num_blocks=min(len(records), 2000))
        out = ds.map_batches(
            predictor,
            fn_constructor_kwargs={**dict(constructor_kwargs), "device": device},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=1,
            num_gpus=1 if n_gpus else 0,
        )
        for row in out.iter_rows():
            yield dict(row)
