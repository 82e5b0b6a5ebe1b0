"""The convergence aids (detr_nb.aids): each mechanism, and that the aided tiny model learns faster."""
import numpy as np
import pytest
import torch

from detr_nb.aids import (AidedCriterion, AidedDETR, aids_of, box_sine_embedding, build_criterion,
                          denoising_attention_mask, group_attention_mask, inverse_sigmoid, noise_targets)
from detr_nb.configs import CONFIGS, build_model
from detr_nb.aids.denoising import denoising_losses
from detr_nb.aids.focal import FocalClasses, focal_scores, sigmoid_scores
from detr_nb.aids.two_stage import gather_cells, select_cells
from detr_nb.setpred.criterion import SetCriterion
from detr_nb.model.detr import DETR

# A small GroupNorm model (no batch statistics: train and eval modes compute the same function).
SMALL = dict(backbone_width=0.125, return_layer="layer2", backbone_norm="gn", hidden_dim=32, nheads=2,
             enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=6, dropout=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def small(**aids):
    torch.manual_seed(0)
    return build_model("detr_tiny", num_classes=4, **SMALL, **aids)


def targets(B=2):
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])}
            for _ in range(B)]


def test_official_configs_are_vanilla():
    for name in ("detr_r50", "detr_r50_dc5", "detr_r101", "detr_r101_dc5", "detr_tiny", "detr_small"):
        assert not CONFIGS[name].aided(), name
    m = small()
    assert type(m) is DETR and aids_of(m) == {}
    assert isinstance(build_criterion(m, 4), SetCriterion) and not isinstance(build_criterion(m, 4), AidedCriterion)


def test_group_mask_is_block_diagonal():
    m = group_attention_mask(2, 3)
    expected = ~torch.block_diag(*[torch.ones(2, 2, dtype=torch.bool)] * 3)
    assert torch.equal(m, expected)


def test_groups_do_not_see_each_other_and_one_group_at_inference():
    m = small(num_groups=3)
    x = torch.randn(2, 3, 64, 64)
    m.train()
    out = m(x)
    Q = 6
    assert out["pred_logits"].shape == (2, 3 * Q, 5) and out["aux_outputs"][0]["pred_boxes"].shape == (2, 3 * Q, 4)
    with torch.no_grad():   # change the queries of groups 1 and 2 only
        m.query_embed.weight[Q:] += torch.randn_like(m.query_embed.weight[Q:])
    out2 = m(x)
    torch.testing.assert_close(out2["pred_logits"][:, :Q], out["pred_logits"][:, :Q])
    torch.testing.assert_close(out2["pred_boxes"][:, :Q], out["pred_boxes"][:, :Q])
    assert not torch.allclose(out2["pred_logits"][:, Q:], out["pred_logits"][:, Q:])
    m.eval()
    ev = m(x)   # inference: group 0 alone, the same numbers
    assert ev["pred_logits"].shape == (2, Q, 5)
    torch.testing.assert_close(ev["pred_logits"], out["pred_logits"][:, :Q])
    # the criterion matches each group separately: num_groups comes from the model
    crit = build_criterion(m, 4)
    assert isinstance(crit, AidedCriterion) and crit.num_groups == 3 and crit.num_queries == Q
    m.train()
    losses = crit(m(x), targets())
    assert torch.isfinite(losses["loss"]) and losses["loss_bbox"] > 0


def test_box_refinement_starts_at_the_anchors_and_detaches_references():
    m = small(box_refine=True)
    assert isinstance(m, AidedDETR) and not hasattr(m, "query_embed")
    x = torch.randn(2, 3, 64, 64)
    out = m(x)
    anchors = m.anchor_embed.weight.sigmoid()[None].expand(2, -1, -1)
    # the last box layer is zero-initialised: every layer's box is its reference (the anchor) at step 0
    torch.testing.assert_close(out["pred_boxes"], anchors)
    torch.testing.assert_close(out["aux_outputs"][0]["pred_boxes"], anchors)
    # layer l refines layer l-1's box in logit space; the reference itself carries no gradient
    with torch.no_grad():
        m.bbox_embed.layers[-1].bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    out = m(x)
    b0, b1 = out["aux_outputs"][0]["pred_boxes"], out["pred_boxes"]
    torch.testing.assert_close(inverse_sigmoid(b0) - inverse_sigmoid(anchors), torch.tensor([0.1, -0.2, 0.3, 0.0]).expand_as(b0),
                               atol=1e-4, rtol=0)
    # the gradient of the last layer's box w.r.t. the anchors passes only through query_pos, never through
    # the detached reference: zero the query-pos MLP and the anchors get no gradient from layer 1's box
    with torch.no_grad():
        for p in m.ref_point_head.parameters():
            p.zero_()
    m.zero_grad()
    m(x)["pred_boxes"].sum().backward()
    assert m.anchor_embed.weight.grad is None or m.anchor_embed.weight.grad.abs().max() == 0


def test_box_sine_embedding_matches_detr_sine_per_coordinate():
    boxes = torch.rand(3, 4)
    emb = box_sine_embedding(boxes, 32)
    assert emb.shape == (3, 32)
    dim_t = 10000 ** (2 * (torch.arange(8) // 2) / 8)
    p = boxes[:, 1:2] * 2 * torch.pi / dim_t    # the cy coordinate -> channels 8..15
    expected = torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], -1).flatten(1)
    torch.testing.assert_close(emb[:, 8:16], expected)


def test_two_stage_selects_top_cells_and_detaches_references():
    m = small(two_stage=True, class_prior=0.01)
    assert m.box_refine and aids_of(m) == {"two_stage": True, "box_refine": True}
    torch.testing.assert_close(m.class_embed.bias, torch.full((5,), -np.log(99.0), dtype=torch.float32))
    # selection: the Q cells with the best class score (padding never), their boxes detached
    B, h, w = 1, 3, 4
    logits = torch.full((B, h * w, 5), -5.0)
    best = [7, 2, 11, 0, 5, 9]
    for rank, cell in enumerate(best):
        logits[0, cell, rank % 4] = 3.0 - 0.1 * rank
    logits[0, 3, 4] = 10.0                  # the unused last column does not count
    fmask = torch.zeros(B, h, w, dtype=torch.bool)
    boxes = torch.rand(B, h * w, 4, requires_grad=True)
    ref = gather_cells(boxes, select_cells(logits, fmask, m.num_classes, m.num_queries))
    assert not ref.requires_grad
    torch.testing.assert_close(ref[0], boxes[0, best].detach())
    fmask[0, 2, 3] = True                   # cell 11 becomes padding: the next best (3) replaces it
    logits[0, 3, 0] = 0.0
    assert 11 not in select_cells(logits, fmask, m.num_classes, m.num_queries)[0].tolist()
    # a map of fewer cells than queries: each cell serves several queries, in rank order, with no branch
    few = select_cells(logits[:, :4], torch.zeros(1, 2, 2, dtype=torch.bool), m.num_classes, 6)
    assert few[0].tolist() == [2, 0, 3, 1, 2, 0]
    # in the model: the decoder's boxes never send gradient into the encoder's box head
    x = torch.randn(2, 3, 64, 64)
    out = m(x)
    assert out["enc_outputs"]["pred_boxes"].shape == (2, 8 * 8, 4)
    out["pred_boxes"].sum().backward()
    assert all(p.grad is None for p in m.enc_bbox_embed.parameters())
    # the criterion adds the encoder's one-to-one loss
    crit = build_criterion(m, 4, loss_type="focal", cost_class=2.0)
    assert isinstance(crit, AidedCriterion)
    losses = crit(m(x), targets())
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(losses)
    main = SetCriterion(4, crit.matcher, class_term=FocalClasses(4))(
        {k: v for k, v in m(x).items() if k != "enc_outputs"}, targets())["loss"]
    enc = 1.0 * losses["loss_ce_enc"] + 5.0 * losses["loss_bbox_enc"] + 2.0 * losses["loss_giou_enc"]
    torch.testing.assert_close(losses["loss"], main + enc)


def test_denoising_mask_hides_groups_and_answers():
    m = denoising_attention_mask(6, 2, 4, group_attention_mask(2, 2))    # 2 dn groups of 3, then 2x2 matching
    assert m.shape == (10, 10)
    assert not m[:3, :3].any() and m[:3, 3:6].all() and m[3:6, :3].all() and not m[3:6, 3:6].any()
    assert m[6:, :6].all()                      # matching queries never see a denoising query
    assert not m[:6, 6:].any()                  # denoising queries may look at the matching ones
    assert torch.equal(m[6:, 6:], group_attention_mask(2, 2))
    assert torch.equal(denoising_attention_mask(0, 3, 4), torch.zeros(4, 4, dtype=torch.bool))


def test_noise_targets_stay_within_the_noise_scale():
    torch.manual_seed(0)
    t = [{"labels": torch.randint(0, 5, (n,)), "boxes": torch.rand(n, 4) * 0.4 + 0.3} for n in (7, 0, 3)]
    lab_in, box_in, lab, box, valid = noise_targets(t, 4, 5, box_noise=0.4, label_noise=0.25)
    assert lab_in.shape == lab.shape == valid.shape == (3, 28) and box_in.shape == box.shape == (3, 28, 4)
    assert valid.sum(1).tolist() == [28, 0, 12]
    for g in range(4):                          # slot g*M + i answers for object i
        torch.testing.assert_close(box[2, 7 * g:7 * g + 3], t[2]["boxes"])
        assert torch.equal(lab[0, 7 * g:7 * g + 7], t[0]["labels"])
    wh = box[valid][:, 2:]
    assert ((box_in[valid][:, :2] - box[valid][:, :2]).abs() <= 0.4 * wh / 2 + 1e-6).all()
    ratio = box_in[valid][:, 2:] / wh
    assert ((ratio >= 0.6 - 1e-6) & (ratio <= 1.4 + 1e-6)).all() and ratio.std() > 0.05
    flipped = (lab_in != lab)[valid].float().mean()
    assert 0.05 < flipped < 0.3                  # p = 0.25 of a flip, to a random class (1/5 of them the same)
    assert (lab_in[~valid] == 5).all()           # padding keeps the "no object" id


def test_denoising_queries_exist_only_in_training_and_do_not_leak():
    m = small(dn_groups=3, two_stage=True, class_prior=0.01)
    assert m.needs_targets and aids_of(m)["dn_groups"] == 3
    x = torch.randn(2, 3, 64, 64)
    m.train()
    torch.manual_seed(1)
    with_dn = m(x, targets=targets())
    plain = m(x)                                 # no targets: no denoising queries
    assert "dn_outputs" not in plain
    assert with_dn["dn_outputs"]["pred_logits"].shape == (2, 3 * 2, 5)   # 2 objects x 3 groups
    assert len(with_dn["dn_outputs"]["aux_outputs"]) == 1
    # the matching queries never attend to the denoising ones: their outputs are unchanged
    torch.testing.assert_close(with_dn["pred_logits"], plain["pred_logits"])
    torch.testing.assert_close(with_dn["aux_outputs"][0]["pred_boxes"], plain["aux_outputs"][0]["pred_boxes"])
    m.eval()
    out = m(x, targets=targets())
    assert "dn_outputs" not in out and "dn_meta" not in out and out["pred_logits"].shape == (2, 6, 5)
    m.train()
    crit = build_criterion(m, 4, loss_type="focal", cost_class=2.0,
                           weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0})
    uneven = targets()
    uneven[1] = {k: v[:1] for k, v in uneven[1].items()}          # 2 and 1 objects: a padding slot per group
    losses = crit(m(x, targets=uneven), uneven)
    assert {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0"} <= set(losses)
    losses["loss"].backward()
    assert m.label_enc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("loss_type", ["focal", "ce"])
def test_denoising_losses_against_references(loss_type):
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss
    from detr_nb.setpred.classes import SoftmaxClasses
    torch.manual_seed(0)
    term = FocalClasses(4) if loss_type == "focal" else SoftmaxClasses(4, eos_coef=0.1)
    labels = torch.tensor([[1, 3, 4, 1, 3, 4], [2, 4, 4, 2, 4, 4]])          # 2 groups of M = 2, id 4 = padding
    valid = labels != 4
    true = torch.rand(2, 6, 4) * 0.3 + 0.3
    logits = torch.randn(2, 6, 5)
    pred = (true + 0.05 * torch.randn_like(true)).clamp(0.05, 0.95)
    meta = {"labels": labels, "boxes": true, "valid": valid, "groups": 2}
    dn = lambda boxes: denoising_losses({"pred_logits": logits, "pred_boxes": boxes}, meta, torch.tensor(3.0), term)
    out = dn(pred)
    norm = 3.0 * 2
    if loss_type == "focal":
        onehot = torch.nn.functional.one_hot(labels, 5)[..., :4].float()    # padding rows: all zeros
        ref_ce = sigmoid_focal_loss(logits[..., :4], onehot, reduction="sum") / norm
    else:
        ref_ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                   torch.tensor([1.0, 1, 1, 1, 0.1]))
    torch.testing.assert_close(out["loss_ce_dn"], ref_ce)
    torch.testing.assert_close(out["loss_bbox_dn"], (pred - true)[valid].abs().sum() / norm)
    xyxy = lambda b: torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)
    torch.testing.assert_close(out["loss_giou_dn"],
                               generalized_box_iou_loss(xyxy(pred[valid]), xyxy(true[valid]), reduction="sum") / norm)
    perfect = dn(true)
    assert float(perfect["loss_bbox_dn"]) == 0 and float(perfect["loss_giou_dn"]) < 1e-6


def _train_curve(model_name, overrides, loss_type, steps, batches, seed=0):
    torch.manual_seed(seed)   # the initial weights, and the DN noise drawn during training
    model = build_model(model_name, num_classes=7, **overrides)
    crit = build_criterion(model, 7, loss_type=loss_type, cost_class=2.0 if loss_type == "focal" else 1.0,
                           weight_dict={"loss_ce": 2.0 if loss_type == "focal" else 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    curve = []
    for s in range(steps):
        x, t = batches[s % len(batches)]
        losses = crit(model(x, targets=t) if getattr(model, "needs_targets", False) else model(x), t)
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
    """Deterministic: fixed data (data seed 0), fixed initial weights and DN noise (torch seed 0), one
    thread (the autouse fixture), no data loader; the same run gives the same curves to the last bit.

    The thresholds come from the spread over seeds (the ratios below, 20 steps, measured on the 2-core
    CPU with torch 2.14): 38 distinct (data seed, torch seed) runs: (s, s) for s = 0-19, (0, s) and
    (s, 0) for s = 1-9.
      tail ratio  mean(aided last 5) / mean(vanilla last 5):  min 0.43, median 0.58, max 0.80
                  (seed 0: 0.52); asserted < 0.85, i.e. 0.05 above the worst seed.
      drop ratio  (first 5 - last 5) aided / the same vanilla:  min 1.14, median 1.86, max 3.67
                  (seed 0: 1.71); 6 of the 38 were below the 1.3 this test used to assert (1.14, 1.19,
                  1.24, 1.24, 1.29, 1.29), so that claim held for seed 0, not for the method. Asserted
                  > 1.0 (the aided loss falls further), 0.14 below the worst seed.
    Breaking an aid fails the tail ratio at every seed tried (0-4): two-stage queries taken from the first
    cells instead of the top-scored ones 1.01-1.42, refinement without the reference box 1.12-1.27.
    """
    batches = _box_batches(data_seed=0)
    dims = dict(backbone_width=0.25, hidden_dim=32, nheads=4, dim_feedforward=64, num_queries=12)
    steps = 20
    vanilla = _train_curve("detr_tiny", dict(dims, enc_layers=1, dec_layers=2), "ce", steps, batches, seed=0)
    aided = _train_curve("detr_tiny_aided", dict(dims, dec_layers=2), "focal", steps, batches, seed=0)
    tail = slice(steps - 5, steps)
    head = slice(0, 5)
    assert np.mean(aided[tail]) < 0.85 * np.mean(vanilla[tail]), (aided, vanilla)
    # not only a better start (two-stage boxes start on the objects): the loss also falls further
    drop = lambda c: np.mean(c[head]) - np.mean(c[tail])
    assert drop(aided) > 1.0 * drop(vanilla), (aided, vanilla)


def test_topk_postprocess_keeps_the_best_query_class_pairs():
    from detr_nb.setpred.postprocess import postprocess
    logits = torch.full((1, 3, 2), -9.0)
    logits[0, 0] = torch.tensor([4.0, 3.0])     # query 0: both classes likely
    logits[0, 2, 1] = 2.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.3, 0.6, 0.2, 0.4]]])
    logits = torch.cat([logits, torch.full((1, 3, 1), 9.0)], -1)    # the unused "no object" column is dropped
    one = postprocess({"pred_logits": logits, "pred_boxes": boxes}, [[10, 20]], scoring=sigmoid_scores)[0]
    top = postprocess({"pred_logits": logits, "pred_boxes": boxes}, [[10, 20]],
                      scoring=lambda x: focal_scores(x, topk=3))[0]
    assert one["labels"].tolist() == [0, 0, 1] and len(one["scores"]) == 3
    assert top["labels"].tolist() == [0, 1, 1]                      # query 0 twice, then query 2
    torch.testing.assert_close(top["scores"], torch.sigmoid(torch.tensor([4.0, 3.0, 2.0])))
    torch.testing.assert_close(top["boxes"][1], one["boxes"][0])    # the second pair is query 0's box
    torch.testing.assert_close(top["boxes"][2], one["boxes"][2])


def test_show_attention_mask_draws_allowed_pairs():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from detr_nb.figures.attention import show_attention_mask
    mask = denoising_attention_mask(4, 2, 3)
    ax = show_attention_mask(mask, "t")
    assert np.array_equal(ax.images[0].get_array(), (~mask).numpy()) and ax.get_title() == "t"
    plt.close(ax.figure)
