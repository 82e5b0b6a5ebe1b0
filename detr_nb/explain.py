"""The functions behind the figures and widgets of notebooks 01-04 and 08.

Each notebook cell that draws or explores something calls one function here, so what a reader
sees is tested (tests/test_explain.py) without a browser. Tensors in, tensors or figures out.

* Images: :func:`sample_image`, :func:`image_to_tensor`.
* 01 backbone: :func:`im2col_loops`, :func:`plot_im2col`, :func:`stage_features`,
  :func:`plot_feature_maps`, :func:`grouped_parameter_table`, :func:`plot_parameter_table`.
* 02 positions: :func:`sine_encoding_1d`, :func:`normalized_coordinates`,
  :func:`position_similarity`, :func:`plot_pixel_encoding` (the widget).
* 03 attention: :func:`positional_toy_attention`, :func:`attention_weights`, :func:`to_torch_mha`,
  :func:`plot_attention_heads`, :func:`plot_attention_query` (the widget).
* 04 model: :data:`COCO_CLASSES`, :func:`naive_parameter_counts`, :func:`plot_detections`.
* 08 attention maps: :func:`attention_maps`, :func:`encoder_attention_at`,
  :func:`decoder_attention_of`, :func:`plot_encoder_attention`, :func:`plot_decoder_attention`.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import layers as L
from .params import Row, with_totals
from .plotting import IMAGENET_MEAN, IMAGENET_STD, draw_boxes, to_display_image
from .pretrained import COCO_CLASSES  # noqa: F401  (notebooks 04, 08 name boxes with it)


# ============================================================================ images
def sample_image():
    """A real photograph that needs no internet: matplotlib's Grace Hopper (PIL RGB, 512 x 600)."""
    from matplotlib import cbook
    from .data.image_io import open_image

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


# ============================================================================ 01: convolution, ResNet
def im2col_loops(x: Tensor, kernel_size, stride=1, padding=0) -> Tensor:
    """im2col written as loops, to read: x (B, C, H, W) -> columns (B, C*kh*kw, Ho*Wo).

    Column ``l`` holds the patch under output pixel ``l`` (row-major), flattened channel-first,
    exactly the layout of ``F.unfold``. Slow: for tiny inputs only.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    xp = F.pad(x, (pw, pw, ph, ph))
    B, C, H, W = xp.shape
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    cols = x.new_zeros(B, C * kh * kw, Ho * Wo)
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]   # (B, C, kh, kw)
            cols[:, :, i * Wo + j] = patch.reshape(B, -1)
    return cols


def plot_im2col(x: Tensor, weight: Tensor, out_yx: Tuple[int, int] = (0, 0), stride: int = 1, padding: int = 0):
    """Picture of im2col for one channel: the input with the patch under output pixel ``out_yx``,
    the column matrix with that patch's column, the kernel as a row, and the output.

    x (H, W), weight (kh, kw). Returns the figure.
    """
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    x = torch.as_tensor(x, dtype=torch.float32)
    weight = torch.as_tensor(weight, dtype=torch.float32)
    kh, kw = weight.shape
    cols = F.unfold(x[None, None], (kh, kw), padding=padding, stride=stride)[0]     # (kh*kw, L)
    out = (weight.reshape(1, -1) @ cols)                                             # (1, L)
    Ho = (x.shape[0] + 2 * padding - kh) // stride + 1
    Wo = (x.shape[1] + 2 * padding - kw) // stride + 1
    out = out.reshape(Ho, Wo)
    i, j = out_yx
    col = i * Wo + j
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), gridspec_kw={"width_ratios": [1, 2.2, 1.2, 1]})

    def grid(ax, a, title, fmt="{:.0f}"):
        a = a.numpy()
        ax.imshow(a, cmap="Blues")
        for (r, c), v in np.ndenumerate(a):
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    xpad = F.pad(x, (padding,) * 4)
    grid(axes[0], xpad, f"input (padded) {tuple(xpad.shape)}")
    axes[0].add_patch(patches.Rectangle((j * stride - 0.5, i * stride - 0.5), kw, kh, fill=False,
                                        edgecolor="red", linewidth=2))
    grid(axes[1], cols, f"im2col columns ({kh}*{kw}, Ho*Wo) = {tuple(cols.shape)}")
    axes[1].add_patch(patches.Rectangle((col - 0.5, -0.5), 1, kh * kw, fill=False, edgecolor="red", linewidth=2))
    grid(axes[2], weight.reshape(-1, 1), f"kernel as a row\n(1, {kh * kw}) (shown as column)", "{:.1f}")
    grid(axes[3], out, f"output = kernel @ columns\n{tuple(out.shape)}", "{:.1f}")
    axes[3].add_patch(patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.tight_layout()
    return fig


@torch.no_grad()
def stage_features(body: nn.Module, images: Tensor) -> Dict[str, Tensor]:
    """The feature map after the stem and after each stage of a ``detr_nb`` ResNet.

    ``body`` is ``backbone.ResNet`` (or a ``Backbone``, whose ``body`` is used); images (B, 3, H, W).
    Returns an ordered dict {"stem": (B, 64, H/4, W/4), "layer1": ..., "layerN": (B, C, H/s, W/s)};
    the last entry equals ``body(images)``.
    """
    body = getattr(body, "body", body)
    out: Dict[str, Tensor] = {}
    x = body.maxpool(body.relu(body.bn1(body.conv1(images))))
    out["stem"] = x
    for i in range(1, int(body.return_layer[-1]) + 1):
        x = getattr(body, f"layer{i}")(x)
        out[f"layer{i}"] = x
    return out


def plot_feature_maps(features: Mapping[str, Tensor], image=None, channels: int = 6, batch: int = 0):
    """One row per stage: the ``channels`` channels with the largest mean activation.

    ``features`` as returned by :func:`stage_features`; ``image`` (optional) is shown on each row's left.
    """
    import matplotlib.pyplot as plt

    names = list(features)
    extra = 1 if image is not None else 0
    fig, axes = plt.subplots(len(names), channels + extra, figsize=(1.7 * (channels + extra), 1.8 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        f = features[name][batch].float()                          # (C, h, w)
        top = f.mean(dim=(1, 2)).argsort(descending=True)[:channels]
        if extra:
            axes[r, 0].imshow(to_display_image(image))
            axes[r, 0].set_title("input", fontsize=8)
        for c, ch in enumerate(top.tolist()):
            ax = axes[r, c + extra]
            ax.imshow(f[ch].numpy(), cmap="viridis")
            ax.set_title(f"{name} ch {ch}" if c else f"{name} {tuple(f.shape)}\nch {ch}", fontsize=7)
        for ax in axes[r]:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def grouped_parameter_table(module: nn.Module, depth: int = 1) -> List[Row]:
    """Parameter counts grouped by the first ``depth`` parts of the parameter names.

    Same rows as :func:`detr_nb.params.parameter_table` (component, total, trainable, frozen) plus
    "total" and "buffers", so :func:`detr_nb.format_parameter_table` prints it; for modules that
    are not a whole DETR (e.g. the ResNet: conv1, layer1, ..., layer4).
    """
    counts: Dict[str, List[int]] = {}
    for name, p in module.named_parameters():
        key = ".".join(name.split(".")[:depth])
        c = counts.setdefault(key, [0, 0])
        c[0] += p.numel()
        c[1] += p.numel() if p.requires_grad else 0
    return with_totals([Row(k, t, tr, t - tr) for k, (t, tr) in counts.items()], module)


def plot_parameter_table(rows: Sequence[Row], title: str = "parameters", ax=None):
    """Horizontal bars, trainable and frozen stacked, log scale, one bar per component."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.component not in ("total", "buffers") and r.total > 0]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))
    trainable = np.array([r.trainable for r in rows], dtype=float)
    frozen = np.array([r.frozen for r in rows], dtype=float)
    ax.barh(y, trainable, color="#4363d8", label="trainable")
    ax.barh(y, frozen, left=trainable, color="#bbbbbb", label="frozen")
    for k, r in enumerate(rows):
        ax.text(r.total * 1.05, k, f"{r.total:,}", va="center", fontsize=8)
    ax.set_yticks(y, [r.component for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(left=max(1.0, min(r.total for r in rows) / 3), right=max(r.total for r in rows) * 8)
    ax.set_xlabel("parameters (log scale)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


# ============================================================================ 02: sine position encoding
def sine_encoding_1d(positions: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """The 1-D sine encoding of DETR / "Attention is all you need": positions (N,) -> (N, num_feats).

    Channel 2j is sin(p / T^(2j/num_feats)), channel 2j+1 is cos of the same argument: each
    (sin, cos) pair is one frequency, from 1 (fast) down to 1/T (slow).
    """
    p = torch.as_tensor(positions, dtype=torch.float32)
    i = torch.arange(num_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)     # (num_feats,)
    angle = p[..., None] / dim_t                                                        # (..., num_feats)
    out = torch.empty_like(angle)
    out[..., 0::2] = angle[..., 0::2].sin()
    out[..., 1::2] = angle[..., 1::2].cos()
    return out


def normalized_coordinates(mask: Tensor, normalize: bool = True, scale: float = 2 * math.pi) -> Tuple[Tensor, Tensor]:
    """The (y, x) coordinates DETR's sine encoding feeds to its 1-D encodings. mask (B, h, w) True = padding.

    y (x) counts the non-padded pixels down each column (along each row): 1, 2, ...; with
    ``normalize`` it is divided by the count at the bottom (right) edge and times ``scale``, so the
    image spans (0, 2*pi] whatever the padding. Returns y, x, each (B, h, w).
    """
    not_mask = (~mask).float()
    y, x = not_mask.cumsum(1), not_mask.cumsum(2)
    if normalize:
        y = y / (y[:, -1:, :] + 1e-6) * scale
        x = x / (x[:, :, -1:] + 1e-6) * scale
    return y, x


def position_similarity(pos: Tensor, y: int, x: int) -> Tensor:
    """Cosine similarity of pixel (y, x)'s encoding with every pixel's: pos (D, h, w) or (1, D, h, w) -> (h, w)."""
    if pos.dim() == 4:
        pos = pos[0]
    flat = pos.reshape(pos.shape[0], -1)                           # (D, h*w)
    ref = pos[:, y, x]                                             # (D,)
    sim = (ref @ flat) / (ref.norm() * flat.norm(dim=0)).clamp_min(1e-12)
    return sim.reshape(pos.shape[1:])


def plot_pixel_encoding(pos: Tensor, y: int, x: int):
    """The widget of notebook 02: pixel (y, x)'s encoding (its y half and x half) and its similarity map.

    pos (D, h, w) or (1, D, h, w) from ``PositionEmbeddingSine``. Returns the figure.
    """
    import matplotlib.pyplot as plt

    if pos.dim() == 4:
        pos = pos[0]
    D, h, w = pos.shape
    vec = pos[:, y, x]
    sim = position_similarity(pos, y, x)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3), gridspec_kw={"width_ratios": [1.4, 1.4, 1]})
    axes[0].bar(np.arange(D // 2), vec[:D // 2].numpy(), color="#4363d8", width=1.0)
    axes[0].set_title(f"pos_y channels 0..{D // 2 - 1} of pixel (y={y}, x={x})", fontsize=9)
    axes[1].bar(np.arange(D // 2, D), vec[D // 2:].numpy(), color="#f58231", width=1.0)
    axes[1].set_title(f"pos_x channels {D // 2}..{D - 1}", fontsize=9)
    for ax in axes[:2]:
        ax.set_ylim(-1.1, 1.1)
        ax.set_xlabel("channel")
    im = axes[2].imshow(sim.numpy(), cmap="magma")   # colour range = this map's own min..max
    axes[2].plot([x], [y], "c+", markersize=12, mew=2)
    axes[2].set_title(f"cosine similarity to all {h}x{w} pixels\n(range {float(sim.min()):.2f}..1)", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    fig.tight_layout()
    return fig


# ============================================================================ 03: attention
def positional_toy_attention(num_tokens: int = 16, embed_dim: int = 32, num_heads: int = 4,
                             sharpness: float = 3.0, temperature: float = 100.0,
                             impl: str = "scratch") -> Tuple[L.MultiheadAttention, Tensor]:
    """A multi-head attention whose heads are readable, and its input.

    Tokens are 1-D sine encodings of positions 0..N-1 (``embed_dim`` channels). The projections
    are W_q = W_k = sqrt(sharpness) * I, W_v = W_o = I, biases 0. Head i then sees channels
    [i*d, (i+1)*d) = a band of frequencies, and since sin(a)sin(b) + cos(a)cos(b) = cos(a - b),
    its score between tokens a and b is sharpness * sum_j cos((a - b) w_j) / sqrt(d): the
    high-frequency head attends to close neighbours, the low-frequency head almost uniformly.

    Returns (mha, x) with x (1, N, embed_dim).
    """
    mha = L.MultiheadAttention(embed_dim, num_heads, impl=impl)
    eye = torch.eye(embed_dim)
    with torch.no_grad():
        a = math.sqrt(sharpness)
        mha.in_proj_weight.copy_(torch.cat([a * eye, a * eye, eye]))
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(eye)
        mha.out_proj.bias.zero_()
    x = sine_encoding_1d(torch.arange(num_tokens, dtype=torch.float32), embed_dim, temperature)[None]
    return mha.eval(), x


@torch.no_grad()
def attention_weights(mha: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      key_padding_mask: Optional[Tensor] = None,
                      attn_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Run a ``detr_nb`` MultiheadAttention and return (output (B, Lq, C), weights (B, heads, Lq, Lk)).

    The weights come from :func:`detr_nb.record_attention` (softmax(QK^T/sqrt(d)) per head).
    """
    with L.record_attention(mha) as store:
        out = mha(query, key, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
    return out, store[""]


def to_torch_mha(mha: L.MultiheadAttention) -> nn.MultiheadAttention:
    """PyTorch's ``nn.MultiheadAttention`` (batch_first) holding the same weights: the reference."""
    ref = nn.MultiheadAttention(mha.embed_dim, mha.num_heads, dropout=mha.dropout, batch_first=True)
    ref.load_state_dict(mha.state_dict())
    return ref.train(mha.training)


def plot_attention_heads(weights: Tensor, batch: int = 0, titles: Optional[Sequence[str]] = None):
    """Heat maps of attention weights, one per head. weights (B, heads, Lq, Lk) or (heads, Lq, Lk)."""
    import matplotlib.pyplot as plt

    if weights.dim() == 4:
        weights = weights[batch]
    n = weights.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.1), squeeze=False)
    for hd, ax in enumerate(axes[0]):
        ax.imshow(weights[hd].numpy(), cmap="viridis", vmin=0)
        ax.set_title(titles[hd] if titles else f"head {hd}", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.tight_layout()
    return fig


def plot_attention_query(weights: Tensor, head: int, query: int, batch: int = 0):
    """The widget of notebook 03: one head's weight matrix and one query's row as bars.

    weights (B, heads, Lq, Lk); the row sums to 1 (masked keys get 0)."""
    import matplotlib.pyplot as plt

    w = weights[batch, head]                                       # (Lq, Lk)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, 1.8]})
    axes[0].imshow(w.numpy(), cmap="viridis", vmin=0)
    axes[0].axhline(query, color="red", linewidth=1)
    axes[0].set_title(f"head {head}: weights (query x key)", fontsize=9)
    axes[1].bar(np.arange(w.shape[1]), w[query].numpy(), color="#4363d8")
    axes[1].set_ylim(0, 1)
    axes[1].set_xlabel("key")
    axes[1].set_title(f"query {query}: softmax row (sum = {float(w[query].sum()):.3f})", fontsize=9)
    fig.tight_layout()
    return fig


# ============================================================================ 04: the model
def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def naive_parameter_counts(model: nn.Module, feature_hw: Tuple[int, int] = (25, 34)) -> List[Dict[str, object]]:
    """What DETR's weight sharing saves: each shared part's size next to an unshared design.

    ``feature_hw``: the backbone feature map, (25, 34) for an 800 x 1066 image at stride 32.
    Rows (dicts with ``part``, ``detr``, ``naive``, ``naive_design``):
      * input_proj: one 1x1 conv for every pixel vs a fully-connected layer on the flattened map;
      * encoder FFNs: one per layer shared by all pixels vs one per pixel;
      * class/box heads: one shared by the queries and decoder layers vs one per query and per layer.
    The DETR numbers are counted on ``model``.
    """
    h, w = feature_hw
    hw = h * w
    proj = model.input_proj
    cin, cout = proj.in_channels, proj.out_channels
    enc_ffn = sum(_count(lay.linear1) + _count(lay.linear2) for lay in model.transformer.encoder.layers)
    heads = _count(model.class_embed) + _count(model.bbox_embed)
    Q = model.num_queries
    n_dec = len(model.transformer.decoder.layers)
    return [
        {"part": "input_proj", "detr": _count(proj),
         "naive": (cin * hw) * (cout * hw) + cout * hw,
         "naive_design": f"fully-connected {cin}*{hw} -> {cout}*{hw} on the flattened feature map"},
        {"part": "encoder FFNs", "detr": enc_ffn, "naive": enc_ffn * hw,
         "naive_design": f"a separate FFN for each of the {hw} pixels"},
        {"part": "class + box heads", "detr": heads, "naive": heads * Q * n_dec,
         "naive_design": f"separate heads for each of {Q} queries x {n_dec} decoder layers"},
    ]


def plot_detections(image: Tensor, outputs: Mapping[str, Tensor], threshold: float = 0.7,
                    names: Optional[Mapping[int, str]] = COCO_CLASSES, top_k: Optional[int] = None,
                    batch: int = 0, ax=None) -> Dict[str, Tensor]:
    """Draw a DETR output over its input image; returns the kept ``{scores, labels, boxes}``.

    image (3, H, W) normalised (what the model saw); boxes are scaled to (H, W). Keeps queries with
    score > ``threshold``; ``top_k`` instead keeps the k best (useful for an untrained model).
    """
    import matplotlib.pyplot as plt
    from .postprocess import postprocess

    H, W = image.shape[-2:]
    single = {"pred_logits": outputs["pred_logits"][batch:batch + 1],
              "pred_boxes": outputs["pred_boxes"][batch:batch + 1]}
    res = postprocess(single, [[H, W]])[0]
    if top_k is not None:
        keep = res["scores"].argsort(descending=True)[:top_k]
    else:
        keep = (res["scores"] > threshold).nonzero().flatten()
    kept = {k: v[keep] for k, v in res.items()}
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5 * H / W))
    draw_boxes(ax, image, kept["boxes"], kept["labels"].tolist(), kept["scores"].tolist(), names=names)
    rule = f"top {top_k}" if top_k is not None else f"score > {threshold}"
    ax.set_title(f"{len(keep)} detections ({rule})", fontsize=9)
    return kept


# ============================================================================ 08: attention maps
@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, object]:
    """One forward pass of a DETR with every attention recorded (results on the CPU).

    Returns ``outputs`` (the model's output dict), ``encoder`` (list over layers of (B, heads, S, S)
    self-attention, S = h*w), ``decoder`` (list over layers of (B, heads, Q, S) cross-attention),
    ``feature_mask`` (B, h, w) True = padding, ``feature_size`` (h, w), ``image_size`` (H, W).
    """
    model.eval()
    captured: Dict[str, Tensor] = {}

    def hook(_module, _inputs, out):
        captured["mask"] = out[1]

    handle = model.backbone.register_forward_hook(hook)
    try:
        with L.record_attention(model) as store:
            outputs = model(images, mask)
    finally:
        handle.remove()
    enc = [store[k] for k in sorted(store, key=_layer_order) if ".encoder." in k and k.endswith("self_attn")]
    dec = [store[k] for k in sorted(store, key=_layer_order) if ".decoder." in k and k.endswith("multihead_attn")]
    fmask = captured["mask"].cpu()
    return {"outputs": _cpu(outputs), "encoder": _cpu(enc), "decoder": _cpu(dec), "feature_mask": fmask,
            "feature_size": tuple(fmask.shape[-2:]), "image_size": tuple(images.shape[-2:])}


def _cpu(x):
    """Tensors (in dicts and lists) moved to the CPU, for plotting."""
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu(v) for v in x)
    return x


def _layer_order(name: str) -> Tuple[str, int]:
    parts = name.split(".")
    idx = next((int(p) for p in parts if p.isdigit()), -1)
    return (".".join(p for p in parts if not p.isdigit()), idx)


def _to_feature(maps: Mapping, y: float, x: float) -> Tuple[int, int]:
    """Image pixel (y, x) -> feature-map cell."""
    H, W = maps["image_size"]
    h, w = maps["feature_size"]
    return min(int(y * h / H), h - 1), min(int(x * w / W), w - 1)


def encoder_attention_at(maps: Mapping, y: int, x: int, layer: int = -1, batch: int = 0,
                         head: Optional[int] = None, image_coords: bool = True) -> Tensor:
    """Where the encoder pixel at (y, x) looks: its self-attention row as an (h, w) map summing to 1.

    (y, x) in image pixels (``image_coords``) or feature cells; averaged over heads unless ``head``.
    """
    fy, fx = _to_feature(maps, y, x) if image_coords else (y, x)
    h, w = maps["feature_size"]
    a = maps["encoder"][layer][batch]                              # (heads, S, S)
    a = a.mean(0) if head is None else a[head]
    return a[fy * w + fx].reshape(h, w)


def decoder_attention_of(maps: Mapping, query: int, layer: int = -1, batch: int = 0,
                         head: Optional[int] = None) -> Tensor:
    """Where object query ``query`` looks in the image: its cross-attention as an (h, w) map summing to 1."""
    h, w = maps["feature_size"]
    a = maps["decoder"][layer][batch]                              # (heads, Q, S)
    a = a.mean(0) if head is None else a[head]
    return a[query].reshape(h, w)


def _overlay(ax, image: Tensor, amap: Tensor, alpha: float = 0.6):
    H, W = image.shape[-2:]
    ax.imshow(to_display_image(image))
    ax.imshow(amap.numpy(), cmap="inferno", alpha=alpha, extent=(0, W, H, 0), interpolation="bilinear")
    ax.set_axis_off()


def plot_encoder_attention(image: Tensor, maps: Mapping, points: Sequence[Tuple[int, int]], layer: int = -1,
                           batch: int = 0):
    """The paper's figure: encoder self-attention of a few reference pixels (image coordinates (y, x)).

    Left: the image with the points; then one attention map per point, over the image."""
    import matplotlib.pyplot as plt

    n = len(points)
    fig, axes = plt.subplots(1, n + 1, figsize=(3 * (n + 1), 3.3), squeeze=False)
    axes = axes[0]
    axes[0].imshow(to_display_image(image))
    for k, (y, x) in enumerate(points):
        axes[0].plot([x], [y], "o", color="cyan", markersize=6)
        axes[0].text(x + 4, y, str(k), color="cyan", fontsize=9)
        _overlay(axes[k + 1], image, encoder_attention_at(maps, y, x, layer, batch))
        axes[k + 1].plot([x], [y], "o", color="cyan", markersize=6)
        axes[k + 1].set_title(f"point {k} (y={y}, x={x})", fontsize=9)
    axes[0].set_axis_off()
    axes[0].set_title("reference points", fontsize=9)
    fig.tight_layout()
    return fig


def plot_decoder_attention(image: Tensor, maps: Mapping, queries: Sequence[int], layer: int = -1, batch: int = 0,
                           names: Optional[Mapping[int, str]] = None):
    """Decoder cross-attention of some object queries, each with the box that query predicts."""
    import matplotlib.pyplot as plt
    from .postprocess import postprocess

    H, W = image.shape[-2:]
    out = maps["outputs"]
    res = postprocess({"pred_logits": out["pred_logits"][batch:batch + 1],
                       "pred_boxes": out["pred_boxes"][batch:batch + 1]}, [[H, W]])[0]
    n = len(queries)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.3), squeeze=False)
    for ax, q in zip(axes[0], queries):
        _overlay(ax, image, decoder_attention_of(maps, q, layer, batch))
        draw_boxes(ax, None, res["boxes"][q:q + 1], [int(res["labels"][q])], [float(res["scores"][q])],
                   names=names, show_image=False)
        ax.set_title(f"query {q}", fontsize=9)
    fig.tight_layout()
    return fig
