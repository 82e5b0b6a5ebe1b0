"""The convergence aids (detr_nb.aids): each mechanism of AidedDETR, and that it learns faster than vanilla."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detr_nb.aids import AidedCriterion, AidedDETR, box_prior, box_sine_embedding, grid_anchors, inverse_sigmoid
from detr_nb.config import build_criterion, build_model
from detr_nb.models import DETR
from detr_nb.models.attention import attention_weights, split_heads

# A small aided model (dropout 0; eval mode, so its BatchNorm is a fixed function).
SMALL = dict(backbone_width=0.125, hidden_dim=32, nheads=2, dec_layers=2, dim_feedforward=64, num_queries=6)

pytestmark = pytest.mark.usefixtures("one_thread")


def small():
    torch.manual_seed(0)
    return build_model("detr_tiny_aided", num_classes=4, **SMALL).eval()


def targets(B=2):
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])}
            for _ in range(B)]


def test_only_the_main_jobs_model_is_aided():
    for name in ("detr_r50", "detr_tiny", "detr_small"):
        with torch.device("meta"):
            assert type(build_model(name, num_classes=3)) is DETR
    m = small()
    assert isinstance(m, AidedDETR) and not hasattr(m, "query_embed")
    assert isinstance(build_criterion(m), AidedCriterion)
    prior = -math.log(0.99 / 0.01)             # the class biases start at probability 0.01
    torch.testing.assert_close(m.class_embed.bias, torch.full((5,), prior))
    torch.testing.assert_close(m.enc_class_embed.bias, torch.full((5,), prior))


def test_the_queries_start_on_the_best_encoder_proposals():
    """The box heads start at zero, so each query's first box is its reference: the box of one of the Q cells
    with the best class score, padding cells never chosen."""
    m = small()
    x = torch.randn(2, 3, 64, 80)
    mask = torch.zeros(2, 64, 80, dtype=torch.bool)
    mask[1, :, 48:] = True                       # image 1 is 48 px wide: its last feature columns are padding
    out = m(x, mask)
    enc_logits, enc_boxes = out["enc_outputs"]["pred_logits"], out["enc_outputs"]["pred_boxes"]   # (B, hw, .)
    assert enc_boxes.shape == (2, 8 * 10, 4)
    score = enc_logits[..., :-1].amax(-1)
    padding = torch.zeros(2, 8, 10, dtype=torch.bool)
    padding[1, :, 6:] = True
    score[padding.flatten(1)] = -math.inf
    best = score.topk(6, dim=1).indices                                    # (B, Q)
    torch.testing.assert_close(out["aux_outputs"][0]["pred_boxes"], torch.gather(enc_boxes, 1, best[..., None].expand(-1, -1, 4)))
    assert not padding.flatten(1).gather(1, best).any()
    # a map of fewer cells than queries: every cell serves queries, none is invented
    few = m(torch.randn(1, 3, 16, 16))                                     # 2 x 2 cells, 6 queries
    assert few["pred_boxes"].shape == (1, 6, 4) and len(set(map(tuple, few["aux_outputs"][0]["pred_boxes"][0].tolist()))) == 4


def test_each_layer_refines_the_previous_box_and_the_references_carry_no_gradient():
    m = small()
    with torch.no_grad():
        m.bbox_embed.layers[-1].bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    out = m(torch.randn(2, 3, 64, 64))
    b0, b1 = out["aux_outputs"][0]["pred_boxes"], out["pred_boxes"]
    torch.testing.assert_close(inverse_sigmoid(b1) - inverse_sigmoid(b0), torch.tensor([0.1, -0.2, 0.3, 0.0]).expand_as(b0),
                               atol=1e-4, rtol=0)
    out["pred_boxes"].sum().backward()           # the decoder never sends gradient into the encoder's box head
    assert all(p.grad is None for p in m.enc_bbox_embed.parameters())


def test_box_sine_embedding_is_detrs_sine_per_coordinate():
    boxes = torch.rand(3, 4)
    emb = box_sine_embedding(boxes, 32)
    dim_t = 10000 ** (2 * (torch.arange(8) // 2) / 8)
    p = boxes[:, 1:2] * 2 * torch.pi / dim_t    # the cy coordinate -> channels 8..15
    torch.testing.assert_close(emb[:, 8:16], torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], -1).flatten(1))


def test_box_prior_is_zero_at_the_box_centre_and_falls_with_the_distance_in_box_sizes():
    ref = torch.tensor([[[0.5, 0.5, 0.2, 0.4]]])                                            # (1, 1, 4) cxcywh
    centers = torch.tensor([[[0.5, 0.5], [0.6, 0.5], [0.5, 0.7], [0.9, 0.9]]])   # centre, right/bottom edge, far
    scales = torch.tensor([0.5, 16.0])
    bias = box_prior(ref, centers, scales)                                                  # (1, 2, 1, 4)
    far = (0.4 / 0.2) ** 2 + (0.4 / 0.4) ** 2
    torch.testing.assert_close(bias[0, :, 0], -torch.tensor([0.0, 0.25, 0.25, far]) * scales[:, None])
    model = small()
    assert "prior_scales" not in model.state_dict()                     # fixed, not a weight: checkpoints unchanged
    torch.testing.assert_close(model.prior_scales, torch.tensor([0.5, 16.0]))       # SMALL has 2 heads


def test_the_box_prior_draws_the_cross_attention_into_the_box():
    """The decoder's first cross-attention, recomputed from its inputs with and without the model's prior: the
    weight on the cells within each query's box ellipse grows, for every head and query."""
    model = small()
    attn = model.transformer.decoder.layers[0].multihead_attn
    seen = {}
    attn.register_forward_hook(lambda mod, args, kwargs, out: seen.update(args=args, bias=kwargs["attn_mask"]),
                               with_kwargs=True)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        query, key, _ = seen["args"]
        (w_q, w_k, _), (b_q, b_k, _) = attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)
        q, k = split_heads(F.linear(query, w_q, b_q), 2), split_heads(F.linear(key, w_k, b_k), 2)   # (1, h, L, d)
        bias = seen["bias"]                                                                      # (1, h, Q, hw)
        inside = bias > -0.25 * model.prior_scales[:, None, None]    # cell centres within the box's ellipse
        plain, primed = attention_weights(q, k), attention_weights(q, k, bias=bias)
    both = inside.any(-1) & (~inside).any(-1)                        # (1, h, Q): queries with cells on each side
    assert both.float().mean() > 0.5
    gain = (primed * inside).sum(-1) - (plain * inside).sum(-1)      # (1, h, Q)
    assert (gain[both] > 0).all() and (gain[~both].abs() < 1e-6).all()


def test_grid_anchors_sit_on_the_cells_of_the_unpadded_image():
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, :, 2:] = True                         # 2 of 4 columns are the image
    a = grid_anchors(mask, 0.15).view(2, 4, 4)
    torch.testing.assert_close(a[0, :, 0], torch.tensor([0.25, 0.75, 1.25, 1.75]))   # cx in the image's width
    torch.testing.assert_close(a[:, 0, 1], torch.tensor([0.25, 0.75]))
    assert (a[..., 2:] == 0.15).all()


def _train_curve(model_name, overrides, steps, batches, seed=0):
    torch.manual_seed(seed)   # the initial weights
    model = build_model(model_name, num_classes=7, **overrides)
    focal = model_name == "detr_tiny_aided"
    crit = build_criterion(model, {"loss_ce": 2.0 if focal else 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    curve = []
    for s in range(steps):
        x, t = batches[s % len(batches)]
        losses = crit(model(x), t)
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        curve.append(float((losses["loss_giou"] + losses["loss_bbox"]).detach()))   # same definition for both models
    return curve


def _box_batches(data_seed):
    """Two fixed batches of 6 synthetic 64 px images (1-4 shapes), drawn from ``data_seed``."""
    from detr_nb.data.synthetic import render_sample, synthetic_params
    params = synthetic_params(image_size=(64, 64), min_objects=1, max_objects=4, object_size=(0.15, 0.5))
    batches = []
    for b in range(2):
        xs, ts = [], []
        for i in range(6):
            s = render_sample(params, data_seed, "train", 8 * b + i)
            xs.append(torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 127.5 - 1)
            bx = torch.as_tensor(s["boxes"], dtype=torch.float32) / 64    # xyxy -> cxcywh normalised
            ts.append({"labels": torch.as_tensor(s["labels"]),
                       "boxes": torch.stack([(bx[:, 0] + bx[:, 2]) / 2, (bx[:, 1] + bx[:, 3]) / 2,
                                             bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]], -1)})
        batches.append((torch.stack(xs), ts))
    return batches


def test_aided_tiny_model_learns_boxes_faster_than_vanilla():
    """Deterministic: fixed data (data seed 0), fixed initial weights (torch seed 0), one thread (the autouse
    fixture), no data loader; the same run gives the same curves to the last bit.

    The threshold comes from the spread over seeds, measured on the 2-core CPU with torch 2.14 (20 steps, 38
    distinct (data seed, torch seed) runs: (s, s) for s = 0-19, (0, s) and (s, 0) for s = 1-9):
      tail ratio  mean(aided last 5) / mean(vanilla last 5):  min 0.50, median 0.61, max 0.75 (seed 0: 0.50);
                  asserted < 0.85, 0.1 above the worst seed.
    How much further the aided loss falls than the vanilla one is not asserted: the ratio of the two drops
    spans 0.64 to 2.73 over the same seeds (seed 0: 2.33), below 1 for one of them.
    """
    batches = _box_batches(data_seed=0)
    dims = dict(backbone_width=0.25, hidden_dim=32, nheads=4, dim_feedforward=64, num_queries=12)
    steps = 20
    vanilla = _train_curve("detr_tiny", dict(dims, enc_layers=1, dec_layers=2), steps, batches, seed=0)
    aided = _train_curve("detr_tiny_aided", dict(dims, dec_layers=2), steps, batches, seed=0)
    tail = slice(steps - 5, steps)
    assert np.mean(aided[tail]) < 0.85 * np.mean(vanilla[tail]), (aided, vanilla)
