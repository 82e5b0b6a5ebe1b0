"""Every notebook as Google Colab runs it, in smoke mode: a fresh runtime per notebook.

    python .ci/colab_notebooks.py                 # all notebooks; run by .ci/run in its Colab venv
    python .ci/colab_notebooks.py 08 11           # some of them

Run it with the Python of a venv that holds Colab's preinstalled packages (.ci/colab.txt, built by
.ci/venv.sh, its kernelspec on JUPYTER_PATH). For each notebook, as in Colab:

* the packages are Colab's only: detr_nb and the export extra (onnx, onnxruntime, onnxscript, onnx-ir) are
  uninstalled first, protobuf is Colab's, and whatever a notebook installed is removed after it;
* a fresh kernel in a fresh working folder (the runtime's /content); `google.colab` is importable when the
  kernel starts (a stand-in: `files.upload` returns no file, `files.download` copies into downloads/,
  `drive.mount` makes a folder that every notebook shares, as Google Drive is shared between runtimes);
* the committed .ipynb, its setup cell run for real: `pip install` of this commit from a local clone in place
  of the GitHub URL.

Exit status 1 when any notebook fails; each failure is printed with the line that says why.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
# The URL the setup cells install from: the package's REPO_URL and REPO_BRANCH, read without importing it.
INIT = (REPO / "detr_nb" / "__init__.py").read_text()
OFFICIAL = "git+{}@{}".format(*(re.search(rf'^{k} = "([^"]+)"', INIT, re.M).group(1) for k in ("REPO_URL", "REPO_BRANCH")))

EXTRAS = ["detr_nb", "onnx", "onnxruntime", "onnxscript", "onnx-ir"]   # not in Colab's runtime
COLAB_PROTOBUF = "protobuf==5.29.6"                                    # Colab's own (2026)
STAND_IN = {
    "google/colab/__init__.py": '"""A stand-in for Colab\'s module (CI)."""\nfrom . import drive, files  # noqa: F401\n',
    "google/colab/files.py": '''import os, shutil

def upload():
    """No file chosen: Colab's upload dialog, cancelled."""
    print("(stand-in) no file uploaded")
    return {}

def download(path):
    folder = os.environ["COLAB_STAND_IN_DOWNLOADS"]
    os.makedirs(folder, exist_ok=True)
    shutil.copy(path, folder)
    print(f"(stand-in) downloaded {path}")
''',
    "google/colab/drive.py": '''import os

def mount(mount_point, force_remount=False):
    os.makedirs(os.path.join(mount_point, "MyDrive"), exist_ok=True)
    print(f"(stand-in) Drive mounted at {mount_point}")
''',
    "ipython/profile_default/startup/00-colab.py": "import google.colab  # noqa: F401  (Colab imports it first)\n",
}


def pip(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True, text=True).stdout


def freeze() -> dict:
    lines = [line.split("==") for line in pip("freeze").splitlines() if "==" in line]
    return {name.lower(): version for name, version in lines}


def restore(baseline: dict) -> None:
    """The venv as ``baseline`` (a :func:`freeze`): what was installed since removed, what changed or went put
    back."""
    now = freeze()
    added = [n for n in now if n not in baseline]
    other = [f"{n}=={v}" for n, v in baseline.items() if now.get(n) != v]
    if added:
        pip("uninstall", "-q", "-y", *added)
    if other:
        pip("install", "-q", "--no-deps", *other)


def run_notebook(path: Path, source: str, drive: Path, work: Path) -> str:
    """Execute one notebook in a fresh runtime; '' when it passed, else the line that says why."""
    for rel, text in STAND_IN.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    content = work / "content"
    content.mkdir()
    nb = nbformat.read(path, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    if OFFICIAL not in setup.source:
        return f"its setup cell does not install {OFFICIAL}"
    setup.source = setup.source.replace(OFFICIAL, source)
    env = {**os.environ, "DETR_NB_SMOKE": "1", "DETR_NB_WORKDIR": str(content / "detr_nb"),
           "DETR_NB_DRIVE": str(drive), "COLAB_STAND_IN_DOWNLOADS": str(work / "downloads"),
           "IPYTHONDIR": str(work / "ipython"), "PYTHONPATH": str(work), "MPLBACKEND": "Agg",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    client = NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(content)}})
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))          # the traceback's colours
        lines = [line for line in text.splitlines() if re.match(r"^\w*(Error|Exception|Exit)\b", line)]
        return lines[-1] if lines else text.splitlines()[-1]
    return ""


def main(argv) -> int:
    only = [a for a in argv if not a.startswith("-")]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    source = f"git+file://localhost{REPO}@{commit}"   # a host: pip refuses "name @ git+file:///path"
    notebooks = [p for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
                 if not only or any(p.name.startswith(o) for o in only)]
    initial = freeze()                   # put back at the end: the venv serves the suite's Colab phase too
    pip("uninstall", "-q", "-y", *EXTRAS)
    pip("install", "-q", "--no-deps", COLAB_PROTOBUF)
    baseline = freeze()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        drive = Path(tmp) / "drive"       # Google Drive: shared by every notebook's runtime
        for i, path in enumerate(notebooks):
            t0 = time.perf_counter()
            work = Path(tmp) / f"runtime-{i}"
            why = run_notebook(path, source, drive, work)
            restore(baseline)
            print(f"{path.name:45s} {'ok' if not why else 'FAILED: ' + why}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            failed += bool(why)
    restore(initial)
    print(f"{len(notebooks) - failed} of {len(notebooks)} notebooks passed as Colab runs them")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
