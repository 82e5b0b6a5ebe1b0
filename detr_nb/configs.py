"""Named DETR configurations, ``build_model`` and initialisation schemes. Notebook 04.

The model zoo: it composes the paper's DETR (:mod:`detr_nb.model`) and, when a configuration switches a
convergence aid on, :class:`~detr_nb.aids.AidedDETR` (:mod:`detr_nb.aids`).

The official configurations (``detr_r50``, ``detr_r50_dc5``, ``detr_r101``, ``detr_r101_dc5``)
are exact: ``build_model("detr_r50", num_classes=91)`` has the released checkpoint's keys.
``detr_tiny`` / ``detr_small`` are ours, for CPU and quick GPU experiments.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional

import torch.nn as nn

from .nn import layers
from .nn.attention import MultiheadAttention
from .model.backbone import Backbone, Joiner
from .model.detr import DETR
from .model.position_encoding import build_position_encoding
from .model.transformer import Transformer
from .aids.model import AidedDETR


@dataclass
class DETRConfig:
    """Every architectural choice of a DETR model (stored as ``model.config``)."""

    # backbone
    backbone: str = "resnet50"          # resnet18 | resnet34 | resnet50 | resnet101
    dilation: bool = False              # DC5: dilate the last stage (stride 16)
    return_layer: str = "layer4"        # layer2 | layer3 | layer4 (stride 8 / 16 / 32)
    backbone_norm: str = "frozen_bn"    # frozen_bn (official) | bn | gn (from-scratch, small batch)
    backbone_width: float = 1.0         # channel multiplier (1.0 = torchvision)
    frozen_stages: int = 1              # official: conv1 + layer1 frozen; 0 = train the whole backbone
    position_embedding: str = "sine"    # sine | learned
    # transformer
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    # DETR
    num_queries: int = 100
    aux_loss: bool = True
    return_intermediate: bool = True
    init: str = "official"              # see apply_init
    num_classes: Optional[int] = None   # set by build_model
    # convergence aids (detr_nb.aids), all off = the paper's DETR
    num_groups: int = 1                 # Group DETR: query groups in training (1 = off)
    box_refine: bool = False            # anchor queries (DAB-DETR) + iterative box refinement
    two_stage: bool = False             # two-stage query selection + encoder loss (implies box_refine)
    class_prior: Optional[float] = None  # class-bias init to this prior (focal loss), None = PyTorch default
    anchor_wh: float = 0.15             # two-stage: side of each encoder cell's anchor box
    dn_groups: int = 0                  # DN-DETR: groups of noised ground-truth queries in training (0 = off)
    dn_box_noise: float = 0.4           # DN-DETR box noise scale (lambda_1 = lambda_2)
    dn_label_noise: float = 0.2         # DN-DETR label flip probability
    query_content: str = "learned"      # two-stage content queries: learned (DINO) | encoder (RT-DETR)

    def aided(self) -> bool:
        """True when any convergence aid is on (the model is then a ``detr_nb.aids.AidedDETR``)."""
        return (self.num_groups > 1 or self.box_refine or self.two_stage or self.class_prior is not None
                or self.dn_groups > 0)


CONFIGS: Dict[str, DETRConfig] = {
    "detr_r50": DETRConfig(),
    "detr_r50_dc5": DETRConfig(dilation=True),
    "detr_r101": DETRConfig(backbone="resnet101"),
    "detr_r101_dc5": DETRConfig(backbone="resnet101", dilation=True),
    # Ours: a half-width ResNet-18 cut at layer3 (stride 16, 128 channels) with GroupNorm so it
    # trains from scratch with small batches on a CPU; 2+2 layers, 25 queries.
    "detr_tiny": DETRConfig(backbone="resnet18", return_layer="layer3", backbone_norm="gn", backbone_width=0.5,
                            frozen_stages=0, hidden_dim=128, nheads=8, enc_layers=2, dec_layers=2,
                            dim_feedforward=512, dropout=0.0, num_queries=25),
    # Ours, the main job's model: detr_tiny with the convergence aids that measured best on the CPU
    # budget (docs/convergence.md): a stride-8 half-width ResNet-18 cut at layer2 with trainable
    # BatchNorm, 1+3 layers, 30 queries, two-stage query selection + box refinement, focal-loss prior, and
    # (issue 16) the selected encoder cells' features as the decoder's content queries.
    "detr_tiny_aided": DETRConfig(backbone="resnet18", return_layer="layer2", backbone_norm="bn", backbone_width=0.5,
                                  frozen_stages=0, hidden_dim=128, nheads=8, enc_layers=1, dec_layers=3,
                                  dim_feedforward=512, dropout=0.0, num_queries=30, two_stage=True,
                                  box_refine=True, class_prior=0.01, query_content="encoder"),
    # Ours: full ResNet-18 (frozen BN, loads ImageNet weights), 3+3 layers, 50 queries.
    "detr_small": DETRConfig(backbone="resnet18", hidden_dim=256, nheads=8, enc_layers=3, dec_layers=3,
                             dim_feedforward=1024, num_queries=50),
}

# DETRConfig fields added after checkpoints were first written, with the value a checkpoint without them was
# trained with (a named config's default may differ today), and fields since removed, which change no
# weight and are dropped (look_forward_twice changed gradients only): engine.build.model_from_checkpoint.
ADDED_FIELDS = {"query_content": "learned"}
REMOVED_FIELDS = ("look_forward_twice", "train_backbone")

INIT_SCHEMES = ("official", "default", "xavier", "kaiming", "uniform002")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_model_config(cfg: DETRConfig) -> DETRConfig:
    """Refuse a configuration that cannot build a model: ``ValueError`` whose message starts with the
    field's name (``num_queries must be an integer >= 1, got 0``), so the CLI can name the option."""
    from .model.backbone import ARCHS, NORMS, RETURN_LAYERS

    choices = {"backbone": tuple(ARCHS), "return_layer": tuple(RETURN_LAYERS), "backbone_norm": NORMS,
               "position_embedding": ("sine", "learned"), "init": INIT_SCHEMES,
               "query_content": ("learned", "encoder")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    for name in ("dilation", "pre_norm", "aux_loss", "return_intermediate", "box_refine", "two_stage"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    minimum = {"hidden_dim": 1, "nheads": 1, "enc_layers": 0, "dec_layers": 1, "dim_feedforward": 1,
               "num_queries": 1, "num_groups": 1, "dn_groups": 0, "frozen_stages": 0}
    for name, low in minimum.items():
        value = getattr(cfg, name)
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    ranges = {"backbone_width": (lambda v: v > 0, "> 0"), "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
              "anchor_wh": (lambda v: 0 < v <= 1, "in (0, 1]"), "dn_box_noise": (lambda v: v >= 0, ">= 0"),
              "dn_label_noise": (lambda v: 0 <= v <= 1, "in [0, 1]")}
    for name, (inside, says) in ranges.items():
        v = getattr(cfg, name)
        if not (_is_number(v) and inside(v)):
            raise ValueError(f"{name} must be a number {says}, got {v!r}")
    if cfg.class_prior is not None and not (_is_number(cfg.class_prior) and 0 < cfg.class_prior < 1):
        raise ValueError(f"class_prior must be a probability in (0, 1) or null, got {cfg.class_prior!r}")
    if cfg.hidden_dim % cfg.nheads:
        raise ValueError(f"hidden_dim={cfg.hidden_dim} must be divisible by nheads={cfg.nheads}")
    if cfg.hidden_dim % 4:   # two sine encodings (y, x) of hidden_dim/2 channels each, sin/cos interleaved
        raise ValueError(f"hidden_dim must be a multiple of 4 (the 2-D position encoding), got {cfg.hidden_dim}")
    if cfg.hidden_dim % 8 and (cfg.box_refine or cfg.two_stage or cfg.dn_groups):
        raise ValueError(f"hidden_dim must be a multiple of 8 with reference boxes (4 sine encodings), "
                         f"got {cfg.hidden_dim}")
    if cfg.query_content == "encoder" and not cfg.two_stage:
        raise ValueError("query_content='encoder' needs two_stage=true (the content comes from the encoder's cells)")
    if cfg.backbone_norm == "gn" and max(int(round(64 * cfg.backbone_width)), 8) % 8:
        raise ValueError(f"backbone_width={cfg.backbone_width} gives channel counts GroupNorm cannot split "
                         f"(64 x width must be a multiple of 8)")
    return cfg


def get_config(name: str, **overrides) -> DETRConfig:
    """A copy of the named config with ``overrides`` applied (unknown fields -> ValueError)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(sorted(CONFIGS))}")
    fields = {f.name for f in dataclasses.fields(DETRConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown config field(s) {bad}; DETRConfig fields: {', '.join(sorted(fields))}")
    return dataclasses.replace(CONFIGS[name], **overrides)


def build_model(name: str = "detr_r50", *, num_classes: int, impl: str = "torch",
                pretrained_backbone: bool = False, **overrides) -> DETR:
    """Build a DETR from a named config. Notebook 04.

    Args:
        name: one of ``CONFIGS`` (detr_r50, detr_r50_dc5, detr_r101, detr_r101_dc5, detr_tiny, detr_small).
        num_classes: max category id + 1 (COCO: 91); the class head has num_classes + 1 outputs.
        impl: "torch" (fused ops) or "scratch" (the math, for reading); same weights either way.
        pretrained_backbone: load torchvision's ImageNet weights (IMAGENET1K_V1) into the ResNet.
        **overrides: any DETRConfig field, e.g. ``num_queries=50``.
    """
    layers.check_impl(impl)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1 (max category id + 1), got {num_classes!r}")
    cfg = check_model_config(get_config(name, num_classes=num_classes, **overrides))
    body = Backbone(cfg.backbone, norm=cfg.backbone_norm, dilation=cfg.dilation, return_layer=cfg.return_layer,
                    width=cfg.backbone_width, frozen_stages=cfg.frozen_stages,
                    pretrained=pretrained_backbone)
    backbone = Joiner(body, build_position_encoding(cfg.position_embedding, cfg.hidden_dim))
    transformer = Transformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward,
                              cfg.dropout, cfg.pre_norm, cfg.return_intermediate)
    if cfg.aided():
        model = AidedDETR(backbone, transformer, num_classes=num_classes, num_queries=cfg.num_queries,
                          aux_loss=cfg.aux_loss, num_groups=cfg.num_groups, box_refine=cfg.box_refine,
                          two_stage=cfg.two_stage, class_prior=cfg.class_prior, anchor_wh=cfg.anchor_wh,
                          dn_groups=cfg.dn_groups, dn_box_noise=cfg.dn_box_noise,
                          dn_label_noise=cfg.dn_label_noise, query_content=cfg.query_content)
    else:
        model = DETR(backbone, transformer, num_classes=num_classes, num_queries=cfg.num_queries,
                     aux_loss=cfg.aux_loss)
    if cfg.init != "official":   # the modules above already carry the official init
        apply_init(model, cfg.init)
    model.config = cfg
    model.name = name
    layers.set_impl(model, impl)
    return model


def _reset_default(module: nn.Module) -> None:
    """PyTorch's default init for every submodule that has one."""
    # MultiheadAttention.reset_parameters also inits its out_proj (bias 0): don't redo that one.
    owned = {id(m.out_proj) for m in module.modules() if isinstance(m, MultiheadAttention)}
    for m in module.modules():
        if isinstance(m, Transformer) or id(m) in owned:
            continue   # Transformer.reset_parameters is the official xavier, not a default
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def apply_init(model: DETR, scheme: str) -> DETR:
    """Re-initialise the transformer, input_proj, class/bbox heads and queries (not the backbone).

    Schemes (for the init study):
      * "official": xavier-uniform on transformer weights (dim > 1), PyTorch defaults for the
        heads and input_proj, query_embed ~ N(0, 1).
      * "default": PyTorch's module defaults everywhere (nn.MultiheadAttention's own default is
        xavier on in_proj; Linear is kaiming-uniform(a=sqrt 5)).
      * "xavier" / "kaiming" / "uniform002": xavier-uniform / kaiming-normal (fan_in, relu) /
        uniform(-0.02, 0.02) on every weight with dim > 1; biases 0, LayerNorm 1/0, queries N(0, 1).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; known: {INIT_SCHEMES}")
    if getattr(model, "config", None) is not None:
        model.config.init = scheme   # so a checkpoint's stored config says how the model was initialised
    parts = [model.transformer, model.input_proj, model.class_embed, model.bbox_embed]
    if hasattr(model, "query_embed"):   # AidedDETR with anchor queries has none
        parts.append(model.query_embed)
    for part in parts:
        _reset_default(part)
    if scheme == "default":
        return model
    if scheme == "official":
        model.transformer.reset_parameters()
        return model
    for part in parts[:4]:   # queries keep N(0, 1)
        for p in part.parameters():
            if p.dim() > 1:
                if scheme == "xavier":
                    nn.init.xavier_uniform_(p)
                elif scheme == "kaiming":
                    nn.init.kaiming_normal_(p, mode="fan_in", nonlinearity="relu")
                else:
                    nn.init.uniform_(p, -0.02, 0.02)
        for m in part.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                nn.init.zeros_(m.bias)
            elif isinstance(m, MultiheadAttention):
                nn.init.zeros_(m.in_proj_bias)
    return model
