"""Wall time of each notebook on this machine (what the notebooks' cost lines quote).

    python bench/notebook_times.py 07 11                       # smoke mode, these notebooks; none given: all
    python bench/notebook_times.py 07 --full --keep runs/nb    # full mode, the executed notebook kept
    python bench/notebook_times.py --key-figures               # full mode, offline: docs/figures/

Runs each notebook top to bottom in a fresh kernel, as CI does (smoke mode: DETR_NB_SMOKE=1; a temporary
work directory), and prints one line per notebook: kernel start excluded, every cell included. It also
prints the load average before and after, since the times grow with whatever else the cores are doing.
``--keep DIR`` writes each executed notebook, outputs included, to DIR (its numbers and figures).
``--set NN:NAME=VALUE`` overrides a parameter of notebook NN (a cell run after its parameters cell, as
papermill does): the full runs here set off what needs a download. ``--workdir DIR`` gives all notebooks one
work directory, kept, as a learner's session has (08 then evaluates 07's checkpoint). ``--figures DIR`` writes
the image of each notebook's cell tagged ``key-figure`` to ``DIR/<notebook>.png`` and the run's facts to
``DIR/runs.json``: the figures the notebooks' first cells show (docs/figures/README.md). ``--key-figures``
is all of that for the notebooks whose full mode runs offline: ``--full --figures docs/figures``, one work
directory, and the downloads set off (:data:`OFFLINE`); notebook numbers given narrow it.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detr_nb.teach import nbtools  # noqa: E402

# What --key-figures runs: every notebook whose full mode needs no download once these are set. 09 and 11
# need a dataset and the official weights: their key figures wait for a run where those can be downloaded.
OFFLINE = {"01": ["PRETRAINED=False"], "04": ["LOAD_OFFICIAL=False"], "08": ["OFFICIAL=False"]}
KEY_FIGURE_NOTEBOOKS = ("01", "02", "03", "04", "05", "06", "07", "08", "10")


def parameter_cell(source: str):
    """A code cell that sets notebook parameters, run right after the notebook's own parameters cell."""
    import nbformat
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})


def with_parameters(nb, assignments: List[str]):
    """``nb`` with ``NAME = VALUE`` lines run after its cell tagged ``parameters``."""
    if not assignments:
        return nb
    at = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if not at:
        raise SystemExit("--set: the notebook has no cell tagged parameters")
    nb.cells.insert(at[0] + 1, parameter_cell("\n".join(f"{a.split('=', 1)[0].strip()} = {a.split('=', 1)[1].strip()}"
                                                          for a in assignments)))
    return nb


def key_figure(nb) -> Optional[bytes]:
    """The PNG of the last image shown by the cell tagged ``key-figure`` (None if it showed none)."""
    for cell in nb.cells:
        if "key-figure" in cell.metadata.get("tags", []):
            images = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            return base64.b64decode(images[-1]) if images else None
    return None


def time_notebook(py: Path, keep: Optional[Path] = None, timeout: int = 600, assignments: List[str] = (),
                  workdir: Optional[Path] = None):
    """Runs ``py`` top to bottom in a fresh kernel; returns (seconds, the executed notebook)."""
    import nbformat
    from nbclient import NotebookClient

    nb = with_parameters(nbtools.build_notebook(py), list(assignments))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DETR_NB_WORKDIR"] = str(workdir or tmp)
        client = NotebookClient(nb, timeout=timeout, startup_timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(nbtools.NOTEBOOK_DIR)}})
        try:
            with client.setup_kernel():
                start = time.perf_counter()
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
                return time.perf_counter() - start, nb
        finally:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, str(keep / f"{py.stem}.ipynb"))


def run_with_one_retry(py: Path, args, assignments: List[str], workdir: Optional[Path]):
    """:func:`time_notebook`, run once more in a fresh kernel when the first attempt hangs (a cell past
    ``--cell-timeout`` or a dead kernel: a stall between client and kernel, seen on a loaded shared machine),
    saying so in one line; a second hang, or a cell that raises, stops the script."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    try:
        return time_notebook(py, args.keep, args.cell_timeout, assignments, workdir)
    except (CellTimeoutError, DeadKernelError) as e:
        print(f"{py.stem}: {type(e).__name__} ({str(e).strip().splitlines()[0][:160]}); running it again", flush=True)
        return time_notebook(py, args.keep, args.cell_timeout, assignments, workdir)


def parse_sets(values: List[str]) -> Dict[str, List[str]]:
    """``["08:OFFICIAL=False", ...]`` -> ``{"08": ["OFFICIAL=False"], ...}``; one line for a malformed one."""
    sets: Dict[str, List[str]] = {}
    for v in values:
        nb, _, assignment = v.partition(":")
        if not nb or "=" not in assignment or not assignment.split("=", 1)[0].strip().isidentifier():
            raise SystemExit(f"--set {v!r}: expected NN:NAME=VALUE, e.g. 08:OFFICIAL=False")
        sets.setdefault(nb, []).append(assignment)
    return sets


def write_figure(figures: Path, py: Path, nb, seconds: float, assignments: List[str]) -> str:
    """Writes ``figures/<stem>.png`` and its entry in ``figures/runs.json``; returns what happened, in words."""
    png = key_figure(nb)
    if png is None:
        return "no key figure"
    figures.mkdir(parents=True, exist_ok=True)
    (figures / f"{py.stem}.png").write_bytes(png)
    record = figures / "runs.json"
    runs = json.loads(record.read_text()) if record.exists() else {}
    import torch
    runs[py.stem] = {"seconds": round(seconds, 1), "set": list(assignments), "cores": os.cpu_count(),
                     "load_average": round(os.getloadavg()[0], 2), "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d")}
    record.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
    return f"key figure -> {figures / (py.stem + '.png')}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="notebook number prefixes (default: all)")
    parser.add_argument("--full", action="store_true", help="full mode (DETR_NB_SMOKE unset) instead of smoke mode")
    parser.add_argument("--keep", type=Path, default=None, help="write the executed notebooks to this folder")
    parser.add_argument("--cell-timeout", type=int, default=1200,
                        help="seconds one cell may take before the notebook counts as hung (default: 1200)")
    parser.add_argument("--set", action="append", default=[], metavar="NN:NAME=VALUE",
                        help="a parameter of notebook NN, e.g. 08:OFFICIAL=False (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None, help="one work directory for all notebooks, kept")
    parser.add_argument("--figures", type=Path, default=None,
                        help="write each notebook's key figure here (with --full: docs/figures)")
    parser.add_argument("--key-figures", action="store_true",
                        help="the key figures: full mode, offline settings, one work directory, docs/figures")
    args = parser.parse_args(argv)
    sets = parse_sets(args.set)
    if args.key_figures:
        args.full = True
        args.figures = args.figures or ROOT / "docs" / "figures"
        args.only = args.only or list(KEY_FIGURE_NOTEBOOKS)
        for nb, assignments in OFFLINE.items():
            sets.setdefault(nb, []).extend(a for a in assignments if a not in sets.get(nb, []))
        sets = {nb: a for nb, a in sets.items() if nb in args.only}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    if args.figures is None:
        os.environ["MPLBACKEND"] = "Agg"           # figures are drawn but not kept
    else:
        os.environ.pop("MPLBACKEND", None)         # the kernel's inline backend: each figure becomes an output
    if args.full:
        os.environ.pop("DETR_NB_SMOKE", None)
    else:
        os.environ["DETR_NB_SMOKE"] = "1"
    sources = [p for p in nbtools.sources() if not args.only or p.name.split("_")[0] in args.only]
    unknown = set(sets) - {p.name.split("_")[0] for p in sources}
    if unknown:
        raise SystemExit(f"--set names notebook(s) {sorted(unknown)} that are not run")
    print(f"{'full' if args.full else 'smoke'} mode; load average before: {os.getloadavg()[0]:.2f} | "
          f"{os.cpu_count()} cores")
    shared = tempfile.TemporaryDirectory() if args.key_figures and args.workdir is None else None
    workdir = Path(shared.name) if shared else args.workdir
    for py in sources:
        assignments = sets.get(py.name.split("_")[0], [])
        seconds, nb = run_with_one_retry(py, args, assignments, workdir)
        note = write_figure(args.figures, py, nb, seconds, assignments) if args.figures else ""
        print(f"{py.stem:45s} {seconds:6.1f} s  {' '.join(assignments)}  {note}".rstrip(), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
