"""COCO-format dataset: targets, contract, bad input (notebook 06, data)."""
import ast
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from detr_nb.data import AnnotationError, CocoDetection, build_dataset, make_transforms
from detr_nb.errors import UserError


def write_coco(tmp_path, anns=None, images=None, categories=None, broken=None):
    img_dir = tmp_path / "train"
    img_dir.mkdir(exist_ok=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(img_dir / "a.png")
    Image.new("RGB", (20, 50), (0, 255, 0)).save(img_dir / "b.png")
    data = {
        "images": images or [{"id": 5, "file_name": "a.png", "width": 40, "height": 30},
                             {"id": 9, "file_name": "b.png", "width": 20, "height": 50}],
        "annotations": anns if anns is not None else [
            {"id": 1, "image_id": 5, "bbox": [4, 3, 10, 6], "category_id": 7, "area": 60, "iscrowd": 0},
            {"id": 2, "image_id": 5, "bbox": [30, 20, 20, 20], "category_id": 3, "area": 100, "iscrowd": 0},  # clamped
            {"id": 3, "image_id": 5, "bbox": [0, 0, 5, 5], "category_id": 3, "area": 25, "iscrowd": 1},  # crowd
            {"id": 4, "image_id": 5, "bbox": [50, 5, 3, 3], "category_id": 3, "area": 9, "iscrowd": 0},  # outside
        ],
        "categories": categories or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    (tmp_path / "annotations").mkdir(exist_ok=True)
    ann = tmp_path / "annotations" / "instances_train.json"
    ann.write_text(broken if broken is not None else json.dumps(data))
    return str(img_dir), str(ann)


def test_targets_follow_contract(tmp_path):
    img_dir, ann = write_coco(tmp_path)
    with pytest.warns(UserWarning, match="1 degenerate"):
        ds = CocoDetection(img_dir, ann)
    # ids 3 and 7 of two categories: the labels are their ranks, so the head has 2 classes, not 8
    assert len(ds) == 2 and ds.num_classes == 2 and ds.categories == {0: "cat", 1: "dog"}
    assert ds.category_ids == {0: 3, 1: 7}
    image, t = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert t["labels"].tolist() == [1, 0] and t["labels"].dtype == torch.int64
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (2, 4)
    # (4,3)-(14,9) -> cxcywh (9, 6, 10, 6) / (40, 30); (30,20)-(40,30) after clamping
    torch.testing.assert_close(t["boxes"][0], torch.tensor([9 / 40, 6 / 30, 10 / 40, 6 / 30]))
    torch.testing.assert_close(t["boxes"][1], torch.tensor([35 / 40, 25 / 30, 10 / 40, 10 / 30]))
    assert t["image_id"].item() == 5 and t["image_id"].dtype == torch.int64 and t["image_id"].ndim == 0
    assert t["orig_size"].tolist() == [30, 40] and t["size"].tolist() == [30, 40]
    image, t = ds[1]  # no annotations
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["size"].tolist() == [50, 20]


def test_size_after_resize_and_folder_build(tmp_path):
    img_dir, ann = write_coco(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_dataset(str(tmp_path), "train", preset="official", transforms=None)
        val = CocoDetection(img_dir, ann, transforms=make_transforms("official", train=False))
    _, t = val[0]
    assert t["size"].tolist() == [800, 1067] and t["orig_size"].tolist() == [30, 40]
    # a train split without a val split: a seeded share of it is held out, the rest trains
    held = build_dataset(str(tmp_path), "val", transforms=None)
    assert len(ds) == 1 and len(held) == 1 and set(ds.indices).isdisjoint(held.indices)
    with pytest.raises(UserError, match="no split 'test'.*Roboflow"):
        build_dataset(str(tmp_path), "test")


def test_bad_json(tmp_path):
    _, ann = write_coco(tmp_path, broken="{not json")
    with pytest.raises(AnnotationError, match="instances_train.json.*not valid JSON"):
        CocoDetection(str(tmp_path / "train"), ann)


def test_missing_field(tmp_path):
    _, ann = write_coco(tmp_path, anns=[{"id": 1, "image_id": 5, "category_id": 3}])
    with pytest.raises(AnnotationError, match=r"annotations\[0\] lacks field 'bbox'"):
        CocoDetection(str(tmp_path / "train"), ann)
    _, ann = write_coco(tmp_path, broken=json.dumps({"images": [], "annotations": []}))
    with pytest.raises(AnnotationError, match="'categories'"):
        CocoDetection(str(tmp_path / "train"), ann)


def test_unknown_category(tmp_path):
    _, ann = write_coco(tmp_path, anns=[{"id": 1, "image_id": 5, "bbox": [1, 1, 2, 2], "category_id": 42}])
    with pytest.raises(AnnotationError, match="'category_id' = 42"):
        CocoDetection(str(tmp_path / "train"), ann)


def test_missing_and_corrupt_images(tmp_path):
    img_dir, ann = write_coco(tmp_path, anns=[])
    os.remove(os.path.join(img_dir, "a.png"))
    with open(os.path.join(img_dir, "b.png"), "wb") as f:
        f.write(b"not a png")
    ds = CocoDetection(img_dir, ann)
    with pytest.raises(FileNotFoundError, match="a.png"):
        ds[0]
    with pytest.raises(OSError, match="b.png"):
        ds[1]
    Image.new("RGB", (8, 8)).save(os.path.join(img_dir, "c.png"))
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "c.png"}]
    _, ann = write_coco(tmp_path, anns=[], images=images)
    os.remove(os.path.join(img_dir, "a.png"))
    with open(os.path.join(img_dir, "b.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.warns(UserWarning, match="missing"):
        ds = CocoDetection(img_dir, ann, skip_unreadable=True)
    assert len(ds) == 2 and ds.num_skipped == 1 and sorted(ds.coco.imgs) == [2, 3]  # out of evaluation too
    with pytest.warns(UserWarning, match="b.png"):
        image, t = ds[0]  # b.png is corrupt: the next readable image comes instead
    assert t["image_id"].item() == 3 and ds.num_skipped == 2


def test_data_imports_at_the_top_and_only_errors_and_box_ops_of_the_package():
    """detr_nb.data stands alone: it imports nothing of the package but its errors and the box arithmetic."""
    folder = Path(__file__).resolve().parents[1] / "detr_nb" / "data"
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}: import inside {node.name}"
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert node.module in ("errors", "models.box_ops"), f"{path.name} imports ..{node.module}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("detr_nb") for n in names), f"{path.name} imports {names}"
