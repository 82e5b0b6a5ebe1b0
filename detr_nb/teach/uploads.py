"""Files in and out of a notebook (notebook 11): your own photo through Colab's file picker or the bytes of
``ipywidgets.FileUpload``; your exported model back to your computer (:func:`colab_download`).

In Colab, :func:`colab_upload` opens ``google.colab.files.upload()``: Colab's runtime delivers the value of an
``ipywidgets.FileUpload`` empty for files of 1 MB or more (ipywidgets issue 3452, open), which covers most phone
photos. Elsewhere the widget works: ipywidgets 7 gives ``FileUpload.value`` as a dict ``{file name: {"metadata":
{...}, "content": bytes}}``, ipywidgets 8 as a tuple of dicts ``{"name", "type", "size", "content": memoryview}``;
:func:`uploaded_files` reads both. :func:`first_photo` turns what arrived into an image, or says in one line why
there is none.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from PIL import Image

from ..data import open_image
from ..errors import UserError


def uploaded_files(upload) -> List[Tuple[str, bytes]]:
    """``[(file name, bytes)]`` of a FileUpload widget (or of its ``value``), ipywidgets 7 or 8."""
    value = getattr(upload, "value", upload)
    if isinstance(value, dict):          # ipywidgets 7
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value or ()]    # ipywidgets 8


def image_from_bytes(data: bytes) -> Image.Image:
    """An uploaded file as an upright RGB PIL image (EXIF orientation applied), read by the package's one image
    reader (which reads files)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(bytes(data))
        image = open_image(str(path))
        image.load()
        return image.copy()


def colab_upload() -> List[Tuple[str, bytes]]:
    """``[(file name, bytes)]`` chosen in Colab's file picker (it opens below the running cell)."""
    from google.colab import files   # only in Colab

    return [(name, bytes(data)) for name, data in files.upload().items()]


def first_photo(files: List[Tuple[str, bytes]], log=print) -> Optional[Tuple[str, Image.Image]]:
    """``(name, upright RGB image)`` of the first uploaded file, or None after one line saying why: no file, a
    file that arrived empty (the widget in Colab, for files of 1 MB or more), or a file that is not an image."""
    if not files:
        log("no photo arrived: choose a file (or give a URL) and run the cell again")
        return None
    name, data = files[0]
    if not data:
        log(f"{name} arrived empty: in Colab the upload widget drops files of 1 MB or more; use the Colab file "
            f"picker (the cell above) or a URL")
        return None
    try:
        return name, image_from_bytes(data)
    except (OSError, ValueError, UserError) as e:
        log(f"{name} is not an image this notebook can read ({e})")
        return None


def colab_download(*paths) -> List[Path]:
    """Send files to your computer: Colab's ``files.download`` for each (a folder goes as a .zip beside it);
    elsewhere says where they are. Returns the files."""
    files = [Path(shutil.make_archive(str(p), "zip", p)) if Path(p).is_dir() else Path(p) for p in paths]
    try:
        from google.colab import files as colab_files   # only in Colab
    except ImportError:
        print("not in Colab; the files are here:", ", ".join(str(f) for f in files))
        return files
    for f in files:
        colab_files.download(str(f))
    return files
