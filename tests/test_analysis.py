"""The paper's analyses (detr_nb.teach.analysis) on stand-in models whose outputs are designed from the ground
truth (known answers), and on tiny real DETRs (against their own forward pass and evaluation)."""
import math

import pytest
import torch
from torch import nn

from detr_nb.aids import AidedPostProcess
from detr_nb.models import PostProcess
from detr_nb.teach.analysis import (box_colors, crowd_samples, crowd_summary, crowd_test, found_objects, layer_ap, nms,
                                    plot_crowd, plot_layer_ap, plot_slots, slot_predictions)

NUM_CLASSES = 7                       # synthetic ids 1..6, 0 unused: logit columns 0..6, column 7 = "no object"
BACKGROUND_BOX = [0.97, 0.97, 0.02, 0.02]     # normalised cxcywh, in a corner no shape reaches
# the paper's scoring (softmax, one label per query) and the aided one (sigmoid, the best (query, class) pairs)
SCORINGS = pytest.mark.parametrize("postprocess", [PostProcess(), AidedPostProcess()], ids=["softmax", "focal"])


def _logits(label: int, score: float) -> torch.Tensor:
    """One query's logits (C + 1,): softmax gives ``score`` to ``label`` (and 1 - score to "no object"); the
    focal sigmoid gives it score / (1 + score), the same order; every other class is about 1e-13."""
    row = torch.full((NUM_CLASSES + 1,), -30.0)
    row[label], row[-1] = math.log(score), math.log(1 - score)
    return row


def _key(image: torch.Tensor) -> tuple:
    """An image recognised by its first row of pixels (noisy synthetic images: no two alike)."""
    return tuple(round(v, 4) for v in image[0, 0, :8].tolist())


class Designed(nn.Module):
    """A stand-in DETR: for each image it recognises, fixed outputs of every decoder layer, ``[(logits (Q, C+1),
    boxes (Q, 4))]`` first to last, returned as a DETR does (last layer at the top, the others in aux_outputs)."""

    def __init__(self, per_key):
        super().__init__()
        self.per_key, self.calls = per_key, 0

    def forward(self, images, mask=None):
        self.calls += 1
        per_image = [self.per_key[_key(im)] for im in images]
        layers = [{"pred_logits": torch.stack([p[i][0] for p in per_image]),
                   "pred_boxes": torch.stack([p[i][1] for p in per_image])} for i in range(len(per_image[0]))]
        return {**layers[-1], "aux_outputs": layers[:-1]}


def _background(q):
    return torch.stack([_logits(1, 1e-3)] * q), torch.tensor([BACKGROUND_BOX] * q)


# ----------------------------------------------------------------------------- Figure 4: AP per layer
@pytest.fixture(scope="module")
def crowded_val(tmp_path_factory):
    """4 validation images of 64 px with 3-4 shapes each (6 classes: some class has several objects)."""
    from detr_nb.data import build_dataset

    root = tmp_path_factory.mktemp("crowded")
    return build_dataset("synthetic", "val", preset="cpu", root=str(root), num_train=1, num_val=4,
                         image_size=(64, 64), min_objects=3, max_objects=4, workers=1, progress=False)


def _duplicating_model(dataset, q=10):
    """Layer 0 predicts every object twice (the same box; the copy scored 0.02 lower), layer 1 once. Scores fall
    with the object's rank over the dataset, so a copy outranks the next objects of its class; every other
    object's box is shifted by a tenth of its width (IoU 0.82: a hit at IoU 0.5..0.8, a miss above)."""
    per_key, j = {}, 0
    for i in range(len(dataset)):
        image, target = dataset[i]
        first, last = _background(q), _background(q)
        for n, (box, label) in enumerate(zip(target["boxes"], target["labels"].tolist())):
            score = 0.95 - 0.03 * j
            box = box + torch.tensor([0.1 * float(box[2]), 0, 0, 0]) * (j % 2)
            first[0][2 * n], first[1][2 * n] = _logits(label, score), box
            first[0][2 * n + 1], first[1][2 * n + 1] = _logits(label, score - 0.02), box
            last[0][n], last[1][n] = _logits(label, score), box
            j += 1
        per_key[_key(image)] = [first, last]
    return Designed(per_key)


@SCORINGS
def test_nms_helps_the_duplicating_layer_not_the_last(crowded_val, postprocess, one_thread):
    from detr_nb.evaluate import coco_evaluate, coco_gt_of, to_coco_results

    labels = [l for i in range(len(crowded_val)) for l in crowded_val[i][1]["labels"].tolist()]
    assert max(labels.count(c) for c in set(labels)) >= 2      # the copies can outrank a true positive
    model = _duplicating_model(crowded_val)
    rows = layer_ap(model, crowded_val, postprocess=postprocess, batch_size=3)
    assert model.calls == 2                                     # once per batch, both layers from that pass
    first, last = rows
    assert [first["layer"], last["layer"]] == [0, 1]
    assert first["AP_nms"] > first["AP"] and first["AP50_nms"] > first["AP50"]
    assert first["AP50_nms"] == pytest.approx(1.0)              # duplicates gone, every box a hit at IoU 0.5
    assert first["AP_nms"] == pytest.approx(last["AP_nms"])    # the same boxes once the copies are suppressed
    assert last["AP_nms"] <= last["AP"] + 1e-12
    assert 0.3 < last["AP"] < 1.0                               # the shifted boxes miss at IoU > 0.8
    found = []                                                  # the last layer scored image by image
    for i in range(len(crowded_val)):
        image, target = crowded_val[i]
        found += to_coco_results(postprocess(model(image[None]), target["orig_size"][None]), [int(target["image_id"])])
    assert last["AP"] == pytest.approx(coco_evaluate(coco_gt_of(crowded_val), found, verbose=False)["AP"], abs=1e-12)


@pytest.mark.parametrize("name", ["detr_tiny", "detr_tiny_aided"])
def test_layer_ap_of_a_real_model_is_its_evaluation(data_root, name, one_thread):
    """A tiny DETR: one row per decoder layer, scored as the model is evaluated; the last one's AP is evaluate's,
    and max_images limits the ground truth too (the first image only)."""
    from detr_nb import build_model
    from detr_nb.data import build_dataset
    from detr_nb.evaluate import evaluate
    from engine_utils import SYN, TINY

    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, **TINY)
    val = build_dataset("synthetic", "val", root=str(data_root), **SYN)
    rows = layer_ap(model, val, batch_size=2)
    assert [r["layer"] for r in rows] == list(range(TINY["dec_layers"]))
    stats = evaluate(model, val, verbose=False)
    assert (rows[-1]["AP"], rows[-1]["AP50"]) == pytest.approx((stats["AP"], stats["AP50"]), abs=1e-12)
    one = layer_ap(model, val, max_images=1)
    assert one[-1]["AP"] == pytest.approx(evaluate(model, torch.utils.data.Subset(val, [0]), verbose=False)["AP"])


def test_nms_is_per_class():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 9.5], [50, 50, 60, 60]], dtype=torch.float32)
    result = {"boxes": boxes, "scores": torch.tensor([0.5, 0.9, 0.7, 0.3]), "labels": torch.tensor([1, 1, 2, 1])}
    kept = nms(result, 0.7)
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.7, 0.3])   # the 0.5 box loses to the 0.9 of its class
    assert kept["labels"].tolist() == [1, 2, 1]


# ----------------------------------------------------------------------------- Figure 7: slots
@pytest.mark.parametrize("name", ["detr_tiny", "detr_tiny_aided"])
def test_slot_predictions_are_every_query_box_of_every_image(data_root, name, one_thread):
    from detr_nb import build_model
    from detr_nb.data import build_dataset
    from engine_utils import SYN, TINY

    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, **TINY).eval()
    val = build_dataset("synthetic", "val", root=str(data_root), **SYN)
    slots = slot_predictions(model, val, batch_size=3)
    Q, N = TINY["num_queries"], len(val)
    assert slots["centers"].shape == slots["sizes"].shape == (Q, N, 2)
    assert slots["scores"].shape == slots["labels"].shape == (Q, N)       # every slot: one box per image
    assert slots["two_stage"] == (name == "detr_tiny_aided")
    for i in range(N):                                                   # the model's own output, image by image
        with torch.no_grad():
            out = model(val[i][0][None])
        logits = out["pred_logits"][0]
        prob = logits[:, :-1].sigmoid() if name == "detr_tiny_aided" else logits.softmax(-1)[:, :-1]
        assert torch.allclose(slots["centers"][:, i], out["pred_boxes"][0, :, :2], atol=1e-5)
        assert torch.allclose(slots["sizes"][:, i], out["pred_boxes"][0, :, 2:], atol=1e-5)
        assert torch.allclose(slots["scores"][:, i], prob.max(-1).values, atol=1e-5)


def test_box_colors_follow_the_rule():
    sizes = [[0.1, 0.1],     # area 0.01: small
             [0.3, 0.16],    # 0.048: small however wide
             [0.5, 0.3],     # large, wider than tall
             [0.3, 0.5],     # large, taller than wide
             [0.4, 0.4],     # large, square: h >= w
             [0.9, 0.06]]    # 0.054: large, wide
    assert box_colors(sizes) == ["green", "green", "red", "blue", "blue", "red"]
    assert box_colors(sizes, small_area=0.3) == ["green"] * 5 + ["green"]


def test_plot_slots_draws_each_slot_kept_centres_in_its_colours():
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.colors import to_rgba
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(0)
    Q, N = 6, 40
    slots = {"centers": torch.rand(Q, N, 2, generator=g), "sizes": torch.rand(Q, N, 2, generator=g) * 0.6,
             "scores": torch.rand(Q, N, generator=g), "labels": torch.ones(Q, N, dtype=torch.long), "two_stage": True}
    fig = plot_slots(slots, n=4, min_score=0.5, ncols=3)
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 4
    for q, ax in enumerate(panels):
        keep = slots["scores"][q] >= 0.5
        points = ax.collections[0].get_offsets()
        assert torch.allclose(torch.as_tensor(points, dtype=torch.float32), slots["centers"][q][keep])
        want = [to_rgba(c) for c in box_colors(slots["sizes"][q][keep])]
        torch.testing.assert_close(torch.as_tensor(ax.collections[0].get_facecolors()).reshape(-1, 4),
                                   torch.as_tensor(want, dtype=torch.float64).reshape(-1, 4))
        assert ax.get_title().startswith(f"rank {q} ")
    plt.close(fig)


# ----------------------------------------------------------------------------- Figure 5: crowds
CROWD = dict(counts=(12, 34), images_per_count=2, image_size=(160, 160), seed=3)


def _oracle(q, transforms=None):
    """A stand-in DETR that returns the crowd images' own ground truth boxes: its first q objects, score ~0.993."""
    from PIL import Image

    from detr_nb.data import make_transforms

    transforms = transforms or make_transforms("cpu", train=False)
    per_key = {}
    for sample in crowd_samples(**CROWD):
        image, _ = transforms(Image.fromarray(sample["image"]), None)
        h, w = sample["image"].shape[:2]
        logits, boxes = _background(q)
        for n, ((x0, y0, x1, y1), label) in enumerate(zip(sample["boxes"].tolist()[:q], sample["labels"].tolist())):
            logits[n] = torch.full((NUM_CLASSES + 1,), -30.0)
            logits[n, label], logits[n, -1] = 5.0, 0.0
            boxes[n] = torch.tensor([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
        per_key[_key(image)] = [(logits, boxes)]
    return Designed(per_key)


@SCORINGS
@pytest.mark.parametrize("q", [30, 10])
def test_a_perfect_model_finds_as_many_objects_as_it_has_queries(postprocess, q):
    rows = crowd_test(_oracle(q), postprocess=postprocess, **CROWD)
    assert [r["requested"] for r in rows] == [12, 12, 34, 34]
    assert any(r["objects"] > 30 for r in rows)               # more objects than the 30 queries
    for r in rows:
        assert r["queries"] == q
        assert r["found"] == min(r["objects"], q)
        assert sum(c["found"] for c in r["per_class"].values()) == r["found"]
        assert len(r["detections"]["scores"]) == min(r["objects"], q)   # background scores stay below 0.5


def test_crowd_test_counts_one_class():
    rows = crowd_test(_oracle(30), class_id=2, **CROWD)
    full = crowd_test(_oracle(30), **CROWD)
    for r, f in zip(rows, full):
        assert list(r["per_class"]) in ([2], [])
        assert r["objects"] == f["per_class"].get(2, {"objects": 0})["objects"]
        assert set(r["detections"]["labels"].tolist()) <= {2}
        if f["objects"] <= 30:
            assert r["found"] == r["objects"]


def test_found_objects_greedy_by_score():
    gt = torch.tensor([[0, 0, 10, 10], [8, 0, 18, 10], [40, 40, 50, 50]], dtype=torch.float32)
    gt_labels = torch.tensor([1, 1, 2])
    dets = {"boxes": torch.tensor([[4, 0, 14, 10],      # IoU 0.43 with both first objects: no hit
                                   [1, 0, 11, 10],      # 0.82 with object 0 (0.18 with object 1): a hit
                                   [0, 0, 10, 10],      # object 0 again: already found, 0.11 with 1: no hit
                                   [8, 0, 18, 10],      # object 1, but below the threshold
                                   [40, 40, 50, 50]],   # object 2's box, the wrong class
                                  dtype=torch.float32),
            "scores": torch.tensor([0.95, 0.9, 0.8, 0.4, 0.9]), "labels": torch.tensor([1, 1, 1, 1, 1])}
    assert found_objects(dets, gt, gt_labels, threshold=0.5).tolist() == [True, False, False]
    assert found_objects(dets, gt, gt_labels, threshold=0.3).tolist() == [True, True, False]
    assert found_objects(dets, gt[:0], gt_labels[:0]).tolist() == []


def test_crowd_figure_and_summary():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = crowd_test(_oracle(30), **CROWD)
    summary = crowd_summary(rows)
    assert list(summary) == [12, 34]
    assert summary[34]["found"] == 30 and summary[12]["found"] == summary[12]["objects"] == 12
    fig = plot_crowd(rows, image=rows[-1]["image"], detections=rows[-1]["detections"], train_max=10)
    points = fig.axes[0].collections[0].get_offsets().tolist()
    assert points == [[r["objects"], r["found"]] for r in rows]
    assert len(fig.axes[1].patches) == 30                       # one rectangle per detection
    plt.close(fig)
    layers = [{"layer": 0, "AP": 0.2, "AP50": 0.4, "AP_nms": 0.25, "AP50_nms": 0.45},
              {"layer": 1, "AP": 0.3, "AP50": 0.5, "AP_nms": 0.29, "AP50_nms": 0.5}]
    fig = plot_layer_ap(layers)
    ys = sorted(tuple(round(float(y), 9) for y in line.get_ydata()) for ax in fig.axes for line in ax.get_lines())
    assert ys == [(20, 30), (25, 29), (40, 50), (45, 50)]     # AP and AP50 in %, without and with NMS
    plt.close(fig)
