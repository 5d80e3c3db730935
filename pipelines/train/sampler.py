"""A sampler whose order depends only on (seed, epoch), so a resumed training sees the same
batches as an uninterrupted one."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """Draws ``num_samples`` indices per epoch (with replacement when more than the dataset),
    from a generator seeded by ``seed`` and the epoch. Lightning calls :meth:`set_epoch`.

    Args:
        data_source: the dataset (only its length is used).
        num_samples: indices per epoch.
        seed: base seed.
    """

    def __init__(self, data_source: Sized, num_samples: int, seed: int = 0) -> None:
        self._size = len(data_source)
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.num_samples <= self._size:
            order = torch.randperm(self._size, generator=generator)[: self.num_samples]
        else:
            order = torch.randint(self._size, (self.num_samples,), generator=generator)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples
