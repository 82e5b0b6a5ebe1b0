"""Open image files as a viewer shows them: upright, 8-bit RGB (notebook 06, data).

One reader for training, evaluation and ``predict``, so the three never disagree about a photo:

- :func:`open_image` ``(path) -> PIL.Image`` in mode RGB, turned upright by its EXIF orientation tag
  (phones store a portrait photo as a landscape bitmap plus "rotate 90°"), and converted with
  :func:`to_rgb` (16-bit, float, transparent, CMYK, 1-bit ... see there).
- :func:`read_header` / :func:`image_size` ``(path) -> (w, h)`` as displayed, from the header only: no
  pixel is decoded, so checking every image of a dataset stays cheap (about 20 µs per small PNG from the
  page cache; slow disks and network mounts cost one file open each).
- :func:`find_unreadable` ``(paths, decode=True)``: the files that cannot be opened (or decoded).

The orientation comes from what the header read sees (EXIF, or an XMP ``tiff:Orientation``). For PNG that
is an ``eXIf`` chunk placed before the pixel data, as the PNG spec asks; one placed after it is ignored
(finding it means decoding the whole file), by :func:`image_size` and :func:`open_image` alike, so the two
always agree.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, PngImagePlugin

# Transparent pixels are composited on white: what browsers and most viewers show behind them.
BACKGROUND = (255, 255, 255)

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the stored bitmap upright (as PIL.ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,   # stored turned 90° counter-clockwise: turn it clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = (5, 6, 7, 8)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (int32) is read as 16-bit data, 0..65535
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageHeader(NamedTuple):
    """What the header says: ``size`` (w, h) as displayed, ``raw_size`` (w, h) as stored, ``orientation`` 1..8."""
    size: Tuple[int, int]
    raw_size: Tuple[int, int]
    orientation: int


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image, read without decoding pixels; 1 when absent or invalid."""
    try:
        # PngImageFile.getexif() decodes the whole image to look past the pixel data; the base method reads
        # only the chunks the header read has seen.
        exif = Image.Image.getexif(im) if isinstance(im, PngImagePlugin.PngImageFile) else im.getexif()
        value = exif.get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is common in the wild; viewers ignore it, and so do we
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_header(path: str) -> ImageHeader:
    """Size and orientation of an image file from its header; raises ``OSError`` (or subclasses) if unreadable."""
    with Image.open(path) as im:
        raw = (int(im.size[0]), int(im.size[1]))
        orientation = exif_orientation(im)
    size = (raw[1], raw[0]) if orientation in _SWAPS_AXES else raw
    return ImageHeader(size, raw, orientation)


def image_size(path: str) -> Tuple[int, int]:
    """``(w, h)`` of an image file as displayed (EXIF orientation applied), from its header only."""
    return read_header(path).size


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """(H, W) uint8 -> RGB image."""
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


def to_rgb(im: Image.Image, background: Tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, pixel values mapped as a viewer would.

    - ``I;16`` / ``I;16B`` / ``I;16L`` and ``I`` (int32, e.g. 16-bit data from TIFF): 0..65535 -> 0..255,
      rounded (PIL's own convert clips at 255, so a 16-bit image loads all white); values outside are clipped.
    - ``F`` (float): 0.0..1.0 -> 0..255, the float-image convention of skimage and torchvision; values
      outside are clipped, NaN -> 0.
    - with transparency (``RGBA``, ``LA``, ``PA``, or ``P``/``L``/``RGB`` with a ``transparency`` key):
      composited on ``background`` (default white): ``round(c * a + bg * (1 - a))``.
    - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ... : PIL's ``convert("RGB")``.
    """
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT:
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)                    # (H, W)
        return _grey_to_rgb(((a * 255 + 32767) // 65535).astype(np.uint8))
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return _grey_to_rgb(np.rint(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8))
    if im.mode in _ALPHA or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.int32)                     # (H, W, 4)
        alpha = rgba[:, :, 3:]
        bg = np.asarray(background, dtype=np.int32)
        out = (rgba[:, :, :3] * alpha + bg * (255 - alpha) + 127) // 255
        return Image.fromarray(out.astype(np.uint8), "RGB")
    return im.convert("RGB")


def open_image(path: str, background: Tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The image at ``path`` as a viewer shows it: upright (EXIF orientation applied) and 8-bit RGB.

    Raises ``FileNotFoundError`` for a missing file and ``OSError`` (or ``ValueError`` for a mode PIL cannot
    convert) for a broken one; the first frame of a multi-frame file is used.
    """
    with Image.open(path) as im:
        orientation = exif_orientation(im)
        im.load()  # decode before the file closes
        rgb = to_rgb(im, background)
    method = _UPRIGHT.get(orientation)
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


def find_unreadable(paths: Iterable[str], decode: bool = True, workers: Optional[int] = None
                    ) -> List[Tuple[str, str]]:
    """``[(path, reason)]`` for each file that is missing, has no readable header, or (``decode``) fails to decode.

    Files are opened by ``workers`` threads (default: the CPU count, at most 8): PIL decodes without the GIL,
    and on network mounts the threads overlap the waits.
    """
    paths: Sequence[str] = list(paths)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(paths) > 64:
        with ThreadPoolExecutor(workers) as pool:
            reasons = list(pool.map(lambda p: _problem(p, decode), paths, chunksize=32))
    else:
        reasons = [_problem(p, decode) for p in paths]
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]
