"""Command line: ``python -m detr_nb train | evaluate | predict | compare`` (notebooks 07-09 make the same calls).

    python -m detr_nb train                                   # the main job: synthetic data, CPU, 540 s budget
    python -m detr_nb train --time-budget 60 --set data_kwargs.num_train=400 --set data_kwargs.num_val=50
    python -m detr_nb train --recipe finetune --dataset balloon     # fine-tune the released DETR-R50
    python -m detr_nb train --recipe paper --model detr_r50 --dry-run   # print the official recipe, resolved
    torchrun --nproc_per_node=2 -m detr_nb train                  # DDP, one process per GPU
    python -m detr_nb evaluate --run runs/my-run               # COCO numbers of its newest checkpoint
    python -m detr_nb predict photo.jpg my_photos/ --run runs/my-run --out predictions
    python -m detr_nb compare --approaches scratch,torch --inits none --steps 300   # detr_nb/compare.py

``train`` has one option per field of :class:`detr_nb.train.TrainConfig`; a ``--recipe`` sets the fields you
do not give. ``--set FIELD=VALUE`` sets any field (VALUE in JSON) and ``--set FIELD.KEY=VALUE`` one key of a
dict field. Errors you can fix (a bad option, a missing file) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

from .recipes import RECIPE_FIELDS
from .train import TrainConfig

_ALIASES = {"time_budget_s": "--time-budget", "checkpoint_every_s": "--checkpoint-every"}


# ----------------------------------------------------------------------------- option parsing
def _none_or(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "off") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def json_value(text: str):
    """A JSON value, or the text itself when it is not JSON (a bare string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _add_config_options(p: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = _ALIASES.get(f.name, "--" + f.name.replace("_", "-"))
        tp = hints[f.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional = origin is typing.Union and type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if optional else tp
        if f.name in RECIPE_FIELDS:
            shown = "from the recipe"
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = "none" if default is None else json.dumps(default)
        helptext = f"{f.metadata['help']} (default: {shown})"
        if base is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=helptext)
        elif base in (int, float, str):
            p.add_argument(flag, dest=f.name, type=_none_or(base) if optional else base, default=argparse.SUPPRESS,
                           metavar=f.name.upper(), help=helptext)
        else:  # dicts: JSON
            p.add_argument(flag, dest=f.name, type=_none_or(json.loads) if optional else json.loads,
                           default=argparse.SUPPRESS, metavar="JSON", help=helptext)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``train``'s options: the recipe, then the options given, then ``--set``."""
    from .errors import ConfigError

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = vars(args)   # options not on the command line are absent (argparse.SUPPRESS)
    values: Dict[str, Any] = {k: given[k] for k in names if k in given}
    keyed = []
    for item in args.set or []:
        key, sep, text = item.partition("=")
        name, dot, sub = key.partition(".")
        if not sep or name not in names or (dot and not sub):
            raise ConfigError(f"--set expects FIELD=VALUE or FIELD.KEY=VALUE with a TrainConfig field, got {item!r}")
        if dot:
            keyed.append((name, sub, json_value(text)))
        else:
            values[name] = json_value(text)
    cfg = TrainConfig(**values)
    for name, sub, value in keyed:      # one key of a dict field, on top of the recipe's value
        current = getattr(cfg, name)
        if not isinstance(current, dict):
            raise ConfigError(f"--set {name}.{sub}: {name} is not a dict (it is {current!r})")
        cfg = cfg.replace(**{name: {**current, sub: value}})
    return cfg


def _checkpoint_path(run_or_file: str, best: bool = False) -> Path:
    """A checkpoint file from a file or a run directory (the newest good one, or best.pth with ``best``)."""
    from . import checkpoint as ck
    from .errors import UserError

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


def _load_model(args, device):
    """(model, saved TrainConfig or None, categories) from --run / --checkpoint / --pretrained."""
    from . import checkpoint as ck
    from .errors import UserError
    from .train import model_from_checkpoint

    if args.pretrained:
        from .configs import build_model
        from .pretrained import COCO_CLASSES, load_pretrained
        model = build_model(args.pretrained, num_classes=91, impl=args.impl or "torch")
        load_pretrained(model, args.pretrained)
        return model.to(device).eval(), None, dict(COCO_CLASSES)
    source = args.checkpoint or args.run
    if not source:
        raise UserError("give --run DIR, --checkpoint FILE or --pretrained NAME")
    path = _checkpoint_path(source, best=getattr(args, "best", False))
    state = ck.load_checkpoint(path)
    print(f"checkpoint {path} (epoch {state['epoch']}, step {state['step']})")
    model = model_from_checkpoint(state, device, impl=args.impl)
    return model, TrainConfig.from_dict(state["config"]), state.get("categories")


# ----------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from .train import NonFiniteLossError, Trainer, check_config
    from . import distributed as D

    cfg = config_from_args(args)
    if args.dry_run:
        check_config(cfg)
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
        return 0
    try:
        trainer = Trainer(cfg)
        summary = trainer.run()
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        D.cleanup()
    if trainer.is_main:
        with open(Path(summary["out"]) / "summary.json", "w") as f:
            json.dump(summary, f, indent=2, default=str)
        ev = summary.get("eval")
        if ev:
            print(f"AP {ev['AP']:.4f}  AP50 {ev['AP50']:.4f}  after {summary['step']} steps "
                  f"({summary['train_time_s']:.0f} s of training, {summary['images_per_s'] or 0:.1f} images/s)")
        print(f"output directory: {Path(summary['out']).resolve()}")
    return 130 if summary["stopped_by"] == "signal" else 0


def cmd_evaluate(args) -> int:
    from .evaluate import save_stats
    from .precision import resolve_device, resolve_precision
    from .train import build_datasets, check_config, evaluate_run

    device = resolve_device(args.device)
    model, saved, _ = _load_model(args, device)
    if saved is None:   # official weights: the COCO classes, the paper's scoring and transforms
        saved = TrainConfig(recipe="paper", dataset=args.dataset or "coco2017", pretrained=args.pretrained)
    changes = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root), ("val_split", args.split),
                                 ("preset", args.preset), ("eval_batch_size", args.batch_size),
                                 ("max_eval_images", args.max_images), ("workers", args.workers)) if v is not None}
    if "dataset" in changes and changes["dataset"] != saved.dataset:
        changes.setdefault("data_kwargs", {})     # the run's data parameters belong to its own dataset
        changes.setdefault("data_root", None)
    cfg = check_config(saved.replace(progress=True, **changes))
    val_set = build_datasets(cfg, splits=("val",))["val"]
    print(f"evaluating on {len(val_set) if not cfg.max_eval_images else min(len(val_set), cfg.max_eval_images)} "
          f"images of {cfg.dataset}/{cfg.val_split}")
    stats = evaluate_run(model, val_set, cfg, device, resolve_precision(device, args.amp))
    out = Path(args.output) if args.output else (
        Path(args.run) / f"eval_{cfg.val_split}.json" if args.run and Path(args.run).is_dir() else Path("eval.json"))
    save_stats(stats, out, dataset=cfg.dataset, split=cfg.val_split)
    print(f"wrote {out.resolve()}")
    return 0


def cmd_predict(args) -> int:
    from .evaluate import scoring_for
    from .precision import resolve_device
    from .predict import predict_paths

    device = resolve_device(args.device)
    model, saved, categories = _load_model(args, device)
    preset = args.preset or (saved.preset if saved else "official")
    scoring = scoring_for(saved.loss_type if saved else "ce")
    categories = {int(k): v for k, v in (categories or {}).items()}
    predict_paths(model, args.images, args.out, preset=preset, scoring=scoring, device=device,
                  threshold=args.threshold, categories=categories)
    print(f"wrote {Path(args.out).resolve() / 'predictions.json'}")
    return 0


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detr_nb", description="DETR from scratch: train, evaluate, predict")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) a run, then evaluate it")
    _add_config_options(p)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="any TrainConfig field, VALUE in JSON; FIELD.KEY=VALUE sets one key of a dict field "
                        "(repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved configuration as JSON and exit without training")
    p.set_defaults(func=cmd_train)

    def model_source(q):
        q.add_argument("--run", help="a run directory (uses its newest good checkpoint)")
        q.add_argument("--best", action="store_true", help="with --run: its best.pth instead of the newest")
        q.add_argument("--checkpoint", help="a checkpoint file")
        q.add_argument("--pretrained", help="official DETR weights by name, e.g. detr_r50 (COCO classes)")
        q.add_argument("--impl", default=None, help="torch | scratch (default: as trained)")
        q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
        q.add_argument("--preset", default=None, help="transform preset (default: as trained)")

    q = sub.add_parser("evaluate", help="COCO mAP of a checkpoint on a dataset split")
    model_source(q)
    q.add_argument("--dataset", default=None, help="dataset name or COCO folder (default: the run's)")
    q.add_argument("--data-root", default=None, help="where named datasets are cached (default: the run's)")
    q.add_argument("--split", default=None, help="split to evaluate (default: the run's validation split)")
    q.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the run's)")
    q.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: the run's)")
    q.add_argument("--amp", default="auto", help="auto | fp32 | fp16 | bf16 (default: auto)")
    q.add_argument("--max-images", type=int, default=None,
                   help="evaluate on the first N images (default: as the run evaluated)")
    q.add_argument("-o", "--output", default=None,
                   help="JSON file for the 12 numbers (default: <run>/eval_<split>.json)")
    q.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="detect objects in images, folders or URLs; write annotated images + JSON")
    model_source(r)
    r.add_argument("images", nargs="+", help="image files, folders of images, or http(s)/file URLs")
    r.add_argument("--threshold", type=float, default=0.5, help="draw and list boxes with at least this score "
                                                                "(default: 0.5)")
    r.add_argument("-o", "--out", default="predictions",
                   help="folder for <image>.png and predictions.json (default: predictions)")
    r.set_defaults(func=cmd_predict)

    from .compare import add_compare_parser   # python -m detr_nb compare (notebook 09)
    add_compare_parser(sub)
    return parser


def _user_errors() -> tuple:
    """Exception types that mean "fix your input": printed as one line, exit status 2."""
    from .checkpoint import CheckpointError
    from .data.download import DownloadError
    from .errors import UserError
    return (UserError, CheckpointError, DownloadError, FileNotFoundError)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
