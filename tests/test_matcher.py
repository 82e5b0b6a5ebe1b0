"""Hungarian matcher: optimality (brute force), validity, official ordering, groups, AMP, bad input.

Also the matching_viz helpers (pure functions and figures) of notebook 05.
"""
import itertools
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision import ops

from detr_nb.nn.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr_nb.setpred.matcher import HungarianMatcher
from detr_nb.setpred.matching import pairwise_costs
from detr_nb.aids.focal import FocalClasses, focal_cost
from detr_nb.figures.matching import plot_cost_terms, plot_matching
from detr_nb.teach.matching import drag_prediction, explain_matching, move_box

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


def test_group_detr_matches_each_group_on_its_own():
    """Group DETR folded into the batch (aids.groups.fold_groups): the plain matcher then gives every group a
    valid one-to-one match of all objects, the one that group's queries alone would get."""
    from detr_nb.aids.groups import fold_groups
    K, Qg = 3, 4
    outputs, targets = make_batch([2, 4, 0], Q=K * Qg, seed=12)
    folded, folded_targets = fold_groups(outputs, targets, K)
    result = HungarianMatcher()(folded, folded_targets)
    assert len(result) == K * len(targets)
    for g in range(K):
        for i, target in enumerate(targets):
            pred, tgt = result[g * len(targets) + i]
            assert_valid(pred, tgt, Qg, len(target["labels"]))
            sub = {k: v[i:i + 1, g * Qg:(g + 1) * Qg] for k, v in outputs.items()}
            (sp, st), = HungarianMatcher()(sub, [target])
            assert pred.tolist() == sp.tolist() and tgt.tolist() == st.tolist()


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


# ---- the focal matching cost (the main job's class_cost=focal_cost), pair by pair -----------------------

def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def focal_cost_by_hand(x, alpha=0.25, gamma=2.0):
    """Deformable DETR's matcher class cost for one (query, target) pair from the query's logit ``x`` at the
    target's class, in plain Python floats: pos - neg with
    pos = alpha (1 - p)^gamma (-log p), neg = (1 - alpha) p^gamma (-log(1 - p)), p = sigmoid(x), eps 1e-8."""
    p = _sigmoid(x)
    pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
    neg = (1 - alpha) * p ** gamma * -math.log(1 - p + 1e-8)
    return pos - neg


def giou_by_hand(a, b):
    """GIoU of two cxcywh boxes given as Python floats (areas, intersection, enclosing box by hand)."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def focal_matching_case(seed, Q, sizes, C=4):
    """Logits over C classes + the unused "no object" column, spread over [-8, 8] plus a few very
    negative ones (p ~ 1e-11, where the 1e-8 eps decides the cost); boxes inside the image."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.rand(len(sizes), Q, C + 1, generator=g) * 16 - 8).double()
    logits[0, 0, :C] = -25.0
    logits[-1, Q - 1, 1] = -30.0
    centers = torch.rand(len(sizes), Q, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(len(sizes), Q, 2, generator=g) * 0.3 + 0.05
    outputs = {"pred_logits": logits, "pred_boxes": torch.cat([centers, wh], -1).double()}
    targets = []
    for n in sizes:
        c = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        s = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.cat([c, s], -1).double()})
    return outputs, targets


def focal_cost_matrix_by_hand(logits, boxes, labels, tgt_boxes, wc=2.0, wb=5.0, wg=2.0):
    """(Q, N) list of lists of Python floats: the main job's weights (cost_class 2, bbox 5, giou 2)."""
    logits, boxes, tgt_boxes = logits.tolist(), boxes.tolist(), tgt_boxes.tolist()
    return [[wc * focal_cost_by_hand(logits[q][lab]) + wb * sum(abs(u - v) for u, v in zip(boxes[q], tgt_boxes[n]))
             - wg * giou_by_hand(boxes[q], tgt_boxes[n]) for n, lab in enumerate(labels.tolist())]
            for q in range(len(logits))]


def test_focal_class_cost_matches_deformable_detr_pair_by_pair():
    outputs, targets = focal_matching_case(seed=31, Q=6, sizes=[3, 5])
    for i, t in enumerate(targets):
        logits = outputs["pred_logits"][i]
        # float64 in, float64 arithmetic: agreement to ~1e-12 shows the formula, eps included
        terms = pairwise_costs(logits, outputs["pred_boxes"][i], t["labels"], t["boxes"], class_cost=focal_cost)
        assert terms["class"].dtype == torch.float64 and terms["class"].shape == (6, len(t["labels"]))
        for q in range(6):
            for n, lab in enumerate(t["labels"].tolist()):
                expected = focal_cost_by_hand(float(logits[q, lab]))
                assert float(terms["class"][q, n]) == pytest.approx(expected, rel=1e-12, abs=1e-12), (i, q, n)
    # the cases the eps decides are in there: without it, -log p at x = -25 would be 25, not ~18.4
    assert focal_cost_by_hand(-25.0) == pytest.approx(0.25 * -math.log(_sigmoid(-25.0) + 1e-8), rel=1e-9)
    assert focal_cost_by_hand(-25.0) < 0.25 * 19


@pytest.mark.parametrize("seed,Q,sizes", [(32, 6, [3, 5]), (33, 5, [5, 0, 2]), (34, 7, [4])])
def test_focal_matcher_cost_matrix_and_assignment_match_brute_force(seed, Q, sizes):
    outputs, targets = focal_matching_case(seed, Q, sizes)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, class_cost=focal_cost)
    seen = []
    real_cost = matcher._cost
    matcher._cost = lambda *a: seen.append(real_cost(*a)) or seen[-1]   # the weighted (L, B, Q, n_max) matrix
    # as SetCriterion calls it: logits have C + 1 columns, labels index the C real classes
    (result,) = matcher.match_layers([outputs], targets)
    (cost,) = seen
    for i, ((pred, tgt), t) in enumerate(zip(result, targets)):
        N = len(t["labels"])
        by_hand = focal_cost_matrix_by_hand(outputs["pred_logits"][i], outputs["pred_boxes"][i], t["labels"], t["boxes"])
        # The matcher computes in float32 (it casts its inputs), pair by pair. Tolerance: at x = 8,
        # 1 - p = 3.4e-4 is left after cancelling against 1 in float32 with a relative error up to ~1e-4,
        # so -log(1 - p) is off by up to ~1e-4 (x 0.75 x cost_class 2): 2e-4 absolute. A wrong alpha, gamma
        # or eps, or a softmax cost, moves the costs by 0.01 to several units.
        for q in range(Q):
            for n in range(N):
                assert float(cost[0, i, q, n]) == pytest.approx(by_hand[q][n], rel=1e-6, abs=2e-4), (i, q, n)
        # the assignment: every one-to-one choice of N distinct queries tried, the cheapest kept
        totals = {perm: sum(by_hand[perm[n]][n] for n in range(N)) for perm in itertools.permutations(range(Q), N)}
        best = min(totals, key=totals.get)
        assert sorted(totals.values())[1:2] == [] or sorted(totals.values())[1] - totals[best] > 1e-4  # unique optimum
        assert dict(zip(tgt.tolist(), pred.tolist())) == dict(enumerate(best))
        r, c = linear_sum_assignment(np.array(by_hand).reshape(Q, N))
        assert pred.tolist() == r.tolist() and tgt.tolist() == c.tolist()


# ---- autocast: the matcher's and the criterion's own guards ------------------------------------------

def _bf16_layers(seed, sizes, Q, C=4, num_layers=3):
    """What a model run under bf16 autocast hands over: bf16 logits and boxes, main + aux layers."""
    g = torch.Generator().manual_seed(seed)
    layers = [{"pred_logits": (torch.randn(len(sizes), Q, C + 1, generator=g) * 3).bfloat16(),
               "pred_boxes": torch.cat([torch.rand(len(sizes), Q, 2, generator=g) * 0.6 + 0.2,
                                        torch.rand(len(sizes), Q, 2, generator=g) * 0.3 + 0.05], -1).bfloat16()}
              for _ in range(num_layers)]
    targets = [{"labels": torch.randint(0, C, (n,), generator=g),
                "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2,
                                    torch.rand(n, 2, generator=g) * 0.3 + 0.05], -1)} for n in sizes]
    return layers, targets


def _cpu_autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:           # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def _spy(obj, name, log):
    """Wrap obj.name (an instance method) to record (autocast on?, result) of each call."""
    real = getattr(obj, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        log.append((_cpu_autocast_on(), out))
        return out
    setattr(obj, name, wrapper)


def test_matcher_and_criterion_compute_in_float32_under_bf16_autocast():
    """Under ``torch.autocast("cpu", bfloat16)`` (a bf16 training step) the matcher's costs and the
    criterion's losses are float32 numbers, equal to the same computation without autocast; a bf16
    computation of the same numbers is measurably off (figures below), so the check can see the difference.

    On the CPU no op of the matcher or the criterion is on autocast's bf16 list (cdist is on its fp32 list),
    so the ``.float()`` casts alone keep the numbers float32; that autocast is *off* inside (the guard,
    ``no_autocast``) is checked directly, by recording ``torch.is_autocast_enabled`` where the costs and
    losses are computed."""
    from detr_nb.setpred.criterion import SetCriterion

    layers, targets = _bf16_layers(seed=41, sizes=[3, 4], Q=7)
    upcast = [{k: v.float() for k, v in o.items()} for o in layers]
    outputs = {**layers[0], "aux_outputs": layers[1:]}
    outputs_fp32 = {**upcast[0], "aux_outputs": upcast[1:]}

    matcher = HungarianMatcher(cost_class=2.0, class_cost=focal_cost)
    ref_log, log = [], []
    _spy(matcher, "_cost", ref_log)
    ref_indices = matcher.match_layers(upcast, targets)
    matcher = HungarianMatcher(cost_class=2.0, class_cost=focal_cost)
    _spy(matcher, "_cost", log)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _cpu_autocast_on()
        indices = matcher.match_layers(layers, targets)
    ((autocast_on, cost),), ((_, ref_cost),) = log, ref_log
    assert not autocast_on, "the matcher's costs were computed with autocast on"
    assert cost.dtype == torch.float32
    assert torch.equal(cost, ref_cost)                                   # the same float32 numbers, bit for bit
    for layer, ref_layer in zip(indices, ref_indices):
        for (p1, t1), (p2, t2) in zip(layer, ref_layer):
            assert torch.equal(p1, p2) and torch.equal(t1, t2)

    # the same weighted costs computed in bf16 arithmetic (cdist has no CPU bf16 kernel: L1 by hand)
    n_max = cost.shape[-1]
    pad = lambda t, fill: torch.cat([t, fill.expand(n_max - len(t), *fill.shape[1:])])
    labels = torch.stack([pad(t["labels"], torch.zeros(1, dtype=torch.long)) for t in targets])
    boxes = torch.stack([pad(t["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
                         for t in targets]).bfloat16()
    x = torch.stack([o["pred_logits"] for o in layers])                   # (L, B, Q, C + 1) bf16
    p = x.sigmoid()
    focal = (0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p ** 2 * -(1 - p + 1e-8).log())
    cls = focal.gather(-1, labels[None, :, None, :].expand(*x.shape[:3], n_max))
    pb = torch.stack([o["pred_boxes"] for o in layers])
    l1 = (pb[..., :, None, :] - boxes[None, :, None, :, :]).abs().sum(-1)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pb), box_cxcywh_to_xyxy(boxes)[None])
    bf16_cost = (2.0 * cls + 5.0 * l1 - 2.0 * giou).float()
    # measured: up to 15 (p rounds to 1 in bf16 for logits above ~5.5, and -log(1 - p + 1e-8) jumps to 18.4)
    assert (bf16_cost - ref_cost).abs().max() > 1e-2

    # the criterion: losses of bf16 outputs under autocast == losses of the upcast outputs without it
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    crit = SetCriterion(4, HungarianMatcher(cost_class=2.0, class_cost=focal_cost), weight_dict=weights,
                         class_term=FocalClasses(4))
    ref = crit(outputs_fp32, targets)
    crit_log = []
    _spy(crit, "layer_losses", crit_log)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crit(outputs, targets)
    assert [on for on, _ in crit_log] == [False], "the criterion's losses were computed with autocast on"
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == torch.float32, k
        assert torch.equal(got[k], ref[k]), (k, got[k], ref[k])
    # a bf16 computation of loss_bbox (the matched L1, summed / num_boxes) is off by far more than that
    (rows0, cols0), (rows1, cols1) = ref_indices[0]
    l1_bf16 = sum((layers[0]["pred_boxes"][i, r] - targets[i]["boxes"].bfloat16()[c]).abs().sum()
                  for i, (r, c) in enumerate([(rows0, cols0), (rows1, cols1)])) / 7
    assert abs(float(l1_bf16) - float(ref["loss_bbox"])) > 1e-4           # measured: 6e-4 (0.4355 vs 0.4349)


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


@pytest.mark.parametrize("class_cost", ["paper", "focal"])
def test_batched_matcher_equals_the_papers_matching_image_by_image(class_cost):
    """HungarianMatcher (one batched cost, one host copy, every layer) == setpred.matching.hungarian_match."""
    from detr_nb.setpred.matching import hungarian_match
    torch.manual_seed(3)
    B, Q, C = 4, 12, 6
    layers = [{"pred_logits": torch.randn(B, Q, C), "pred_boxes": torch.rand(B, Q, 4) * 0.5 + 0.1} for _ in range(3)]
    sizes = [3, 0, 5, 1]
    targets = [{"labels": torch.randint(0, C - 1, (n,)), "boxes": torch.rand(n, 4) * 0.4 + 0.1} for n in sizes]
    cost = {"class_cost": focal_cost} if class_cost == "focal" else {}
    fast = HungarianMatcher(2.0, 5.0, 2.0, **cost).match_layers(layers, targets)
    for layer, got in zip(layers, fast):
        want = hungarian_match(layer, targets, 2.0, 5.0, 2.0, **cost)
        for (r1, c1), (r2, c2) in zip(got, want):
            assert torch.equal(r1, r2) and torch.equal(c1, c2)
