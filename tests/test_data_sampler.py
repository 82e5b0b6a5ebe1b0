"""The run's seeded data order: a resumed run sees exactly the batches an uninterrupted one would (notebook 07)."""
import random

import numpy as np
import torch

from detr_nb.data import EpochBatchSampler, SeededSamples


class Draws(torch.utils.data.Dataset):
    """Sample i is (i, a draw from each of python's, numpy's and torch's generators): what augmentations use."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i, random.random(), float(np.random.rand()), float(torch.rand(()))


def test_same_seed_and_epoch_same_batches_and_skip_resumes():
    a, b = EpochBatchSampler(Draws(), 3, seed=1), EpochBatchSampler(Draws(), 3, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    full = list(a)
    assert full == list(b) and len(a) == 3 == a.batches_per_epoch()  # 10 // 3: the incomplete batch is dropped
    assert len({i for batch in full for i, _ in batch}) == 9  # 9 distinct images, seeded per (seed, epoch, index)
    b.set_epoch(2, skip=1)  # a run resumed after its first batch
    assert list(b) == full[1:] and len(b) == 2
    a.set_epoch(3)
    assert [i for batch in a for i, _ in batch] != [i for batch in full for i, _ in batch]
    # two processes: disjoint shards covering the epoch
    shards = [EpochBatchSampler(Draws(), 5, 1, num_replicas=2, rank=r) for r in (0, 1)]
    assert sorted(i for r in shards for batch in r for i, _ in batch) == list(range(10))


def test_a_sample_depends_on_its_seed_only_and_leaves_the_callers_generators_alone():
    ds = SeededSamples(Draws())
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    caller = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = ds[3, 1234]
    assert ds[3, 1234] == first and ds[3, 1235] != first and len(ds) == 10
    assert random.getstate() == caller[0] and np.array_equal(np.random.get_state()[1], caller[1])
    assert torch.equal(torch.get_rng_state(), caller[2])
