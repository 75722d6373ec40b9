"""Resumable, distributed-aware sampling with per-sample augmentation seeds.

Exact resume needs two things from data loading: the order of samples in an
epoch must be a pure function of ``(seed, epoch)``, and the random augmentation
of a sample must not depend on which worker process drew it or on how many
samples came before it. :class:`ResumableSampler` yields ``(index, seed)``
pairs; :class:`SeededDataset` re-seeds the random generators (Python, NumPy,
torch, and the transform's own generator) from that seed before loading the
sample, and restores the caller's generators afterwards.

Example:
    >>> s = ResumableSampler(10, shuffle=True, seed=0)
    >>> s.set_epoch(3, start=4)   # skip the first 4 samples of epoch 3 (resume)
    >>> len(s)
    6
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["ResumableSampler", "SeededDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on ``(seed, epoch, index)``."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index + 1]).generate_state(1)[0])


class ResumableSampler(Sampler):
    """Shuffle per epoch from ``(seed, epoch)``, shard across ranks, start mid-epoch.

    Args:
        length: number of samples in the dataset.
        shuffle: shuffle (training) or keep the order (validation).
        seed: base seed shared by all ranks.
        rank: this process's rank.
        world_size: number of processes.
        pad: repeat samples so every rank gets the same count (needed for DDP training, where each
            rank must take the same number of steps); without it, shards are disjoint and uneven
            (validation, so nothing is counted twice).

    Example:
        >>> list(ResumableSampler(5, shuffle=False, seed=0, rank=1, world_size=2, pad=False))[0][0]
        1
    """

    def __init__(
        self,
        length: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip the first ``start`` samples of this rank's share."""
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.world_size > 1:
            total = -(-self.length // self.world_size) * self.world_size
            order = (order * (total // self.length + 1))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self._indices()[self.start :]:
            yield (i, sample_seed(self.seed, self.epoch, i))

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


def _reseed_transforms(obj: Any, seed: int, depth: int = 0) -> None:
    if obj is None or depth > 3:
        return
    if hasattr(obj, "set_random_seed"):  # albumentations >= 2
        obj.set_random_seed(seed)
    elif hasattr(obj, "set_random_state"):  # MONAI Randomizable / Compose
        with contextlib.suppress(TypeError):
            obj.set_random_state(seed=seed)


class SeededDataset(Dataset):
    """Wrap a dataset so that ``ds[(index, seed)]`` loads ``index`` with all RNGs seeded by ``seed``.

    The caller's Python / NumPy / torch generator states are restored afterwards, so
    loading in the main process (``num_workers=0``) does not disturb, e.g., drop-path noise.

    Example:
        >>> ds = SeededDataset([10, 20, 30])
        >>> ds[(1, 123)]
        20
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Any) -> Any:
        if not isinstance(item, tuple):
            return self.dataset[item]
        index, seed = item
        py_state = random.getstate()
        np_state = np.random.get_state()  # noqa: NPY002 - the global state is what we save
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            torch.manual_seed(seed)
            for name in ("transform", "transforms"):
                _reseed_transforms(getattr(self.dataset, name, None), seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)  # noqa: NPY002
