"""SetCriterion against an independent per-image reference, invariances, AMP, gradients, distributed."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision import ops

from detr_nb.aids.focal import FocalClasses, focal_cost, sigmoid_focal_loss
from detr_nb.setpred.criterion import SetCriterion
from detr_nb.setpred.matcher import HungarianMatcher

C = 4  # real classes


def make_batch(sizes, Q=6, seed=0, num_layers=3, grad=False):
    g = torch.Generator().manual_seed(seed)
    B = len(sizes)

    def layer():
        logits = torch.randn(B, Q, C + 1, generator=g) * 2
        centers = torch.rand(B, Q, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(B, Q, 2, generator=g) * 0.3 + 0.05
        return {"pred_logits": logits.requires_grad_(grad),
                "pred_boxes": torch.cat([centers, wh], -1).requires_grad_(grad)}
    outputs = layer()
    outputs["aux_outputs"] = [layer() for _ in range(num_layers - 1)]
    targets = []
    for n in sizes:
        centers = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.cat([centers, wh], -1)})
    return outputs, targets


def reference_losses(out, targets, indices, eos_coef=0.1):
    """Official loss formulas, written per image with python loops and torchvision ops."""
    logits, boxes = out["pred_logits"], out["pred_boxes"]
    B, Q, _ = logits.shape
    weight = torch.ones(C + 1)
    weight[C] = eos_coef
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    num, den, l1, giou, correct, matched, card = 0.0, 0.0, 0.0, 0.0, 0, 0, 0.0
    for i in range(B):
        target_class = torch.full((Q,), C, dtype=torch.long)
        rows, cols = indices[i]
        for q, n in zip(rows.tolist(), cols.tolist()):
            target_class[q] = targets[i]["labels"][n]
            l1 = l1 + (boxes[i, q] - targets[i]["boxes"][n]).abs().sum()
            a = ops.box_convert(boxes[i, q:q + 1], "cxcywh", "xyxy")
            b = ops.box_convert(targets[i]["boxes"][n:n + 1], "cxcywh", "xyxy")
            giou = giou + 1 - ops.generalized_box_iou(a, b)[0, 0]
            correct += int(logits[i, q].argmax() == targets[i]["labels"][n])
            matched += 1
        for q in range(Q):
            w = weight[target_class[q]]
            num = num + w * F.cross_entropy(logits[i, q:q + 1], target_class[q:q + 1])
            den = den + w
        card += abs(int((logits[i].argmax(-1) != C).sum()) - len(targets[i]["labels"]))
    return {"loss_ce": num / den, "loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes,
            "class_error": torch.tensor(100.0 - (100.0 * correct / matched if matched else 0.0)),
            "cardinality_error": torch.tensor(card / B)}


def check_against_reference(result, outputs, targets, criterion):
    layers = [outputs] + outputs["aux_outputs"]
    total = 0.0
    for k, out in enumerate(layers):
        suffix = "" if k == 0 else f"_{k - 1}"
        ref = reference_losses(out, targets, criterion.matcher(out, targets))
        for key, value in ref.items():
            torch.testing.assert_close(result[key + suffix], torch.as_tensor(value, dtype=torch.float32),
                                       rtol=1e-5, atol=1e-5)
        total = total + ref["loss_ce"] + 5 * ref["loss_bbox"] + 2 * ref["loss_giou"]
    torch.testing.assert_close(result["loss"], torch.as_tensor(total, dtype=torch.float32), rtol=1e-5, atol=1e-5)


def test_matches_independent_reference_with_aux_and_empty_image():
    outputs, targets = make_batch([3, 0, 5], Q=8, seed=1)
    criterion = SetCriterion(C)
    result = criterion(outputs, targets)
    expected_keys = {f"{k}{s}" for k in ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error")
                     for s in ("", "_0", "_1")} | {"loss"}
    assert set(result) == expected_keys
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in result.values())
    check_against_reference(result, outputs, targets, criterion)


def test_no_host_sync_inside_the_loss(monkeypatch):
    outputs, targets = make_batch([3, 2], seed=2, num_layers=6)
    counts = {"cpu": 0, "item": 0}
    for name in counts:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _name=name, _orig=original, **k):
            counts[_name] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    SetCriterion(C)(outputs, targets)
    assert counts == {"cpu": 1, "item": 0}  # the matcher's one copy for all 6 layers


def test_permuting_targets_or_queries_leaves_losses_unchanged():
    outputs, targets = make_batch([4, 3], Q=7, seed=3)
    criterion = SetCriterion(C)
    base = criterion(outputs, targets)
    perm_t = []
    for i, t in enumerate(targets):  # same permutation for labels and boxes of an image
        p = torch.randperm(len(t["labels"]), generator=torch.Generator().manual_seed(10 + i))
        assert p.tolist() != sorted(p.tolist())
        perm_t.append({"labels": t["labels"][p], "boxes": t["boxes"][p]})
    perm_q = torch.randperm(7, generator=torch.Generator().manual_seed(4))
    shuffle = lambda o: {"pred_logits": o["pred_logits"][:, perm_q], "pred_boxes": o["pred_boxes"][:, perm_q]}
    perm_o = {**shuffle(outputs), "aux_outputs": [shuffle(a) for a in outputs["aux_outputs"]]}
    for other in (criterion(outputs, perm_t), criterion(perm_o, targets)):
        for key in base:
            torch.testing.assert_close(other[key], base[key], rtol=1e-5, atol=1e-6)


def test_perfect_prediction_gives_zero_box_losses():
    _, targets = make_batch([3, 2], Q=5, seed=5)
    logits = torch.full((2, 5, C + 1), -10.0)
    logits[..., C] = 10.0  # unmatched queries: confident "no object"
    boxes = torch.rand(2, 5, 4) * 0.2 + 0.3
    for i, t in enumerate(targets):
        n = len(t["labels"])
        boxes[i, :n] = t["boxes"]
        logits[i, torch.arange(n), t["labels"]] = 10.0
        logits[i, torch.arange(n), C] = -10.0
    result = SetCriterion(C)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert result["loss_bbox"].abs() < 1e-6 and result["loss_giou"].abs() < 1e-6
    assert result["class_error"] == 0 and result["cardinality_error"] == 0 and result["loss_ce"] < 1e-6


def test_loss_ce_with_all_no_object_targets_is_weighted_cross_entropy():
    outputs, targets = make_batch([0, 0, 0], Q=6, seed=6, num_layers=1)
    result = SetCriterion(C, eos_coef=0.3)(outputs, targets)
    weight = torch.tensor([1.0] * C + [0.3])
    expected = F.cross_entropy(outputs["pred_logits"].reshape(-1, C + 1), torch.full((18,), C), weight=weight)
    torch.testing.assert_close(result["loss_ce"], expected)
    assert result["loss_bbox"] == 0 and result["loss_giou"] == 0 and result["class_error"] == 100


def test_autocast_bf16_gives_float32_values_equal_to_float32_run():
    outputs, targets = make_batch([3, 1], seed=7)
    criterion = SetCriterion(C)
    expected = criterion(outputs, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = criterion(outputs, targets)
    for key in expected:
        assert got[key].dtype == torch.float32
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    # bf16 model outputs: losses still float32, equal to the float32 run on the same values
    to = lambda o, dt: {"pred_logits": o["pred_logits"].to(dt), "pred_boxes": o["pred_boxes"].to(dt)}
    half = {**to(outputs, torch.bfloat16), "aux_outputs": [to(a, torch.bfloat16) for a in outputs["aux_outputs"]]}
    back = {**to(half, torch.float32), "aux_outputs": [to(a, torch.float32) for a in half["aux_outputs"]]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = criterion(half, targets)
    ref = criterion(back, targets)
    for key in ref:
        assert got[key].dtype == torch.float32
        torch.testing.assert_close(got[key], ref[key])


def test_gradients_reach_logits_and_boxes_of_every_layer():
    outputs, targets = make_batch([3, 2], seed=8, grad=True)
    SetCriterion(C)(outputs, targets)["loss"].backward()
    for out in [outputs] + outputs["aux_outputs"]:
        for key in ("pred_logits", "pred_boxes"):
            grad = out[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_num_boxes_all_reduce_with_one_process_group(tmp_path):
    outputs, targets = make_batch([3, 2], seed=9)
    expected = SetCriterion(C)(outputs, targets)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert float(SetCriterion.get_num_boxes([3, 2], torch.device("cpu"))) == 5.0
        assert float(SetCriterion.get_num_boxes([0, 0], torch.device("cpu"))) == 1.0  # clamped
        got = SetCriterion(C)(outputs, targets)
    finally:
        dist.destroy_process_group()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_group_detr_folds_the_groups_into_the_batch():
    """AidedCriterion's Group DETR: each group of queries is matched and scored as a DETR of its own; the box
    terms are the groups' mean (num_boxes x K), the class term the weighted CE over every query."""
    from detr_nb.aids.criterion import AidedCriterion
    K, Qg = 3, 4
    outputs, targets = make_batch([3, 2], Q=K * Qg, seed=10, num_layers=2)
    grouped = AidedCriterion(C, num_queries=Qg, num_groups=K)(outputs, targets)
    part = lambda o, g: {k: v[:, g * Qg:(g + 1) * Qg] for k, v in o.items() if k != "aux_outputs"}
    per_group = [SetCriterion(C)({**part(outputs, g), "aux_outputs": [part(a, g) for a in outputs["aux_outputs"]]},
                                 targets) for g in range(K)]
    for key in ("loss_bbox", "loss_giou", "loss_ce", "loss_bbox_0", "loss_ce_0", "cardinality_error", "loss"):
        torch.testing.assert_close(grouped[key], sum(p[key] for p in per_group) / K)
    # eval mode (one group of Q queries): the plain criterion
    one = {k: v for k, v in part(outputs, 0).items()}
    torch.testing.assert_close(AidedCriterion(C, num_queries=Qg, num_groups=K)(one, targets)["loss"],
                               SetCriterion(C)(one, targets)["loss"])


def test_focal_class_term():
    logits, onehot = torch.randn(3, 5, C), (torch.rand(3, 5, C) > 0.7).float()
    torch.testing.assert_close(sigmoid_focal_loss(logits, onehot),
                               ops.sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0))
    outputs, targets = make_batch([3, 2], seed=11, num_layers=1)
    term = FocalClasses(C)
    criterion = SetCriterion(C, HungarianMatcher(class_cost=focal_cost), class_term=term)
    result = criterion(outputs, targets)
    indices = criterion.matcher(outputs, targets)
    target = torch.zeros(2, 6, C)
    for i, (rows, cols) in enumerate(indices):
        target[i, rows, targets[i]["labels"][cols]] = 1.0
    expected = ops.sigmoid_focal_loss(outputs["pred_logits"][..., :C], target, reduction="sum") / 5
    torch.testing.assert_close(result["loss_ce"], expected)
    # logged: a query predicts an object when its best sigmoid passes 0.5
    scores = outputs["pred_logits"][..., :C].sigmoid()
    card = ((scores.amax(-1) > 0.5).sum(1).float() - torch.tensor([3.0, 2.0])).abs().mean()
    torch.testing.assert_close(result["cardinality_error"], card)


def test_weights():
    outputs, targets = make_batch([2, 2], seed=12)
    weights = {"loss_ce": 2.0, "loss_bbox": 1.0, "loss_giou": 0.5, "loss_giou_1": 0.0}
    r = SetCriterion(C, weight_dict=weights)(outputs, targets)
    base = list(weights.items())[:3]
    expected = sum(w * r[k + s] for k, w in base for s in ("", "_0", "_1")) - 0.5 * r["loss_giou_1"]
    torch.testing.assert_close(r["loss"], expected)


def test_bad_input_raises_value_error():
    outputs, targets = make_batch([2, 3], seed=13)
    with pytest.raises(ValueError, match="classes"):
        SetCriterion(C + 1)(outputs, targets)
    targets[1]["labels"][2] = C
    with pytest.raises(ValueError, match="image 1, target box 2"):
        SetCriterion(C)(outputs, targets)


@pytest.mark.parametrize("class_term", ["paper", "focal"])
def test_stacked_criterion_equals_the_papers_loss_layer_by_layer(class_term):
    """SetCriterion's fast path (every layer at once, flat indices) == setpred.losses.set_losses per layer, and
    with the focal class term == a per-layer sum of torchvision's focal loss."""
    from detr_nb.setpred.losses import set_losses
    from detr_nb.setpred.matching import hungarian_match
    torch.manual_seed(5)
    B, Q, C = 3, 10, 4
    layers = [{"pred_logits": torch.randn(B, Q, C + 1), "pred_boxes": torch.rand(B, Q, 4) * 0.5 + 0.1}
              for _ in range(3)]
    outputs = {**layers[-1], "aux_outputs": layers[:-1]}
    targets = [{"labels": torch.randint(0, C, (n,)), "boxes": torch.rand(n, 4) * 0.4 + 0.1} for n in (2, 0, 4)]
    focal = class_term == "focal"
    cost = focal_cost if focal else None
    crit = SetCriterion(C, HungarianMatcher(class_cost=cost) if focal else None, eos_coef=0.1,
                        class_term=FocalClasses(C) if focal else None)
    got = crit(outputs, targets)
    num_boxes = torch.tensor(6.0)
    for layer, suffix in zip(layers, ["_0", "_1", ""]):
        indices = hungarian_match(layer, targets, 1.0, 5.0, 2.0, **({"class_cost": cost} if focal else {}))
        want = set_losses(layer, targets, indices, C, num_boxes, eos_coef=0.1)
        if focal:
            onehot = torch.zeros(B, Q, C)
            for i, (rows, cols) in enumerate(indices):
                onehot[i, rows, targets[i]["labels"][cols]] = 1.0
            want["loss_ce"] = ops.sigmoid_focal_loss(layer["pred_logits"][..., :C], onehot, reduction="sum") / 6
        for k, v in want.items():
            torch.testing.assert_close(got[k + suffix], v, rtol=1e-5, atol=1e-6)
