"""An embedded synthetic detection dataset: coloured shapes on cluttered backgrounds (notebook 06, data).

Why this task: DETR predicts a *set*. Here each image holds 0 to ``max_objects`` shapes of
``len(CLASSES)`` classes, sizes spread over a decade, partial overlaps, textured backgrounds with
distractor lines and pixel noise. A shape's colour is drawn independently of its class, so the class
must come from the shape, not the colour. Shapes are stretched (aspect 0.6..1.67) and rotated, so box
widths and heights vary independently. Each object stays recognisable: a new shape may hide at most
``max_occlusion`` of any earlier one.

``ensure_synthetic(root)`` writes PNG images and COCO JSON (train/val) on first use, deterministically
from ``seed`` (same parameters -> byte-identical files, whatever the number of workers), with a manifest of
parameters and sha256 hashes; later calls return at once when the files are present and match, and
regenerate when a parameter changed or a file is missing or altered. Boxes are tight on the visible
pixels of each shape: ``render_sample`` returns the masks the boxes come from.

Category ids start at 1 (0 unused, like COCO), so ``num_classes = len(CLASSES) + 1``.
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
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
NUM_CLASSES = len(CLASSES) + 1  # ids 1..6, 0 unused

GENERATOR_VERSION = 2
DEFAULT_ROOT = os.path.join("data", "synthetic")
DEFAULT_SEED = 0
DEFAULT_NUM_TRAIN = 5000
DEFAULT_NUM_VAL = 500
DEFAULT_IMAGE_SIZE = (128, 160)      # each side drawn in [min, max] pixels
DEFAULT_MIN_OBJECTS = 0
DEFAULT_MAX_OBJECTS = 10
DEFAULT_OBJECT_SIZE = (0.08, 0.6)    # shape diameter as a fraction of the shorter image side (log-uniform)
DEFAULT_MIN_OBJECT_PX = 10           # ... but never below this many pixels
DEFAULT_ASPECT = (0.6, 1.67)         # width/height stretch before rotation (log-uniform)
DEFAULT_MAX_OCCLUSION = 0.3          # a later shape may hide at most this fraction of an earlier one
DEFAULT_NOISE_STD = 3.0              # Gaussian pixel noise (0..255 scale)
DEFAULT_MAX_LINES = 6                # distractor lines in the background
DEFAULT_WORKERS = 2

_PNG_LEVEL = 1  # fixed zlib level (fast; the noise barely compresses): same pixels -> same bytes


def synthetic_params(**overrides) -> Dict[str, Any]:
    """The generation parameters (defaults from the module constants), as a JSON-ready dict."""
    p = dict(
        image_size=list(DEFAULT_IMAGE_SIZE),
        min_objects=DEFAULT_MIN_OBJECTS,
        max_objects=DEFAULT_MAX_OBJECTS,
        object_size=list(DEFAULT_OBJECT_SIZE),
        min_object_px=DEFAULT_MIN_OBJECT_PX,
        aspect=list(DEFAULT_ASPECT),
        max_occlusion=DEFAULT_MAX_OCCLUSION,
        noise_std=DEFAULT_NOISE_STD,
        max_lines=DEFAULT_MAX_LINES,
    )
    unknown = set(overrides) - set(p)
    if unknown:
        raise TypeError(f"unknown synthetic parameter(s): {sorted(unknown)}")
    p.update({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()})
    lo, hi = p["image_size"]
    if not (16 <= lo <= hi):
        raise ValueError(f"image_size must be (min, max) with 16 <= min <= max, got {p['image_size']}")
    if not (0 <= p["min_objects"] <= p["max_objects"]):
        raise ValueError("need 0 <= min_objects <= max_objects")
    return p


# ----------------------------------------------------------------------------- drawing

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


def _unit_outline(kind: str) -> List[np.ndarray]:
    """Polygons ``(K, 2)`` of a shape of radius 1 centred at 0; the first is filled, the others are holes."""
    k = np.arange(48) * (2 * np.pi / 48)
    circle = np.stack([np.cos(k), np.sin(k)], 1)
    if kind == "circle":
        return [circle]
    if kind == "ring":
        return [circle, 0.55 * circle]
    if kind == "square":
        k = np.pi / 4 + np.arange(4) * np.pi / 2
    elif kind == "triangle":
        k = np.arange(3) * 2 * np.pi / 3
    elif kind == "star":
        k = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [np.stack([r * np.cos(k), r * np.sin(k)], 1)]
    elif kind == "cross":
        a = 0.3
        return [np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                          (-1, -a), (-a, -a)], dtype=float)]
    else:
        raise ValueError(kind)
    return [np.stack([np.cos(k), np.sin(k)], 1)]


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
    for i, poly in enumerate(_unit_outline(kind)):
        pts = (poly * scale) @ rot.T + np.array([cx - x0, cy - y0])  # (K, 2) in patch coordinates
        d.polygon([tuple(p) for p in pts.tolist()], fill=255 if i == 0 else 0)
    return np.asarray(im) > 0, x0, y0


def _mask_box(m: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight pixel box (x0, y0, x1, y1), x1/y1 exclusive, of a non-empty mask."""
    ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


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
    boxes = np.array([_mask_box(v) for v in vis], dtype=np.int64).reshape(-1, 4)
    return {"image": image, "labels": np.array(labels, dtype=np.int64), "masks": masks, "boxes": boxes}


def png_bytes(image: np.ndarray) -> bytes:
    """Deterministic PNG encoding (fixed zlib level, no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


# ----------------------------------------------------------------------------- writing the dataset

def _render_and_write(task) -> Dict[str, Any]:
    params, seed, split, index, path = task
    s = render_sample(params, seed, split, index)
    data = png_bytes(s["image"])
    with open(path, "wb") as f:
        f.write(data)
    h, w = s["image"].shape[:2]
    anns = [{"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": int(c), "area": int(m.sum())}
            for (x0, y0, x1, y1), c, m in zip(s["boxes"].tolist(), s["labels"].tolist(), s["masks"])]
    return {"index": index, "width": w, "height": h, "anns": anns, "sha256": hashlib.sha256(data).hexdigest()}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _paths(root: str) -> Dict[str, str]:
    return {
        "root": root,
        "train_images": os.path.join(root, "train"),
        "val_images": os.path.join(root, "val"),
        "train_ann": os.path.join(root, "annotations", "instances_train.json"),
        "val_ann": os.path.join(root, "annotations", "instances_val.json"),
        "manifest": os.path.join(root, "manifest.json"),
    }


def _manifest_matches(root: str, expected: Dict[str, Any]) -> bool:
    path = _paths(root)["manifest"]
    try:
        with open(path, "r", encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, ValueError):
        return False
    if {k: man.get(k) for k in expected} != expected:
        return False
    files = man.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, digest in files.items():
        p = os.path.join(root, rel)
        if not os.path.isfile(p) or _sha256_file(p) != digest:
            return False
    return True


@contextlib.contextmanager
def _lock(root: str):
    """Serialise generators writing the same root (POSIX advisory lock; a no-op elsewhere)."""
    os.makedirs(root, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(os.path.join(root, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _coco_json(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    images, anns = [], []
    for r in sorted(results, key=lambda r: r["index"]):
        image_id = r["index"] + 1
        images.append({"id": image_id, "file_name": f"{r['index']:06d}.png", "width": r["width"], "height": r["height"]})
        for a in r["anns"]:
            anns.append({"id": len(anns) + 1, "image_id": image_id, **a, "iscrowd": 0})
    return {
        "info": {"description": "detr_nb synthetic shapes", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }


def ensure_synthetic(root: str = DEFAULT_ROOT, *, seed: int = DEFAULT_SEED, num_train: int = DEFAULT_NUM_TRAIN,
                     num_val: int = DEFAULT_NUM_VAL, image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
                     min_objects: int = DEFAULT_MIN_OBJECTS, max_objects: int = DEFAULT_MAX_OBJECTS,
                     object_size: Sequence[float] = DEFAULT_OBJECT_SIZE, min_object_px: int = DEFAULT_MIN_OBJECT_PX,
                     aspect: Sequence[float] = DEFAULT_ASPECT,
                     max_occlusion: float = DEFAULT_MAX_OCCLUSION, noise_std: float = DEFAULT_NOISE_STD,
                     max_lines: int = DEFAULT_MAX_LINES, workers: int = DEFAULT_WORKERS,
                     progress: bool = True) -> Dict[str, str]:
    """Write the synthetic dataset under ``root`` unless it is already there and matches; return its paths.

    Layout: ``root/train/000000.png ...``, ``root/val/...``, ``root/annotations/instances_{train,val}.json``,
    ``root/manifest.json`` (parameters + sha256 of every file, written last). Returns a dict with keys
    ``root, train_images, train_ann, val_images, val_ann, manifest``.
    """
    root = str(root)
    params = synthetic_params(image_size=tuple(image_size), min_objects=min_objects, max_objects=max_objects,
                              object_size=tuple(object_size), min_object_px=min_object_px, aspect=tuple(aspect),
                              max_occlusion=max_occlusion, noise_std=noise_std, max_lines=max_lines)
    expected = {"generator": "detr_nb.data.synthetic", "version": GENERATOR_VERSION, "seed": int(seed),
                "num_train": int(num_train), "num_val": int(num_val), "params": params}
    paths = _paths(root)
    with _lock(root):
        if _manifest_matches(root, expected):
            return paths
        # Remove only what this generator writes, then draw everything again.
        for sub in ("train", "val", "annotations"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(paths["manifest"])
        files: Dict[str, str] = {}
        for split, n in (("train", int(num_train)), ("val", int(num_val))):
            os.makedirs(paths[f"{split}_images"], exist_ok=True)
            tasks = [(params, int(seed), split, i, os.path.join(paths[f"{split}_images"], f"{i:06d}.png"))
                     for i in range(n)]
            results = _run(tasks, workers, progress, desc=f"synthetic {split}")
            for r in results:
                files[f"{split}/{r['index']:06d}.png"] = r["sha256"]
            os.makedirs(os.path.dirname(paths[f"{split}_ann"]), exist_ok=True)
            text = json.dumps(_coco_json(results), separators=(",", ":"))
            with open(paths[f"{split}_ann"], "w", encoding="utf-8") as f:
                f.write(text)
            files[f"annotations/instances_{split}.json"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        with open(paths["manifest"], "w", encoding="utf-8") as f:
            json.dump({**expected, "files": files}, f, indent=1)
    return paths


def _run(tasks, workers: int, progress: bool, desc: str) -> List[Dict[str, Any]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc=desc, disable=not progress or len(tasks) < 200, leave=False)
    out = []
    if workers <= 1 or len(tasks) < 2 * workers:
        for t in tasks:
            out.append(_render_and_write(t))
            bar.update()
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            for r in pool.imap_unordered(_render_and_write, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers)))):
                out.append(r)
                bar.update()
    bar.close()
    return sorted(out, key=lambda r: r["index"])
