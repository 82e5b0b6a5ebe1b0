"""Detections on your own pictures: files, folders or URLs in, annotated images and a JSON of boxes out.

    from detr_nb.predict import predict_paths
    found = predict_paths(model, ["photo.jpg", "my_folder/", "https://example.org/cat.jpg"], out="predictions",
                          preset="official", categories={1: "balloon"}, threshold=0.7)

``python -m detr_nb predict`` is this function on a checkpoint. Images are opened upright (EXIF orientation
applied, as a viewer shows them); boxes are in the pixels of that upright image, ``[x0, y0, x1, y1]``.
"""
from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .config import build_postprocess
from .data import make_transforms, open_image
from .errors import UserError
from .figures import save_annotated

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https", "file")


def _download(url: str, folder: str, timeout: float = 30.0) -> str:
    """Fetch ``url`` into ``folder``; a one-line :class:`UserError` when it cannot be fetched."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "image"
    path = os.path.join(folder, name)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "detr_nb"}),
                                    timeout=timeout) as r, open(path, "wb") as f:
            f.write(r.read())
    except (OSError, ValueError) as e:   # URLError, HTTPError and timeouts are OSErrors
        raise UserError(f"cannot download {url}: {getattr(e, 'reason', None) or e}") from None
    return path


def resolve_inputs(items: Sequence[str], download_dir: str) -> Tuple[List[Tuple[str, str, bool]], int]:
    """``[(shown name, local path, named)]`` for files, folders (their images, sorted, not recursive) and URLs
    (downloaded into ``download_dir``), ``named`` False for a folder's files; and the number of non-image
    files left out of folders."""
    found, skipped = [], 0
    for item in items:
        if _is_url(item):
            found.append((item, _download(item, download_dir), True))
        elif os.path.isdir(item):
            names = sorted(os.listdir(item))
            images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
            skipped += sum(1 for n in names if n not in images and os.path.isfile(os.path.join(item, n)))
            if not images:
                raise UserError(f"{item}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
            found += [(os.path.join(item, n), os.path.join(item, n), False) for n in images]
        elif os.path.isfile(item):
            found.append((item, item, True))
        else:
            raise UserError(f"{item}: no such file, folder or URL")
    return found, skipped


@torch.no_grad()
def detect(model, image, transforms, device="cpu", postprocess=None) -> Dict:
    """Boxes of one upright PIL image: ``{"scores", "labels", "boxes"}`` in the image's own pixels (xyxy),
    clipped to the image (a predicted box may reach past the border). ``postprocess``: the model's own
    (:func:`detr_nb.config.build_postprocess`) unless given (an ONNX file takes its PyTorch model's)."""
    w, h = image.size
    tensor, _ = transforms(image, None)                     # (3, H', W')
    # An image smaller than the backbone's stride is padded up to it (marked as padding), never refused.
    stride = getattr(getattr(model, "backbone", None), "stride", 32)
    pad_h, pad_w = max(0, stride - tensor.shape[1]), max(0, stride - tensor.shape[2])
    mask = torch.nn.functional.pad(torch.zeros(tensor.shape[1:], dtype=torch.bool), (0, pad_w, 0, pad_h), value=True)
    tensor = torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h))
    model.eval()
    outputs = model(tensor[None].to(device), mask[None].to(device) if pad_h or pad_w else None)
    res = (postprocess or build_postprocess(model))(outputs, torch.tensor([[h, w]], device=device))[0]
    res = {k: v.cpu() for k, v in res.items()}
    res["boxes"] = torch.minimum(res["boxes"].clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float32))
    return res


def _open(path: str):
    try:
        return open_image(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not an image that PIL can read ({e})") from None


def open_input(item: str):
    """One upright RGB PIL image from a file path or an http(s)/file URL (the same checks as
    ``python -m detr_nb predict``: a one-line :class:`UserError` when it cannot be read)."""
    if not _is_url(item):
        if not os.path.isfile(item):
            raise UserError(f"{item}: no such file or URL")
        return _open(item)
    with tempfile.TemporaryDirectory() as tmp:
        return _open(_download(item, tmp))                  # open_image decodes before returning


def check_threshold(threshold: float) -> float:
    """A score threshold in [0, 1] (scores are probabilities), or a one-line :class:`UserError`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise UserError(f"--threshold must be a score in [0, 1], got {threshold!r}")
    return float(threshold)


def predict_paths(model, items: Sequence[str], out, *, preset: str, device="cpu", threshold: float = 0.5,
                  categories: Optional[Mapping[int, str]] = None, category_ids: Optional[Mapping[int, int]] = None,
                  coco: bool = False, log=print) -> Dict:
    """Run ``model`` on every image of ``items``; write ``<out>/<name>.png`` (boxes with score >= ``threshold``
    drawn on the upright image) and ``<out>/predictions.json``: one record per image (its file, size and
    detections: the category id of the training file, its name, score, ``box_xyxy``) and the files ``skipped``;
    with ``coco``, the detections in COCO's result format instead (``image_id`` = the image's position from 1,
    ``file_name``, ``category_id``, ``bbox`` [x, y, w, h], ``score``). Returns the records.

    A file named in ``items`` that cannot be read stops everything before any image is run (one-line
    :class:`UserError`); an unreadable file found in a folder is skipped with a warning and counted in the
    JSON's ``skipped`` list (the CLI then exits with status 1)."""
    threshold = check_threshold(threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transforms = make_transforms(preset, train=False)
    records: List[Dict] = []
    unreadable: List[Dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs, skipped = resolve_inputs(items, tmp)
        if skipped:
            log(f"skipped {skipped} non-image file(s) in the given folder(s)")
        pictures = []                                       # every input is opened before any is run
        for shown, path, named in inputs:
            try:
                pictures.append((shown, _open(path)))
            except UserError as e:
                if named:
                    raise
                unreadable.append({"image": shown, "error": str(e)})
                log(f"warning: skipping {e}")
        used = set()
        for shown, image in pictures:
            res = detect(model, image, transforms, device)
            keep = res["scores"] >= threshold
            boxes, labels, scores = res["boxes"][keep], res["labels"][keep].tolist(), res["scores"][keep].tolist()
            stem = Path(urllib.parse.urlparse(shown).path).stem or "image"
            name, k = stem, 1
            while name in used:
                k += 1
                name = f"{stem}_{k}"
            used.add(name)
            save_annotated(out / f"{name}.png", image, boxes, labels, scores, names=categories,
                           title=f"{Path(shown).name}: {len(labels)} box(es) with score >= {threshold}")
            records.append({"image": shown, "annotated": str(out / f"{name}.png"),
                            "width": image.size[0], "height": image.size[1], "detections": [
                                {"category_id": int((category_ids or {}).get(int(l), l)),
                                 "name": (categories or {}).get(int(l), str(int(l))),
                                 "score": round(float(s), 4), "box_xyxy": [round(float(v), 1) for v in b]}
                                for l, s, b in zip(labels, scores, boxes.tolist())]})
            log(f"{shown}: {len(labels)} box(es) -> {out / (name + '.png')}")
    found = {"threshold": threshold, "images": records, "skipped": unreadable}
    results = [{"image_id": i + 1, "file_name": r["image"], "category_id": d["category_id"], "score": d["score"],
                "bbox": [x0, y0, round(x1 - x0, 1), round(y1 - y0, 1)]}
               for i, r in enumerate(records) for d in r["detections"] for x0, y0, x1, y1 in [d["box_xyxy"]]]
    with open(out / "predictions.json", "w") as f:
        json.dump(results if coco else found, f, indent=1)
    if unreadable:
        log(f"{len(unreadable)} unreadable image file(s) skipped, {len(records)} predicted")
    return found
