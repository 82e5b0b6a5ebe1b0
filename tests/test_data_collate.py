"""Collate pads to the largest image and marks padding (notebook 06, data)."""
import torch

from detr_nb.data import collate_fn


def test_collate_shapes_mask_and_targets():
    a, b = torch.rand(3, 20, 30), torch.rand(3, 25, 10)
    ta = {"boxes": torch.rand(2, 4), "labels": torch.tensor([1, 2])}
    tb = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    images, mask, targets = collate_fn([(a, ta), (b, tb)])
    assert images.shape == (2, 3, 25, 30) and mask.shape == (2, 25, 30) and mask.dtype == torch.bool
    assert torch.equal(images[0, :, :20, :30], a) and torch.equal(images[1, :, :25, :10], b)
    assert not mask[0, :20, :30].any() and mask[0, 20:].all() and not mask[1, :, :10].any() and mask[1, :, 10:].all()
    assert images[0, :, 20:].abs().sum() == 0 and images[1, :, :, 10:].abs().sum() == 0
    assert targets[0] is ta and targets[1] is tb
