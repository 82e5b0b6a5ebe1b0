"""COCO evaluation: perfect predictions give AP 1.0; shifted ones give what pycocotools gives directly."""
import contextlib
import copy
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_nb.evaluate import (STAT_NAMES, coco_evaluate, coco_gt_from_targets, format_stats,
                              to_coco_results)


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
    assert list(stats) == list(STAT_NAMES)
    for k in STAT_NAMES:
        if k != "AR1":  # image 3 has 3 objects: one detection per image cannot recall them all
            assert stats[k] == pytest.approx(1.0), k
    assert stats["AR1"] == pytest.approx((1 + 2 / 3) / 2)  # per category: a 3/3, b 2/3 (image 3 has two b)
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in out


def test_shifted_predictions_match_pycocotools():
    coco = _gt()
    dets = _dets(coco, dx=4.0, dy=-2.0)
    stats = coco_evaluate(coco, dets, verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    assert [stats[k] for k in STAT_NAMES] == pytest.approx(list(ev.stats))
    assert 0.0 < stats["AP"] < 1.0
    assert format_stats(stats).count("\n") == 11


def test_postprocessed_results_round_trip_through_coco_format():
    # results as postprocess returns them (abs xyxy) -> same AP as the gt itself
    targets = []
    for i in range(2):
        targets.append({"image_id": torch.tensor(i + 1), "orig_size": torch.tensor([100, 200]),
                        "labels": torch.tensor([3, 5]),
                        "boxes": torch.tensor([[0.25, 0.5, 0.2, 0.4], [0.7, 0.3, 0.3, 0.2]])})
    coco = coco_gt_from_targets(targets)
    results = []
    for t in targets:
        h, w = t["orig_size"].tolist()
        cx, cy, bw, bh = t["boxes"].unbind(-1)
        xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        results.append({"boxes": xyxy, "scores": torch.tensor([0.8, 0.7]), "labels": t["labels"]})
    dets = to_coco_results(results, [1, 2])
    assert dets[0]["bbox"] == pytest.approx([30.0, 30.0, 40.0, 40.0])
    assert coco_evaluate(coco, dets, verbose=False)["AP"] == pytest.approx(1.0)


def test_no_detections_give_zeros():
    assert coco_evaluate(_gt(), [], verbose=False) == {k: 0.0 for k in STAT_NAMES}
