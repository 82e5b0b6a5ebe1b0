"""Resumable, verified downloads against a local HTTP server and file:// URLs (notebook 06, data)."""
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import pytest

from detr_nb.data.datasets import DownloadError, cache_dir, download, extract

PAYLOAD = bytes(range(256)) * 1000  # 256 kB


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}
    log = []          # (path, Range header)
    cut_after = None  # bytes to send before dropping the connection (once)

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        _Handler.log.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if _Handler.cut_after is not None:
            n, _Handler.cut_after = _Handler.cut_after, None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.files = {"/a.bin": PAYLOAD, "/b.bin": b"hello"}
    _Handler.log = []
    _Handler.cut_after = None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_http_download_verified(server, tmp_path):
    dest = tmp_path / "a.bin"
    assert download(server + "/a.bin", str(dest), sha256=SHA, md5=MD5, size=len(PAYLOAD), progress=False) == str(dest)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    n = len(_Handler.log)
    download(server + "/a.bin", str(dest), sha256=SHA, progress=False)  # present and valid: no request
    assert len(_Handler.log) == n


def test_resume_existing_part(server, tmp_path):
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:1000])
    download(server + "/a.bin", str(dest), sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.log == [("/a.bin", "bytes=1000-")]


def test_interrupted_then_resumed(server, tmp_path):
    dest = tmp_path / "a.bin"
    _Handler.cut_after = 5000
    with pytest.raises(DownloadError, match="resume"):
        download(server + "/a.bin", str(dest), sha256=SHA, retries=0, progress=False)
    part = tmp_path / "a.bin.part"
    assert part.exists() and 0 < part.stat().st_size < len(PAYLOAD) and not dest.exists()
    got = part.stat().st_size
    download(server + "/a.bin", str(dest), sha256=SHA, retries=0, progress=False)
    assert dest.read_bytes() == PAYLOAD and _Handler.log[-1] == ("/a.bin", f"bytes={got}-")
    _Handler.cut_after = 7000  # with retries the same call resumes by itself
    dest.unlink()
    download(server + "/a.bin", str(dest), md5=MD5, retries=1, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_hash_mismatch_removes_only_the_bad_file(server, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    download(server + "/b.bin", str(tmp_path / "b.bin"), md5=hashlib.md5(b"hello").hexdigest(), progress=False)
    bad = "0" * 64
    with pytest.raises(DownloadError) as e:
        download(server + "/a.bin", str(tmp_path / "a.bin"), sha256=bad, progress=False)
    msg = str(e.value)
    assert "a.bin" in msg and bad in msg and SHA in msg
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()
    assert keep.read_text() == "precious" and (tmp_path / "b.bin").read_bytes() == b"hello"


def test_http_404(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download(server + "/missing", str(tmp_path / "m"), retries=0, progress=False)


def test_file_url_and_tofu(tmp_path, capsys):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "x.bin"
    dest.parent.mkdir()
    (tmp_path / "out" / "x.bin.part").write_bytes(b"x" * 777)  # a file:// URL is read from the start
    download(src.as_uri(), str(dest), progress=False)  # no hash: trust on first use
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "out" / "x.bin.sha256").read_text().split()[0] == SHA
    assert SHA in capsys.readouterr().out
    dest.write_bytes(b"tampered")  # the recorded hash now catches a changed file, which is fetched again
    download(src.as_uri(), str(dest), progress=False)
    assert dest.read_bytes() == PAYLOAD
    src.write_bytes(b"the source changed")
    dest.unlink()
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(src.as_uri(), str(dest), progress=False)


def test_size_mismatch(tmp_path):
    src = tmp_path / "s.bin"
    src.write_bytes(b"12345")
    with pytest.raises(DownloadError, match="size mismatch"):
        download(src.as_uri(), str(tmp_path / "d.bin"), size=6, progress=False)
    assert not (tmp_path / "d.bin").exists()


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DETR_NB_CACHE", str(tmp_path))
    assert cache_dir() == str(tmp_path)
    monkeypatch.delenv("DETR_NB_CACHE")
    monkeypatch.setitem(__import__("sys").modules, "google.colab", object())
    assert cache_dir() == "/content/detr_nb_cache"


def test_extract_zip_tar_and_traversal(tmp_path):
    z = tmp_path / "ok.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("d/a.txt", "A")
    extract(str(z), str(tmp_path / "x"))
    assert (tmp_path / "x" / "d" / "a.txt").read_text() == "A"
    t = tmp_path / "ok.tar.gz"
    with tarfile.open(t, "w:gz") as f:
        info = tarfile.TarInfo("d/b.txt")
        info.size = 1
        f.addfile(info, io.BytesIO(b"B"))
    extract(str(t), str(tmp_path / "x"))
    assert (tmp_path / "x" / "d" / "b.txt").read_text() == "B"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as f:
        f.writestr("../escape.txt", "no")
    with pytest.raises(DownloadError, match="outside"):
        extract(str(evil), str(tmp_path / "y"))
    assert not (tmp_path / "escape.txt").exists()
    evil_tar = tmp_path / "evil.tar"
    with tarfile.open(evil_tar, "w") as f:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        f.addfile(info)
    with pytest.raises(DownloadError, match="outside"):
        extract(str(evil_tar), str(tmp_path / "z"))
