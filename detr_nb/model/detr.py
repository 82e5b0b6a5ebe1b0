"""The DETR module: backbone -> input_proj -> transformer -> class and box heads. Notebook 04."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..nn import layers


class MLP(nn.Module):
    """Linear layers with ReLU between them (not after the last). DETR's box head: 256->256->256->4."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(layers.Linear(i, o) for i, o in zip(dims, outs))
        self.activation = layers.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


class DETR(nn.Module):
    """DEtection TRansformer (Carion et al. 2020). Notebook 04.

    Args:
        backbone: a ``Joiner`` (ResNet + position encoding), exposing ``num_channels``.
        transformer: a ``Transformer`` (``d_model`` = hidden dim).
        num_classes: number of class ids (max id + 1); the head has num_classes + 1 outputs,
            the last one is "no object".
        num_queries: number of object queries = most objects the model can detect in one image.
        aux_loss: also return the heads' outputs on the earlier decoder layers (``aux_outputs``).
    """

    def __init__(self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int,
                 aux_loss: bool = True):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries!r}")
        hidden = transformer.d_model
        self.num_classes, self.num_queries, self.aux_loss = num_classes, num_queries, aux_loss
        self.transformer = transformer
        self.class_embed = layers.Linear(hidden, num_classes + 1)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.input_proj = layers.Conv2d(backbone.num_channels, hidden, kernel_size=1)
        self.backbone = backbone

    # -- pieces of forward, separate so that the aids (detr_nb.aids.AidedDETR) can reuse them ---------
    def check_inputs(self, images: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Validate images (B, 3, H, W) float and mask (B, H, W) bool; return the mask (zeros if None)."""
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, 3, H, W), got rank {images.dim()} shape {tuple(images.shape)}"
                             + (" (add a batch dim: images[None])" if images.dim() == 3 else ""))
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB) in dim 1, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (normalised), got dtype {images.dtype}")
        B, _, H, W = images.shape
        if mask is None:
            return torch.zeros(B, H, W, dtype=torch.bool, device=images.device)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = padding), got "
                             f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}")
        if tuple(mask.shape) != (B, H, W):
            raise ValueError(f"mask must have shape (B, H, W) = {(B, H, W)} to match images, got {tuple(mask.shape)}")
        return mask

    def queries(self, batch_size: int) -> Tensor:
        """The learned object queries, used as the decoder's query_pos: (B, Q, C)."""
        return self.query_embed.weight[None].expand(batch_size, -1, -1)

    def heads(self, hs: Tensor, boxes: Optional[Tensor] = None) -> Dict[str, object]:
        """hs (L, B, Q, C) decoder outputs -> the output dict (last layer + aux_outputs).

        ``boxes`` (L, B, Q, 4): boxes computed elsewhere (iterative refinement, detr_nb.aids) instead of
        ``sigmoid(bbox_embed(hs))``."""
        logits = self.class_embed(hs)                  # (L, B, Q, num_classes + 1)
        if boxes is None:
            boxes = self.bbox_embed(hs).sigmoid()      # (L, B, Q, 4) normalised cx, cy, w, h
        out: Dict[str, object] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def forward(self, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, object]:
        """images (B, 3, H, W) float, mask (B, H, W) bool True = padding.

        Returns {"pred_logits" (B, Q, num_classes+1), "pred_boxes" (B, Q, 4) cx,cy,w,h in [0, 1],
        "aux_outputs": [same for decoder layers 0..L-2]}.
        """
        mask = self.check_inputs(images, mask)
        feat, fmask, pos = self.backbone(images, mask)            # (B, Cb, h, w), (B, h, w), (B, C, h, w)
        src = self.input_proj(feat)                               # (B, C, h, w)
        hs, _ = self.transformer(src, fmask, self.queries(images.shape[0]), pos)   # (L, B, Q, C)
        return self.heads(hs)
