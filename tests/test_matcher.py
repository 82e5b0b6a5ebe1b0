"""HungarianMatcher (Eq. 1) and the aids' focal matching cost: optimality against brute force, the official
batched ordering, empty images, float32 under bf16, non-finite predictions."""
import itertools
import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision import ops

from detr_nb.aids import AidedMatcher
from detr_nb.models import HungarianMatcher

C = 4  # real classes; logits have C + 1 columns


def make_batch(sizes, Q=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    B = len(sizes)
    boxes = torch.cat([torch.rand(B, Q, 2, generator=g) * 0.6 + 0.2, torch.rand(B, Q, 2, generator=g) * 0.3 + 0.05], -1)
    outputs = {"pred_logits": (torch.randn(B, Q, C + 1, generator=g) * 2).to(dtype), "pred_boxes": boxes.to(dtype)}
    targets = [{"labels": torch.randint(0, C, (n,), generator=g),
                "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05],
                                   -1)} for n in sizes]
    return outputs, targets


def reference_cost(logits, boxes, labels, tgt_boxes, class_cost, wc=1.0, wb=5.0, wg=2.0):
    """One pair at a time, in Python floats, GIoU from torchvision: an independent copy of Eq. 1."""
    xyxy = lambda b: ops.box_convert(b, "cxcywh", "xyxy")   # noqa: E731
    return [[wc * class_cost(logits[q], int(labels[n])) + wb * float((boxes[q] - tgt_boxes[n]).abs().sum())
             - wg * float(ops.generalized_box_iou(xyxy(boxes[q:q + 1]), xyxy(tgt_boxes[n:n + 1]))[0, 0])
             for n in range(len(labels))] for q in range(len(boxes))]


def softmax_class_cost(logits, label):
    return -float(logits.double().softmax(-1)[label])


def focal_class_cost(logits, label, alpha=0.25, gamma=2.0):
    """Deformable DETR's class cost: pos - neg with pos = alpha (1-p)^gamma (-log p), neg = (1-alpha) p^gamma
    (-log(1-p)), p = sigmoid, eps 1e-8."""
    p = 1 / (1 + math.exp(-float(logits[label])))
    return alpha * (1 - p) ** gamma * -math.log(p + 1e-8) - (1 - alpha) * p ** gamma * -math.log(1 - p + 1e-8)


def brute_force(cost, Q, N):
    """The cheapest one-to-one assignment of N objects to Q queries, every choice tried: {object: query}."""
    if N == 0:
        return {}
    best = min(itertools.permutations(range(Q), min(Q, N)), key=lambda perm: sum(cost[q][n] for n, q in enumerate(perm)))
    return dict(enumerate(best))


@pytest.mark.parametrize("matcher,class_cost,weights", [(HungarianMatcher(), softmax_class_cost, (1, 5, 2)),
                                                         (AidedMatcher(2, 5, 2), focal_class_cost, (2, 5, 2))])
@pytest.mark.parametrize("Q,sizes,seed", [(1, [1], 0), (4, [3, 0, 2], 1), (5, [5, 4], 2), (6, [1], 3)])
def test_the_assignment_is_the_cheapest_of_all(matcher, class_cost, weights, Q, sizes, seed):
    outputs, targets = make_batch(sizes, Q=Q, seed=seed)
    for i, ((pred, tgt), t) in enumerate(zip(matcher(outputs, targets), targets)):
        N = len(t["labels"])
        cost = reference_cost(outputs["pred_logits"][i], outputs["pred_boxes"][i], t["labels"], t["boxes"],
                              class_cost, *weights)
        assert pred.dtype == tgt.dtype == torch.int64 and pred.tolist() == sorted(pred.tolist())
        assert len(set(pred.tolist())) == len(pred) == min(Q, N)
        got = sum(cost[q][n] for q, n in zip(pred.tolist(), tgt.tolist()))
        want = sum(cost[q][n] for n, q in brute_force(cost, Q, N).items())
        assert got == pytest.approx(want, abs=1e-5)


def test_focal_class_cost_pair_by_pair_including_the_eps():
    logits = torch.tensor([[-25.0, -8.0, 0.0, 3.0, 8.0, 0.0]]).double()   # -25: the 1e-8 eps decides
    got = AidedMatcher().class_cost(logits[None], torch.arange(5)[None])[0]
    for n in range(5):
        assert float(got[0, n]) == pytest.approx(focal_class_cost(logits[0], n), rel=1e-12, abs=1e-12)
    assert focal_class_cost(logits[0], 0) < 0.25 * 19     # without the eps, -log p at -25 would be 25


def test_ties_broken_as_the_official_matcher_with_empty_images():
    """The official algorithm, written out: one (B*Q, sum N) cost over the batch, split per image."""
    outputs, targets = make_batch([3, 0, 5, 1], Q=8, seed=8)
    B, Q = 4, 8
    prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
    box = outputs["pred_boxes"].flatten(0, 1)
    tb = torch.cat([t["boxes"] for t in targets])
    xyxy = lambda b: ops.box_convert(b, "cxcywh", "xyxy")   # noqa: E731
    cost = 5 * torch.cdist(box, tb, p=1) - prob[:, torch.cat([t["labels"] for t in targets])] \
        - 2 * ops.generalized_box_iou(xyxy(box), xyxy(tb))
    ref = [linear_sum_assignment(c[i]) for i, c in enumerate(cost.view(B, Q, -1).split([3, 0, 5, 1], -1))]
    for (p, t), (rp, rt) in zip(HungarianMatcher()(outputs, targets), ref):
        assert p.tolist() == rp.tolist() and t.tolist() == rt.tolist()


def test_no_objects_at_all_and_more_objects_than_queries():
    outputs, targets = make_batch([0, 0], Q=4, seed=9)
    assert all(len(p) == len(t) == 0 for p, t in HungarianMatcher()(outputs, targets))
    outputs, targets = make_batch([5], Q=3, seed=10)
    (p, t), = HungarianMatcher()(outputs, targets)
    assert len(p) == len(set(t.tolist())) == 3


def test_bf16_outputs_are_matched_in_float32_under_autocast():
    outputs, targets = make_batch([3, 4], Q=7, seed=13, dtype=torch.bfloat16)
    upcast = {k: v.float() for k, v in outputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = HungarianMatcher()(outputs, targets)
    for (p1, t1), (p2, t2) in zip(HungarianMatcher()(upcast, targets), got):
        assert torch.equal(p1, p2) and torch.equal(t1, t2)


def test_non_finite_predictions_still_get_a_one_to_one_assignment():
    """An fp16 overflow gives inf/NaN outputs: the matcher must not stop the run (the loss check reports it)."""
    outputs, targets = make_batch([3, 2], Q=5, seed=14)
    outputs["pred_boxes"][0, 1] = float("nan")
    outputs["pred_logits"][1, :, 0] = float("inf")
    for (p, t), target in zip(HungarianMatcher()(outputs, targets), targets):
        assert len(p) == len(set(p.tolist())) == len(target["labels"])
