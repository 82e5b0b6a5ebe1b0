"""``python -m detr_nb train``: train (or resume) a run, then evaluate it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import add_config_options, add_set_option, config_from_args


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train (or resume) a run, then evaluate it")
    add_config_options(p)
    add_set_option(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved configuration as JSON and exit without training")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..engine import distributed as D
    from ..engine.config import check_config
    from ..engine.metrics import NonFiniteLossError
    from ..engine.run import train

    cfg = config_from_args(args)
    if args.dry_run:
        check_config(cfg)
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
        return 0
    try:
        summary = train(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if D.detect_env().is_main:
        ev = summary.get("eval")
        if ev:
            print(f"AP {ev['AP']:.4f}  AP50 {ev['AP50']:.4f}  after {summary['step']} steps "
                  f"({summary['train_time_s']:.0f} s of training, {summary['images_per_s'] or 0:.1f} images/s)")
        print(f"output directory: {Path(summary['out']).resolve()}")
    return 130 if summary["stopped_by"] == "signal" else 0
