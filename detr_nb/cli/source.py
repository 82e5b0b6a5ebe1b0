"""Where ``evaluate`` and ``predict`` take their model from: a run, a checkpoint file or official weights."""
from __future__ import annotations

import sys
from pathlib import Path

from ..engine.config import TrainConfig


def add_model_source(q) -> None:
    q.add_argument("--run", help="a run directory (uses its newest good checkpoint)")
    q.add_argument("--best", action="store_true", help="with --run: its best.pth instead of the newest")
    q.add_argument("--checkpoint", help="a checkpoint file")
    q.add_argument("--pretrained", help="official DETR weights by name, e.g. detr_r50 (COCO classes)")
    q.add_argument("--impl", default=None, help="torch | scratch (default: as trained)")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    q.add_argument("--preset", default=None, help="transform preset (default: as trained)")


def checkpoint_path(run_or_file: str, best: bool = False) -> Path:
    """A checkpoint file from a file or a run directory (the newest good one, or best.pth with ``best``)."""
    from ..engine import checkpoint as ck
    from ..errors import UserError

    p = Path(run_or_file)
    if p.is_file():
        return p
    for d in (p / "checkpoints", p):
        if best and (d / ck.BEST).is_file():
            try:
                ck.load_checkpoint(d / ck.BEST)
                return d / ck.BEST
            except ck.CheckpointError as e:
                print(f"[checkpoint] {e}", file=sys.stderr)
        found = ck.load_latest(d, log=lambda m: print(m, file=sys.stderr)) if d.is_dir() else None
        if found is not None:
            return found[1]
    raise UserError(f"no checkpoint found in {p}")


def load_model(args, device):
    """(model, saved TrainConfig or None, categories) from --run / --checkpoint / --pretrained."""
    from ..engine import checkpoint as ck
    from ..errors import UserError
    from ..engine.build import model_from_checkpoint

    if args.pretrained:
        from ..configs import build_model
        from ..model.pretrained import CHECKPOINTS, COCO_CLASSES, load_pretrained
        if args.pretrained not in CHECKPOINTS:
            raise UserError(f"--pretrained {args.pretrained}: not a released DETR; one of {', '.join(CHECKPOINTS)}")
        model = build_model(args.pretrained, num_classes=91, impl=args.impl or "torch")
        load_pretrained(model, args.pretrained)
        return model.to(device).eval(), None, dict(COCO_CLASSES)
    source = args.checkpoint or args.run
    if not source:
        raise UserError("give --run DIR, --checkpoint FILE or --pretrained NAME")
    path = checkpoint_path(source, best=getattr(args, "best", False))
    state = ck.load_checkpoint(path)
    print(f"checkpoint {path} (epoch {state['epoch']}, step {state['step']})")
    model = model_from_checkpoint(state, device, impl=args.impl)
    return model, TrainConfig.from_dict(state["config"]), state.get("categories")
