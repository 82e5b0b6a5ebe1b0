"""Decode each image once: a dataset wrapper that keeps the raw samples in memory (the main job's input pipeline).

The main job reads its 4,000 training images (96 px PNGs, ~110 MB decoded) about eight times over in 540 s;
decoding them, and turning their annotations into targets, is the part of a sample that is the same every
time. :class:`InMemoryImages` keeps that part (the PIL image and the target of
:meth:`~detr_nb.data.coco.CocoDetection.get_raw`) after the first read; the transforms (random flips...) still
run per sample, so the samples, and the training, are the same as without it (tests/test_convergence_means.py).
Memory grows by the decoded size of the images read; meant for small sets.
"""
from __future__ import annotations

from typing import Dict, Tuple

from .wrapper import DatasetWrapper


class InMemoryImages(DatasetWrapper):
    """``InMemoryImages(coco_dataset)[i]`` == ``coco_dataset[i]``, decoding image ``i`` only the first time."""

    def __init__(self, dataset):
        super().__init__(dataset)
        self._raw: Dict[int, Tuple] = {}

    def __getitem__(self, index: int):
        raw = self._raw.get(index)
        if raw is None:
            try:
                raw = self.dataset.get_raw(index)
            except OSError:
                return self.dataset[index]       # an unreadable image: the dataset's own skip-or-raise
            self._raw[index] = raw
        return self.dataset.transform(*raw)
