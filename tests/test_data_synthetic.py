"""The embedded synthetic dataset: deterministic, cached, COCO-readable, boxes tight on shapes (notebook 06)."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detr_nb.data import CocoDetection, build_dataset, collate_fn, make_transforms
from detr_nb.data.synthetic import (CLASSES, NUM_CLASSES, ensure_synthetic, render_sample, synthetic_params,
                                    synthetic_root)

SMALL = dict(num_train=16, num_val=4, image_size=(48, 80), progress=False)


def tree_bytes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f != ".lock":
                p = os.path.join(d, f)
                out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "a"
    return ensure_synthetic(str(root), seed=3, workers=1, **SMALL)


def test_same_seed_byte_identical(synth, tmp_path):
    other = ensure_synthetic(str(tmp_path / "b"), seed=3, workers=2, **SMALL)  # a pool of 2 workers
    a, b = tree_bytes(synth["root"]), tree_bytes(other["root"])
    assert sorted(a) == sorted(b) and len(a) == 16 + 4 + 2 + 1
    assert all(a[k] == b[k] for k in a)
    c = ensure_synthetic(str(tmp_path / "c"), seed=4, workers=1, **SMALL)
    assert tree_bytes(c["root"])["train/000000.png"] != a["train/000000.png"]


def test_loads_in_pycocotools(synth):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(synth["train_ann"])
    assert len(coco.imgs) == 16 and [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert min(coco.getCatIds()) == 1 and NUM_CLASSES == len(CLASSES) + 1
    ds = CocoDetection(synth["val_images"], synth["val_ann"], make_transforms("cpu", train=True))
    assert ds.num_classes == NUM_CLASSES and len(ds) == 4
    images, mask, targets = collate_fn([ds[i] for i in range(4)])
    assert images.shape[0] == 4 and mask.shape == (4,) + images.shape[-2:]


def test_every_box_lies_on_its_object(synth):
    params = json.load(open(synth["manifest"]))["params"]
    data = json.load(open(synth["train_ann"]))
    n_objects = 0
    for im in data["images"]:
        s = render_sample(params, 3, "train", im["id"] - 1)
        png = np.asarray(Image.open(os.path.join(synth["train_images"], im["file_name"])))
        assert np.array_equal(png, s["image"]) and png.shape == (im["height"], im["width"], 3)
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        assert [a["category_id"] for a in anns] == s["labels"].tolist()
        for a, m, box in zip(anns, s["masks"], s["boxes"]):
            x, y, w, h = a["bbox"]
            assert [x, y, x + w, y + h] == box.tolist()
            ys, xs = np.nonzero(m)
            # tight: the mask touches all four sides of its box, and nothing lies outside
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box.tolist())
            assert a["area"] == m.sum() >= 12
            n_objects += 1
        # masks are the visible parts: disjoint
        assert s["masks"].sum(0).max(initial=0) <= 1
    assert n_objects > 0


def test_occlusion_is_limited_and_objects_vary():
    p = synthetic_params(image_size=(96, 96))
    counts, sizes = [], []
    for i in range(30):
        s = render_sample(p, 0, "train", i)
        counts.append(len(s["labels"]))
        sizes += (s["boxes"][:, 2] - s["boxes"][:, 0]).tolist()
    assert min(counts) <= 2 and max(counts) >= 7
    assert max(sizes) / min(sizes) > 4


def test_cache_skip_and_regeneration(tmp_path):
    root = str(tmp_path / "s")
    paths = ensure_synthetic(root, seed=0, workers=1, **SMALL)
    mtime = os.path.getmtime(paths["manifest"])
    before = tree_bytes(root)
    assert ensure_synthetic(root, seed=0, workers=1, **SMALL) == paths
    assert os.path.getmtime(paths["manifest"]) == mtime  # skipped
    os.remove(os.path.join(root, "train", "000003.png"))  # missing file -> regenerated
    ensure_synthetic(root, seed=0, workers=1, **SMALL)
    assert tree_bytes(root) == before
    with open(os.path.join(root, "val", "000001.png"), "r+b") as f:  # corrupt file -> regenerated
        f.write(b"xx")
    ensure_synthetic(root, seed=0, workers=1, **SMALL)
    assert tree_bytes(root) == before
    ensure_synthetic(root, seed=0, workers=1, **{**SMALL, "num_train": 5})  # params change -> regenerated
    assert len(os.listdir(os.path.join(root, "train"))) == 5
    assert json.load(open(paths["manifest"]))["num_train"] == 5


def test_build_dataset_puts_each_parameter_set_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kw = dict(num_train=4, num_val=2, image_size=(32, 48), workers=1, progress=False)
    ds = build_dataset("synthetic", "val", **kw)
    root = synthetic_root(kw)
    assert root.startswith(os.path.join("data", "synthetic-")) and root == synthetic_root({**kw, "workers": 2})
    assert ds.img_folder == os.path.join(root, "val") and len(ds) == 2
    assert synthetic_root({}) == os.path.join("data", "synthetic") != synthetic_root({"seed": 1})
    with pytest.raises(ValueError, match="splits 'train' and 'val'"):
        build_dataset("synthetic", "test", **kw)
