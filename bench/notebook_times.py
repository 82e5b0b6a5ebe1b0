"""Wall time of each notebook on this machine (what the notebooks' cost lines quote).

    python bench/notebook_times.py 07 11                       # smoke mode, these notebooks; none given: all
    python bench/notebook_times.py 07 --full --keep runs/nb    # full mode, the executed notebook kept

Runs each notebook top to bottom in a fresh kernel, as CI does (smoke mode: DETR_NB_SMOKE=1; a temporary
work directory), and prints one line per notebook: kernel start excluded, every cell included. It also
prints the load average before and after, since the times grow with whatever else the cores are doing.
``--keep DIR`` writes each executed notebook, outputs included, to DIR (its numbers and figures).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detr_nb.teach import nbtools  # noqa: E402


def time_notebook(py: Path, keep: Optional[Path] = None, timeout: int = 600) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbtools.build_notebook(py)
    with tempfile.TemporaryDirectory() as work:
        os.environ["DETR_NB_WORKDIR"] = work
        client = NotebookClient(nb, timeout=timeout, startup_timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(nbtools.NOTEBOOK_DIR)}})
        try:
            with client.setup_kernel():
                start = time.perf_counter()
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
                return time.perf_counter() - start
        finally:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, str(keep / f"{py.stem}.ipynb"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="notebook number prefixes (default: all)")
    parser.add_argument("--full", action="store_true", help="full mode (DETR_NB_SMOKE unset) instead of smoke mode")
    parser.add_argument("--keep", type=Path, default=None, help="write the executed notebooks to this folder")
    parser.add_argument("--cell-timeout", type=int, default=3600, help="seconds one cell may take (default: 3600)")
    args = parser.parse_args(argv)
    os.environ.update(MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if args.full:
        os.environ.pop("DETR_NB_SMOKE", None)
    else:
        os.environ["DETR_NB_SMOKE"] = "1"
    sources = [p for p in nbtools.sources() if not args.only or p.name.split("_")[0] in args.only]
    print(f"{'full' if args.full else 'smoke'} mode; load average before: {os.getloadavg()[0]:.2f} | "
          f"{os.cpu_count()} cores")
    for py in sources:
        print(f"{py.stem:45s} {time_notebook(py, args.keep, args.cell_timeout):6.1f} s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
