"""``DatasetWrapper``: a dataset that changes how samples are made and passes everything else (``coco``,
``ids``, ``categories``, ``num_classes``, ``image_sizes``...) through to the dataset it wraps."""
from __future__ import annotations

from torch.utils.data import Dataset


class DatasetWrapper(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        # only called for attributes the wrapper lacks; never for "dataset" itself (unpickling looks for
        # attributes before __dict__ is filled: forwarding those would recurse)
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
