"""``python -m detr_nb compare``: the three approaches and the initialisation study (detr_nb.study.compare).

Every ``train`` option sets what all runs share (defaults: the recipe ``study``, :mod:`detr_nb.engine.recipes`;
``--max-steps`` or ``--time-budget`` is each run's budget, training only: evaluations and checkpoint writes are
not counted; ``--out`` the comparison's folder); the options below choose the runs.

Run the same command again and the finished runs are not retrained (their recorded results are used), an
interrupted run resumes from its checkpoint, and a run whose settings changed starts afresh; ``--no-resume``
retrains every run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List

from ..study.compare import APPROACHES, INITS, CompareConfig, compare_train_config, run_comparison
from .options import add_config_options, add_set_option, config_from_args


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text.strip().lower() not in ("", "none") else []


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="three approaches + init study on the same data, seeds and budget; "
                                              "rerun: finished runs are kept, interrupted ones resume")
    add_config_options(p, defaults=compare_train_config().to_dict())
    add_set_option(p)
    p.add_argument("--approaches", type=_csv, default=list(APPROACHES),
                   help=f"comma list of {','.join(APPROACHES)} (default: all)")
    p.add_argument("--inits", type=_csv, default=list(INITS),
                   help=f"comma list of init schemes, none = skip the init study (default: {','.join(INITS)})")
    p.add_argument("--init-impl", default="torch", help="torch | scratch layers of the init study (default: torch)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=[0],
                   help="comma list of seeds; every run is repeated for each (default: 0)")
    p.add_argument("--pretrained-model", default="detr_r50",
                   help="the official checkpoint of approach pretrained (default: detr_r50)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="allow downloading the official weights (default: only in Colab)")
    p.add_argument("--redraw", action="store_true",
                   help="no training: rewrite table.md and the figures of the finished comparison in --out")
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args) -> int:
    if args.redraw:
        from ..study.report import redraw
        out = getattr(args, "out", compare_train_config().out)
        redraw(out)
        print((Path(out) / "table.md").read_text())
        return 0
    train = config_from_args(args, base=_base(args))
    cfg = CompareConfig(train=train, approaches=args.approaches, inits=args.inits, init_impl=args.init_impl,
                        seeds=args.seeds, pretrained_model=args.pretrained_model, download=args.download)
    t0 = time.perf_counter()
    report = run_comparison(cfg)
    print((Path(train.out) / "table.md").read_text())
    print(f"{len(report['runs'])} runs in {time.perf_counter() - t0:.0f} s; "
          f"output directory: {Path(train.out).resolve()}")
    return 0


def _base(args) -> dict:
    """The recipe ``study``; a time budget given replaces its step budget."""
    base = {"recipe": "study"}
    if getattr(args, "time_budget_s", None) is not None:
        base["max_steps"] = None
    return base
