"""The data order of a run, a function of ``(seed, epoch)``, and each sample's augmentation, of ``(seed, epoch,
index)``: a resumed run sees exactly the batches an uninterrupted one would, whatever the number of workers."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator, List

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


@dataclass
class SeededSamples(Dataset):
    """Dataset indexed by ``(index, seed)``: python's, numpy's and torch's CPU generators are seeded for the sample,
    then the caller's states restored. Not ``torch.manual_seed``: it would reseed the CUDA generators too, and
    dropout on the GPU would repeat with every sample seed."""
    dataset: Dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py, npy = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # shifted as a Python int: numpy 1.x would turn uint64 >> int into a float64 (and refuse it)
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]) >> 1


class EpochBatchSampler:
    """Batches of ``(index, sample_seed)`` for one epoch of one process, in the order of ``DistributedSampler``
    (a permutation seeded by ``seed + epoch``); ``set_epoch(e, skip)`` skips the batches a resumed run consumed."""

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
