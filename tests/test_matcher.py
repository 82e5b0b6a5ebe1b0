"""Hungarian matcher: optimality (brute force), validity, official ordering, groups, AMP, bad input.

Also the matching_viz helpers (pure functions and figures) of notebook 05.
"""
import itertools

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision import ops

from detr_nb.matcher import HungarianMatcher, pairwise_costs
from detr_nb.matching_viz import drag_prediction, explain_matching, move_box, plot_cost_terms, plot_matching

C = 4  # real classes; logits have C + 1 columns


def make_batch(sizes, Q=6, seed=0, num_layers=1):
    g = torch.Generator().manual_seed(seed)
    B = len(sizes)

    def layer():
        return {"pred_logits": torch.randn(B, Q, C + 1, generator=g) * 2,
                "pred_boxes": torch.rand(B, Q, 2, generator=g).mul(0.6).add(0.2).repeat(1, 1, 2)
                * torch.tensor([1, 1, 0.5, 0.5])}
    outputs = layer()
    if num_layers > 1:
        outputs["aux_outputs"] = [layer() for _ in range(num_layers - 1)]
    targets = []
    for n in sizes:
        centers = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.cat([centers, wh], -1)})
    return outputs, targets


def reference_cost(logits, boxes, labels, tgt_boxes, wc=1.0, wb=5.0, wg=2.0):
    """Per-pair python loop, torchvision GIoU: an independent copy of the official cost."""
    Q, N = logits.shape[0], labels.shape[0]
    prob = logits.softmax(-1)
    xyxy = lambda b: ops.box_convert(b, "cxcywh", "xyxy")
    cost = torch.zeros(Q, N)
    for q in range(Q):
        for n in range(N):
            l1 = (boxes[q] - tgt_boxes[n]).abs().sum()
            giou = ops.generalized_box_iou(xyxy(boxes[q:q + 1]), xyxy(tgt_boxes[n:n + 1]))[0, 0]
            cost[q, n] = wb * l1 - wc * prob[q, labels[n]] - wg * giou
    return cost


def official_indices(outputs, targets):
    """The official algorithm: one (B*Q, sum N) matrix over the whole batch, split per image."""
    B, Q = outputs["pred_logits"].shape[:2]
    prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    ids = torch.cat([t["labels"] for t in targets])
    tb = torch.cat([t["boxes"] for t in targets])
    xyxy = lambda b: ops.box_convert(b, "cxcywh", "xyxy")
    cost = 5 * torch.cdist(out_bbox, tb, p=1) - prob[:, ids] - 2 * ops.generalized_box_iou(xyxy(out_bbox), xyxy(tb))
    cost = cost.view(B, Q, -1)
    sizes = [len(t["boxes"]) for t in targets]
    return [linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]


def assert_valid(pred, tgt, Q, N):
    assert pred.dtype == torch.int64 and tgt.dtype == torch.int64
    assert pred.device.type == "cpu" and tgt.device.type == "cpu"
    assert len(pred) == len(tgt) == min(Q, N)
    assert len(set(pred.tolist())) == len(pred) and len(set(tgt.tolist())) == len(tgt)  # one-to-one
    assert all(0 <= q < Q for q in pred.tolist()) and all(0 <= n < N for n in tgt.tolist())
    assert pred.tolist() == sorted(pred.tolist())  # rows ascending, as linear_sum_assignment returns


@pytest.mark.parametrize("Q,N,seed", [(1, 1, 0), (3, 2, 1), (4, 4, 2), (5, 3, 3), (6, 4, 4), (6, 1, 5), (6, 0, 6)])
def test_matches_brute_force_optimum(Q, N, seed):
    outputs, targets = make_batch([N], Q=Q, seed=seed)
    (pred, tgt), = HungarianMatcher()(outputs, targets)
    assert_valid(pred, tgt, Q, N)
    cost = reference_cost(outputs["pred_logits"][0], outputs["pred_boxes"][0], targets[0]["labels"],
                          targets[0]["boxes"])
    best = min((sum(cost[perm[n], n] for n in range(N)) for perm in itertools.permutations(range(Q), N)),
               default=0.0)
    assert float(cost[pred, tgt].sum()) == pytest.approx(float(best), abs=1e-5)


def test_cost_terms_match_reference():
    outputs, targets = make_batch([3], Q=5, seed=7)
    terms = pairwise_costs(outputs["pred_logits"][0], outputs["pred_boxes"][0],
                           targets[0]["labels"], targets[0]["boxes"])
    total = 1 * terms["class"] + 5 * terms["bbox"] + 2 * terms["giou"]
    ref = reference_cost(outputs["pred_logits"][0], outputs["pred_boxes"][0], targets[0]["labels"], targets[0]["boxes"])
    torch.testing.assert_close(total, ref)


def test_batch_equals_official_ordering_with_empty_images():
    outputs, targets = make_batch([3, 0, 5, 1], Q=8, seed=8)
    ours = HungarianMatcher()(outputs, targets)
    ref = official_indices(outputs, targets)
    for (p, t), (rp, rt), tg in zip(ours, ref, targets):
        assert_valid(p, t, 8, len(tg["labels"]))
        assert p.tolist() == rp.tolist() and t.tolist() == rt.tolist()


def test_all_images_empty_and_more_targets_than_queries():
    outputs, targets = make_batch([0, 0], Q=4, seed=9)
    assert all(len(p) == 0 and len(t) == 0 for p, t in HungarianMatcher()(outputs, targets))
    outputs, targets = make_batch([5], Q=3, seed=10)
    (p, t), = HungarianMatcher()(outputs, targets)
    assert_valid(p, t, 3, 5)


def test_match_layers_equals_per_layer_calls_with_one_host_copy(monkeypatch):
    outputs, targets = make_batch([2, 4, 0], Q=6, seed=11, num_layers=6)
    layers = [outputs] + outputs["aux_outputs"]
    matcher = HungarianMatcher()
    expected = [matcher(o, targets) for o in layers]
    calls = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    got = matcher.match_layers(layers, targets)
    assert len(calls) == 1  # one device-to-host copy for all layers and images
    for exp_layer, got_layer in zip(expected, got):
        for (p1, t1), (p2, t2) in zip(exp_layer, got_layer):
            assert torch.equal(p1, p2) and torch.equal(t1, t2)


def test_group_matching_each_group_is_a_valid_one_to_one_match():
    K, Qg = 3, 4
    outputs, targets = make_batch([2, 4, 0], Q=K * Qg, seed=12)
    result = HungarianMatcher(num_groups=K)(outputs, targets)
    for i, ((pred, tgt), target) in enumerate(zip(result, targets)):
        N = len(target["labels"])
        assert len(pred) == K * N
        assert pred.tolist() == sorted(pred.tolist())
        for g in range(K):
            in_group = (pred >= g * Qg) & (pred < (g + 1) * Qg)
            assert_valid(pred[in_group] - g * Qg, tgt[in_group], Qg, N)
            # ... and it is the ordinary matching of that group's queries alone
            sub = {k: v[i:i + 1, g * Qg:(g + 1) * Qg] for k, v in outputs.items()}
            (sp, st), = HungarianMatcher()(sub, [target])
            assert (pred[in_group] - g * Qg).tolist() == sp.tolist() and tgt[in_group].tolist() == st.tolist()
    with pytest.raises(ValueError, match="groups"):
        HungarianMatcher(num_groups=5)(outputs, targets)


def test_autocast_bf16_gives_float32_matching():
    outputs, targets = make_batch([3, 4], Q=7, seed=13)
    expected = HungarianMatcher()(outputs, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = HungarianMatcher()(outputs, targets)
        terms = pairwise_costs(outputs["pred_logits"], outputs["pred_boxes"],
                               torch.zeros(2, 3, dtype=torch.long), torch.full((2, 3, 4), 0.5))
    for (p1, t1), (p2, t2) in zip(expected, got):
        assert torch.equal(p1, p2) and torch.equal(t1, t2)
    # bf16 model outputs are promoted to float32 inside the matcher
    half = {k: v.bfloat16() for k, v in outputs.items()}
    as_float = {k: v.float() for k, v in half.items()}
    for (p1, t1), (p2, t2) in zip(HungarianMatcher()(as_float, targets), HungarianMatcher()(half, targets)):
        assert torch.equal(p1, p2) and torch.equal(t1, t2)
    assert terms["bbox"].dtype == torch.float32


@pytest.mark.parametrize("field,index,value,pattern", [
    ("boxes", (2, 2), 0.0, "image 1, target box 2: degenerate"),
    ("boxes", (1, 3), -0.1, "image 1, target box 1: degenerate"),
    ("boxes", (0, 0), float("nan"), "image 1, target box 0: non-finite"),
    ("labels", (2,), C, "image 1, target box 2: label 4"),
    ("labels", (1,), -1, "image 1, target box 1: label -1"),
])
def test_bad_targets_name_image_and_box(field, index, value, pattern):
    outputs, targets = make_batch([2, 3], Q=5, seed=14)
    targets[1][field][index] = value
    with pytest.raises(ValueError, match=pattern):
        HungarianMatcher()(outputs, targets)


@pytest.mark.parametrize("key,value", [("pred_logits", float("nan")), ("pred_boxes", float("inf"))])
def test_non_finite_predictions_name_image_and_box(key, value):
    outputs, targets = make_batch([2, 0], Q=5, seed=15, num_layers=3)
    outputs["aux_outputs"][1][key][1, 3, 0] = value
    with pytest.raises(ValueError, match=r"image 1, predicted box 3 \(aux_outputs\[1\]\)"):
        HungarianMatcher().match_layers([outputs] + outputs["aux_outputs"], targets)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    with pytest.raises(ValueError, match="image 1, predicted box 3"):  # caught even with no targets
        HungarianMatcher().match_layers([outputs] + outputs["aux_outputs"], empty)


def test_wrong_shapes_raise_value_error():
    outputs, targets = make_batch([2, 3], Q=5, seed=16)
    m = HungarianMatcher()
    with pytest.raises(ValueError, match="target dicts"):
        m(outputs, targets[:1])
    with pytest.raises(ValueError, match="pred_boxes"):
        m({**outputs, "pred_boxes": outputs["pred_boxes"][..., :3]}, targets)
    with pytest.raises(ValueError, match="image 1"):
        m(outputs, [targets[0], {"labels": targets[1]["labels"], "boxes": targets[1]["boxes"][:2]}])
    with pytest.raises(ValueError, match="image 0"):
        m(outputs, [{"labels": targets[0]["labels"].float(), "boxes": targets[0]["boxes"]}, targets[1]])


# ---- matching_viz ---------------------------------------------------------------------------------

def test_explain_matching_agrees_with_matcher_and_reference():
    outputs, targets = make_batch([3], Q=6, seed=17)
    logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
    e = explain_matching(logits, boxes, targets[0]["labels"], targets[0]["boxes"])
    (p, t), = HungarianMatcher()(outputs, targets)
    assert torch.equal(e["pred_idx"], p) and torch.equal(e["tgt_idx"], t)
    torch.testing.assert_close(e["class"] + 5 * e["bbox"] + 2 * e["giou"], e["total"])
    torch.testing.assert_close(e["total"], reference_cost(logits, boxes, targets[0]["labels"], targets[0]["boxes"]))
    assert e["matched_cost"] == pytest.approx(sum(pair["total"] for pair in e["pairs"]), abs=1e-5)
    for pair in e["pairs"]:
        assert pair["total"] == pytest.approx(pair["class"] + pair["bbox"] + pair["giou"], abs=1e-5)


def test_dragging_a_box_onto_a_target_claims_it():
    outputs, targets = make_batch([2], Q=5, seed=18)
    logits = torch.zeros(5, C + 1)  # uninformative classes: geometry decides
    boxes, tgt = outputs["pred_boxes"][0], targets[0]["boxes"]
    e = drag_prediction(logits, boxes, targets[0]["labels"], tgt, query=4, new_box=tgt[1].tolist())
    assert (4, 1) in list(zip(e["pred_idx"].tolist(), e["tgt_idx"].tolist()))
    assert e["bbox"][4, 1] == pytest.approx(0.0) and e["giou"][4, 1] == pytest.approx(-1.0)
    moved = move_box(boxes, 0, cx=0.1)
    assert moved[0, 0] == pytest.approx(0.1) and torch.equal(moved[1:], boxes[1:]) and boxes[0, 0] != 0.1
    none = explain_matching(logits, boxes, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    assert none["total"].shape == (5, 0) and len(none["pred_idx"]) == 0


def test_figures_draw():
    import matplotlib.pyplot as plt

    outputs, targets = make_batch([3], Q=6, seed=19)
    logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
    e = explain_matching(logits, boxes, targets[0]["labels"], targets[0]["boxes"])
    fig = plot_matching(boxes, targets[0]["boxes"], e["pred_idx"], e["tgt_idx"], targets[0]["labels"],
                        image=torch.rand(3, 40, 60))
    assert len(fig.axes[0].patches) == 6 + 3  # 3 unmatched + 3 matched predictions, 3 targets
    fig2 = plot_cost_terms(e)
    assert len(fig2.axes) >= 4
    plt.close("all")
