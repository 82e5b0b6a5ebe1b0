"""The paper's DETR (notebooks 01-04): backbone -> position encoding -> transformer -> heads.

One concept per module: :mod:`.backbone` (ResNet, frozen BatchNorm), :mod:`.position_encoding` (sine and
learned), :mod:`.transformer` (encoder and decoder), :mod:`.detr` (queries and heads), :mod:`.pretrained`
(the released checkpoints), :mod:`.params` (parameter counts). ``detr_nb.configs.build_model`` assembles them.
"""
from .backbone import Backbone, Joiner
from .detr import DETR, MLP
from .position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine, sine_embed
from .pretrained import load_pretrained
from .transformer import Transformer

__all__ = ["Backbone", "DETR", "Joiner", "MLP", "PositionEmbeddingLearned", "PositionEmbeddingSine", "Transformer",
           "load_pretrained", "sine_embed"]
