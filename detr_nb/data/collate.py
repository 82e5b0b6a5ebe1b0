"""Batching images of different sizes: pad to the largest and mark the padding (notebook 06, data)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch


def pad_images(images: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pad ``(3, H_i, W_i)`` tensors at the bottom/right to the largest H and W.

    Returns ``images`` ``(B, 3, H, W)`` (zeros on padding) and ``mask`` ``(B, H, W)`` bool, True on padding.
    """
    if len(images) == 0:
        raise ValueError("cannot collate an empty batch")
    c = images[0].shape[0]
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    batch = images[0].new_zeros((len(images), c, h, w))  # (B, 3, H, W)
    mask = torch.ones((len(images), h, w), dtype=torch.bool)  # (B, H, W), True = padding
    for i, im in enumerate(images):
        ih, iw = im.shape[-2:]
        batch[i, :, :ih, :iw].copy_(im)
        mask[i, :ih, :iw] = False
    return batch, mask


def collate_fn(batch: Sequence[Tuple[torch.Tensor, Dict]]) -> Tuple[torch.Tensor, torch.Tensor, List[Dict]]:
    """``[(image, target), ...] -> (images (B,3,H,W), mask (B,H,W) bool True=pad, [target, ...])``.

    Targets pass unchanged, as the list of dicts the matcher takes; boxes stay normalised to each
    image's own (unpadded) size.
    """
    images, targets = zip(*batch)
    images, mask = pad_images(images)
    return images, mask, list(targets)
