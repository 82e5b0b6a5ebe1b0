"""The "Your turn" checks (detr_nb.teach.checks): each passes its reference and an independent correct solution
written as a learner would, fails each classic mistake with a one-line message that names the case, the first
differing element and THAT mistake's hint, fails generic wrong answers (x 1.01, axes swapped, an exception, a
wrong shape or type, a result cut from autograd), and says "not written yet" for the notebooks' skeleton.
The new reference functions are tested against outside references: average_precision against pycocotools,
split_heads / merge_heads against indexing by hand."""
import contextlib
import io
import math
import re
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detr_nb.teach.average_precision import average_precision
from detr_nb.models.attention import merge_heads, split_heads
from detr_nb.models.transformer import TransformerDecoderLayer
from detr_nb.teach import checks
from detr_nb.teach.overfit import train_step

pytestmark = pytest.mark.usefixtures("one_thread")


def fails(check, *fns) -> str:
    """The check's AssertionError message, which must be one line starting with the case."""
    with pytest.raises(AssertionError) as e:
        check(*fns)
    msg = str(e.value)
    assert "\n" not in msg and re.match(r"case \d+: ", msg), msg
    return msg


def assert_names(msg: str, case: str, hint: str, where: str = "first difference at ["):
    assert msg.startswith(case), msg
    assert where in msg and hint in msg, msg


# ----------------------------------------------------------------------------- learners' solutions, right and wrong

def my_conv2d(x, weight, bias, stride, padding, pad=True, flip=False, with_bias=True, swap_hw=False):
    B, _, H, W = x.shape
    cout, _, kh, kw = weight.shape
    p = padding if pad else 0
    if flip:
        weight = weight.flip(-1, -2)
    cols = F.unfold(x, (kh, kw), padding=p, stride=stride)                 # (B, Cin*kh*kw, L)
    y = weight.reshape(cout, -1) @ cols                                    # (B, Cout, L)
    if bias is not None and with_bias:
        y = y + bias[:, None]
    Ho, Wo = (H + 2 * p - kh) // stride + 1, (W + 2 * p - kw) // stride + 1
    return y.reshape(B, cout, Wo, Ho) if swap_hw else y.reshape(B, cout, Ho, Wo)


def my_frozen_bn(x, weight, bias, running_mean, running_var, eps=1e-5, batch_stats=False, use_eps=True,
                 root=True, eps_inside=True):
    mean, var = running_mean, running_var
    if batch_stats:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    e = eps if use_eps else 0.0
    std = (var + e).sqrt() if root and eps_inside else var.sqrt() + e if root else var + e
    c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    return (x - c(mean)) / c(std) * c(weight) + c(bias)


def my_sine(mask, num_pos_feats, temperature, normalize=True, use_mask=True, by_padded_size=False, eps=1e-6,
            interleave=True, pair_exponent=True, swap=False, start=0.0, start_last=False):
    not_mask = (~mask if use_mask else torch.ones_like(mask)).float()
    y, x = not_mask.cumsum(1), not_mask.cumsum(2)
    if start:              # start at 0 (cumsum - 1, arange) or at the pixel centres (- 0.5)
        count_y, count_x = y[:, -1:, :], x[:, :, -1:]
        y, x = y - start, x - start
        if not start_last:
            return my_sine_encode(y / (count_y + eps) * 2 * math.pi, x / (count_x + eps) * 2 * math.pi,
                                  num_pos_feats, temperature)
    if by_padded_size:
        y, x = y / mask.shape[1] * 2 * math.pi, x / mask.shape[2] * 2 * math.pi
    elif normalize:
        y, x = y / (y[:, -1:, :] + eps) * 2 * math.pi, x / (x[:, :, -1:] + eps) * 2 * math.pi
    return my_sine_encode(y, x, num_pos_feats, temperature, interleave, pair_exponent, swap)


def my_sine_encode(y, x, num_pos_feats, temperature, interleave=True, pair_exponent=True, swap=False):
    i = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = temperature ** ((2 * (i // 2) if pair_exponent else i) / num_pos_feats)
    pos = []
    for c in (y, x):
        a = c[..., None] / dim_t                                           # (B, H, W, F)
        if interleave:
            pos.append(torch.stack((a[..., 0::2].sin(), a[..., 1::2].cos()), dim=4).flatten(3))
        else:
            pos.append(torch.cat((a[..., 0::2].sin(), a[..., 1::2].cos()), dim=3))
    return torch.cat(pos[::-1] if swap else pos, dim=3).permute(0, 3, 1, 2)


def my_attention(q, k, v, key_padding_mask=None, scale=True, after=False, axis=-1, invert=False, fill=-math.inf,
                 fix_nan=True, shift=True):
    s = q @ k.transpose(-1, -2)
    if scale:
        s = s / math.sqrt(q.shape[-1])
    m = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    if m is not None and invert:
        m = ~m
    if m is not None and not after:
        s = s.masked_fill(m, fill)
    if shift:
        w = torch.softmax(s, dim=axis)
    else:
        w = s.exp() / s.exp().sum(axis, keepdim=True)
    if fix_nan:
        w = torch.nan_to_num(w)
    if m is not None and after:
        w = w.masked_fill(m, 0.0)
    return w @ v


def my_split(x, h, transpose=True, interleaved=False):
    B, L, C = x.shape
    if interleaved:
        return x.view(B, L, C // h, h).permute(0, 3, 1, 2)
    return x.view(B, L, h, C // h).transpose(1, 2) if transpose else x.view(B, h, L, C // h)


def my_merge(x, transpose=True):
    B, h, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, h * d) if transpose else x.reshape(B, L, h * d)


def my_layer_norm(x, weight, bias, eps=1e-5, unbiased=False, dim=-1, eps_inside=True, affine=True, use_eps=True):
    eps = eps if use_eps else 0.0
    mean = x.mean(dim, keepdim=True)
    var = x.var(dim, keepdim=True, unbiased=unbiased)
    y = (x - mean) / (torch.sqrt(var + eps) if eps_inside else torch.sqrt(var) + eps)
    return y * weight + bias if affine else y


def my_block(layer, src, pos, key_padding_mask, pre=False, value_pos=False, res1=True, res2=True,
             pos_in_src=False, pass_mask=True, first=False):
    mask = key_padding_mask if pass_mask else None
    if pos_in_src:
        src = src + pos
    if pre:
        s = layer.norm1(src)
        src = src + layer.self_attn(s + pos, s + pos, s, key_padding_mask=mask)
        return src + layer.linear2(layer.activation(layer.linear1(layer.norm2(src))))
    q = src if pos_in_src else src + pos
    a = layer.self_attn(q, q, q if value_pos else src, key_padding_mask=mask)
    a = a[0] if first else a                               # the official code's habit with nn.MultiheadAttention
    x = layer.norm1(src + a if res1 else a)
    f = layer.linear2(torch.relu(layer.linear1(x)))
    return layer.norm2(x + f if res2 else f)


def my_giou(b1, b2, generalized=True, enclose_as_intersection=False, subtract=True, eps=0.0):
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    lt = torch.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = torch.minimum(b1[:, None, 2:], b2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)                               # (N, M)
    union = area(b1)[:, None] + area(b2)[None, :] - (inter if subtract else 0)
    iou = inter / (union + eps)
    if not generalized:
        return iou
    if enclose_as_intersection:
        enclosing = inter
    else:
        outer = torch.maximum(b1[:, None, 2:], b2[None, :, 2:]) - torch.minimum(b1[:, None, :2], b2[None, :, :2])
        enclosing = outer.prod(-1)
    return iou - (enclosing - union) / (enclosing + eps)


def _corners(b):
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], dim=1)


def my_cost(logits, boxes, labels, tgt, class_sign=-1, giou_sign=-1, log=False, softmax=True, l1_xyxy=False,
            weights=(1, 5, 2), one_minus_p=False, one_minus_giou=False):
    p = logits.log_softmax(-1) if log else logits.softmax(-1) if softmax else logits
    l1 = (_corners(boxes)[:, None] - _corners(tgt)[None]) if l1_xyxy else (boxes[:, None] - tgt[None])
    giou = my_giou(_corners(boxes), _corners(tgt))
    if one_minus_p or one_minus_giou:                      # a constant shift: 1 - p, 2 * (1 - GIoU)
        return (weights[0] * (1 - p[:, labels] if one_minus_p else -p[:, labels]) + weights[1] * l1.abs().sum(-1)
                + weights[2] * (1 - giou if one_minus_giou else -giou))
    return (weights[0] * class_sign * p[:, labels] + weights[1] * l1.abs().sum(-1) + weights[2] * giou_sign * giou)


def my_hflip(image, boxes, swap=True, minus_one=False, axis=-1):
    w = image.shape[-1]
    x0, y0, x1, y1 = boxes.unbind(-1)
    shift = w - 1 if minus_one else w
    new = torch.stack([shift - x1, y0, shift - x0, y1] if swap else [shift - x0, y0, shift - x1, y1], dim=-1)
    return image.flip(axis), new


def my_ap(scores, is_tp, num_gt, sort=True, envelope=True, trapezoid=False, recall_by_detections=False, points=101,
          zero_beyond=True):
    if num_gt == 0:
        return -1.0
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable") if sort else np.arange(len(scores))
    hit = np.asarray(is_tp, dtype=bool)[order]
    tp, fp = np.cumsum(hit), np.cumsum(~hit)
    precision = tp / (tp + fp)
    recall = tp / (len(scores) if recall_by_detections else num_gt)
    if trapezoid:
        return float(np.sum((recall[1:] - recall[:-1]) * (precision[1:] + precision[:-1]) / 2))
    if envelope:
        precision = np.maximum.accumulate(precision[::-1])[::-1]
    total = 0.0
    for r in np.linspace(0, 1, points):
        reached = np.nonzero(recall >= r)[0]
        total += precision[reached[0]] if len(reached) else (0.0 if zero_beyond else precision[-1])
    return total / points


def my_decoder(layer, tgt, memory, pos, query_pos, key_padding_mask, first=False, self_key_pos=True,
               value_pos=False, cross_key_pos=True, res1=True, pass_mask=True):
    q = tgt + query_pos
    a = layer.self_attn(q, q if self_key_pos else tgt, q if value_pos else tgt)
    a = a[0] if first else a                               # the official code's habit with nn.MultiheadAttention
    x = layer.norm1(tgt + a if res1 else a)
    a = layer.multihead_attn(x + query_pos, memory + pos if cross_key_pos else memory, memory,
                             key_padding_mask=key_padding_mask if pass_mask else None)
    x = layer.norm2(x + a)
    return layer.norm3(x + layer.linear2(torch.relu(layer.linear1(x))))


def my_set_loss(logits, boxes, targets, indices, eos_coef=0.1, eos=True, no_object=True, l1_mean=False,
                l1_xyxy=False, per_image=False):
    B, Q, C1 = logits.shape
    classes = torch.full((B, Q), C1 - 1 if no_object else -100)       # -100: ignored by cross_entropy
    for b, ((qi, ti), t) in enumerate(zip(indices, targets)):
        classes[b, qi] = t["labels"][ti]
    weight = torch.ones(C1)
    if eos:
        weight[-1] = eos_coef
    ce = F.cross_entropy(logits.flatten(0, 1), classes.flatten(), weight=weight)
    src = torch.cat([boxes[b, qi] for b, (qi, _) in enumerate(indices)])         # (M, 4)
    tgt = torch.cat([t["boxes"][ti] for t, (_, ti) in zip(targets, indices)])
    n = max(len(tgt), 1)
    a, b = (_corners(src), _corners(tgt)) if l1_xyxy else (src, tgt)
    giou = 1 - torch.diag(my_giou(_corners(src), _corners(tgt)))                  # (M,)
    if per_image:
        sizes = [len(i) for i, _ in indices]
        return (ce, torch.stack([d.abs().sum() / len(d) for d in (a - b).split(sizes)]).mean(),
                torch.stack([g.sum() / len(g) for g in giou.split(sizes)]).mean())
    return ce, F.l1_loss(a, b) if l1_mean else (a - b).abs().sum() / n, giou.sum() / n


RIGHT = {"conv2d": my_conv2d, "frozen_batch_norm": my_frozen_bn, "sine_encoding": my_sine,
         "attention": my_attention, "layer_norm": my_layer_norm, "post_norm_block": my_block, "giou": my_giou,
         "matching_cost": my_cost, "hflip": my_hflip, "average_precision": my_ap,
         "decoder_layer": my_decoder, "set_loss": my_set_loss}


# ----------------------------------------------------------------------------- the references and right solutions

CHECKS = {name: getattr(checks, f"check_{name}") for name in RIGHT}


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_reference_and_a_right_solution_pass(name, capsys):
    check = CHECKS[name]
    assert check(check.reference) is True
    assert check(RIGHT[name]) is True
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0].startswith("✓ ") and " cases, values" in lines[0]


def test_heads_reference_and_a_right_solution_pass(capsys):
    assert checks.check_heads(*checks.check_heads.reference) is True
    assert checks.check_heads(my_split, my_merge) is True
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["✓ split and merge heads: 8 cases, values and gradients match "
                     "detr_nb.models.attention.split_heads "
                     "and detr_nb.models.attention.merge_heads"] * 2


def test_every_check_carries_its_package_reference():
    from detr_nb.data.transforms import hflip
    from detr_nb.models import attention, box_ops, layers

    assert checks.check_conv2d.reference is layers.conv2d
    assert checks.check_frozen_batch_norm.reference is layers.frozen_batch_norm
    assert checks.check_layer_norm.reference is layers.layer_norm
    assert checks.check_giou.reference is box_ops.generalized_box_iou
    assert checks.check_heads.reference == (attention.split_heads, attention.merge_heads)
    assert checks.check_average_precision.reference is average_precision
    assert checks.check_train_step.reference is train_step
    layer = TransformerDecoderLayer(8, 2, 16, dropout=0.0).eval()
    tgt, memory, pos, query_pos = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    assert torch.equal(checks.check_decoder_layer.reference(layer, tgt, memory, pos, query_pos, None),
                       layer(tgt, memory, pos=pos, query_pos=query_pos))
    image, boxes = torch.rand(3, 4, 5), torch.tensor([[1.0, 0.0, 2.0, 3.0]])
    flipped, target = hflip(image, {"boxes": boxes})
    got = checks.check_hflip.reference(image, boxes)
    assert torch.equal(got[0], flipped) and torch.equal(got[1], target["boxes"])


# ----------------------------------------------------------------------------- the classic mistakes, each named

SHAPE = "expected ("      # a mistake that changes the shape: the message gives both shapes, no index
MISTAKES = [
    ("conv2d", partial(my_conv2d, pad=False), "case 1: 3x3 kernel, stride 1, padding 1", "padding forgotten", SHAPE),
    ("conv2d", partial(my_conv2d, flip=True), "case 1: 3x3 kernel, stride 1, padding 1", "kernel flipped", None),
    ("conv2d", partial(my_conv2d, with_bias=False), "case 1: 3x3 kernel, stride 1, padding 1", "bias forgotten", None),
    ("conv2d", partial(my_conv2d, swap_hw=True), "case 2: 3x3 kernel, stride 2, padding 0, a 5x7 image",
     "H and W swapped", SHAPE),
    ("frozen_batch_norm", partial(my_frozen_bn, batch_stats=True), "case 1: 2 images, 3 channels",
     "batch's own statistics", None),
    ("frozen_batch_norm", partial(my_frozen_bn, use_eps=False), "case 1: 2 images, 3 channels", "eps forgotten", None),
    ("frozen_batch_norm", partial(my_frozen_bn, root=False), "case 1: 2 images, 3 channels", "no square root", None),
    ("frozen_batch_norm", partial(my_frozen_bn, eps_inside=False), "case 1: 2 images, 3 channels",
     "eps outside the square root", None),
    ("sine_encoding", partial(my_sine, normalize=False), "case 1: no padding", "no 2*pi normalisation", None),
    ("sine_encoding", partial(my_sine, use_mask=False), "case 2: padding on the right and bottom",
     "normalised by the padded size", None),
    ("sine_encoding", partial(my_sine, by_padded_size=True), "case 2: padding on the right and bottom",
     "normalised by the padded size", None),
    ("sine_encoding", partial(my_sine, eps=0.0), "case 2: padding on the right and bottom", "+ 1e-6", None),
    ("sine_encoding", partial(my_sine, interleave=False), "case 1: no padding", "sin and cos concatenated", None),
    ("sine_encoding", partial(my_sine, pair_exponent=False), "case 1: no padding", "dim_t exponent i/F", None),
    ("sine_encoding", partial(my_sine, swap=True), "case 1: no padding", "y and x halves swapped", None),
    ("attention", partial(my_attention, scale=False), "case 1: no mask", "sqrt(d)", None),
    ("attention", partial(my_attention, after=True), "case 2: key padding: the last two keys of batch element 1",
     "mask applied after the softmax", None),
    ("attention", partial(my_attention, axis=-2), "case 1: no mask", "softmax over the wrong axis", None),
    ("attention", partial(my_attention, invert=True), "case 2: key padding: the last two keys of batch element 1",
     "mask inverted", None),
    ("attention", partial(my_attention, fix_nan=False), "case 4: key padding, batch element 1 fully padded",
     "NaN for a query whose keys are all padding", None),
    ("attention", partial(my_attention, fill=-1e9), "case 4: key padding, batch element 1 fully padded",
     "large negative number", None),
    ("attention", partial(my_attention, shift=False, fix_nan=False), "case 4: key padding, batch element 1 fully "
     "padded", "NaN for a query whose keys are all padding", None),
    ("attention", partial(my_attention, shift=False), "case 6: large scores", "exp overflowed", None),
    ("layer_norm", partial(my_layer_norm, unbiased=True), "case 1: 4 tokens of 6 channels", "unbiased variance", None),
    ("layer_norm", partial(my_layer_norm, dim=0), "case 1: 4 tokens of 6 channels", "wrong axis", None),
    ("layer_norm", partial(my_layer_norm, dim=-2), "case 1: 4 tokens of 6 channels", "wrong axis", None),
    ("layer_norm", partial(my_layer_norm, eps_inside=False), "case 1: 4 tokens of 6 channels",
     "eps outside the square root", None),
    ("layer_norm", partial(my_layer_norm, affine=False), "case 1: 4 tokens of 6 channels", "affine map forgotten",
     None),
    ("post_norm_block", partial(my_block, pre=True), "case 1: no padding", "pre-norm instead of post-norm", None),
    ("post_norm_block", partial(my_block, value_pos=True), "case 1: no padding", "positions added to the values",
     None),
    ("post_norm_block", partial(my_block, pos_in_src=True), "case 1: no padding", "positions added to src itself",
     None),
    ("post_norm_block", partial(my_block, res1=False), "case 1: no padding", "a residual forgotten", None),
    ("post_norm_block", partial(my_block, res2=False), "case 1: no padding", "a residual forgotten", None),
    ("post_norm_block", partial(my_block, pass_mask=False), "case 2: the last two tokens of sequence 1 padded",
     "key_padding_mask not passed", None),
    ("giou", partial(my_giou, generalized=False), "case 1: overlapping boxes", "IoU instead of GIoU", None),
    ("giou", partial(my_giou, enclose_as_intersection=True), "case 1: overlapping boxes",
     "enclosing box computed as the intersection", None),
    ("giou", partial(my_giou, subtract=False), "case 1: overlapping boxes", "union without subtracting", None),
    ("matching_cost", partial(my_cost, class_sign=1), "case 1: 5 queries, 3 classes, 3 objects",
     "class term's sign flipped", None),
    ("matching_cost", partial(my_cost, giou_sign=1), "case 1: 5 queries, 3 classes, 3 objects",
     "GIoU term's sign flipped", None),
    ("matching_cost", partial(my_cost, log=True), "case 1: 5 queries, 3 classes, 3 objects",
     "log-probability instead of probability", None),
    ("matching_cost", partial(my_cost, softmax=False), "case 1: 5 queries, 3 classes, 3 objects",
     "logits without the softmax", None),
    ("matching_cost", partial(my_cost, l1_xyxy=True), "case 1: 5 queries, 3 classes, 3 objects", "L1 on xyxy", None),
    ("matching_cost", partial(my_cost, weights=(1, 1, 1)), "case 1: 5 queries, 3 classes, 3 objects",
     "weights forgotten", None),
    ("hflip", partial(my_hflip, swap=False), "case 1: a 4x6 image, two boxes", "x0 and x1 not swapped",
     "boxes: first difference at ["),
    ("hflip", partial(my_hflip, minus_one=True), "case 1: a 4x6 image, two boxes", "w - 1 - x",
     "boxes: first difference at ["),
    ("hflip", partial(my_hflip, axis=-2), "case 1: a 4x6 image, two boxes", "flipped top-bottom",
     "image: first difference at ["),
    ("hflip", lambda image, boxes: (image, my_hflip(image, boxes)[1]), "case 1: a 4x6 image, two boxes",
     "the image not flipped", "image: first difference at ["),
    ("hflip", lambda image, boxes: (image.flip(-1), boxes), "case 1: a 4x6 image, two boxes",
     "the boxes not flipped", "boxes: first difference at ["),
    ("post_norm_block", partial(my_block, first=True), "case 1: no padding", "takes batch element 0", None),
    ("layer_norm", partial(my_layer_norm, use_eps=False), "case 1: 4 tokens of 6 channels", "eps forgotten", None),
    ("sine_encoding", partial(my_sine, start=1.0), "case 1: no padding", "positions start at 0", None),
    ("sine_encoding", partial(my_sine, start=1.0, start_last=True), "case 1: no padding", "positions start at 0",
     None),
    ("sine_encoding", partial(my_sine, start=0.5), "case 1: no padding", "a -0.5 offset", None),
    ("sine_encoding", partial(my_sine, start=0.5, start_last=True), "case 1: no padding", "a -0.5 offset", None),
    ("matching_cost", partial(my_cost, one_minus_p=True), "case 1: 5 queries, 3 classes, 3 objects",
     "1 - p(class) instead of -p(class)? A constant does not change the assignment", None),
    ("matching_cost", partial(my_cost, one_minus_giou=True), "case 1: 5 queries, 3 classes, 3 objects",
     "2 * (1 - GIoU) instead of -2 * GIoU? A constant does not change the assignment", None),
    ("matching_cost", partial(my_cost, one_minus_p=True, one_minus_giou=True), "case 1: 5 queries, 3 classes, 3 "
     "objects", "but this check compares numbers, so write the paper's form: -p(class) and -GIoU", None),
    ("decoder_layer", partial(my_decoder, first=True), "case 1: no padding", "takes batch element 0", None),
    ("decoder_layer", partial(my_decoder, self_key_pos=False), "case 1: no padding",
     "query_pos on the self-attention's queries only", None),
    ("decoder_layer", partial(my_decoder, value_pos=True), "case 1: no padding",
     "query_pos added to the self-attention's values", None),
    ("decoder_layer", partial(my_decoder, cross_key_pos=False), "case 1: no padding",
     "pos left out of the cross-attention's keys", None),
    ("decoder_layer", partial(my_decoder, res1=False), "case 1: no padding", "a residual forgotten", None),
    ("decoder_layer", partial(my_decoder, pass_mask=False), "case 2: the last two pixels of image 1 padded",
     "memory_key_padding_mask not passed", None),
    ("set_loss", partial(my_set_loss, eos=False), "case 1: 2 images with 3 and 1 objects", "no eos_coef",
     "loss_ce: yours "),
    ("set_loss", partial(my_set_loss, no_object=False), "case 1: 2 images with 3 and 1 objects",
     "unmatched queries not given the \"no object\" class", "loss_ce: yours "),
    ("set_loss", partial(my_set_loss, l1_mean=True), "case 1: 2 images with 3 and 1 objects",
     "a mean over the boxes where DETR divides the sums by num_boxes", "loss_bbox: yours "),
    ("set_loss", partial(my_set_loss, per_image=True), "case 1: 2 images with 3 and 1 objects",
     "a mean over the boxes where DETR divides the sums by num_boxes", "loss_bbox: yours "),
    ("set_loss", partial(my_set_loss, l1_xyxy=True), "case 1: 2 images with 3 and 1 objects", "L1 on xyxy",
     "loss_bbox: yours "),
    ("average_precision", partial(my_ap, sort=False), "case 1: 6 detections, 5 objects", "not sorted by score",
     "yours "),
    ("average_precision", partial(my_ap, envelope=False), "case 1: 6 detections, 5 objects", "no envelope",
     "yours "),
    ("average_precision", partial(my_ap, trapezoid=True), "case 1: 6 detections, 5 objects", "trapezoid",
     "yours "),
    ("average_precision", partial(my_ap, recall_by_detections=True), "case 1: 6 detections, 5 objects",
     "recall divided by the number of detections", "yours "),
    ("average_precision", partial(my_ap, points=11), "case 1: 6 detections, 5 objects", "11 recall points",
     "yours "),
    ("average_precision", partial(my_ap, zero_beyond=False), "case 1: 6 detections, 5 objects",
     "beyond the last recall reached", "yours "),
]


@pytest.mark.parametrize("name, wrong, case, hint, where", MISTAKES,
                         ids=[f"{m[0]}-{m[3][:24]}" for m in MISTAKES])
def test_a_classic_mistake_is_named(name, wrong, case, hint, where):
    assert_names(fails(CHECKS[name], wrong), case, hint, where or "first difference at [")


@pytest.mark.parametrize("split, merge, case, hint", [
    (partial(my_split, transpose=False), my_merge, "case 1: split x (2, 3, 8) into 2 heads", "without the transpose"),
    (partial(my_split, interleaved=True), my_merge, "case 1: split x (2, 3, 8) into 2 heads", "one block"),
    (my_split, partial(my_merge, transpose=False), "case 1: merge x (2, 2, 3, 4)", "without the transpose back"),
])
def test_a_heads_mistake_is_named(split, merge, case, hint):
    assert_names(fails(checks.check_heads, split, merge), case, hint)


@pytest.mark.parametrize("wrong, case, hint", [
    (lambda s, t, n: float("nan") if n == 0 else my_ap(s, t, n), "case 7: no objects", "COCO returns -1"),
    (lambda s, t, n: my_ap(s, t, n) if len(s) else 1.0, "case 6: no detections", "AP is 0"),
])
def test_an_average_precision_edge_case_says_what_coco_does(wrong, case, hint):
    assert_names(fails(checks.check_average_precision, wrong), case, hint, "yours ")


def test_a_nan_gradient_is_caught_where_the_values_are_right():
    """An additive -inf mask and nan_to_num: the values are right, the gradient of a fully padded query is NaN."""
    def additive(q, k, v, key_padding_mask=None):
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if key_padding_mask is not None:
            add = torch.zeros(key_padding_mask.shape, dtype=s.dtype).masked_fill(key_padding_mask, -math.inf)
            s = s + add[:, None, None]                                     # (B, 1, 1, Lk) added to every score
        return torch.nan_to_num(torch.softmax(s, -1)) @ v

    msg = fails(checks.check_attention, additive)
    assert_names(msg, "case 4: key padding, batch element 1 fully padded", "NaN in the gradient", "gradient w.r.t. ")


# ----------------------------------------------------------------------------- generic wrong answers

RUNNERS = {**{name: (CHECKS[name], CHECKS[name].reference) for name in RIGHT},
           "split": (lambda fn: checks.check_heads(fn, merge_heads), split_heads),
           "merge": (lambda fn: checks.check_heads(split_heads, fn), merge_heads)}
DIFFERENTIABLE = ["conv2d", "frozen_batch_norm", "attention", "layer_norm", "post_norm_block", "giou", "split",
                  "merge", "decoder_layer"]
TENSOR_RESULTS = [n for n in RUNNERS if n not in ("average_precision", "set_loss")]     # not numbers


def changed(name, change):
    """The reference of check ``name`` with ``change`` applied to its result."""
    reference = RUNNERS[name][1]
    return lambda *a: change(reference(*a))


def first_part(change):
    """Apply ``change`` to a tensor result, or to the first part (the image) of a tuple."""
    return lambda out: (change(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else change(out)


@pytest.mark.parametrize("name", list(RUNNERS))
def test_times_1_01_fails(name):
    scale = lambda out: tuple(p * 1.01 for p in out) if isinstance(out, tuple) else out * 1.01  # noqa: E731
    msg = fails(RUNNERS[name][0], changed(name, scale))
    assert msg.startswith("case 1: ") and "yours " in msg, msg
    assert {"average_precision": "follow the recipe", "set_loss": "compare your code"}.get(
        name, "constant factor 1.01") in msg, msg


@pytest.mark.parametrize("name", TENSOR_RESULTS)
def test_two_axes_swapped_fail(name):
    msg = fails(RUNNERS[name][0], changed(name, first_part(lambda t: t.transpose(-2, -1))))
    assert msg.startswith("case 1: ") and ("swapped" in msg or "in the wrong layout" in msg), msg


@pytest.mark.parametrize("name", TENSOR_RESULTS)
def test_a_wrong_shape_fails_and_says_the_expected_one(name):
    msg = fails(RUNNERS[name][0], changed(name, first_part(lambda t: torch.cat([t, t], dim=-1))))
    assert re.search(r": shape \([0-9, ]*\), expected \([0-9, ]*\): that is \(", msg), msg


@pytest.mark.parametrize("name", list(RUNNERS))
@pytest.mark.parametrize("result, says", [(lambda out: None, "returned None"),
                                          (lambda out: "0.5", "returned a str")])
def test_a_result_of_the_wrong_type_fails(name, result, says):
    msg = fails(RUNNERS[name][0], changed(name, result))
    assert msg.startswith("case 1: ") and says in msg and "expected " in msg, msg


@pytest.mark.parametrize("name", TENSOR_RESULTS)
def test_a_list_instead_of_a_tensor_fails(name):
    msg = fails(RUNNERS[name][0], changed(name, first_part(lambda t: t.tolist())))
    assert "returned a list" in msg and "expected a tensor of shape (" in msg, msg


def test_a_wrong_number_of_results_fails():
    msg = fails(checks.check_hflip, lambda image, boxes: checks.check_hflip.reference(image, boxes)[1])
    assert "expected a tuple (image, boxes)" in msg, msg
    msg = fails(checks.check_average_precision, lambda *a: [average_precision(*a)] * 2)
    assert "returned a list of 2, expected one number" in msg, msg


@pytest.mark.parametrize("name", list(RUNNERS))
def test_an_exception_fails_naming_it_and_the_case(name):
    def broken(*args):
        raise ValueError("index 7 is out of bounds\nsecond line")

    with pytest.raises(AssertionError) as e:
        RUNNERS[name][0](broken)
    msg = str(e.value)
    assert re.fullmatch(r"case 1: [^\n]+: your function raised ValueError: index 7 is out of bounds", msg), msg
    assert isinstance(e.value.__cause__, ValueError)     # the learner's traceback stays visible


@pytest.mark.parametrize("name", list(RUNNERS))
def test_the_skeleton_is_not_written_yet(name, capsys):
    def skeleton(*args):
        raise NotImplementedError

    assert RUNNERS[name][0](skeleton) is False
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("… ") and out[0].endswith(
        " not written yet: write it in the cell above (a solution is in the hidden cell below)"), out
    assert "merge heads" in out[0] if name == "merge" else "split heads" in out[0] if name == "split" else True


def test_not_written_in_a_later_case_still_returns_false(capsys):
    def half_done(x, weight, bias, stride, padding):
        if stride == 2:
            raise NotImplementedError("stride 2")
        return my_conv2d(x, weight, bias, stride, padding)

    assert checks.check_conv2d(half_done) is False
    assert capsys.readouterr().out.startswith("… conv2d as unfold + matmul not written yet")


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_a_result_cut_from_autograd_fails(name):
    msg = fails(RUNNERS[name][0], changed(name, lambda t: t.detach()))
    assert msg.startswith("case 1: ") and "your result has no gradient" in msg, msg


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_a_wrong_gradient_fails_where_the_values_are_right(name):
    msg = fails(RUNNERS[name][0], changed(name, lambda t: t + (t - t.detach())))    # value t, gradient 2x
    assert msg.startswith("case 1: ") and "gradient w.r.t. " in msg and "first difference at [" in msg, msg
    assert "the values match but the gradient does not" in msg, msg


@pytest.mark.parametrize("as_number", [float, np.float32, np.array, torch.tensor])
def test_average_precision_may_be_any_kind_of_number(as_number, capsys):
    assert checks.check_average_precision(lambda *a: as_number(average_precision(*a))) is True


def test_a_float32_result_is_told_so():
    msg = fails(checks.check_layer_norm, lambda x, w, b, eps=1e-5: my_layer_norm(x.float(), w.float(), b.float(), eps))
    assert "yours is torch.float32, expected torch.float64" in msg, msg


# ----------------------------------------------------------------------------- the new references

def test_split_and_merge_heads_by_hand():
    x = torch.randn(2, 5, 12)
    h, d = 3, 4
    heads = split_heads(x, h)
    assert heads.shape == (2, 3, 5, 4)
    for b in range(2):
        for i in range(h):
            for t in range(5):
                assert torch.equal(heads[b, i, t], x[b, t, i * d:(i + 1) * d])     # head i: one block of channels
    assert torch.equal(merge_heads(heads), x)


def _coco(images, gts, categories):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": 100, "height": 100} for i in images],
                    "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": list(b),
                                     "area": b[2] * b[3], "iscrowd": 0} for n, (i, c, b) in enumerate(gts)],
                    "categories": [{"id": c, "name": str(c)} for c in categories]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_precision(coco, dets):
    """COCOeval's precision at IoU 0.5, area "all", 100 detections: (101 recall points, K categories)."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    return ev, ev.eval["precision"][0, :, :, 0, 2]


def test_average_precision_equals_pycocotools_on_a_hand_made_case():
    """Category 1: 5 objects on 3 images, 7 detections (hits, a duplicate, a miss, a stray box); category 2:
    detections but no object (COCO: -1); category 3: an object but no detection (AP 0)."""
    gts = [(1, 1, (10, 10, 20, 20)), (1, 1, (50, 50, 30, 20)), (2, 1, (5, 40, 40, 40)), (3, 1, (60, 10, 30, 30)),
           (3, 1, (10, 60, 25, 25)), (2, 3, (10, 10, 10, 10))]
    found = [(1, (10, 10, 20, 20), 0.9, True), (1, (11, 10, 20, 20), 0.8, False),          # a duplicate
             (1, (52, 50, 30, 20), 0.35, True), (2, (80, 0, 10, 10), 0.7, False),          # a stray box
             (2, (6, 41, 40, 40), 0.6, True), (3, (61, 11, 30, 30), 0.5, True), (3, (0, 0, 5, 5), 0.4, False)]
    dets = [{"image_id": i, "category_id": 1, "bbox": list(b), "score": s} for i, b, s, _ in found]
    dets += [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 9, 9], "score": 0.3}]
    coco = _coco([1, 2, 3], gts, [1, 2, 3])
    _, precision = _coco_precision(coco, dets)
    scores, is_tp = [s for *_, s, _ in found], [t for *_, t in found]
    assert average_precision(scores, is_tp, num_gt=5) == pytest.approx(precision[:, 0].mean(), abs=1e-12)
    assert 0.4 < average_precision(scores, is_tp, 5) < 0.8                  # neither 0 nor 1: a real curve
    assert average_precision([0.3], [False], num_gt=0) == -1.0 == precision[:, 1].mean()
    assert average_precision([], [], num_gt=1) == 0.0 == precision[:, 2].mean()


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_equals_pycocotools_on_random_scenes(seed):
    """Random objects and detections (jittered hits, misses, strays) on 5 images; COCO's own matches at IoU 0.5
    give is_tp, and COCO's precision row gives the AP to reproduce."""
    rs = np.random.RandomState(seed)
    gts, dets = [], []
    for image in range(1, 6):
        for _ in range(rs.randint(0, 5)):
            box = (*rs.uniform(0, 60, 2), *rs.uniform(5, 40, 2))
            gts.append((image, 1, tuple(float(v) for v in box)))
            if rs.rand() < 0.75:                                            # found, more or less well
                dets.append((image, [float(v) for v in np.array(box) + rs.normal(0, 4, 4) * [1, 1, 0.3, 0.3]]))
        for _ in range(rs.randint(0, 3)):                                   # stray boxes
            dets.append((image, [float(v) for v in (*rs.uniform(0, 60, 2), *rs.uniform(5, 40, 2))]))
    scores = rs.permutation(len(dets)) / len(dets) + 0.01                   # distinct scores
    ev, precision = _coco_precision(_coco(range(1, 6), gts, [1]), [
        {"image_id": i, "category_id": 1, "bbox": b, "score": float(s)} for (i, b), s in zip(dets, scores)])
    per_image = [e for e in ev.evalImgs[:5] if e is not None]               # category 1, area "all"
    coco_scores = np.concatenate([e["dtScores"] for e in per_image])
    coco_tp = np.concatenate([e["dtMatches"][0] > 0 for e in per_image])    # IoU 0.5 row
    assert 0 < coco_tp.sum() < len(coco_tp)
    assert average_precision(torch.tensor(coco_scores), torch.tensor(coco_tp), len(gts)) == pytest.approx(
        precision[:, 0].mean(), abs=1e-12)


# ----------------------------------------------------------------------------- messages that used to mislead

@pytest.mark.parametrize("eps", [1e-7, 1e-6])
def test_a_giou_with_a_small_eps_in_its_denominators_is_accepted(eps, capsys):
    """torchvision's generalized_box_iou_loss adds 1e-7 to the union and the enclosing area."""
    assert checks.check_giou(partial(my_giou, eps=eps)) is True


def test_a_giou_with_a_larger_eps_is_rejected_for_that_reason():
    msg = fails(checks.check_giou, partial(my_giou, eps=1e-5))
    assert msg.startswith("case 1: overlapping boxes") and "an eps in a denominator" in msg, msg
    assert "cut from autograd" not in msg, msg


def test_a_set_loss_that_divides_by_zero_objects_is_named():
    def unclamped(logits, boxes, targets, indices, eos_coef=0.1):
        ce, l1, giou = my_set_loss(logits, boxes, targets, indices, eos_coef)
        n = sum(len(t["labels"]) for t in targets)
        return ce, l1 * max(n, 1) / n if n == 0 else l1, giou * max(n, 1) / n if n == 0 else giou

    msg = fails(checks.check_set_loss, unclamped)
    assert_names(msg, "case 4: no object in the batch", "num_boxes not clamped", "loss_bbox: yours nan")


def test_a_set_loss_term_cut_from_autograd_is_named():
    msg = fails(checks.check_set_loss, lambda *a: (lambda ce, l1, g: (ce, l1.detach(), g))(*my_set_loss(*a)))
    assert msg.startswith("case 1: ") and "loss_bbox: your result has no gradient" in msg, msg


# ----------------------------------------------------------------------------- the training step (notebook 05)

def my_train_step(model, criterion, optimizer, images, mask, targets, max_norm=0.1, zero=True, step=True,
                  clip=True, detach=False, item=False, zero_late=False, clip_late=False, no_grad=False):
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        terms = criterion(model(images, mask), targets)
    if zero:
        optimizer.zero_grad()
    loss = terms["loss"].detach() if detach else terms["loss"].item() if item else terms["loss"]
    loss.backward()
    if zero_late:                                          # the gradients are gone before the step
        optimizer.zero_grad()
    if clip and not clip_late:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if step:
        optimizer.step()
    if clip_late:                                          # clips what the step already used
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return terms


def test_the_train_step_reference_and_a_right_solution_pass(capsys):
    assert checks.check_train_step(train_step) is True
    assert checks.check_train_step(my_train_step) is True
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1], lines
    assert re.fullmatch(r"✓ training step: 3 steps match detr_nb\.teach\.overfit\.train_step, and 60 steps on one "
                        r"batch bring the loss from [\d.]+ to [\d.]+ and every object's matched box to IoU >= "
                        r"0\.[5-9]\d", lines[0]), lines[0]


@pytest.mark.parametrize("change, hint, where", [
    (dict(zero=False), "zero_grad missing", "losses: first difference at ["),
    (dict(step=False), "the weights never moved: optimizer.step() missing", "losses: first difference at ["),
    (dict(clip=False), "the gradients were not clipped before the step", "losses: first difference at ["),
    (dict(zero=False, clip=False), "zero_grad and the clip both missing", "losses: first difference at ["),
    # hidden: the same effects reached another way
    (dict(zero_late=True), "or zero_grad() called between backward() and step()", "losses: first difference at ["),
    (dict(clip_late=True), "the gradients were not clipped before the step", "losses: first difference at ["),
    (dict(detach=True), "your function raised RuntimeError: backward() on a loss cut from autograd", ""),
    (dict(item=True), "your function raised RuntimeError: backward() on a loss cut from autograd", ""),
    (dict(no_grad=True), "your function raised RuntimeError: backward() on a loss cut from autograd", ""),
], ids=["no-zero_grad", "no-step", "no-clip", "no-zero_grad-no-clip", "zero_grad-before-step", "clip-after-step",
        "detached-loss", "item-loss", "no_grad-loss"])
def test_a_train_step_mistake_is_named(change, hint, where):
    assert_names(fails(checks.check_train_step, partial(my_train_step, **change)),
                 "case 1: 3 steps from the same weights", hint, where)


def test_a_train_step_that_returns_nothing_or_is_a_skeleton(capsys):
    msg = fails(checks.check_train_step, lambda *a, **k: my_train_step(*a, **k) and None)
    assert "your function raised TypeError: it returned None: return the criterion's dict of loss terms" in msg, msg

    def skeleton(*args):
        raise NotImplementedError("your turn: write my_train_step")

    assert checks.check_train_step(skeleton) is False
    assert capsys.readouterr().out.startswith("… training step not written yet")
