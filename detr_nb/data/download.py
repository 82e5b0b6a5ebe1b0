"""Resumable, verified downloads and safe archive extraction (notebook 06, data).

``download(url, dest, sha256=..., md5=..., size=...)`` writes into ``dest + ".part"``, resumes an existing
``.part`` with an HTTP ``Range`` request (or a seek for ``file://`` URLs), shows a ``tqdm.auto`` bar,
verifies size and hash, and only then renames the file into place (atomic). A hash mismatch raises
:class:`DownloadError` naming the file, the expected and the actual hash; the bad file is removed and
nothing else is touched.

Where no hash is published, the sha256 of the first download is written next to the file
(``dest + ".sha256"``, *trust on first use*) and checked on every later use.

Why not ``torchvision.datasets.utils`` (``download_url``, ``extract_archive``), which we already depend on: its
download cannot resume a cut transfer (COCO's train images are 19 GB, a Colab session lasts hours), checks md5
only (no sha256, hence no trust on first use), and writes the final file in place (a crash leaves a partial
file under the real name); its extraction calls ``extractall`` without checking members, so an archive could
write outside the cache (``../``, absolute names, links). This module keeps exactly those four things.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import Optional

CHUNK = 1 << 20
USER_AGENT = "detr_nb-downloader/1.0"


class DownloadError(RuntimeError):
    """A download that failed, was cut off, or does not match its expected size or hash."""


def cache_dir() -> str:
    """Where datasets go: ``$DETR_NB_CACHE``, else ``/content/detr_nb_cache`` in Colab, else ``~/.cache/detr_nb``."""
    if os.environ.get("DETR_NB_CACHE"):
        return os.environ["DETR_NB_CACHE"]
    if "google.colab" in sys.modules:
        return "/content/detr_nb_cache"
    return os.path.join(os.path.expanduser("~"), ".cache", "detr_nb")


def file_hash(path: str, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str, *, sha256: Optional[str] = None, md5: Optional[str] = None,
           size: Optional[int] = None, name: Optional[str] = None) -> None:
    """Raise :class:`DownloadError` when ``path`` has the wrong size or hash."""
    name = name or path
    if size is not None and os.path.getsize(path) != size:
        raise DownloadError(f"{name}: size mismatch: expected {size} bytes, got {os.path.getsize(path)}")
    for algo, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_hash(path, algo)
            if actual.lower() != expected.lower():
                raise DownloadError(f"{name}: {algo} mismatch: expected {expected}, got {actual}")


def _open(url: str, offset: int, timeout: float):
    """Open ``url`` from byte ``offset``; returns (stream, total size or None, resumed: bool)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        f = open(path, "rb")
        total = os.fstat(f.fileno()).st_size
        offset = min(offset, total)
        f.seek(offset)
        return f, total, offset > 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range not satisfiable: the .part is already complete (or bigger)
            return None, None, True
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    length = resp.headers.get("Content-Length")
    if resp.status == 206:
        crange = resp.headers.get("Content-Range", "")  # bytes start-end/total
        total = int(crange.rsplit("/", 1)[1]) if "/" in crange and not crange.endswith("*") else (
            offset + int(length) if length else None)
        return resp, total, True
    return resp, (int(length) if length else None), False


def _fetch(url: str, part: str, size: Optional[int], progress: bool, timeout: float, desc: str) -> None:
    from tqdm.auto import tqdm

    offset = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and offset > size:  # a stale, larger .part: start over
        os.remove(part)
        offset = 0
    if size is not None and offset == size:
        return
    stream, total, resumed = _open(url, offset, timeout)
    if stream is None:
        return
    if not resumed:
        offset = 0  # the server ignored the range: write from the start
    with stream, open(part, "ab" if resumed else "wb") as out, \
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=desc, disable=not progress) as bar:
        received = offset
        try:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
            raise DownloadError(f"{url}: connection lost after {received} bytes ({e!r}); "
                                f"the partial file {part} is kept and the next call resumes it") from None
    if total is not None and received < total:
        raise DownloadError(f"{url}: got {received} of {total} bytes; the partial file {part} is kept "
                            f"and the next call resumes it")


def download(url: str, dest: str, *, sha256: Optional[str] = None, md5: Optional[str] = None,
             size: Optional[int] = None, progress: bool = True, retries: int = 2,
             timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` (resumable, verified, atomic) and return ``dest``.

    An existing ``dest`` that verifies is returned at once; one that does not is removed and fetched again.
    With neither ``sha256`` nor ``md5``, the sha256 recorded in ``dest + ".sha256"`` by the first
    download is the reference (trust on first use; the value is printed once).
    Network errors are retried ``retries`` times, each resuming the ``.part`` file.
    """
    dest = str(dest)
    part, sidecar = dest + ".part", dest + ".sha256"
    name = os.path.basename(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tofu = sha256 is None and md5 is None
    if tofu and os.path.exists(sidecar):
        with open(sidecar, "r", encoding="utf-8") as f:
            sha256 = f.read().split()[0]
    if os.path.exists(dest):
        try:
            verify(dest, sha256=sha256, md5=md5, size=size, name=dest)
            return dest
        except DownloadError as e:
            print(f"{e}; downloading it again")
            os.remove(dest)
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, size, progress, timeout, desc=name)
            break
        except DownloadError:
            if attempt == retries:
                raise
        except (urllib.error.URLError, OSError) as e:
            if attempt == retries:
                raise DownloadError(f"{url}: {e}") from None
    try:
        verify(part, sha256=sha256, md5=md5, size=size, name=dest)
    except DownloadError as e:
        os.remove(part)
        raise DownloadError(f"{e} (the bad download was removed)") from None
    os.replace(part, dest)
    if tofu and not os.path.exists(sidecar):
        digest = file_hash(dest)
        with open(sidecar, "w", encoding="utf-8") as f:
            f.write(f"{digest}  {name}\n")
        print(f"{name}: no published hash; recorded sha256 {digest} in {sidecar} (trust on first use)")
    return dest


# ----------------------------------------------------------------------------- extraction

def _inside(root: str, name: str) -> bool:
    target = os.path.realpath(os.path.join(root, name))
    return target == root or target.startswith(root + os.sep)


def extract(archive: str, dest_dir: str) -> str:
    """Extract a zip or tar(.gz) into ``dest_dir``, refusing members that would land outside it.

    A marker file ``.extracted-<archive name>`` makes a second call a no-op.
    """
    root = os.path.realpath(dest_dir)
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, f".extracted-{os.path.basename(archive)}")
    if os.path.exists(marker):
        return dest_dir
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if os.path.isabs(info.filename) or not _inside(root, info.filename):
                    raise DownloadError(f"{archive}: member {info.filename!r} would be written outside {dest_dir}")
            z.extractall(root)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = t.getmembers()
            for m in members:
                if os.path.isabs(m.name) or not _inside(root, m.name):
                    raise DownloadError(f"{archive}: member {m.name!r} would be written outside {dest_dir}")
                if m.issym() or m.islnk():
                    link = m.linkname if m.islnk() else os.path.join(os.path.dirname(m.name), m.linkname)
                    if os.path.isabs(m.linkname) or not _inside(root, link):
                        raise DownloadError(f"{archive}: link {m.name!r} -> {m.linkname!r} points outside {dest_dir}")
                if m.isdev():
                    raise DownloadError(f"{archive}: member {m.name!r} is a device file")
            if hasattr(tarfile, "data_filter"):
                t.extractall(root, members=members, filter="data")
            else:  # older Pythons: the checks above are the filter
                t.extractall(root, members=members)
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive")
    open(marker, "w").close()
    return dest_dir
