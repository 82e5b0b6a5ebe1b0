"""Wall time of each notebook in smoke mode on this machine (what the notebooks' cost lines quote).

    python bench/notebook_times.py 07 11           # these notebooks (number prefixes); none given: all

Runs each notebook top to bottom in a fresh kernel, as CI does (DETR_NB_SMOKE=1, a temporary work
directory), and prints one line per notebook: kernel start excluded, every cell included. It also prints
the load average before and after, since the times grow with whatever else the cores are doing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detr_nb.teach import nbtools  # noqa: E402


def time_notebook(py: Path) -> float:
    from nbclient import NotebookClient

    nb = nbtools.build_notebook(py)
    with tempfile.TemporaryDirectory() as work:
        os.environ["DETR_NB_WORKDIR"] = work
        client = NotebookClient(nb, timeout=600, startup_timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(nbtools.NOTEBOOK_DIR)}})
        with client.setup_kernel():
            start = time.perf_counter()
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="notebook number prefixes (default: all)")
    args = parser.parse_args(argv)
    os.environ.update(DETR_NB_SMOKE="1", MPLBACKEND="Agg",
                      PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    sources = [p for p in nbtools.sources() if not args.only or p.name.split("_")[0] in args.only]
    print(f"load average before: {os.getloadavg()[0]:.2f} | {os.cpu_count()} cores")
    for py in sources:
        print(f"{py.stem:45s} {time_notebook(py):6.1f} s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
