"""DETR, its set loss and its post-processing, and the named configurations. Notebooks 04 and 05.

:class:`DETR` is backbone -> input_proj -> transformer -> class and box heads; :class:`SetCriterion` is the
Hungarian loss (Eq. 2) on the matcher's pairs, for the last decoder layer and each earlier one;
:class:`PostProcess` turns outputs into scored boxes in pixels. :func:`build` assembles a model from a
:class:`DETRConfig`; ``detr_r50`` is the official configuration, whose keys are the released checkpoint's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import layers
from .backbone import Backbone, Joiner, ResNet
from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer


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
            x = layer(x) if i == len(self.layers) - 1 else self.activation(layer(x))
        return x


class DETR(nn.Module):
    """DEtection TRansformer (Carion et al. 2020). Notebook 04.

    ``num_classes``: class ids (max id + 1); the class head has num_classes + 1 outputs, the last one "no
    object". ``num_queries``: the most objects one image can hold. ``aux_loss``: also return the heads'
    outputs on the earlier decoder layers (``aux_outputs``), which the set loss supervises too.
    """

    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int,
                 aux_loss: bool = True):
        super().__init__()
        hidden = transformer.d_model
        self.num_classes, self.num_queries, self.aux_loss = num_classes, num_queries, aux_loss
        self.transformer = transformer
        self.class_embed = layers.Linear(hidden, num_classes + 1)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.input_proj = layers.Conv2d(backbone.num_channels, hidden, kernel_size=1)
        self.backbone = backbone

    def forward(self, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, object]:
        """images (B, 3, H, W) normalised, mask (B, H, W) bool True = padding (None: no padding) ->
        ``pred_logits`` (B, Q, num_classes + 1), ``pred_boxes`` (B, Q, 4) cx, cy, w, h in [0, 1], and
        ``aux_outputs``: the same for decoder layers 0 .. L-2."""
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool, device=images.device)
        feat, fmask, pos = self.backbone(images, mask)                # (B, Cb, h, w), (B, h, w), (B, C, h, w)
        hs = self.transformer(self.input_proj(feat), fmask, self.query_embed.weight, pos)[0]   # (L, B, Q, C)
        return self.outputs(self.class_embed(hs), self.bbox_embed(hs).sigmoid())

    def outputs(self, logits: Tensor, boxes: Tensor) -> Dict[str, object]:
        """Every layer's logits (L, B, Q, C+1) and boxes (L, B, Q, 4) -> the output dict (last layer on top)."""
        out: Dict[str, object] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out


class SetCriterion(nn.Module):
    """The Hungarian loss (Eq. 2), for the last decoder layer and, as auxiliary losses, each earlier one.
    Notebook 05.

    For each supervised layer the matcher pairs objects with queries, then ``loss_ce`` is the cross-entropy of
    every query's class (its object's, or "no object", weighted ``eos_coef``), ``loss_bbox`` the L1 distance
    and ``loss_giou`` 1 - GIoU of the matched boxes, each summed and divided by ``num_boxes``, the batch's
    object count. ``criterion(outputs, targets)`` returns those terms (keys ``_0`` .. for the earlier layers),
    ``loss``: their sum weighted by ``weight_dict``, and two numbers that are logged, never optimised:
    ``class_error`` (100 - accuracy on the matched queries) and ``cardinality_error`` (|predicted objects -
    objects| per image), of the last layer. Everything runs in float32.
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: Dict[str, float], eos_coef: float = 0.1):
        super().__init__()
        self.num_classes, self.matcher, self.weight_dict = num_classes, matcher, dict(weight_dict)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)          # (C+1,)

    def supervised(self, outputs: dict) -> List[tuple]:
        """``(key suffix, outputs)`` of every layer the loss supervises: the last, then the auxiliary ones."""
        return [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]

    def loss_labels(self, outputs: dict, targets: Sequence[dict], indices, num_boxes: Tensor) -> Dict[str, Tensor]:
        logits = outputs["pred_logits"].float()                                        # (B, Q, C+1)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[matched(indices)] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}

    def loss_boxes(self, outputs: dict, targets: Sequence[dict], indices, num_boxes: Tensor) -> Dict[str, Tensor]:
        src = outputs["pred_boxes"][matched(indices)].float()                         # (M, 4) matched queries
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).float()   # (M, 4) their objects
        # each pair against itself: (M, 1, 4) with (M, 1, 4) -> (M, 1, 1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(src)[:, None], box_cxcywh_to_xyxy(tgt)[:, None])[:, 0, 0]
        return {"loss_bbox": (src - tgt).abs().sum() / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    def predicted(self, logits: Tensor) -> Tuple[Tensor, Tensor]:
        """logits (..., C+1) -> each query's predicted class and whether it says "an object", (...) each."""
        labels = logits.argmax(-1)
        return labels, labels != self.num_classes

    @torch.no_grad()
    def logged_errors(self, outputs: dict, targets: Sequence[dict], indices) -> Dict[str, Tensor]:
        predicted, is_object = self.predicted(outputs["pred_logits"])                 # (B, Q) each
        labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        correct = (predicted[matched(indices)] == labels).float()
        n_true = torch.as_tensor([len(t["labels"]) for t in targets], dtype=torch.float32).to(is_object.device)
        return {"class_error": 100 - 100 * correct.mean() if len(correct) else torch.full((), 100.0),
                "cardinality_error": (is_object.sum(-1) - n_true).abs().mean()}

    def forward(self, outputs: dict, targets: Sequence[dict]) -> Dict[str, Tensor]:
        device = outputs["pred_logits"].device
        # objects per process, averaged over processes under DDP, at least 1 (a fill kernel: no host sync)
        num_boxes = torch.full((), float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        num_boxes = num_boxes.clamp(min=1)
        losses: Dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        for suffix, out in self.supervised(outputs):
            indices = self.matcher(out, targets)                       # the matching is redone for every layer
            terms = {**self.loss_labels(out, targets, indices, num_boxes),
                     **self.loss_boxes(out, targets, indices, num_boxes)}
            total = total + sum(w * terms[k] for k, w in self.weight_dict.items())
            losses.update({k + suffix: v for k, v in terms.items()})
            if suffix == "":
                losses.update(self.logged_errors(out, targets, indices))
        losses["loss"] = total
        return losses


def matched(indices) -> tuple:
    """The matcher's indices as ``(image, query)`` index tensors of every matched pair, ``(M,)`` each."""
    image = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return image, torch.cat([src for src, _ in indices])


class PostProcess(nn.Module):
    """Outputs -> per image ``scores (Q,)``, ``labels (Q,)``, ``boxes (Q, 4)`` xyxy in pixels of ``target_sizes``
    (B, 2) = (h, w). The paper's scoring: softmax, the best real class (the "no object" column left out).
    Every query is kept: COCO AP wants them all, a display filters by score."""

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> List[Dict[str, Tensor]]:
        scores, labels = outputs["pred_logits"].float().softmax(-1)[..., :-1].max(-1)  # (B, Q) each
        boxes = self.to_pixels(outputs["pred_boxes"], target_sizes)                     # (B, Q, 4)
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]

    @staticmethod
    def to_pixels(boxes: Tensor, target_sizes: Tensor) -> Tensor:
        """Normalised cxcywh (B, K, 4) -> xyxy in pixels of each image's (h, w)."""
        h, w = torch.as_tensor(target_sizes, device=boxes.device).float().unbind(-1)   # (B,) each
        return box_cxcywh_to_xyxy(boxes.float()) * torch.stack([w, h, w, h], -1)[:, None, :]


@dataclass
class DETRConfig:
    """Every architectural choice of a DETR (kept as ``model.config``)."""

    backbone: str = "resnet50"          # resnet18 | resnet34 | resnet50 | resnet101
    dilation: bool = False              # DC5: dilate the last stage (stride 16)
    return_layer: str = "layer4"        # layer2 | layer3 | layer4 (stride 8 / 16 / 32)
    backbone_norm: str = "frozen_bn"    # frozen_bn (official) | bn (trained from scratch)
    backbone_width: float = 1.0         # channel multiplier (1.0 = torchvision)
    frozen_stages: int = 1              # official: conv1 + layer1 frozen; 0 = train the whole backbone
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    num_queries: int = 100
    aux_loss: bool = True


CONFIGS: Dict[str, DETRConfig] = {
    "detr_r50": DETRConfig(),
    "detr_r50_dc5": DETRConfig(dilation=True),
    "detr_r101": DETRConfig(backbone="resnet101"),
    "detr_r101_dc5": DETRConfig(backbone="resnet101", dilation=True),
    # Ours, for CPUs: a half-width ResNet-18 cut at layer3 (stride 16, 128 channels) trained from scratch,
    # 2+2 layers, 25 queries.
    "detr_tiny": DETRConfig(backbone="resnet18", return_layer="layer3", backbone_norm="bn", backbone_width=0.5,
                            frozen_stages=0, hidden_dim=128, enc_layers=2, dec_layers=2, dim_feedforward=512,
                            dropout=0.0, num_queries=25),
    # Ours: a full ResNet-18 (frozen BN, loads ImageNet weights), 3+3 layers, 50 queries.
    "detr_small": DETRConfig(backbone="resnet18", enc_layers=3, dec_layers=3, dim_feedforward=1024, num_queries=50),
}


def build(cfg: DETRConfig, num_classes: int, impl: str = "torch", pretrained_backbone: bool = False,
          model_class: type = DETR) -> DETR:
    """A ``model_class`` (DETR, or an extension of it) of configuration ``cfg``; ``impl`` "torch" (PyTorch's
    fused ops) or "scratch" (the math, same weights); ``pretrained_backbone``: torchvision's ImageNet weights."""
    body = ResNet(cfg.backbone, cfg.backbone_norm, cfg.dilation, cfg.return_layer, cfg.backbone_width)
    if pretrained_backbone:
        body.load_imagenet_weights()
    backbone = Joiner(Backbone(body, cfg.frozen_stages), PositionEmbeddingSine(cfg.hidden_dim // 2))
    transformer = Transformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward,
                              cfg.dropout, cfg.pre_norm)
    model = model_class(backbone, transformer, num_classes, cfg.num_queries, cfg.aux_loss)
    model.config = dataclasses.replace(cfg)
    return layers.set_impl(model, impl)
