"""A real photograph without internet, and the tensor DETR reads from it (notebooks 01, 04, 08, 11)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from matplotlib import cbook
from PIL import Image
from torch import Tensor

from ..data import open_image
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


def sample_image() -> Image.Image:
    """matplotlib's portrait of Grace Hopper, shipped with matplotlib (PIL RGB, 512 x 600)."""
    return open_image(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def image_to_tensor(image: Image.Image, short_side: Optional[int] = None, max_side: Optional[int] = None) -> Tensor:
    """PIL image -> normalised float tensor (3, H, W), as DETR's validation transform: the shorter side resized
    to ``short_side`` (aspect kept), the longer one capped at ``max_side``, ImageNet mean and std."""
    w, h = image.size
    scale = 1.0 if short_side is None else short_side / min(w, h)
    if max_side is not None and max(w, h) * scale > max_side:
        scale = max_side / max(w, h)
    if scale != 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
