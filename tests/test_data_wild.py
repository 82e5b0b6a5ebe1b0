"""Photos and hand-made COCO files from the wild load as a viewer shows them, or fail in one line when the
dataset is built (notebook 06, data). Every file here is made by the test itself."""
import contextlib
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools.cocoeval import COCOeval
from torch.utils.data import Subset

from detr_nb.data import (AnnotationError, CocoDetection, EmptySplitError, UnreadableImagesError, check_images,
                          check_split, image_size, open_image)

UPRIGHT_WH = (64, 48)
OBJECT = (8, 16, 24, 40)  # x0, y0, x1, y1 of the red object on the upright view


def upright_photo() -> Image.Image:
    """Grey 64x48 with a red 16x24 object at OBJECT."""
    a = np.full((UPRIGHT_WH[1], UPRIGHT_WH[0], 3), 128, np.uint8)
    x0, y0, x1, y1 = OBJECT
    a[y0:y1, x0:x1] = (220, 20, 20)
    return Image.fromarray(a)


# the stored bitmap that EXIF orientation o turns into the upright view
STORED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


def save_oriented(path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright_photo().transpose(STORED[orientation])
    stored.save(path, exif=exif, **({"quality": 95} if str(path).endswith(".jpg") else {}))


def write_ann(tmp_path, images, anns=(), categories=None, name="instances_train.json"):
    ann = tmp_path / name
    ann.write_text(json.dumps({"images": images, "annotations": list(anns),
                               "categories": categories or [{"id": 1, "name": "thing"}]}))
    return str(ann)


def one_image(tmp_path, file_name="a.png", size=(40, 30), anns=(), **json_size):
    Image.new("RGB", size, (10, 20, 30)).save(tmp_path / file_name)
    im = {"id": 5, "file_name": file_name, **json_size}
    return str(tmp_path), write_ann(tmp_path, [im], anns)


# ----------------------------------------------------------------------------- 1. phone photos
@pytest.mark.parametrize("ext,orientation", [("jpg", 6), ("jpg", 8), ("png", 6)])
def test_exif_rotated_photo_loads_upright_with_its_box_on_the_object(tmp_path, ext, orientation):
    path = tmp_path / f"phone.{ext}"
    save_oriented(path, orientation)
    with Image.open(path) as raw:
        assert raw.size == UPRIGHT_WH[::-1]  # stored sideways
    x0, y0, x1, y1 = OBJECT
    ann = write_ann(tmp_path, [{"id": 1, "file_name": path.name, "width": 64, "height": 48}],
                    [{"id": 1, "image_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 1}])
    ds = CocoDetection(str(tmp_path), ann)
    image, target = ds.get_raw(0)
    assert image.mode == "RGB" and image.size == UPRIGHT_WH
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(upright_photo(), np.int16))
    assert diff.mean() < 2 and np.percentile(diff, 99) < 40  # JPEG tolerance
    assert target["boxes"].tolist() == [list(map(float, OBJECT))]
    crop = np.asarray(image)[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3).mean(0)
    assert crop[0] > 180 and crop[1] < 60 and crop[2] < 60  # the box lands on the red object
    _, t = ds[0]
    assert t["orig_size"].tolist() == [48, 64]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_open_image_matches_pil_exif_transpose(tmp_path, orientation):
    path = tmp_path / "o.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright_photo().save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        expected = ImageOps.exif_transpose(im).convert("RGB")
    got = open_image(str(path))
    assert got.size == expected.size == image_size(str(path))
    assert np.array_equal(np.asarray(got), np.asarray(expected))


# ----------------------------------------------------------------------------- 2. image sizes
def test_json_size_that_disagrees_with_the_file_is_an_error(tmp_path):
    folder, ann = one_image(tmp_path, size=(40, 30), width=41, height=30)
    with pytest.raises(AnnotationError, match=r"instances_train\.json: images\[0\] \(id 5\) has 'width' x "
                                              r"'height' = 41x30, but the file .*a\.png is 40x30") as e:
        CocoDetection(folder, ann)
    assert "\n" not in str(e.value)


def test_json_size_of_the_unrotated_photo_is_named_as_such(tmp_path):
    save_oriented(tmp_path / "phone.jpg", 6)
    ann = write_ann(tmp_path, [{"id": 1, "file_name": "phone.jpg", "width": 48, "height": 64}])  # raw size
    with pytest.raises(AnnotationError, match=r"48x64, but the file .*phone\.jpg is 64x48 as displayed \(stored "
                                              r"48x64 with EXIF orientation 6: the annotations were probably drawn "
                                              r"on the raw, un-rotated pixels"):
        CocoDetection(str(tmp_path), ann)


def test_missing_width_and_height_are_filled_from_the_file(tmp_path):
    save_oriented(tmp_path / "phone.jpg", 8)
    Image.new("RGB", (40, 30)).save(tmp_path / "b.png")
    ann = write_ann(tmp_path, [{"id": 1, "file_name": "phone.jpg"}, {"id": 2, "file_name": "b.png", "width": 40}])
    ds = CocoDetection(str(tmp_path), ann)
    assert [(ds.coco.imgs[i]["width"], ds.coco.imgs[i]["height"]) for i in (1, 2)] == [(64, 48), (40, 30)]


# ----------------------------------------------------------------------------- 3. unusual modes
def _modes(folder):
    """file -> (image to save, expected (H, W, 3) uint8 after loading), values computed by hand."""
    sixteen = np.array([[0, 257, 32896, 65535, 1000]], np.uint16)  # k * 257 -> k; 1000 * 255 / 65535 = 3.9 -> 4
    grey16 = [0, 1, 128, 255, 4]
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 128]]], np.uint8)
    la = np.array([[[200, 0], [200, 255], [100, 128]]], np.uint8)
    pal = Image.fromarray(np.array([[0, 1, 1]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.info["transparency"] = 0
    cmyk = Image.new("CMYK", (3, 1))
    for x, v in enumerate([(0, 0, 0, 0), (100, 0, 0, 0), (0, 0, 0, 100)]):
        cmyk.putpixel((x, 0), v)
    cases = {
        "i16.png": (Image.fromarray(sixteen), [grey16]),
        "i16b.tif": (Image.frombytes("I;16B", (5, 1), sixteen.astype(">u2").tobytes()), [grey16]),
        "i32.tif": (Image.fromarray(sixteen.astype(np.int32)), [grey16]),
        # float: 0..1 -> 0..255, clipped, NaN -> 0
        "f.tif": (Image.fromarray(np.array([[0.0, 0.25, 1.0, 2.0, -1.0, np.nan]], np.float32)),
                  [[0, 64, 255, 255, 0, 0]]),
        # on white: round(c * a / 255 + 255 * (1 - a / 255)); 100 at a=128: 50.2 + 127 = 177.2 -> 177
        "la.png": (Image.fromarray(la, "LA"), [[255, 200, 177]]),
        "rgba.png": (Image.fromarray(rgba, "RGBA"), [[(255, 255, 255), (255, 0, 0), (127, 127, 255)]]),
        "p.png": (pal, [[(255, 255, 255), (255, 0, 0), (255, 0, 0)]]),
        # CMYK: r = 255 - c when k = 0, grey 255 - k when c = m = y = 0
        "cmyk.tif": (cmyk, [[(255, 255, 255), (155, 255, 255), (155, 155, 155)]]),
        "one.png": (Image.fromarray(np.array([[0, 1, 1]], bool)), [[0, 255, 255]]),
        "l.png": (Image.fromarray(np.array([[77, 0, 255]], np.uint8)), [[77, 0, 255]]),
    }
    out = {}
    for name, (im, expected) in cases.items():
        im.save(os.path.join(folder, name))
        e = np.array(expected, np.uint8)
        out[name] = (im.mode, e if e.ndim == 3 else np.repeat(e[:, :, None], 3, axis=2))
    return out


def test_unusual_png_and_tiff_modes_load_as_8_bit_rgb(tmp_path):
    cases = _modes(str(tmp_path))
    with Image.open(tmp_path / "i16.png") as im:
        assert im.mode in ("I;16", "I")  # a 16-bit PNG (Pillow < 10.3: "I"): PIL's convert("RGB") makes it white
    ann = write_ann(tmp_path, [{"id": i + 1, "file_name": name} for i, name in enumerate(cases)])
    ds = CocoDetection(str(tmp_path), ann)
    for i, (name, (mode, expected)) in enumerate(cases.items()):
        image, _ = ds.get_raw(i)
        assert image.mode == "RGB", name
        assert np.asarray(image).tolist() == expected.tolist(), f"{name} (mode {mode})"


# ----------------------------------------------------------------------------- 4. duplicate ids
def test_duplicate_image_ids_name_both_files(tmp_path):
    for f in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / f)
    ann = write_ann(tmp_path, [{"id": 3, "file_name": "a.png"}, {"id": 3, "file_name": "b.png"}])
    with pytest.raises(AnnotationError, match=r"instances_train\.json: images\[0\] and images\[1\] have the same "
                                              r"'id' 3 \(files 'a\.png' and 'b\.png'\)"):
        CocoDetection(str(tmp_path), ann)


def test_duplicate_annotation_ids_are_an_error(tmp_path):
    box = {"image_id": 5, "bbox": [1, 1, 4, 4], "category_id": 1}
    folder, ann = one_image(tmp_path, anns=[{"id": 7, **box}, {"id": 8, **box}, {"id": 7, **box}])
    with pytest.raises(AnnotationError, match=r"instances_train\.json: annotations\[0\] and annotations\[2\] "
                                              r"have the same 'id' 7"):
        CocoDetection(folder, ann)


# ----------------------------------------------------------------------------- 5. bad values
GOOD = {"id": 4, "image_id": 5, "bbox": [1, 1, 4, 4], "category_id": 1}
BAD_ANNOTATIONS = [
    ("bbox", {"bbox": ["one", 1, 4, 4]}),
    ("bbox", {"bbox": [1, float("nan"), 4, 4]}),
    ("bbox", {"bbox": [1, 1, float("inf"), 4]}),
    ("bbox", {"bbox": [1, 1, True, 4]}),
    ("bbox", {"bbox": [1, 1, None, 4]}),
    ("category_id", {"category_id": True}),
    ("category_id", {"category_id": "1"}),
    ("image_id", {"image_id": "5"}),
    ("image_id", {"image_id": 5.0}),
    ("iscrowd", {"iscrowd": "0"}),
    ("area", {"area": "big"}),
    ("id", {"id": "4"}),
]


@pytest.mark.parametrize("field,change", BAD_ANNOTATIONS, ids=[f"{f}={v[f]!r}" for f, v in BAD_ANNOTATIONS])
def test_bad_annotation_value_is_a_one_line_error(tmp_path, field, change):
    folder, ann = one_image(tmp_path, anns=[GOOD, {**GOOD, "id": 9, **change}])
    with pytest.raises(AnnotationError) as e:
        CocoDetection(folder, ann)
    msg = str(e.value)
    assert msg.startswith(f"{ann}: annotations[1] (id ") and f"field '{field}' must be" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("section,field,images,categories", [
    ("images", "id", [{"id": "5", "file_name": "a.png"}], None),
    ("images", "id", [{"id": 5.5, "file_name": "a.png"}], None),
    ("images", "file_name", [{"id": 5, "file_name": 7}], None),
    ("images", "width", [{"id": 5, "file_name": "a.png", "width": "40"}], None),
    ("categories", "id", None, [{"id": -1, "name": "neg"}]),
    ("categories", "id", None, [{"id": 1.5, "name": "half"}]),
])
def test_bad_image_or_category_value_is_a_one_line_error(tmp_path, section, field, images, categories):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    ann = write_ann(tmp_path, images or [{"id": 5, "file_name": "a.png"}], categories=categories)
    with pytest.raises(AnnotationError, match=rf"^{ann}: {section}\[0\] .*field '{field}' must be") as e:
        CocoDetection(str(tmp_path), ann)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- 6. degenerate boxes
def perfect_detections(ds):
    """One score-1 detection on every training target: what a perfect model would output."""
    dets = []
    for i in range(len(ds)):
        _, t = ds.get_raw(i)
        for (x0, y0, x1, y1), label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            dets.append({"image_id": int(t["image_id"]), "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "score": 1.0})
    return dets


def coco_ap(coco_gt, detections) -> float:
    """COCO AP (IoU 0.50:0.95) of ``detections`` against ``coco_gt``, by pycocotools' COCOeval."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_degenerate_box_leaves_training_and_evaluation_alike(tmp_path):
    anns = [{"id": 1, "image_id": 5, "bbox": [4, 3, 10, 6], "category_id": 1},
            {"id": 2, "image_id": 5, "bbox": [30, 20, 20, 20], "category_id": 1},   # clamped to 10x10
            {"id": 3, "image_id": 5, "bbox": [50, 5, 3, 3], "category_id": 1}]      # outside the 40x30 image
    folder, ann = one_image(tmp_path, anns=anns, width=40, height=30)
    with pytest.warns(UserWarning) as caught:
        ds = CocoDetection(folder, ann)
    assert coco_ap(ds.coco, perfect_detections(ds)) == pytest.approx(1.0)  # 0.34 with the junk box kept in dataset.coco
    assert sorted(ds.coco.anns) == [1, 2] and ds.coco.anns[2]["bbox"] == [30.0, 20.0, 10.0, 10.0]
    assert ds.num_degenerate == 1 and ds.num_boxes == 2
    assert re.search(r"instances_train\.json: removed 1 degenerate box\(es\) .* from the annotations used for "
                     r"training and for evaluation \(dataset\.coco\), e\.g\. annotation id 3 on a\.png; 1 other "
                     r"box\(es\) were clamped", str(caught[0].message))


def test_annotation_id_0_still_counts_as_matched(tmp_path):
    """COCOeval reads a match to annotation id 0 as no match: ids are shifted to start at 1."""
    folder, ann = one_image(tmp_path, anns=[{"id": 0, "image_id": 5, "bbox": [4, 3, 10, 6], "category_id": 1},
                                            {"id": 1, "image_id": 5, "bbox": [20, 10, 10, 10], "category_id": 1}])
    ds = CocoDetection(folder, ann)
    assert coco_ap(ds.coco, perfect_detections(ds)) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- 7. empty splits
def test_empty_splits_are_exposed_and_checked(tmp_path):
    ds = CocoDetection(str(tmp_path), write_ann(tmp_path, []))
    assert len(ds) == 0 and ds.num_boxes == 0 and ds.image_sizes == []
    with pytest.raises(EmptySplitError, match=r"^the training split of .*instances_train\.json has no images; "
                                              r"add images or choose another --train-split$"):
        check_split(ds, "train")
    crowd = {"id": 1, "image_id": 5, "bbox": [1, 1, 4, 4], "category_id": 1, "iscrowd": 1}
    folder, ann = one_image(tmp_path, anns=[crowd])  # an image, but no box to learn or score
    ds = CocoDetection(folder, ann)
    assert len(ds) == 1 and ds.num_boxes == 0
    with pytest.raises(EmptySplitError, match=r"^the validation split of .*instances_train\.json has no boxes: "
                                              r"COCO AP would be -1; add annotations or choose another --val-split$"):
        check_split(ds, "val")
    assert isinstance(EmptySplitError("x"), ValueError)
    folder, ann = one_image(tmp_path, anns=[{**crowd, "iscrowd": 0}])
    ds = CocoDetection(folder, ann)
    check_split(ds, "val")
    check_split(ds, "train")
    with pytest.raises(EmptySplitError, match="no images"):
        check_split(Subset(ds, []), "val")


# ----------------------------------------------------------------------------- 8. every image read before training
def test_check_images_lists_unreadable_files_before_training(tmp_path):
    names = ["ok.png", "gone.png", "junk.png", "cut.jpg", "ok2.jpg"]
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "cut.jpg")
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])  # header fine, pixels cut off
    Image.new("RGB", (16, 16)).save(tmp_path / "ok2.jpg")
    ann = write_ann(tmp_path, [{"id": i + 1, "file_name": n} for i, n in enumerate(names)])
    ds = CocoDetection(str(tmp_path), ann)  # building reads headers only: the split can still be built
    with pytest.raises(UnreadableImagesError, match=r"^3 of 5 images of .*instances_train\.json cannot be read "
                                                    r"\(in .*\): gone\.png \(missing\); junk\.png \(.*\); cut\.jpg "
                                                    r"\(OSError: image file is truncated") as e:
        check_images(ds)
    assert "\n" not in str(e.value) and isinstance(e.value, OSError)
    with pytest.raises(UnreadableImagesError, match=r"^2 of 5 images .*gone\.png.*junk\.png"):
        check_images(ds, decode=False)  # headers only: the truncated JPEG passes
    with pytest.raises(UnreadableImagesError, match=r"^3 of 5 images .*: gone\.png \(missing\); junk\.png \(.*\); "
                                                    r"1 more$"):
        check_images(ds, show=2)
    with pytest.raises(UnreadableImagesError, match=r"^2 of 4 images .*: junk\.png \(.*\); cut\.jpg \(.*\)$"):
        check_images(Subset(ds, [0, 2, 3, 4]))
    assert check_images(Subset(ds, [0, 4])) == 2


# ----------------------------------------------------------------------------- 9. image sizes for the engine
def test_image_sizes_are_exposed_as_displayed(tmp_path):
    save_oriented(tmp_path / "phone.jpg", 6)
    Image.new("RGB", (40, 30)).save(tmp_path / "b.png")
    Image.new("RGB", (64, 48)).save(tmp_path / "c.png")
    ann = write_ann(tmp_path, [{"id": 9, "file_name": "b.png"}, {"id": 2, "file_name": "phone.jpg"},
                               {"id": 4, "file_name": "c.png", "width": 64, "height": 48}])
    ds = CocoDetection(str(tmp_path), ann)
    assert ds.ids == [2, 4, 9] and ds.image_sizes == [(64, 48), (64, 48), (40, 30)]
