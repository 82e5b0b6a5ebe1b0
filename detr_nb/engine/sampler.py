"""The data order of a run: a function of ``(seed, epoch)``, each sample's augmentation of ``(seed, epoch, index)``.

That makes a resumed run see exactly the batches an uninterrupted one would, whatever the number of
workers, and lets it skip the batches it had already consumed.
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import Iterator, List

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed python/numpy/torch (CPU) for one sample, restoring the callers' RNG states afterwards.

    Only the CPU generator: ``torch.manual_seed`` would also reseed every CUDA device, and nothing here
    would restore them (dropout on the GPU would then repeat with every sample seed)."""
    py, npy = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class SeededSamples(Dataset):
    """Dataset wrapper indexed by ``(index, seed)``: the sample's augmentation depends on the seed only.

    That makes augmentations reproducible whatever the number of workers and whatever batch a resumed
    run starts from.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with _seeded(seed):
            return self.dataset[index]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # shifted as a Python int: numpy 1.x would turn uint64 >> int into a float64 (and refuse it)
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]) >> 1


class EpochBatchSampler:
    """Batches of ``(index, sample_seed)`` for one epoch of one process.

    The order comes from ``DistributedSampler(seed=seed)`` with ``set_epoch(epoch)`` (a permutation
    seeded by ``seed + epoch``; with one process the shard is everything). ``set_epoch(e, skip)``
    skips the first ``skip`` batches: the ones a resumed run has already consumed.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        self.sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                          seed=seed, drop_last=False)
        self.batch_size, self.seed = batch_size, seed
        # a last incomplete batch is dropped (every step sees batch_size images), unless it is the only one
        self.drop_last = self.sampler.num_samples >= batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def batches_per_epoch(self) -> int:
        n = self.sampler.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip)

    def __iter__(self) -> Iterator[List]:
        indices = list(self.sampler)
        for b in range(self.skip, self.batches_per_epoch()):
            chunk = indices[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in chunk]
