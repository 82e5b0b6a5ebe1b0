"""Real-dataset converters and preparation, offline on tiny archives built here (notebook 06, data)."""
import hashlib
import io
import json
import os
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from detr_nb.data import build_dataset, datasets
from detr_nb.data.datasets import Remote, coco_subset, pennfudan_to_coco, via_to_coco, voc_to_coco
from detr_nb.pretrained import COCO_CLASSES


def png_bytes(arr, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def jpg_bytes(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def make_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return str(path)


def make_tar(path, files):
    with tarfile.open(path, "w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return str(path)


def point(monkeypatch, key, archive, **hashes):
    monkeypatch.setitem(datasets.REMOTES, key, Remote(f"file://{archive}", datasets.REMOTES[key].filename, **hashes))


# ----------------------------------------------------------------------------- Penn-Fudan

def pennfudan_files():
    files = {}
    for k in range(3):
        mask = np.zeros((16, 20), dtype=np.uint8)
        mask[3:10, 2:8] = 1            # x 2..7, y 3..9
        if k != 1:
            mask[5:15, 12 + k:19] = 2  # a second pedestrian
        files[f"PennFudanPed/PNGImages/FudanPed0000{k + 1}.png"] = png_bytes(np.full((16, 20, 3), 128, np.uint8))
        files[f"PennFudanPed/PedMasks/FudanPed0000{k + 1}_mask.png"] = png_bytes(mask, "L")
    return files


def test_pennfudan_converter(tmp_path):
    make_zip(tmp_path / "p.zip", pennfudan_files())
    zipfile.ZipFile(tmp_path / "p.zip").extractall(tmp_path)
    d = pennfudan_to_coco(str(tmp_path / "PennFudanPed"))
    assert d["categories"] == [{"id": 1, "name": "person"}]
    assert d["images"][0] == {"id": 1, "file_name": "FudanPed00001.png", "width": 20, "height": 16}
    a = [x for x in d["annotations"] if x["image_id"] == 1]
    assert a == [{"image_id": 1, "category_id": 1, "bbox": [2, 3, 6, 7], "area": 42, "iscrowd": 0, "id": 1},
                 {"image_id": 1, "category_id": 1, "bbox": [12, 5, 7, 10], "area": 70, "iscrowd": 0, "id": 2}]
    assert len(d["annotations"]) == 5


def test_prepare_pennfudan_end_to_end(tmp_path, monkeypatch, capsys):
    archive = make_zip(tmp_path / "PennFudanPed.zip", pennfudan_files())
    point(monkeypatch, "pennfudan", archive)
    root = str(tmp_path / "cache")
    img, ann = datasets.prepare("pennfudan", "val", root=root, num_val=1, progress=False)
    assert "trust on first use" in capsys.readouterr().out
    assert os.path.exists(os.path.join(root, "pennfudan", "PennFudanPed.zip.sha256"))
    assert [im["file_name"] for im in json.load(open(ann))["images"]] == ["FudanPed00003.png"]
    ds = build_dataset("pennfudan", "train", "cpu", root=root, num_val=1, progress=False)
    assert len(ds) == 2 and ds.categories == {1: "person"} and ds.num_classes == 2
    _, t = ds[1]
    assert t["labels"].tolist() == [1] and t["orig_size"].tolist() == [16, 20]


# ----------------------------------------------------------------------------- balloon

VIA = {
    "a.jpg123": {"filename": "a.jpg", "size": 123, "file_attributes": {}, "regions": {
        "0": {"shape_attributes": {"name": "polygon", "all_points_x": [2, 10, 10, 2], "all_points_y": [3, 3, 9, 9]},
              "region_attributes": {}},
        "1": {"shape_attributes": {"name": "polygon", "all_points_x": [20, 30, 25], "all_points_y": [5, 5, 15]},
              "region_attributes": {}}}},
    "b.jpg9": {"filename": "b.jpg", "size": 9, "file_attributes": {}, "regions": {}},
}


def balloon_files():
    return {"balloon/train/a.jpg": jpg_bytes(40, 30), "balloon/train/b.jpg": jpg_bytes(16, 12),
            "balloon/train/via_region_data.json": json.dumps(VIA).encode(),
            "balloon/val/a.jpg": jpg_bytes(40, 30),
            "balloon/val/via_region_data.json": json.dumps({"a.jpg1": VIA["a.jpg123"]}).encode()}


def test_via_converter(tmp_path):
    zipfile.ZipFile(make_zip(tmp_path / "b.zip", balloon_files())).extractall(tmp_path)
    folder = str(tmp_path / "balloon" / "train")
    d = via_to_coco(os.path.join(folder, "via_region_data.json"), folder)
    assert d["images"] == [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                           {"id": 2, "file_name": "b.jpg", "width": 16, "height": 12}]
    a0, a1 = d["annotations"]
    assert a0["bbox"] == [2, 3, 8, 6] and a0["area"] == 48 and a0["category_id"] == 1 and a0["id"] == 1
    assert a1["bbox"] == [20, 5, 10, 10] and a1["area"] == 50
    assert a0["segmentation"] == [[2, 3, 10, 3, 10, 9, 2, 9]]
    assert d["categories"] == [{"id": 1, "name": "balloon"}]


def test_prepare_balloon_end_to_end(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "balloon_dataset.zip", balloon_files())
    point(monkeypatch, "balloon", archive, sha256=hashlib.sha256(open(archive, "rb").read()).hexdigest())
    ds = build_dataset("balloon", "val", "cpu", root=str(tmp_path / "c"), progress=False)
    assert len(ds) == 1 and ds[0][1]["labels"].tolist() == [1, 1]


# ----------------------------------------------------------------------------- VOC 2007

VOC_XML = """<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>
<size><width>50</width><height>40</height><depth>3</depth></size>
<object><name>dog</name><pose>Left</pose><truncated>0</truncated><difficult>0</difficult>
<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object>
</annotation>"""


def voc_files():
    base = "VOCdevkit/VOC2007/"
    files = {}
    for name in ("000005", "000007"):
        files[base + f"Annotations/{name}.xml"] = VOC_XML.format(name=name).encode()
        files[base + f"JPEGImages/{name}.jpg"] = jpg_bytes(50, 40)
    files[base + "ImageSets/Main/train.txt"] = b"000005\n"
    files[base + "ImageSets/Main/val.txt"] = b"000007\n"
    files[base + "ImageSets/Main/trainval.txt"] = b"000005\n000007\n"
    return files


def test_voc_converter(tmp_path):
    tarfile.open(make_tar(tmp_path / "v.tar", voc_files())).extractall(tmp_path, filter="data")
    d = voc_to_coco(str(tmp_path / "VOCdevkit" / "VOC2007"), "train")
    assert d["images"] == [{"id": 5, "file_name": "000005.jpg", "width": 50, "height": 40}]
    assert d["annotations"] == [
        {"image_id": 5, "category_id": 12, "bbox": [4, 5, 16, 25], "area": 400, "iscrowd": 0, "id": 1},
        {"image_id": 5, "category_id": 15, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1, "id": 2}]
    assert [c["id"] for c in d["categories"]] == list(range(1, 21))
    assert d["categories"][11]["name"] == "dog"


def test_prepare_voc_end_to_end(tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "VOCtrainval_06-Nov-2007.tar", voc_files())
    point(monkeypatch, "voc2007_trainval", archive, md5=hashlib.md5(open(archive, "rb").read()).hexdigest())
    ds = build_dataset("voc2007", "trainval", "cpu", root=str(tmp_path / "c"), progress=False)
    assert len(ds) == 2 and ds.num_classes == 21
    _, t = ds[0]
    assert t["labels"].tolist() == [12]  # the difficult person is dropped (iscrowd)


# ----------------------------------------------------------------------------- COCO 2017

def coco_json():
    return {"info": {}, "licenses": [],
            "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 30, "height": 20} for i in (1, 2, 3, 4)],
            "annotations": [{"id": 10 + i, "image_id": i, "bbox": [1, 2, 5, 6], "category_id": 18, "area": 30,
                             "iscrowd": 0} for i in (1, 2, 3, 4)],
            "categories": [{"id": i, "name": name} for i, name in COCO_CLASSES.items()]}   # COCO's 80, ids 1..90


def test_coco_subset(tmp_path):
    src = tmp_path / "a.json"
    src.write_text(json.dumps(coco_json()))
    out = coco_subset(str(src), 2, str(tmp_path / "s.json"), seed=0)
    d = json.load(open(out))
    ids = [im["id"] for im in d["images"]]
    assert len(ids) == 2 and ids == sorted(ids)
    assert sorted(a["image_id"] for a in d["annotations"]) == ids
    assert d["categories"] == coco_json()["categories"]
    assert json.load(open(coco_subset(str(src), 2, str(tmp_path / "t.json"), seed=0))) == d  # deterministic


def test_prepare_coco_end_to_end(tmp_path, monkeypatch):
    ann = make_zip(tmp_path / "annotations_trainval2017.zip",
                   {"annotations/instances_val2017.json": json.dumps(coco_json()).encode()})
    imgs = make_zip(tmp_path / "val2017.zip", {f"val2017/{i:012d}.jpg": jpg_bytes(30, 20) for i in (1, 2, 3, 4)})
    point(monkeypatch, "coco2017_annotations", ann, md5=hashlib.md5(open(ann, "rb").read()).hexdigest())
    point(monkeypatch, "coco2017_val", imgs, size=os.path.getsize(imgs))
    ds = build_dataset("coco2017", "val", "cpu", root=str(tmp_path / "c"), subset=3, progress=False)
    # COCO's ids are compact enough to be the labels, as the released weights' 91-way head has them
    assert len(ds) == 3 and ds.num_classes == 91 and ds.categories[18] == "dog" and ds.category_ids[18] == 18
    assert ds[0][1]["labels"].tolist() == [18]
    assert ds.ann_file.endswith("instances_val2017_subset3_seed0.json")


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet")
