"""COCO evaluation (detr_nb/evaluate.py): perfect predictions give AP 1.0; shifted ones give what pycocotools gives
directly; the whole path from a model's outputs to the 12 numbers gives a known answer worked out by hand."""
import contextlib
import copy
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_nb import evaluate as E
from detr_nb.aids import AidedDETR
from detr_nb.data import coco_from_dict
from detr_nb.evaluate import STAT_NAMES, coco_evaluate, to_coco_results


def _gt():
    images = [{"id": i, "width": 200, "height": 160, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    boxes = {1: [(10, 10, 20, 20, 1), (50, 40, 120, 100, 2)],       # small, large
             2: [(30, 30, 40, 50, 1)],                              # medium
             3: [(5, 5, 8, 12, 2), (100, 20, 60, 60, 1), (20, 90, 120, 60, 2)]}
    anns = []
    for img, bs in boxes.items():
        for x, y, w, h, c in bs:
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _dets(coco, dx=0.0, dy=0.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": [a["bbox"][0] + dx, a["bbox"][1] + dy, a["bbox"][2], a["bbox"][3]], "score": 0.9}
            for a in coco.dataset["annotations"]]


def test_perfect_predictions_give_ap_one(capsys):
    coco = _gt()
    stats = coco_evaluate(coco, _dets(coco))
    assert list(stats) == list(STAT_NAMES) + ["per_class"] and stats["per_class"] == {"a": 1.0, "b": 1.0}
    for k in STAT_NAMES:
        if k != "AR1":  # image 3 has 3 objects: one detection per image cannot recall them all
            assert stats[k] == pytest.approx(1.0), k
    assert stats["AR1"] == pytest.approx((1 + 2 / 3) / 2)  # per category: a 3/3, b 2/3 (image 3 has two b)
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in out


def test_per_class_ap_is_cocoeval_on_that_class_alone(capsys):
    coco = _gt()
    dets = _dets(coco, dx=3.0)
    dets[0]["category_id"] = 2                     # one wrong class: a misses a box, b gains a false one
    per_class = coco_evaluate(coco, dets)["per_class"]
    for cat in coco.loadCats(coco.getCatIds()):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
            ev.params.catIds = [cat["id"]]
            ev.evaluate(); ev.accumulate(); ev.summarize()
        assert per_class[cat["name"]] == pytest.approx(ev.stats[0]), cat
    assert per_class["a"] < 1 and per_class["b"] < 1
    assert f"AP {per_class['a']:.3f}  a" in capsys.readouterr().out   # the printed table


def test_shifted_predictions_match_pycocotools():
    coco = _gt()
    dets = _dets(coco, dx=4.0, dy=-2.0)
    stats = coco_evaluate(coco, dets, verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    assert [stats[k] for k in STAT_NAMES] == pytest.approx(list(ev.stats))
    assert 0.0 < stats["AP"] < 1.0


def test_postprocessed_results_round_trip_through_coco_format():
    # results as the post-processing returns them (xyxy pixels) -> COCO's xywh -> the AP of the gt itself
    xyxy = torch.tensor([[30.0, 30.0, 70.0, 70.0], [110.0, 20.0, 170.0, 40.0]])         # images 200 x 100
    coco = coco_from_dict({
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 100} for i in (1, 2)],
        "annotations": [{"id": 2 * i + k + 1, "image_id": i + 1, "category_id": c, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
                        for i in range(2) for k, (c, (x0, y0, x1, y1)) in enumerate(zip((3, 5), xyxy.tolist()))],
        "categories": [{"id": c, "name": str(c)} for c in (3, 5)]})
    results = [{"boxes": xyxy, "scores": torch.tensor([0.8, 0.7]), "labels": torch.tensor([3, 5])}] * 2
    dets = to_coco_results(results, [1, 2])
    assert to_coco_results(results, [1, 2], {3: 1003, 5: 1000000})[0]["category_id"] == 1003   # labels -> file ids
    assert dets[0] == {"image_id": 1, "category_id": 3, "bbox": [30.0, 30.0, 40.0, 40.0], "score": pytest.approx(0.8)}
    assert coco_evaluate(coco, dets, verbose=False)["AP"] == pytest.approx(1.0)


def test_no_detections_give_zeros():
    assert coco_evaluate(_gt(), [], verbose=False) == {**{k: 0.0 for k in STAT_NAMES}, "per_class": {"a": 0.0, "b": 0.0}}


# ----------------------------------------------------------------------------- the whole path, known answer
# model outputs -> the main job's post-processing (sigmoid scores without the "no object" column, the top 100
# (query, class) pairs, boxes scaled to each image's orig_size) -> COCO results -> COCOeval, through
# detr_nb.evaluate.evaluate, on a dataset read from image files, whose AP is worked out by hand below.
import json  # noqa: E402
import math  # noqa: E402

from torch import nn  # noqa: E402

INPUT_HW = (40, 40)                      # what the model sees; neither image has this size
IMAGES = {1: ((200, 100), 40), 7: ((120, 160), 200)}   # image id: ((width, height), grey level of its pixels)
CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]  # num_classes = 3: logit columns 0 (unused id), 1, 2,
NUM_CLASSES = 3                                         # and column 3 = "no object", unused by the focal loss
GT = [  # (image, category, [x, y, w, h] in the image's original pixels)
    (1, 1, [20, 10, 60, 40]),     # a1
    (1, 1, [120, 50, 50, 30]),    # a2
    (7, 1, [10, 20, 40, 60]),     # a3
    (7, 2, [10, 20, 40, 60]),     # b1: the same box as a3, the other class
]
Q = 100                           # queries per image: Q x 3 = 300 (query, class) pairs, top-k keeps 100
BACKGROUND_BOX = [0.97, 0.97, 0.02, 0.02]   # normalised cxcywh, a corner no ground truth touches


def _logit(p):
    return math.log(p / (1 - p))


def _cxcywh(image_id, xywh):
    (w, h), _ = IMAGES[image_id]
    x, y, bw, bh = xywh
    return [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]


def _designed_outputs():
    """Per image: logits (Q, 4) and boxes (Q, 4). Designed queries come first; every other query is
    background (all class logits about -10, distinct so that no two pairs tie) in a corner. The "no
    object" column is +6 (score 0.9975) on EVERY query: if it were scored, its 100 pairs would fill the
    top 100 of each image and push every real detection out."""
    designed = {  # image: [(box [x, y, w, h], {class column: score})]
        1: [(GT[0][2], {1: 0.9}),                  # TP a1
            ([150, 5, 30, 20], {1: 0.6}),          # FP (class a, no ground truth there)
            (GT[1][2], {1: 0.5})],                 # TP a2
        7: [([70, 100, 40, 40], {1: 0.8}),         # FP (class a)
            (GT[2][2], {1: 0.7, 2: 0.65})],        # TP a3 AND TP b1: one query, two (query, class) pairs
    }
    out = {}
    for image_id, queries in designed.items():
        k = torch.arange(Q * NUM_CLASSES, dtype=torch.float64).reshape(Q, NUM_CLASSES)
        logits = torch.cat([-10.0 - 1e-3 * k, torch.full((Q, 1), 6.0, dtype=torch.float64)], 1)
        boxes = torch.tensor([BACKGROUND_BOX] * Q, dtype=torch.float64)
        for q, (xywh, scores) in enumerate(queries):
            boxes[q] = torch.tensor(_cxcywh(image_id, xywh))
            for c, s in scores.items():
                logits[q, c] = _logit(s)
        out[image_id] = (logits.float(), boxes.float())
    return out


class FixedOutputs(AidedDETR):
    """A stand-in for the main job's model (scored as an AidedDETR is): fixed outputs per image, recognised by
    the grey level of its pixels."""

    def __init__(self, per_image):
        nn.Module.__init__(self)            # no layers: only the outputs below
        self.per_grey = {IMAGES[i][1]: v for i, v in per_image.items()}
        self.seen = []

    def forward(self, images, mask=None):
        from detr_nb.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        assert tuple(images.shape[-2:]) == INPUT_HW
        grey = [round((float(v) * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255) for v in images[:, 0, 0, 0]]
        self.seen += grey
        logits, boxes = zip(*(self.per_grey[g] for g in grey))
        return {"pred_logits": torch.stack(logits), "pred_boxes": torch.stack(boxes)}


def _dataset(tmp_path):
    from PIL import Image

    from detr_nb.data import CocoDetection, Normalize, ToTensor
    from detr_nb.data.transforms import Compose, resize

    for image_id, ((w, h), grey) in IMAGES.items():
        Image.new("RGB", (w, h), (grey, grey, grey)).save(tmp_path / f"{image_id}.png")
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, ((w, h), _) in IMAGES.items()],
            "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for n, (i, c, b) in enumerate(GT)],
            "categories": CATS}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    to_input = lambda image, target: resize(image, target, INPUT_HW)
    return CocoDetection(str(tmp_path), str(tmp_path / "ann.json"), Compose([to_input, ToTensor(), Normalize()]))


# Class a, all detections by score (boxes equal the ground truth or touch none: the same at every IoU
# threshold, so AP = AP50 = AP75). 3 ground-truth boxes:
#   rank  score  image  hit   TP  FP  precision  recall
#   1     0.9    1      a1    1   0   1          1/3
#   2     0.8    7      FP    1   1   1/2        1/3
#   3     0.7    7      a3    2   1   2/3        2/3
#   4     0.6    1      FP    2   2   1/2        2/3
#   5     0.5    1      a2    3   2   3/5        1
#   then only background pairs (score ~4.5e-5, boxes in a corner): FPs after full recall, no effect.
# COCO's precision envelope (max over this and later ranks): 1 up to recall 1/3, 2/3 up to 2/3, 3/5 up to 1.
# The 101 recall points 0, 0.01, ..., 1 take the envelope at the first rank whose recall reaches them:
# 0..0.33 (34 points) -> 1, 0.34..0.66 (33 points) -> 2/3, 0.67..1.00 (34 points) -> 3/5.
AP_A = (34 * 1 + 33 * 2 / 3 + 34 * 3 / 5) / 101          # = 76.4 / 101 = 0.7564
# Class b: one ground-truth box, found by the top pair of the only b detection above the background: AP 1.
# (Scoring one label per query would give query (7, 1) label a only: no b detection, AP_b = 0.)
AP_B = 1.0
# APm: every ground-truth box is medium (32^2 < area < 96^2); an unmatched detection outside that range is
# ignored, which drops image 1's FP (30 x 20 = 600 px, small) and the background (4 x 2 and 2.4 x 3.2 px):
# class a ranks TP, FP, TP, TP: precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1; envelope 1 up to 1/3
# (34 points), 3/4 after (67 points).
APM_A = (34 * 1 + 67 * 3 / 4) / 101                       # = 84.25 / 101 = 0.8342
# AR1 (one detection per image and class): a finds a1 in image 1, image 7's best a is the FP -> 1/3; b -> 1.
AR1 = (1 / 3 + 1) / 2


@pytest.mark.parametrize("batch_size", [1, 2])
def test_evaluate_known_answer_through_postprocess_and_coco(tmp_path, batch_size):
    ds = _dataset(tmp_path)
    model = FixedOutputs(_designed_outputs())
    stats = E.evaluate(model, ds, batch_size=batch_size, verbose=False)
    assert sorted(model.seen) == [40, 200]                     # each image went through the model once
    assert AP_A == pytest.approx(0.756435643)
    for key in ("AP", "AP50", "AP75"):
        assert stats[key] == pytest.approx((AP_A + AP_B) / 2, abs=1e-9), key
    assert stats["APm"] == pytest.approx((APM_A + AP_B) / 2, abs=1e-9)
    assert stats["APs"] == stats["APl"] == -1.0              # no small or large ground truth
    assert stats["AR1"] == pytest.approx(AR1, abs=1e-9)
    assert stats["AR10"] == stats["AR100"] == pytest.approx(1.0)


def test_the_scored_detections_are_the_100_best_pairs_in_original_pixels(tmp_path, monkeypatch):
    """The detections evaluate() hands to COCOeval, per image == the 100 best (query, class) pairs over the real
    classes, found by sorting every pair's sigmoid score by hand; boxes in the image's own pixels, xywh."""
    scored = []
    monkeypatch.setattr(E, "coco_evaluate", lambda gt, dets, verbose=True: scored.extend(dets) or {})
    outputs = _designed_outputs()
    E.evaluate(FixedOutputs(outputs), _dataset(tmp_path), batch_size=2, verbose=False)
    dets = scored
    for image_id, (logits, boxes) in outputs.items():
        (w, h), _ = IMAGES[image_id]
        pairs = []
        for q in range(Q):
            cx, cy, bw, bh = boxes[q].tolist()
            xywh = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            for c in range(NUM_CLASSES):                      # column 3, "no object", is never a detection
                pairs.append((float(torch.sigmoid(logits[q, c])), c, xywh))
        best = sorted(pairs, key=lambda p: -p[0])[:100]
        got = [d for d in dets if d["image_id"] == image_id]
        assert len(got) == 100
        for d, (score, c, xywh) in zip(sorted(got, key=lambda d: -d["score"]), best):
            assert d["score"] == pytest.approx(score, rel=1e-6) and d["category_id"] == c
            assert d["bbox"] == pytest.approx(xywh, abs=2e-3)
    # the designed detections are there, in original pixels
    assert {(d["image_id"], d["category_id"], tuple(d["bbox"])) for d in dets if d["score"] > 0.5} >= {
        (1, 1, (20.0, 10.0, 60.0, 40.0)), (7, 1, (10.0, 20.0, 40.0, 60.0)), (7, 2, (10.0, 20.0, 40.0, 60.0))}


def test_the_first_n_images_are_scored_against_their_own_ground_truth(tmp_path):
    """``max_eval_images=1`` (evaluate_run, as training and ``evaluate --run`` score): image 1 alone, its two
    objects of class a only; image 7's objects are not counted as misses, and class b, absent, is left out."""
    from types import SimpleNamespace

    ds = _dataset(tmp_path)
    cfg = SimpleNamespace(max_eval_images=1, batch_size=2, workers=0, progress=False)
    stats = E.evaluate_run(FixedOutputs(_designed_outputs()), ds, cfg, "cpu", verbose=False)
    # image 1, class a: TP 0.9, FP 0.6, TP 0.5 -> precision 1 up to recall 1/2 (51 points), then 2/3 (50 points)
    assert stats["AP"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101, abs=1e-9)
    assert stats["AR100"] == pytest.approx(1.0)
