"""Issue 16's convergence means, each against an independent reference: IoU-aware classification losses,
the position-modulated matching cost, look-forward-twice, mosaics, the in-memory image cache, the EMA of the
weights, and the study's bookkeeping (seed groups, interpolated crossing times)."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou

from detr_nb.aids.anchors import BoxRefinement
from detr_nb.data.cache import InMemoryImages
from detr_nb.data.mosaic import Mosaic, mosaic
from detr_nb.engine.ema import ModelEMA
from detr_nb.setpred.criterion import SetCriterion
from detr_nb.setpred.matcher import HungarianMatcher
from detr_nb.teach.convergence import crossing, group_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def _xyxy(b):
    return box_convert(b, "cxcywh", "xyxy")


def _problem(seed=0, B=3, Q=6, C=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, Q, C, generator=g)
    boxes = torch.rand(B, Q, 4, generator=g) * 0.4 + torch.tensor([0.3, 0.3, 0.1, 0.1])
    targets = [{"labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.35, 0.6, 0.15, 0.2]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.45, 0.4, 0.3, 0.3]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}][:B]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


# ------------------------------------------------------------------------------------------ IoU-aware losses
def _reference_bce(kind, outputs, targets, indices):
    """The papers' formulas, one (image, query, class) at a time, IoU from torchvision."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    total = 0.0
    for b, (src, tgt) in enumerate(indices):
        match = dict(zip(src.tolist(), tgt.tolist()))
        for q in range(logits.shape[1]):
            for c in range(logits.shape[2]):
                p = torch.sigmoid(logits[b, q, c])
                if q in match and int(targets[b]["labels"][match[q]]) == c:
                    iou = box_iou(_xyxy(boxes[b, q][None]), _xyxy(targets[b]["boxes"][match[q]][None]))[0, 0]
                    t, w = {"vfl": (iou, iou), "mal": (iou ** 1.5, 1.0), "ia_bce": (p ** 0.25 * iou ** 0.75, 1.0)}[kind]
                else:
                    t, w = 0.0, {"vfl": 0.75 * p ** 2, "mal": p ** 1.5, "ia_bce": p ** 2}[kind]
                total += w * -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    return total


@pytest.mark.parametrize("kind", ["vfl", "mal", "ia_bce"])
def test_iou_aware_losses_match_the_papers_formulas(kind):
    outputs, targets = _problem()
    matcher = HungarianMatcher(2, 5, 2, class_cost="focal")
    crit = SetCriterion(4, matcher, loss_type="focal", iou_aware=kind)
    got = crit(outputs, targets)["loss_ce"]
    expected = _reference_bce(kind, outputs, targets, matcher(outputs, targets)) / 3   # num_boxes = 3
    assert torch.allclose(got, expected, rtol=1e-5), (got, expected)


def test_iou_aware_target_is_a_constant_and_rewards_a_better_box():
    outputs, targets = _problem(B=2)
    outputs = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    crit = SetCriterion(4, HungarianMatcher(2, 5, 2, class_cost="focal"), loss_type="focal", iou_aware="vfl",
                        losses=("labels",), weight_dict={"loss_ce": 1.0})
    crit(outputs, targets)["loss"].backward()
    assert outputs["pred_boxes"].grad is None or outputs["pred_boxes"].grad.abs().max() == 0   # IoU detached
    # one query, matched: with a perfect box its score is pulled towards 1, with a poor one towards its IoU
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    for pred, want in ((gt, 1.0), (gt * torch.tensor([1.0, 1.0, 3.0, 1.0]), 1 / 3)):
        logits = torch.zeros(1, 1, 1, requires_grad=True)                  # p = 0.5
        out = crit.__class__(1, HungarianMatcher(1, 5, 2, class_cost="focal"), loss_type="focal", iou_aware="vfl")(
            {"pred_logits": logits, "pred_boxes": pred[None]}, [{"labels": torch.tensor([0]), "boxes": gt}])
        grad, = torch.autograd.grad(out["loss_ce"], logits)
        assert torch.isclose(grad[0, 0, 0], torch.tensor(want * (0.5 - want)), atol=1e-6)   # d(w BCE)/dx = w (p - t)


def test_iou_aware_needs_the_sigmoid_loss():
    with pytest.raises(ValueError, match="iou_aware"):
        SetCriterion(4, loss_type="ce", iou_aware="vfl")
    with pytest.raises(ValueError, match="iou_power"):
        HungarianMatcher(class_cost="softmax", iou_power=0.5)


# ------------------------------------------------------------------------------ position-modulated matching
def test_position_modulated_cost_matches_a_reference():
    outputs, targets = _problem(B=1)
    beta, alpha, gamma = 0.5, 0.25, 2.0
    m = HungarianMatcher(2, 5, 2, class_cost="focal", iou_power=beta)
    labels, tboxes = targets[0]["labels"], targets[0]["boxes"]
    p = outputs["pred_logits"][0].sigmoid()[:, labels]                                       # (Q, N)
    p = p ** (1 - beta) * box_iou(_xyxy(outputs["pred_boxes"][0]), _xyxy(tboxes)).clamp(min=1e-8) ** beta
    cls = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8) - (1 - alpha) * p ** gamma * -torch.log(1 - p + 1e-8)
    from torchvision.ops import generalized_box_iou
    cost = 2 * cls + 5 * torch.cdist(outputs["pred_boxes"][0], tboxes, p=1) - 2 * generalized_box_iou(
        _xyxy(outputs["pred_boxes"][0]), _xyxy(tboxes))
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(cost.numpy())
    src, tgt = m(outputs, targets)[0]
    assert src.tolist() == rows.tolist() and tgt.tolist() == cols.tolist()
    got = m._cost([outputs], *m._pad_targets(targets, [2], 3, 4, torch.device("cpu")))[0, 0, :, :2]
    assert torch.allclose(got, cost, atol=1e-5)


def test_position_modulation_prefers_the_query_on_the_object():
    # class cost only: a confident query far from the object against a less confident one on it
    target = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}]
    out = {"pred_logits": torch.tensor([[[3.0], [1.0]]]),
           "pred_boxes": torch.tensor([[[0.8, 0.8, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2]]])}
    assert HungarianMatcher(1, 0, 0, class_cost="focal")(out, target)[0][0].tolist() == [0]
    assert HungarianMatcher(1, 0, 0, class_cost="focal", iou_power=0.5)(out, target)[0][0].tolist() == [1]


# ------------------------------------------------------------------------------- one-to-many encoder proposals
def test_encoder_repeat_gives_each_object_k_distinct_proposals():
    from detr_nb.aids.criterion import AidedCriterion
    outputs, targets = _problem(B=2, Q=6)
    g = torch.Generator().manual_seed(1)
    outputs["enc_outputs"] = {"pred_logits": torch.randn(2, 20, 4, generator=g),
                              "pred_boxes": torch.rand(2, 20, 4, generator=g) * 0.4 + 0.2}
    seen = {}
    for k in (1, 3):
        crit = AidedCriterion(4, HungarianMatcher(2, 5, 2, class_cost="focal"), loss_type="focal", enc_repeat=k)
        real = crit.enc_criterion.match
        crit.enc_criterion.match = lambda outs, tg, real=real, k=k: seen.setdefault(k, real(outs, tg))
        losses = crit(outputs, targets)
        assert set(losses) >= {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"}
    for b, t in enumerate(targets):
        n = len(t["labels"])
        src, tgt = seen[3][0][b]
        assert len(set(src.tolist())) == len(src) == 3 * n                  # distinct proposals
        assert sorted((tgt % max(n, 1)).tolist()) == sorted(list(range(n)) * 3)   # each object 3 times
        assert len(seen[1][0][b][0]) == n                                    # one-to-one by default


# ------------------------------------------------------------------------------------- query selection
def test_encoder_content_queries_are_the_features_of_the_selected_cells():
    from detr_nb.aids.two_stage import select_content, select_queries
    g = torch.Generator().manual_seed(0)
    logits, boxes, feats = torch.randn(2, 12, 5, generator=g), torch.rand(2, 12, 4, generator=g), torch.randn(2, 12, 8)
    feats[..., :4] = boxes                                    # a feature that says which cell it is
    fmask = torch.zeros(2, 3, 4, dtype=torch.bool)
    fmask[1, :, 3] = True                                     # padding cells are never chosen
    for Q in (5, 20):                                         # fewer cells than queries: the ranking repeats
        ref = select_queries(logits, boxes, fmask, 4, Q)
        content = select_content(logits, feats, fmask, 4, Q)
        assert content.shape == (2, Q, 8) and not content.requires_grad
        assert torch.equal(content[..., :4], ref)            # query j's content comes from query j's cell
    padded = set(torch.nonzero(fmask[1].flatten()).flatten().tolist())
    chosen = {int(torch.nonzero((boxes[1] == r).all(-1))[0]) for r in select_queries(logits, boxes, fmask, 4, 5)[1]}
    assert not chosen & padded


def test_encoder_content_is_the_main_jobs_and_learned_content_an_option():
    from detr_nb.configs import build_model
    torch.manual_seed(0)
    small = dict(num_classes=3, backbone_width=0.125, hidden_dim=32, nheads=2, dim_feedforward=64, num_queries=5)
    rt = build_model("detr_tiny_aided", **small)                  # issue 16: RT-DETR's content queries
    assert rt.query_content == "encoder" and not hasattr(rt, "tgt_embed")
    out = rt(torch.randn(2, 3, 64, 64))
    assert out["pred_boxes"].shape == (2, 5, 4)
    mixed = build_model("detr_tiny_aided", query_content="learned", **small)    # DINO's mixed selection
    assert hasattr(mixed, "tgt_embed")
    with pytest.raises(ValueError, match="query_content"):
        build_model("detr_tiny_aided", num_classes=3, two_stage=False, box_refine=True, query_content="encoder")


# ------------------------------------------------------------------------------------- look forward twice
def _refine(look_forward_twice, hs):
    torch.manual_seed(0)
    embed = torch.nn.Linear(8, 4)
    ref = torch.tensor([[[0.4, 0.5, 0.2, 0.3]]])
    r = BoxRefinement(ref, torch.nn.Identity(), embed, 8, look_forward_twice)
    for h in hs:
        r.update(h)
    return r.boxes


def test_look_forward_twice_keeps_the_boxes_and_adds_one_gradient_path():
    hs = [torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(i), requires_grad=True) for i in range(3)]
    plain, twice = _refine(False, hs), _refine(True, hs)
    for a, b in zip(plain, twice):
        assert torch.allclose(a, b, atol=1e-7)                 # the same values
    def grads(boxes):                                          # d box_2 / d (layer 0, 1, 2 outputs)
        g = torch.autograd.grad(boxes[2].sum(), hs, allow_unused=True)
        return [0.0 if x is None else float(x.abs().sum()) for x in g]
    g_plain, g_twice = grads(plain), grads(twice)
    assert g_plain[0] == 0 and g_plain[1] == 0 and g_plain[2] > 0     # detached references: own layer only
    assert g_twice[0] == 0 and g_twice[1] > 0 and g_twice[2] > 0      # one layer back, not two


def test_look_forward_twice_needs_box_refinement():
    from detr_nb.configs import build_model
    with pytest.raises(ValueError, match="look_forward_twice"):
        build_model("detr_tiny", num_classes=3, look_forward_twice=True)


# ---------------------------------------------------------------------------------------------- mosaic
class _Rectangles(torch.utils.data.Dataset):
    """Images of solid rectangles on 0, each object a colour of its own (channel 0 = its label / 100)."""

    def __init__(self, n=4, size=(48, 64)):
        self.samples = []
        g = np.random.default_rng(0)
        label = 1
        for _ in range(n):
            H, W = size
            image = torch.zeros(3, H, W)
            boxes, labels = [], []
            for x0 in range(2, W - 14, 16):                    # non-overlapping columns of rectangles
                w, h = int(g.integers(6, 13)), int(g.integers(6, 20))
                y0 = int(g.integers(1, H - h))
                image[:, y0:y0 + h, x0:x0 + w] = torch.tensor([label / 100, 1.0, 1.0])[:, None, None]
                boxes.append([(x0 + w / 2) / W, (y0 + h / 2) / H, w / W, h / H])
                labels.append(label)
                label += 1
            self.samples.append((image, {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
                                         "image_id": torch.tensor(0), "orig_size": torch.tensor([H, W])}))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


@pytest.mark.parametrize("scale,centre", [(0.5, (32, 24)), (0.75, (20, 30)), (1.0, (45, 12))])
def test_mosaic_boxes_move_with_their_pixels(scale, centre):
    data = _Rectangles()
    image, target = mosaic([data[i] for i in range(4)], scale, centre)
    H, W = image.shape[-2:]
    assert (H, W) == (48, 64) and target["size"].tolist() == [48, 64]
    boxes = target["boxes"] * torch.tensor([W, H, W, H])
    seen = set()
    for box, label in zip(_xyxy(boxes), target["labels"].tolist()):
        mine = (image[0] - label / 100).abs() < 0.004             # pixels (mostly) of this rectangle's colour
        mine &= image[1] > 0.9
        ys, xs = torch.nonzero(mine, as_tuple=True)
        assert len(ys), f"no pixel of object {label} in the mosaic"
        pixels = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(box, pixels, atol=1.01 if scale != 1.0 else 1e-4), (label, box, pixels)
        seen.add(label)
    for _, t in (data[i] for i in range(4)):      # a dropped object is gone, or all but a sliver of it
        for label, b in zip(t["labels"].tolist(), t["boxes"]):
            if label not in seen:
                visible = int((((image[0] - label / 100).abs() < 1e-4) & (image[1] > 0.999)).sum())   # whole pixels
                full = float(b[2] * 64 * b[3] * 48) * scale ** 2
                assert visible <= 0.25 * full, (label, visible, full)


def test_mosaic_wrapper_draws_from_random_and_stops_when_switched_off():
    data = _Rectangles(n=6)
    m = Mosaic(data, prob=1.0)
    random.seed(3)
    image, target = m[2]
    assert len(target["labels"]) > len(data[2][1]["labels"])     # more objects than one image has
    random.seed(3)
    assert torch.equal(m[2][0], image)                            # a function of the random state
    m.set_active(False)
    assert not m.active and m[2][0] is data[2][0]
    assert m.samples is data.samples                              # attributes pass through


# ----------------------------------------------------------------------------------------- image cache
def test_cached_images_give_the_same_samples_and_decode_once(tmp_path, monkeypatch):
    from detr_nb.data import build_dataset
    from engine_utils import SYN
    ds = build_dataset("synthetic", "train", "cpu", root=str(tmp_path / "syn"), **SYN)
    calls = []
    real = ds.load_image
    monkeypatch.setattr(ds, "load_image", lambda i: calls.append(i) or real(i))
    cached = InMemoryImages(ds)
    for epoch in range(3):
        for i in range(len(ds)):
            random.seed(epoch * 100 + i)
            a_img, a_t = cached[i]
            random.seed(epoch * 100 + i)
            b_img, b_t = ds[i]
            assert torch.equal(a_img, b_img) and a_t.keys() == b_t.keys()
            assert all(torch.equal(a_t[k], b_t[k]) for k in a_t)
    assert calls.count(ds.ids[0]) == 3 + 1          # 3 direct reads, 1 through the cache
    assert cached.num_classes == ds.num_classes and cached.coco is ds.coco


# ------------------------------------------------------------------------------------------------- EMA
def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def test_ema_equals_torch_swa_utils_once_the_ramp_is_over():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    net = _net()
    ref = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ref.update_parameters(net)                # its first update copies the weights
    ema = ModelEMA(net, 0.9)
    ema.updates = 10 ** 6                     # past the ramp: the decay is 0.9 from now on
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(5):
        net.train()
        net(torch.randn(8, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        ref.update_parameters(net)
        ema.update(net)
    for (name, a), b in zip(ema.module.state_dict().items(), ref.module.state_dict().values()):
        if a.dtype.is_floating_point:
            assert torch.allclose(a, b, atol=1e-6), name


def test_ema_ramp_by_hand():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = ModelEMA(net, 0.5)
    avg = 0.0
    for n, w in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update(net)
        d = min(0.5, (1 + n) / (10 + n))       # 0.1, 0.1818, 0.25, 0.3077
        avg = d * avg + (1 - d) * w
        assert abs(float(ema.module.weight) - avg) < 1e-6
    assert ema.updates == 4 and not ema.module.weight.requires_grad and not ema.module.training


def test_ema_resumes_exactly_and_is_what_is_evaluated(tmp_path, data_root):
    from detr_nb.engine import checkpoint as ck
    from detr_nb.engine.build import model_from_checkpoint
    from detr_nb.engine.trainer import Trainer
    from engine_utils import tiny_config
    kw = dict(ema_decay=0.9, epochs=2, loss_type="focal", model_overrides={**tiny_config(".", ".").model_overrides,
                                                                           "class_prior": 0.01})
    full = Trainer(tiny_config(tmp_path / "full", data_root, **kw))
    full.fit()
    assert full.eval_model is full.ema.module and full.ema.updates == full.step == 6
    first = Trainer(tiny_config(tmp_path / "b", data_root, max_steps=4, **kw))
    first.fit()
    second = Trainer(tiny_config(tmp_path / "b", data_root, **kw))
    assert second.ema.updates == 4
    second.fit()
    for k, v in full.ema.module.state_dict().items():
        assert torch.equal(v, second.ema.module.state_dict()[k]), k
    state = ck.load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pth")
    loaded = model_from_checkpoint(state)
    for k, v in loaded.state_dict().items():      # evaluate / predict read the average
        assert torch.equal(v, full.ema.module.state_dict()[k]), k


def test_mosaics_stop_at_the_scheduled_fraction(tmp_path, data_root):
    from detr_nb.engine.trainer import Trainer
    from engine_utils import tiny_config
    seen = []
    cfg = tiny_config(tmp_path / "m", data_root, mosaic_prob=1.0, mosaic_stop=0.5, max_steps=8, epochs=100)
    tr = Trainer(cfg, callbacks=[lambda t: seen.append((t.step, t.mosaic.active))])
    tr.fit()
    assert seen == [(s, s < 4) for s in range(1, 9)]    # the batch after step s is a mosaic while s / 8 < 0.5


# ------------------------------------------------------------------------------------- the study's numbers
def test_crossing_interpolates_between_evaluations():
    curve = [{"train_s": 30, "AP50": 0.2}, {"train_s": 60, "AP50": 0.4}, {"train_s": 90, "AP50": 0.6}]
    assert crossing(curve, "AP50", 0.5) == pytest.approx(75.0)
    assert crossing(curve, "AP50", 0.1) == 30 and crossing(curve, "AP50", 0.7) is None


def test_runs_of_several_seeds_form_one_group():
    run = lambda v, seed, study=16: {"variant": v, "seed": seed, "steps": 10, "study": study, "curve": []}
    results = {"runs": {"a#1": run("a", 1), "a#0": run("a", 0), "b": run("b", 42, None), "a": run("a", 42, None)}}
    groups = group_runs(results)
    assert list(groups) == ["a@10"] and [r["seed"] for r in groups["a@10"]] == [0, 1]
    assert set(group_runs(results, study=None)) == {"a@10", "a@10 (issue 8)", "b@10 (issue 8)"}


@pytest.mark.parametrize("change, message", [
    (dict(loss_type="ce", weight_dict=None, cost_class=1.0, iou_aware="vfl"), "--iou-aware"),
    (dict(iou_aware="focal"), "--iou-aware"),
    (dict(cost_iou_power=1.5), "--cost-iou-power"),
    (dict(ema_decay=1.0), "--ema-decay"),
    (dict(mosaic_prob=2), "--mosaic-prob"),
    (dict(enc_repeat=0), "--enc-repeat"),
])
def test_bad_settings_of_the_means_are_refused_in_one_line(change, message):
    from detr_nb.engine.config import TrainConfig, check_config
    from detr_nb.errors import ConfigError
    with pytest.raises(ConfigError, match=message):
        check_config(TrainConfig(**change))
