"""A detector in the first minute (notebook 01, section 0): the main job's model, trained by the project and shipped.

``detector.pth`` (package data, 4 MB) is plain data in detr_nb's checkpoint format, read by
:func:`~detr_nb.checkpoint.load_checkpoint` (``weights_only=True``) and rebuilt by
:func:`~detr_nb.checkpoint.model_from_checkpoint` as any run: ``model_name``, ``model_config``, ``num_classes``,
``model`` (the state dict), ``categories`` and ``category_ids``, ``config`` (the run's, without its paths: the data
it was trained for), ``ap`` (``{"AP", "AP50"}`` on that run's synthetic validation set, the main job's 300 images)
and ``made`` (when, from which run, on what machine, by which command). Remade from a finished main-job run, its AP
measured and restated where the docs state it (``--out FILE`` writes elsewhere and leaves the docs alone)::

    python -m detr_nb.teach.first_minute runs/main
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import torch

from ..checkpoint import FORMAT, VERSION, atomic_write, load_latest, model_from_checkpoint
from ..data import build_dataset
from ..data.synthetic import synthetic_root
from ..errors import UserError
from ..evaluate import evaluate

DETECTOR = Path(__file__).with_name("detector.pth")
ROOT = Path(__file__).resolve().parents[2]
# Where the docs state the shipped detector's AP, in this one phrase (tests/test_first_minute.py reads it back).
STATED_IN = (ROOT / "notebooks" / "01_cnn_backbone.py", ROOT / "README.md")
STATED = re.compile(r"the shipped detector's AP (\d\.\d{3}) / AP50 (\d\.\d{3})")
KEPT_KEYS = ("model_name", "model_config", "num_classes", "categories", "category_ids", "model")  # no optimizer


def machine(speed: bool = False) -> str:
    """This machine in one line: CPU model, cores, GPU, and with ``speed`` ``bench/train_step.py --speed`` (minutes)."""
    cpu = (re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)   # Linux
           if os.path.exists("/proc/cpuinfo") else []) or [platform.processor() or platform.machine()]
    line = f"{cpu[0].strip()}, {os.cpu_count()} cores" + (f", GPU {torch.cuda.get_device_name(0)}"
                                                          if torch.cuda.is_available() else "")
    bench = ROOT / "bench" / "train_step.py"
    if speed and bench.is_file():
        run = subprocess.run([sys.executable, str(bench), "--speed"], capture_output=True, text=True, cwd=ROOT)
        found = re.search(r"machine speed: (\d+ ms per main-job step)", run.stdout)
        line += f", machine speed {found.group(1)} (`bench/train_step.py --speed`)" if found else ""
    return line


def validation_set(state: Dict, root: Optional[str] = None, num_val: Optional[int] = None):
    """The synthetic validation set the model of ``state`` (a checkpoint, the shipped detector) was trained for (its
    run's ``data_kwargs`` and preset; the first ``num_val`` images when given), drawn without the training images
    (image i is the same whatever the counts) into ``root`` (default ``data/synthetic-<hash>``): seconds for 300."""
    cfg = state["config"]
    if cfg["dataset"] != "synthetic":
        raise UserError(f"trained on {cfg['dataset']!r}: the shipped detector is the main job's, on synthetic shapes")
    kwargs = {**cfg["data_kwargs"], "num_train": 0, "progress": False, **({"num_val": num_val} if num_val else {})}
    return build_dataset("synthetic", cfg["val_split"], cfg["preset"], root=root or synthetic_root(kwargs), **kwargs)


def main(argv=None) -> int:
    """Remake the shipped detector from a run's newest good checkpoint: measure its AP on the run's validation set,
    write the file, and (at the packaged place) restate the AP in the docs and regenerate notebook 01's .ipynb."""
    parser = argparse.ArgumentParser(prog="python -m detr_nb.teach.first_minute", description=main.__doc__)
    parser.add_argument("run", help="a finished main-job run folder, e.g. runs/main (its newest good checkpoint)")
    parser.add_argument("--out", default=str(DETECTOR), help="default: the packaged file, and the docs restated")
    parser.add_argument("--data-root", help="where the validation images are drawn (default: data/synthetic-<hash>)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    found = load_latest(run / "checkpoints" if (run / "checkpoints").is_dir() else run)
    if found is None:
        raise SystemExit(f"no checkpoint in {run}: give a finished run of `python -m detr_nb train`")
    saved, path = found
    state = {"format": FORMAT, "version": VERSION, **{k: saved[k] for k in KEPT_KEYS},
             "config": {**saved["config"], "out": None, "data_root": None}}
    val_set = validation_set(state, args.data_root)
    stats = evaluate(model_from_checkpoint(state), val_set, verbose=False)
    state["ap"] = {"AP": stats["AP"], "AP50": stats["AP50"]}
    state["made"] = (f"{datetime.date.today()}: step {saved['step']} of {run.name} ({saved['elapsed_s']:.0f} s of "
                     f"training, {1000 * saved['elapsed_s'] / max(1, saved['step']):.0f} ms per step), {machine()}; "
                     f"by `python -m detr_nb.teach.first_minute {run}`")
    out = Path(args.out)
    atomic_write(out, lambda f: torch.save(state, f))
    ap = f"the shipped detector's AP {stats['AP']:.3f} / AP50 {stats['AP50']:.3f}"
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB) from {path}: {ap} on {len(val_set)} synthetic "
          f"validation images")
    if out.resolve() == DETECTOR.resolve():
        for doc in STATED_IN:
            text, count = STATED.subn(ap, doc.read_text())
            doc.write_text(text)
            print(f"restated it in {doc.relative_to(ROOT)} ({count} place{'s' * (count != 1)})")
        subprocess.run([sys.executable, "-m", "detr_nb.teach.nbtools", "sync"], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
