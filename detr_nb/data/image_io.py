"""Image files as a viewer shows them, upright and 8-bit RGB: one reader for training, evaluation and ``predict``
(notebook 06, data). Phones store a portrait photo as a landscape bitmap plus an EXIF orientation tag: applied by
:func:`open_image`, and by :func:`image_size` from the header only (for PNG, an ``eXIf`` chunk before the pixels,
as the PNG spec asks: one after them would mean decoding the whole file)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, PngImagePlugin

# Transparent pixels are composited on white: what browsers and most viewers show behind them.
BACKGROUND = (255, 255, 255)

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the stored bitmap upright (as PIL.ImageOps.exif_transpose).
_T = Image.Transpose
_UPRIGHT = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
            7: _T.TRANSVERSE, 8: _T.ROTATE_90}
_SWAPS_AXES = (5, 6, 7, 8)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (int32) is read as 16-bit data, 0..65535
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageHeader(NamedTuple):
    """What the header says: ``size`` (w, h) as displayed, ``raw_size`` (w, h) as stored, ``orientation`` 1..8."""
    size: Tuple[int, int]
    raw_size: Tuple[int, int]
    orientation: int


def read_header(path: str) -> ImageHeader:
    """Size and EXIF orientation (1 when absent or broken, as viewers read it) of an image file, without decoding
    pixels; raises ``OSError`` if unreadable."""
    with Image.open(path) as im:
        raw = (int(im.size[0]), int(im.size[1]))
        try:
            # PngImageFile.getexif() decodes the whole image to look past the pixel data; the base method
            # reads only the chunks the header read has seen.
            exif = Image.Image.getexif(im) if isinstance(im, PngImagePlugin.PngImageFile) else im.getexif()
            orientation = exif.get(ORIENTATION_TAG, 1)
        except Exception:  # a broken EXIF block is common in the wild
            orientation = 1
    if not (isinstance(orientation, int) and 1 <= orientation <= 8):
        orientation = 1
    return ImageHeader((raw[1], raw[0]) if orientation in _SWAPS_AXES else raw, raw, orientation)


def image_size(path: str) -> Tuple[int, int]:
    """``(w, h)`` of an image file as displayed (EXIF orientation applied), from its header only."""
    return read_header(path).size


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, pixel values mapped as a viewer would: 16-bit (``I;16*``, and ``I`` read as
    16-bit data) 0..65535 -> 0..255 rounded (PIL's own convert clips at 255: all white); float ``F`` 0..1 -> 0..255
    (skimage's and torchvision's convention), NaN -> 0; transparency composited on white; other modes by PIL."""
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT:
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)                     # (H, W)
        grey = ((a * 255 + 32767) // 65535).astype(np.uint8)
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.rint(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)
    elif im.mode in _ALPHA or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.int32)                      # (H, W, 4)
        alpha = rgba[:, :, 3:]
        out = (rgba[:, :, :3] * alpha + np.asarray(BACKGROUND, np.int32) * (255 - alpha) + 127) // 255
        return Image.fromarray(out.astype(np.uint8), "RGB")
    else:
        return im.convert("RGB")
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")             # (H, W, 3)


def open_image(path: str) -> Image.Image:
    """The image at ``path`` as a viewer shows it: upright and 8-bit RGB (the first frame of a multi-frame file).
    Raises ``FileNotFoundError``, or ``OSError`` (``ValueError`` for a mode PIL cannot convert) for a broken file."""
    method = _UPRIGHT.get(read_header(path).orientation)
    with Image.open(path) as im:
        im.load()  # decode before the file closes
        rgb = to_rgb(im)
    return rgb.transpose(method) if method is not None else rgb


def _problem(path: str, decode: bool) -> Optional[str]:
    """Why ``path`` cannot be read (one line), or None when it can."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as im:
            if decode:
                if im.format == "JPEG":
                    im.draft("RGB", (1, 1))  # decode at 1/8 scale: cheaper, still reads every byte
                im.load()
                to_rgb(im)
    except Exception as e:  # PIL raises several types for broken files
        return f"{type(e).__name__}: {e}".replace("\n", " ")
    return None


def find_unreadable(paths: Iterable[str], decode: bool = True) -> List[Tuple[str, str]]:
    """``[(path, reason)]`` for each file that is missing, has no readable header, or (``decode``) fails to decode.
    Threads (PIL decodes without the GIL; on network mounts they overlap the waits), one per CPU, at most 8."""
    paths = list(paths)
    workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(paths) > 64:
        with ThreadPoolExecutor(workers) as pool:
            reasons = list(pool.map(_problem, paths, [decode] * len(paths), chunksize=32))
    else:
        reasons = [_problem(p, decode) for p in paths]
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]
