"""SetCriterion (Eq. 2) against an independent per-image reference; invariances, float32 under autocast,
gradients, num_boxes over processes; the aids' focal class term and encoder loss."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision import ops

from detr_nb.aids import AidedCriterion, AidedMatcher
from detr_nb.models import HungarianMatcher, SetCriterion

C = 4  # real classes
WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def make_batch(sizes, Q=6, seed=0, num_layers=3, grad=False):
    g = torch.Generator().manual_seed(seed)
    B = len(sizes)

    def layer():
        boxes = torch.cat([torch.rand(B, Q, 2, generator=g) * 0.6 + 0.2, torch.rand(B, Q, 2, generator=g) * 0.3 + 0.05], -1)
        return {"pred_logits": (torch.randn(B, Q, C + 1, generator=g) * 2).requires_grad_(grad),
                "pred_boxes": boxes.requires_grad_(grad)}
    outputs = {**layer(), "aux_outputs": [layer() for _ in range(num_layers - 1)]}
    targets = [{"labels": torch.randint(0, C, (n,), generator=g),
                "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05],
                                   -1)} for n in sizes]
    return outputs, targets


def paper_criterion(eos_coef=0.1):
    return SetCriterion(C, HungarianMatcher(), WEIGHTS, eos_coef)


def reference_losses(out, targets, indices, eos_coef=0.1):
    """The official loss formulas, one image and one query at a time, with torchvision ops."""
    logits, boxes = out["pred_logits"], out["pred_boxes"]
    B, Q, _ = logits.shape
    weight = torch.tensor([1.0] * C + [eos_coef])
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    num = den = l1 = giou = 0.0
    for i in range(B):
        target_class = torch.full((Q,), C)
        for q, n in zip(*(x.tolist() for x in indices[i])):
            target_class[q] = targets[i]["labels"][n]
            l1 = l1 + (boxes[i, q] - targets[i]["boxes"][n]).abs().sum()
            xyxy = [ops.box_convert(b[None], "cxcywh", "xyxy") for b in (boxes[i, q], targets[i]["boxes"][n])]
            giou = giou + 1 - ops.generalized_box_iou(*xyxy)[0, 0]
        for q in range(Q):
            num = num + weight[target_class[q]] * F.cross_entropy(logits[i, q:q + 1], target_class[q:q + 1])
            den = den + weight[target_class[q]]
    return {"loss_ce": num / den, "loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes}


def test_every_layer_against_the_reference_with_an_empty_image():
    outputs, targets = make_batch([3, 0, 5], Q=8, seed=1)
    criterion = paper_criterion()
    result = criterion(outputs, targets)
    assert set(result) == {f"{k}{s}" for k in ("loss_ce", "loss_bbox", "loss_giou") for s in ("", "_0", "_1")} | \
        {"loss", "class_error", "cardinality_error"}
    total = 0.0
    for suffix, out in (("", outputs), ("_0", outputs["aux_outputs"][0]), ("_1", outputs["aux_outputs"][1])):
        ref = reference_losses(out, targets, criterion.matcher(out, targets))
        for key, value in ref.items():
            torch.testing.assert_close(result[key + suffix], value.float(), rtol=1e-5, atol=1e-5)
        total = total + ref["loss_ce"] + 5 * ref["loss_bbox"] + 2 * ref["loss_giou"]
    torch.testing.assert_close(result["loss"], total.float(), rtol=1e-5, atol=1e-5)


def test_permuting_objects_or_queries_leaves_the_losses_unchanged():
    outputs, targets = make_batch([4, 3], Q=7, seed=3)
    criterion = paper_criterion()
    base = criterion(outputs, targets)
    perm_t = []
    for i, t in enumerate(targets):
        p = torch.randperm(len(t["labels"]), generator=torch.Generator().manual_seed(10 + i))
        perm_t.append({"labels": t["labels"][p], "boxes": t["boxes"][p]})
    q = torch.randperm(7, generator=torch.Generator().manual_seed(4))
    shuffle = lambda o: {"pred_logits": o["pred_logits"][:, q], "pred_boxes": o["pred_boxes"][:, q]}   # noqa: E731
    perm_o = {**shuffle(outputs), "aux_outputs": [shuffle(a) for a in outputs["aux_outputs"]]}
    for other in (criterion(outputs, perm_t), criterion(perm_o, targets)):
        for key in base:
            torch.testing.assert_close(other[key], base[key], rtol=1e-5, atol=1e-6)


def test_a_perfect_prediction_costs_nothing_and_logs_no_error():
    _, targets = make_batch([3, 2], Q=5, seed=5)
    logits = torch.full((2, 5, C + 1), -10.0)
    logits[..., C] = 10.0                       # unmatched queries: confident "no object"
    boxes = torch.rand(2, 5, 4) * 0.2 + 0.3
    for i, t in enumerate(targets):
        n = len(t["labels"])
        boxes[i, :n] = t["boxes"]
        logits[i, torch.arange(n), t["labels"]], logits[i, torch.arange(n), C] = 10.0, -10.0
    result = paper_criterion()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert result["loss_bbox"] < 1e-6 and result["loss_giou"] < 1e-6 and result["loss_ce"] < 1e-6
    assert result["class_error"] == 0 and result["cardinality_error"] == 0


def test_without_objects_the_class_term_is_the_weighted_cross_entropy():
    outputs, targets = make_batch([0, 0, 0], Q=6, seed=6, num_layers=1)
    result = paper_criterion(eos_coef=0.3)(outputs, targets)
    expected = F.cross_entropy(outputs["pred_logits"].reshape(-1, C + 1), torch.full((18,), C),
                               weight=torch.tensor([1.0] * C + [0.3]))
    torch.testing.assert_close(result["loss_ce"], expected)
    assert result["loss_bbox"] == 0 and result["loss_giou"] == 0 and result["class_error"] == 100


def test_bf16_outputs_give_float32_losses_equal_to_their_float32_values():
    outputs, targets = make_batch([3, 1], seed=7)
    to = lambda o, dt: {"pred_logits": o["pred_logits"].to(dt), "pred_boxes": o["pred_boxes"].to(dt)}   # noqa: E731
    half = {**to(outputs, torch.bfloat16), "aux_outputs": [to(a, torch.bfloat16) for a in outputs["aux_outputs"]]}
    back = {**to(half, torch.float32), "aux_outputs": [to(a, torch.float32) for a in half["aux_outputs"]]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = paper_criterion()(half, targets)
    ref = paper_criterion()(back, targets)
    for key in ref:
        assert got[key].dtype == torch.float32
        torch.testing.assert_close(got[key], ref[key])


def test_gradients_reach_the_logits_and_boxes_of_every_layer():
    outputs, targets = make_batch([3, 2], seed=8, grad=True)
    paper_criterion()(outputs, targets)["loss"].backward()
    for out in [outputs] + outputs["aux_outputs"]:
        for key in ("pred_logits", "pred_boxes"):
            assert torch.isfinite(out[key].grad).all() and out[key].grad.abs().sum() > 0


def test_num_boxes_is_averaged_over_processes(tmp_path):
    outputs, targets = make_batch([3, 2], seed=9)
    expected = paper_criterion()(outputs, targets)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        got = paper_criterion()(outputs, targets)
    finally:
        dist.destroy_process_group()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_focal_class_term_and_the_encoder_proposals_loss():
    outputs, targets = make_batch([3, 2], seed=11, num_layers=1)
    enc, _ = make_batch([3, 2], Q=10, seed=12, num_layers=1)
    outputs["enc_outputs"] = {k: enc[k] for k in ("pred_logits", "pred_boxes")}
    criterion = AidedCriterion(C, AidedMatcher(2, 5, 2), {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0})
    result = criterion(outputs, targets)
    total = 0.0
    for suffix, out in (("", outputs), ("_enc", outputs["enc_outputs"])):
        onehot = torch.zeros(out["pred_logits"].shape[:2] + (C,))
        for i, (rows, cols) in enumerate(criterion.matcher(out, targets)):
            onehot[i, rows, targets[i]["labels"][cols]] = 1.0
        expected = ops.sigmoid_focal_loss(out["pred_logits"][..., :C], onehot, alpha=0.25, gamma=2.0,
                                          reduction="sum") / 5
        torch.testing.assert_close(result["loss_ce" + suffix], expected)
        total = total + 2 * expected + 5 * result["loss_bbox" + suffix] + 2 * result["loss_giou" + suffix]
    torch.testing.assert_close(result["loss"], total)
    # logged: a query says "an object" when its best sigmoid passes 0.5
    scores = outputs["pred_logits"][..., :C].sigmoid()
    card = ((scores.amax(-1) > 0.5).sum(1).float() - torch.tensor([3.0, 2.0])).abs().mean()
    torch.testing.assert_close(result["cardinality_error"], card)


def test_the_total_follows_the_weights():
    outputs, targets = make_batch([2, 2], seed=12)
    weights = {"loss_ce": 2.0, "loss_bbox": 1.0, "loss_giou": 0.5}
    r = SetCriterion(C, HungarianMatcher(), weights)(outputs, targets)
    torch.testing.assert_close(r["loss"], sum(w * r[k + s] for k, w in weights.items() for s in ("", "_0", "_1")))
