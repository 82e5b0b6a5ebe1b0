"""The paper's DETR, in the official code's files (notebooks 01-05).

:mod:`.layers` and :mod:`.attention` are the blocks, each written twice (``impl="scratch"``: the math on
tensors; ``impl="torch"``: PyTorch's fused ops, the same weights); :mod:`.box_ops` the box arithmetic;
:mod:`.backbone` the ResNet; :mod:`.position_encoding` the sine encoding; :mod:`.transformer` the encoder and
decoder; :mod:`.matcher` the Hungarian matching (Eq. 1); :mod:`.detr` the model, its set loss (Eq. 2), its
post-processing and the named configurations.
"""
from .detr import CONFIGS, DETR, MLP, DETRConfig, PostProcess, SetCriterion, build
from .layers import set_impl
from .matcher import HungarianMatcher

__all__ = ["CONFIGS", "DETR", "DETRConfig", "HungarianMatcher", "MLP", "PostProcess", "SetCriterion", "build",
           "set_impl"]
