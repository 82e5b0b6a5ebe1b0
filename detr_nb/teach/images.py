"""Pictures for the notebooks: a real photograph without internet, and the tensor DETR reads from it."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


def sample_image():
    """A real photograph that needs no internet: matplotlib's Grace Hopper (PIL RGB, 512 x 600)."""
    from matplotlib import cbook
    from ..data.image_io import open_image

    return open_image(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def image_to_tensor(image, short_side: Optional[int] = None, max_side: Optional[int] = None) -> Tensor:
    """PIL image -> normalised float tensor (3, H, W), as DETR's validation transform.

    ``short_side`` resizes so that the shorter side has that length (aspect kept), then
    ``max_side`` caps the longer side. ImageNet mean/std normalisation.
    """
    from PIL import Image

    w, h = image.size
    scale = 1.0
    if short_side is not None:
        scale = short_side / min(w, h)
    if max_side is not None and max(w, h) * scale > max_side:
        scale = max_side / max(w, h)
    if scale != 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std
