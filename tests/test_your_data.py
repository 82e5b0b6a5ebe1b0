"""Your data in: labelling-tool exports as they come, category ids made dense and given back, the recipe a folder
starts from, images of any size, your own augmentation; and the outputs others read (COCO results, per-class AP,
TensorBoard).

The exports are made here the way GUIDE.md §5 describes Roboflow's, CVAT's and Label Studio's, with their quirks
(Roboflow's unused root category, ``valid/``, CVAT's single ``default`` set with float boxes and ``attributes``,
Label Studio's ``images\\`` paths and ids from 0), and a hand-made file with ids 1001 and 1000000, numbers as
strings, an image without objects and a box past the border.
"""
import contextlib
import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from detr_nb import pretrained
from detr_nb.cli import main
from detr_nb.config import build_model
from detr_nb.data import build_dataset, make_transforms
from detr_nb.data.transforms import UserTransform, crop, hflip, resize
from detr_nb.predict import predict_paths
from engine_utils import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = (48, 40)  # w, h of every image


def _paint(path, boxes):
    rng = np.random.default_rng(len(str(path)))
    pixels = rng.integers(0, 40, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    for x, y, w, h, _ in boxes:
        pixels[int(y):int(y + h), int(x):int(x + w)] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _coco(folder, names, cats, objects, path_of=lambda n: n, **ann_extra):
    """A COCO dict of images ``names`` painted into ``folder``; ``objects(i)`` the (x, y, w, h, id) of image i."""
    images, anns = [], []
    for i, name in enumerate(names):
        boxes = objects(i)
        _paint(folder / name, boxes)
        images.append({"id": i + 1, "file_name": path_of(name), "width": SIZE[0], "height": SIZE[1]})
        anns += [{"id": len(anns) + k + 1, "image_id": i + 1, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                  "iscrowd": 0, **ann_extra} for k, (x, y, w, h, c) in enumerate(boxes)]
    return {"images": images, "annotations": anns, "categories": cats}


def _two_classes(a, b):
    return lambda i: [(4 + i % 5, 6, 12, 10, a), (26, 20 - i % 4, 14, 12, b)]


def roboflow(root, splits=("train", "valid", "test")):
    cats = [{"id": 0, "name": "shapes", "supercategory": "none"},
            {"id": 1, "name": "box", "supercategory": "shapes"}, {"id": 2, "name": "disc", "supercategory": "shapes"}]
    for s in splits:
        doc = _coco(root / s, [f"img{i}_jpg.rf.{i:08x}.jpg" for i in range(6)], cats, _two_classes(1, 2))
        (root / s / "_annotations.coco.json").write_text(json.dumps(doc))
    return root


def roboflow_one_split(root):
    return roboflow(root, ("train",))


def cvat(root):
    cats = [{"id": 1, "name": "box", "supercategory": ""}, {"id": 2, "name": "disc", "supercategory": ""}]
    doc = _coco(root / "images", [f"frame_{i:06d}.png" for i in range(10)], cats, _two_classes(1, 2),
                attributes={"occluded": False}, segmentation=[])
    for a in doc["annotations"]:
        a["bbox"] = [float(v) + 0.25 for v in a["bbox"]]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    return root


def label_studio(root):
    cats = [{"id": 0, "name": "box"}, {"id": 1, "name": "disc"}]
    doc = _coco(root / "images", [f"{i}-photo.png" for i in range(10)], cats, _two_classes(0, 1),
                path_of=lambda n: f"images\\{n}")                      # exported on Windows
    doc["images"][3]["file_name"] = f"/data/upload/1/{doc['images'][3]['file_name'][7:]}"   # LS 1.16's storage path
    (root / "result.json").write_text(json.dumps(doc))
    return root


def hand_made(root):
    cats = [{"id": 1001, "name": "box"}, {"id": 1000000, "name": "disc"}]
    for split in ("train", "val"):
        objects = _two_classes(1001, 1000000)
        doc = _coco(root / split, [f"{split}{i}.png" for i in range(6)], cats,
                    lambda i: [] if i == 5 else objects(i) + ([(40, 30, 20, 20, 1001)] if i == 0 else []))
        for a in doc["annotations"]:
            a["bbox"] = [str(v) for v in a["bbox"]]                        # numbers as strings
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


EXPORTS = {"roboflow": roboflow, "roboflow_one_split": roboflow_one_split, "cvat": cvat, "label_studio": label_studio,
           "hand_made": hand_made}
# export -> (its class labels' names, the file's category id of each label, whether a share of one set is held out)
EXPECTED = {"roboflow": ({1: "box", 2: "disc"}, {1: 1, 2: 2}, False),
            "roboflow_one_split": ({1: "box", 2: "disc"}, {1: 1, 2: 2}, True),
            "cvat": ({1: "box", 2: "disc"}, {1: 1, 2: 2}, True),
            "label_studio": ({0: "box", 1: "disc"}, {0: 0, 1: 1}, True),
            "hand_made": ({0: "box", 1: "disc"}, {0: 1001, 1: 1000000}, False)}


def cli(argv, cwd):
    """``python -m detr_nb <argv>`` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.chdir(cwd)
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _base(ds):
    return ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds


@pytest.mark.parametrize("export", EXPORTS)
def test_each_export_is_read_as_it_comes(export, tmp_path, capsys):
    root = EXPORTS[export](tmp_path / export)
    with pytest.warns(UserWarning, match="1 box.es. reach past their image: clipped") if export == "hand_made" else contextlib.nullcontext():
        train, val = (build_dataset(str(root), s, "cpu") for s in ("train", "val"))
    names, ids, held_out = EXPECTED[export]
    base = _base(train)
    assert base.categories == names and base.category_ids == ids
    assert base.num_classes == max(names) + 1 <= 3             # never the largest id + 1
    for ds in (train, val):
        for i in range(len(ds)):
            image, target = ds[i]                             # every image found and read
            assert image.shape[-2:] == (SIZE[1], SIZE[0])
            assert set(target["labels"].tolist()) <= set(names)
            assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
    line = capsys.readouterr().out
    if held_out:   # one annotated set: a seeded share for validation, said in one line
        n = 6 if export == "roboflow_one_split" else 10
        assert len(val) == round(0.2 * n) and len(train) == n - len(val)
        assert set(train.indices).isdisjoint(val.indices)
        assert "held out for validation" in line and "seed 0" in line
        again = build_dataset(str(root), "val", "cpu")
        assert again.indices == val.indices                   # the same share every time
    else:
        assert "held out" not in line
    if export == "hand_made":   # an image without objects is kept as a negative
        assert len(train) == 6 and train[5][1]["labels"].numel() == 0


def test_a_layout_it_does_not_know_is_one_line_before_training(tmp_path):
    (tmp_path / "mine" / "pictures").mkdir(parents=True)
    (tmp_path / "mine" / "labels.csv").write_text("file,x,y,w,h\n")
    rc, out, err = cli(["train", "--dataset", tmp_path / "mine", "--recipe", "aided", "--out", tmp_path / "run"],
                       tmp_path)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    for layout in ("annotations/instances_<split>.json", "Roboflow", "CVAT", "Label Studio"):
        assert layout in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def hand_made_run(tmp_path_factory):
    """Two steps of the main job's model, shrunk, on the hand-made file with ids 1001 and 1000000."""
    work = tmp_path_factory.mktemp("ids")
    root = hand_made(work / "data")
    rc, out, err = cli(["train", "--dataset", root, "--recipe", "aided", "--model-overrides", json.dumps(TINY),
                        "--batch-size", "2", "--time-budget", "none", "--max-steps", "2", "--out", work / "run",
                        "--no-progress", "--device", "cpu"], work)
    assert rc == 0, out + err
    return work, root, out


def test_large_category_ids_make_a_small_head_and_come_back_in_every_output(hand_made_run):
    work, root, out = hand_made_run
    state = torch.load(work / "run" / "checkpoints" / "last.pth", weights_only=True)
    assert state["category_ids"] == {0: 1001, 1: 1000000} and state["categories"] == {0: "box", 1: "disc"}
    assert state["model"]["class_embed.weight"].shape[0] <= 3            # 2 classes (+ no object), not 1000001
    # evaluate: COCO results with the file's ids, which pycocotools reads; per-class AP by name
    rc, printed, err = cli(["evaluate", "--run", work / "run", "--device", "cpu"], work)
    assert rc == 0, err
    detections = json.loads((work / "run" / "detections.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= {1001, 1000000}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_val.json"))
        assert len(gt.loadRes(str(work / "run" / "detections.json")).getAnnIds()) == len(detections)
    stats = json.loads((work / "run" / "eval_val.json").read_text())
    assert set(stats["per_class"]) == {"box", "disc"}
    assert "  box" in printed and "  disc" in printed
    # predict: the file's ids, in detr_nb's records and in COCO's result format
    for fmt in ("detr_nb", "coco"):
        rc, _, err = cli(["predict", root / "val", "--run", work / "run", "--threshold", "0", "--format", fmt,
                          "--out", work / fmt, "--device", "cpu"], work)
        assert rc == 0, err
        found = json.loads((work / fmt / "predictions.json").read_text())
        dets = found if fmt == "coco" else [d for r in found["images"] for d in r["detections"]]
        assert dets and {d["category_id"] for d in dets} <= {1001, 1000000}
        if fmt == "coco":
            assert set(dets[0]) == {"image_id", "file_name", "category_id", "bbox", "score"}


def test_every_run_writes_tensorboard_events(hand_made_run):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    work, _, _ = hand_made_run
    events = event_accumulator.EventAccumulator(str(work / "run"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    rows = [json.loads(line) for line in open(work / "run" / "metrics.jsonl")]
    step = next(r for r in rows if r["kind"] == "step")
    for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "lr"):
        assert key in step and f"step/{key}" in scalars, (key, sorted(scalars))
    assert {"eval/AP", "eval/AP50"} <= scalars
    assert events.Scalars("eval/AP")[-1].value == pytest.approx(
        json.loads((work / "run" / "eval.json").read_text())["AP"], abs=1e-6)
    assert events.Tags()["images"] == ["predictions"]


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("weights", ["at hand", "offline"])
def test_your_folder_starts_from_detr_r50_when_its_weights_can_be_had(weights, tmp_path, monkeypatch):
    root = roboflow(tmp_path / "data")
    name = pretrained.CHECKPOINTS["detr_r50"].rsplit("/", 1)[-1]
    monkeypatch.setitem(pretrained.CHECKPOINTS, "detr_r50", f"http://127.0.0.1:{_closed_port()}/{name}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)      # torch.hub.get_dir() reads TORCH_HOME again
    if weights == "at hand":
        (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
        (tmp_path / "torch" / "hub" / "checkpoints" / name).write_bytes(b"cached")
    rc, out, err = cli(["train", "--dataset", root, "--dry-run"], tmp_path)
    assert rc == 0, err
    cfg = json.loads(out)
    line, = err.strip().splitlines()                           # one line, before anything runs
    if weights == "at hand":
        assert (cfg["recipe"], cfg["model"], cfg["pretrained"]) == ("finetune", "detr_r50", "detr_r50")
        assert "recipe finetune, model detr_r50 from the released detr_r50 weights" in line and "--recipe aided" in line
    else:
        assert (cfg["recipe"], cfg["model"], cfg["pretrained"]) == ("aided", "detr_tiny_aided", None)
        assert "cannot be reached" in line and "--recipe finetune" in line
    # a recipe you name is what runs; the synthetic main job is unchanged
    rc, out, err = cli(["train", "--dataset", root, "--recipe", "aided", "--dry-run"], tmp_path)
    assert json.loads(out)["recipe"] == "aided" and "(given)" in err
    rc, out, err = cli(["train", "--dry-run"], tmp_path)
    assert json.loads(out)["recipe"] == "aided" and json.loads(out)["dataset"] == "synthetic" and not err


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (20, 300), (48, 40)])
def test_predict_takes_images_of_any_size(size, tmp_path):
    torch.manual_seed(0)
    model = build_model("detr_tiny_aided", num_classes=3).eval()          # GroupNorm over the feature map
    Image.new("RGB", size, (90, 20, 200)).save(tmp_path / "tiny.png")
    found = predict_paths(model, [str(tmp_path / "tiny.png")], tmp_path / "out", preset="cpu", threshold=0.0,
                          log=lambda m: None)
    record, = found["images"]
    assert (record["width"], record["height"]) == size and record["detections"]
    for d in record["detections"]:
        x0, y0, x1, y1 = d["box_xyxy"]
        assert 0 <= x0 <= x1 <= size[0] and 0 <= y0 <= y1 <= size[1]


def test_fine_tuning_with_another_number_of_queries_says_so_in_one_line():
    torch.manual_seed(0)
    released = build_model("detr_small", num_classes=91).state_dict()      # 50 queries
    for queries, kept in ((30, True), (80, False)):
        model = build_model("detr_small", num_classes=3, num_queries=queries)
        before = model.query_embed.weight.detach().clone()
        with pytest.warns(UserWarning) as caught:
            skipped = pretrained.load_checkpoint_state(model, released)
        said = [str(w.message) for w in caught]
        assert any(f"50 object queries, the model {queries}" in m for m in said)
        assert all("\n" not in m for m in said)
        assert "class_embed.weight" in skipped and ("query_embed.weight" in skipped) != kept
        want = released["query_embed.weight"][:queries] if kept else before
        assert torch.equal(model.query_embed.weight, want)
        assert torch.equal(model.transformer.encoder.layers[0].linear1.weight,
                           released["transformer.encoder.layers.0.linear1.weight"])


# ----------------------------------------------------------------------------- your augmentation
def _boxes():
    return torch.tensor([[4.0, 6.0, 20.0, 16.0], [30.0, 2.0, 47.0, 39.0], [0.0, 0.0, 3.0, 3.0]])   # xyxy


def _v2(fn, image, boxes, *args):
    b = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(image.height, image.width))
    out_image, out_boxes = fn(image, *args), fn(b, *args)
    return out_image, out_boxes.as_subclass(torch.Tensor)


def test_hand_written_box_transforms_agree_with_transforms_v2():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    target = {"boxes": _boxes(), "labels": torch.tensor([1, 2, 3])}
    for ours, theirs in (((hflip, ()), (TF.horizontal_flip, ())),
                         ((resize, ((25, 70),)), (TF.resize, ([25, 70],)))):
        (fn, args), (vfn, vargs) = ours, theirs
        im, t = fn(image, target, *args)
        vim, vb = _v2(vfn, image, target["boxes"], *vargs)
        torch.testing.assert_close(t["boxes"], vb)
        assert np.array_equal(np.asarray(im), np.asarray(vim))
    # crop: v2 shifts the boxes and keeps them (clamping and dropping is SanitizeBoundingBoxes' job)
    im, t = crop(image, target, (5, 10, 20, 30))
    vim, vb = _v2(TF.crop, image, target["boxes"], 5, 10, 20, 30)
    vb = torch.stack([vb[:, 0].clamp(0, 30), vb[:, 1].clamp(0, 20), vb[:, 2].clamp(0, 30), vb[:, 3].clamp(0, 20)], 1)
    keep = (vb[:, 2] > vb[:, 0]) & (vb[:, 3] > vb[:, 1])
    torch.testing.assert_close(t["boxes"], vb[keep])
    assert t["labels"].tolist() == target["labels"][keep].tolist() == [1, 2]
    assert np.array_equal(np.asarray(im), np.asarray(vim))


def test_your_transforms_v2_augmentation_runs_after_the_preset():
    image = Image.new("RGB", (48, 40))
    target = {"boxes": _boxes(), "labels": torch.tensor([1, 2, 3]), "area": torch.ones(3), "iscrowd": torch.zeros(3)}
    im, t = UserTransform(v2.RandomCrop((20, 24)))(image, target)            # v2 moves the boxes
    assert im.size == (24, 20) and (t["boxes"][:, 2:] <= torch.tensor([24.0, 20.0])).all()
    assert len(t["labels"]) == len(t["boxes"]) == len(t["area"]) <= 3
    flipped = UserTransform(v2.RandomHorizontalFlip(1.0))(image, target)[1]["boxes"]
    torch.testing.assert_close(flipped, hflip(image, target)[1]["boxes"])
    seen = []
    pipeline = make_transforms("cpu", train=True, augment=lambda im, t: (seen.append(im.size), (im, t))[1])
    tensor, out = pipeline(image, {**target, "orig_size": torch.tensor([40, 48]), "size": torch.tensor([40, 48])})
    assert seen == [(48, 40)] and tensor.shape == (3, 40, 48)
    assert make_transforms("cpu", train=False, augment=v2.RandomHorizontalFlip(1.0)) is not None


def test_augment_option_from_the_cli(tmp_path):
    root = cvat(tmp_path / "data")
    rc, out, err = cli(["train", "--dataset", root, "--recipe", "aided", "--augment", "v2.ColorJitter(0.4, 0.4)",
                        "--model-overrides", json.dumps(TINY), "--batch-size", "2", "--time-budget", "none",
                        "--max-steps", "1", "--eval-every", "0", "--out", tmp_path / "run", "--no-progress",
                        "--device", "cpu"], tmp_path)
    assert rc == 0, err
    rc, out, err = cli(["train", "--dataset", root, "--augment", "v2.NoSuchThing(3)", "--out", tmp_path / "bad"],
                       tmp_path)
    assert rc == 2 and "--augment" in err and len(err.strip().splitlines()) <= 2   # the recipe line, the error
    assert not (tmp_path / "bad" / "checkpoints").exists()
