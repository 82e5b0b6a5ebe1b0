"""Your own photo in a notebook: the bytes of ``ipywidgets.FileUpload``, whatever the ipywidgets version.

Colab ships ipywidgets 7.7, where ``FileUpload.value`` is a dict ``{file name: {"metadata": {...}, "content":
bytes}}``; ipywidgets 8 (a local Jupyter) made it a tuple of dicts ``{"name", "type", "size", "content":
memoryview, ...}``. :func:`uploaded_files` reads both.
"""
from __future__ import annotations

from typing import List, Tuple


def uploaded_files(upload) -> List[Tuple[str, bytes]]:
    """``[(file name, bytes)]`` of a FileUpload widget (or of its ``value``), ipywidgets 7 or 8."""
    value = getattr(upload, "value", upload)
    if isinstance(value, dict):          # ipywidgets 7
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value or ()]    # ipywidgets 8


def image_from_bytes(data: bytes):
    """An uploaded file as an upright RGB PIL image (EXIF orientation applied, as a viewer shows it)."""
    import tempfile
    from pathlib import Path
    from ..data.image_io import open_image

    with tempfile.TemporaryDirectory() as tmp:      # open_image reads files: the one reader for every image
        path = Path(tmp) / "upload"
        path.write_bytes(bytes(data))
        image = open_image(str(path))
        image.load()
        return image.copy()

