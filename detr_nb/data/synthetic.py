"""An embedded synthetic detection dataset: coloured shapes on cluttered backgrounds (notebook 06, data).

Each image holds a *set* of 0 to ``max_objects`` shapes, sizes spread over a decade, partly overlapping (a new
shape hides at most ``max_occlusion`` of an earlier one), on textured backgrounds with lines and noise. Colours
are drawn independently of the class, and shapes stretched and rotated, so the class comes from the shape.
Boxes are tight on the visible pixels. Category ids start at 1: ``num_classes = len(CLASSES) + 1``.
"""
from __future__ import annotations

import colorsys
import contextlib
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # Windows: generators writing the same root are not serialised
    fcntl = None

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
NUM_CLASSES = len(CLASSES) + 1  # ids 1..6, 0 unused

GENERATOR_VERSION = 2
DEFAULT_ROOT = os.path.join("data", "synthetic")
DEFAULT_COUNTS = {"seed": 0, "num_train": 5000, "num_val": 500}
# The drawing parameters and their defaults, in the order the manifest lists them.
PARAMS = {
    "image_size": (128, 160),     # each side drawn in [min, max] pixels
    "min_objects": 0,
    "max_objects": 10,
    "object_size": (0.08, 0.6),   # shape diameter as a fraction of the shorter image side (log-uniform)
    "min_object_px": 10,          # ... but never below this many pixels
    "aspect": (0.6, 1.67),        # width/height stretch before rotation (log-uniform)
    "max_occlusion": 0.3,         # a later shape may hide at most this fraction of an earlier one
    "noise_std": 3.0,             # Gaussian pixel noise (0..255 scale)
    "max_lines": 6,               # distractor lines in the background
}
_PNG_LEVEL = 1  # fixed zlib level (fast; the noise barely compresses): same pixels -> same bytes


def synthetic_params(**overrides) -> Dict[str, Any]:
    """The drawing parameters (:data:`PARAMS` with ``overrides``), checked, as a JSON-ready dict."""
    unknown = set(overrides) - set(PARAMS)
    if unknown:
        raise TypeError(f"unknown synthetic parameter(s): {sorted(unknown)}")
    p = {k: list(v) if isinstance(v, tuple) else v for k, v in {**PARAMS, **overrides}.items()}
    lo, hi = p["image_size"]
    if not (16 <= lo <= hi):
        raise ValueError(f"image_size must be (min, max) with 16 <= min <= max, got {p['image_size']}")
    if not (0 <= p["min_objects"] <= p["max_objects"]):
        raise ValueError("need 0 <= min_objects <= max_objects")
    return p


def synthetic_root(data_kwargs: Mapping[str, Any]) -> str:
    """Folder of a synthetic dataset: ``data/synthetic`` for the default parameters, else
    ``data/synthetic-<hash of the parameters>``, so that two parameter sets never overwrite each other."""
    kw = {k: v for k, v in dict(data_kwargs).items() if k not in ("workers", "progress")}
    counts = {k: kw.pop(k, v) for k, v in DEFAULT_COUNTS.items()}
    params = synthetic_params(**kw)
    if params == synthetic_params() and counts == DEFAULT_COUNTS:
        return DEFAULT_ROOT
    key = hashlib.sha256(json.dumps([params, counts], sort_keys=True).encode()).hexdigest()[:8]
    return f"{DEFAULT_ROOT}-{key}"


def _hsv(rng, s_range, v_range) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s_range), rng.uniform(*v_range))
    return np.array([r, g, b]) * 255.0


def _background(rng, h: int, w: int, max_lines: int) -> np.ndarray:
    """A muted textured background ``(h, w, 3)`` float: gradient, stripes, checker or smooth blobs, plus lines."""
    c0, c1 = _hsv(rng, (0, 0.5), (0.15, 0.85)).astype(np.float32), _hsv(rng, (0, 0.5), (0.15, 0.85)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        phi = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(phi) + yy * np.sin(phi)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == 1:  # soft stripes
        phi, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period)
    elif kind == 2:  # checkerboard
        p = int(rng.integers(6, 20))
        t = ((xx // p + yy // p) % 2).astype(np.float32)
    else:  # smooth random blobs: a coarse grid upsampled bilinearly
        g = (rng.random((int(rng.integers(3, 8)), int(rng.integers(3, 8)))) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(g).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    bg = (c0 + (c1 - c0) * t[..., None]).astype(np.float32)  # (h, w, 3)
    n_lines = int(rng.integers(0, max_lines + 1))
    if n_lines:
        im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(n_lines):
            col = tuple(int(v) for v in _hsv(rng, (0, 0.6), (0.1, 0.9)))
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
            d.line(pts, fill=col, width=int(rng.integers(1, 3)))
        bg = np.asarray(im, dtype=np.float32)
    return bg


# Regular polygons (K, 2) of radius 1 around 0: vertex angles and radii.
_POLYGONS = {kind: np.stack([r * np.cos(k), r * np.sin(k)], 1) for kind, k, r in (
    ("circle", np.arange(48) * (2 * np.pi / 48), 1.0),
    ("square", np.pi / 4 + np.arange(4) * np.pi / 2, 1.0),
    ("triangle", np.arange(3) * 2 * np.pi / 3, 1.0),
    ("star", np.arange(10) * np.pi / 5, np.where(np.arange(10) % 2 == 0, 1.0, 0.42)))}
_ARM = 0.3  # half the width of the cross's arms
# shape -> its polygons: the first is filled, the others are holes
OUTLINES = {
    **{kind: [_POLYGONS[kind]] for kind in ("circle", "square", "triangle", "star")},
    "cross": [np.array([(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM), (_ARM, 1),
                        (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)], dtype=float)],
    "ring": [_POLYGONS["circle"], 0.55 * _POLYGONS["circle"]],
}


def _shape_patch(kind: str, cx: float, cy: float, r: float, aspect: float, theta: float):
    """One filled shape centred at (cx, cy): radius ``r``, stretched to width/height ratio ``aspect``, then
    rotated by ``theta``. Returns a bool patch and its (x, y) offset in the image."""
    scale = np.array([r * math.sqrt(aspect), r / math.sqrt(aspect)])
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    reach = r * math.sqrt(max(aspect, 1 / aspect))  # no point lies farther from the centre
    x0, y0 = int(math.floor(cx - reach)) - 1, int(math.floor(cy - reach)) - 1
    size = int(math.ceil(2 * reach)) + 3
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    for i, poly in enumerate(OUTLINES[kind]):
        pts = (poly * scale) @ rot.T + np.array([cx - x0, cy - y0])  # (K, 2) in patch coordinates
        d.polygon([tuple(p) for p in pts.tolist()], fill=255 if i == 0 else 0)
    return np.asarray(im) > 0, x0, y0


# long function: one sample's drawing, kept as one procedure because the order of its random draws is the
# dataset (its bytes and manifest hashes); splitting it would have to preserve that order exactly.
def render_sample(params: Dict[str, Any], seed: int, split: str, index: int) -> Dict[str, Any]:
    """Draw image ``index`` of ``split``; depends only on (params, seed, split, index).

    Returns ``image`` uint8 ``(H, W, 3)``, ``labels`` int64 ``(N,)`` (1-based ids), ``masks`` bool
    ``(N, H, W)`` (visible pixels of each shape), ``boxes`` int64 ``(N, 4)`` abs xyxy, tight on the masks.
    """
    rng = np.random.default_rng([int(seed), {"train": 0, "val": 1}.get(split, 2), int(index)])
    lo, hi = params["image_size"]
    h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    img = _background(rng, h, w, params["max_lines"])  # (h, w, 3) float32
    short = min(h, w)
    d_lo = max(params["min_object_px"], params["object_size"][0] * short)
    d_hi = max(d_lo, min(params["object_size"][1] * short, short - 4))
    n_target = int(rng.integers(params["min_objects"], params["max_objects"] + 1))
    keep_frac = 1.0 - params["max_occlusion"]

    labels: List[int] = []
    colors: List[np.ndarray] = []
    areas: List[int] = []        # whole-shape pixel counts
    vis: List[np.ndarray] = []   # visible masks (h, w): later shapes are drawn on top
    vis_area: List[int] = []
    for _ in range(n_target):
        for _try in range(20):
            kind_id = int(rng.integers(len(CLASSES)))
            r = float(np.exp(rng.uniform(np.log(d_lo), np.log(d_hi)))) / 2
            aspect = float(np.exp(rng.uniform(np.log(params["aspect"][0]), np.log(params["aspect"][1]))))
            reach = min(r * math.sqrt(max(aspect, 1 / aspect)), short / 2 - 2)
            r = reach / math.sqrt(max(aspect, 1 / aspect))
            cx, cy = rng.uniform(reach + 1, w - reach - 1), rng.uniform(reach + 1, h - reach - 1)
            patch, px, py = _shape_patch(CLASSES[kind_id], cx, cy, r, aspect, rng.uniform(0, 2 * np.pi))
            m = np.zeros((h, w), dtype=bool)
            win = (slice(max(py, 0), min(py + patch.shape[0], h)), slice(max(px, 0), min(px + patch.shape[1], w)))
            m[win] = patch[win[0].start - py:win[0].stop - py, win[1].start - px:win[1].stop - px]
            area = int(m[win].sum())
            if area < 12:
                continue
            hidden = [int((v[win] & m[win]).sum()) for v in vis]
            if any(va - hd < keep_frac * a for va, hd, a in zip(vis_area, hidden, areas)):
                continue
            # colour: independent of class, distinct from the background and from shapes it touches
            under = img[m].mean(axis=0)
            touched = [c for c, hd in zip(colors, hidden) if hd > 0]
            for _c in range(10):
                col = _hsv(rng, (0.45, 1.0), (0.5, 1.0))
                if np.abs(col - under).sum() > 90 and all(np.abs(col - c).sum() > 90 for c in touched):
                    break
            break
        else:
            continue  # no room for another shape
        for j, hd in enumerate(hidden):
            if hd:
                vis[j][win] &= ~m[win]
                vis_area[j] -= hd
        vis.append(m)
        vis_area.append(area)
        areas.append(area)
        labels.append(kind_id + 1)
        colors.append(col)
        img[m] = (col * rng.uniform(0.9, 1.0) + rng.uniform(-8, 8, size=3)).astype(np.float32)

    if params["noise_std"] > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(params["noise_std"])
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    masks = np.stack(vis) if vis else np.zeros((0, h, w), dtype=bool)
    boxes = np.zeros((len(vis), 4), dtype=np.int64)  # tight pixel boxes, x1/y1 exclusive
    for j, v in enumerate(vis):
        ys, xs = np.nonzero(v.any(axis=1))[0], np.nonzero(v.any(axis=0))[0]
        boxes[j] = xs[0], ys[0], xs[-1] + 1, ys[-1] + 1
    return {"image": image, "labels": np.array(labels, dtype=np.int64), "masks": masks, "boxes": boxes}



def _render_and_write(task) -> Dict[str, Any]:
    """Draw one sample, write its PNG (fixed zlib level, no metadata: same pixels -> same bytes), and return
    its COCO image entry, its annotations (without ids) and the PNG's sha256."""
    params, seed, split, index, path = task
    s = render_sample(params, seed, split, index)
    buf = io.BytesIO()
    Image.fromarray(s["image"]).save(buf, format="PNG", compress_level=_PNG_LEVEL)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    h, w = s["image"].shape[:2]
    image = {"id": index + 1, "file_name": f"{index:06d}.png", "width": w, "height": h}
    anns = [{"image_id": index + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": int(c), "area": int(m.sum()),
             "iscrowd": 0} for (x0, y0, x1, y1), c, m in zip(s["boxes"].tolist(), s["labels"].tolist(), s["masks"])]
    return {"index": index, "image": image, "anns": anns, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}


def ensure_synthetic(root: str = DEFAULT_ROOT, *, seed: int = DEFAULT_COUNTS["seed"],
                     num_train: int = DEFAULT_COUNTS["num_train"], num_val: int = DEFAULT_COUNTS["num_val"],
                     workers: int = 2, progress: bool = True, **params) -> Dict[str, str]:
    """Write the dataset under ``root`` (``params`` override :data:`PARAMS`) unless its manifest (parameters and
    sha256 of every file, written last) matches; return its paths. The same parameters give the same bytes,
    whatever the number of ``workers``."""
    root = str(root)
    params = synthetic_params(**params)
    expected = {"generator": "detr_nb.data.synthetic", "version": GENERATOR_VERSION, "seed": int(seed),
                "num_train": int(num_train), "num_val": int(num_val), "params": params}
    paths = {"root": root, "train_images": os.path.join(root, "train"), "val_images": os.path.join(root, "val"),
             "train_ann": os.path.join(root, "annotations", "instances_train.json"),
             "val_ann": os.path.join(root, "annotations", "instances_val.json"),
             "manifest": os.path.join(root, "manifest.json")}
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        if fcntl is not None:  # serialise generators writing the same root; the lock goes with the file
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(paths["manifest"], "r", encoding="utf-8") as f:
                man = json.load(f)
        except (OSError, ValueError):
            man = {}
        files = man.get("files")
        if ({k: man.get(k) for k in expected} == expected and isinstance(files, dict) and files and all(
                os.path.isfile(p := os.path.join(root, rel)) and hashlib.sha256(Path(p).read_bytes()).hexdigest() == d
                for rel, d in files.items())):
            return paths
        # Remove only what this generator writes, then draw everything again.
        for sub in ("train", "val", "annotations"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        Path(paths["manifest"]).unlink(missing_ok=True)
        files = {}
        parallel = workers > 1 and int(num_train) + int(num_val) >= 2 * workers
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with (mp.get_context(method).Pool(workers) if parallel else contextlib.nullcontext()) as pool:
            for split, n in (("train", int(num_train)), ("val", int(num_val))):
                os.makedirs(paths[f"{split}_images"], exist_ok=True)
                tasks = [(params, int(seed), split, i, os.path.join(paths[f"{split}_images"], f"{i:06d}.png"))
                         for i in range(n)]
                done = (pool.imap_unordered(_render_and_write, tasks, chunksize=max(1, min(16, n // (4 * workers))))
                        if pool is not None else map(_render_and_write, tasks))
                results = sorted(tqdm(done, total=n, desc=f"synthetic {split}", leave=False,
                                      disable=not progress or n < 200), key=lambda r: r["index"])
                files.update({f"{split}/{r['index']:06d}.png": r["sha256"] for r in results})
                anns = [a for r in results for a in r["anns"]]
                text = json.dumps({
                    "info": {"description": "detr_nb synthetic shapes", "version": str(GENERATOR_VERSION)},
                    "images": [r["image"] for r in results],
                    "annotations": [{"id": j + 1, **a} for j, a in enumerate(anns)],
                    "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                                   for i, name in enumerate(CLASSES)],
                }, separators=(",", ":"))
                os.makedirs(os.path.dirname(paths[f"{split}_ann"]), exist_ok=True)
                Path(paths[f"{split}_ann"]).write_text(text, encoding="utf-8")
                files[f"annotations/instances_{split}.json"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        Path(paths["manifest"]).write_text(json.dumps({**expected, "files": files}, indent=1), encoding="utf-8")
    return paths
