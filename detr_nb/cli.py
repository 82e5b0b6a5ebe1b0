"""Command line: ``python -m detr_nb train | evaluate | predict`` (notebooks 07 and 08 show the same calls).

    python -m detr_nb train                                  # the main job: synthetic data, CPU, time budget
    python -m detr_nb train --dataset balloon --model detr_small --pretrained-backbone --epochs 50
    torchrun --nproc_per_node=4 -m detr_nb train --dataset coco2017 --model detr_r50 --preset official
    python -m detr_nb evaluate --run runs/my-run                # COCO numbers of its newest checkpoint
    python -m detr_nb predict photo.jpg --run runs/my-run -o boxes.png
    python -m detr_nb compare --approaches scratch,torch,pretrained --steps 300   # detr_nb/compare.py

``train`` has one option per field of :class:`detr_nb.train.TrainConfig` (``--batch-size``,
``--time-budget`` for ``time_budget_s``, ``--resume/--no-resume`` ...), plus ``--set FIELD=VALUE`` for
anything else (VALUE is JSON, e.g. ``--set model_overrides='{"num_queries": 50}'``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

from .train import TrainConfig

_ALIASES = {"time_budget_s": "--time-budget", "checkpoint_every_s": "--checkpoint-every"}
_HELP = {
    "dataset": "synthetic (default), a COCO-format folder, or pennfudan | balloon | voc2007 | coco2017",
    "model": "detr_tiny (default, CPU) | detr_small | detr_r50 | detr_r50_dc5 | detr_r101 | detr_r101_dc5",
    "impl": "torch (fused ops) | scratch (the math on tensors)",
    "init": "official | default | xavier | kaiming | uniform002",
    "pretrained": "start from official DETR weights, e.g. detr_r50 (downloads; class head replaced if needed)",
    "time_budget_s": "stop training after this many seconds, then evaluate ('none' = off)",
    "out": "run directory: metrics.jsonl, eval.json, checkpoints/, figures (default runs/<model>-<dataset>-<time>)",
    "resume": "continue from the newest good checkpoint in --out (default on)",
    "device": "auto | cpu | cuda | cuda:N",
    "amp": "auto (fp16 on T4, bf16 on Ampere+, fp32 on CPU) | fp32 | fp16 | bf16",
    "batch_size": "images per process and micro-batch",
    "workers": "DataLoader worker processes",
}


# ----------------------------------------------------------------------------- option parsing
def _none_or(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "off") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string


def _add_config_options(p: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = _ALIASES.get(f.name, "--" + f.name.replace("_", "-"))
        tp = hints[f.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional = origin is typing.Union and type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if optional else tp
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        helptext = _HELP.get(f.name, "") + f" (default: {default!r})"
        if base is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=helptext)
        elif base in (int, float, str):
            p.add_argument(flag, dest=f.name, type=_none_or(base) if optional else base, default=argparse.SUPPRESS,
                           metavar=f.name.upper(), help=helptext)
        else:  # dicts: JSON
            p.add_argument(flag, dest=f.name, type=json.loads, default=argparse.SUPPRESS, metavar="JSON",
                           help=helptext)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = vars(args)   # options not on the command line are absent (argparse.SUPPRESS)
    values: Dict[str, Any] = {f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given}
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep or key not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise SystemExit(f"--set expects FIELD=VALUE with a TrainConfig field, got {item!r}")
        values[key] = _json_value(text)
    return TrainConfig(**values)


def _checkpoint_path(run_or_file: str, best: bool = False) -> Path:
    """A checkpoint file from a file or a run directory (the newest good one, or best.pth with ``best``)."""
    from . import checkpoint as ck

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
    raise SystemExit(f"no checkpoint found in {p}")


def _load_model(args, device):
    """(model, num_classes, categories, saved train config or None) from --run/--checkpoint/--pretrained."""
    from . import checkpoint as ck
    from .train import model_from_checkpoint

    if args.pretrained:
        from .configs import build_model
        from .pretrained import load_pretrained
        model = build_model(args.pretrained, num_classes=91, impl=args.impl or "torch")
        load_pretrained(model, args.pretrained)
        return model.to(device).eval(), 91, None, None
    source = args.checkpoint or args.run
    if not source:
        raise SystemExit("give --run DIR, --checkpoint FILE or --pretrained NAME")
    path = _checkpoint_path(source, best=getattr(args, "best", False))
    state = ck.load_checkpoint(path)
    print(f"checkpoint {path} (epoch {state['epoch']}, step {state['step']})")
    model = model_from_checkpoint(state, device, impl=args.impl)
    return model, int(state["num_classes"]), state.get("categories"), state["config"]


# ----------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from .train import NonFiniteLossError, Trainer
    from . import distributed as D

    cfg = config_from_args(args)
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
    import torch
    from torch.utils.data import Subset
    from .data import build_dataset
    from .evaluate import evaluate, save_stats
    from .precision import resolve_device, resolve_precision

    device = resolve_device(args.device)
    model, _, _, saved = _load_model(args, device)
    saved = saved or {}
    dataset = args.dataset or saved.get("dataset", "synthetic")
    preset = args.preset or saved.get("preset", "cpu")
    root = args.data_root or saved.get("data_root")
    kwargs = saved.get("data_kwargs", {}) if dataset == saved.get("dataset") else {}
    ds = build_dataset(dataset, args.split, preset, root=root, **kwargs)
    if args.max_images:
        ds = Subset(ds, range(min(len(ds), args.max_images)))
    print(f"evaluating on {len(ds)} images of {dataset}/{args.split}")
    stats = evaluate(model, ds, device, batch_size=args.batch_size, num_workers=args.workers,
                     precision=resolve_precision(device, args.amp), progress=True,
                     use_sigmoid=saved.get("loss_type") == "focal")
    out = Path(args.output) if args.output else (
        Path(args.run) / f"eval_{args.split}.json" if args.run and Path(args.run).is_dir() else Path("eval.json"))
    save_stats(stats, out, dataset=dataset, split=args.split)
    print(f"wrote {out.resolve()}")
    return 0


def cmd_predict(args) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from PIL import Image
    from .data import make_transforms
    from .plotting import draw_boxes
    from .postprocess import postprocess
    from .precision import resolve_device

    device = resolve_device(args.device)
    model, _, categories, saved = _load_model(args, device)
    preset = args.preset or (saved or {}).get("preset", "official" if args.pretrained else "cpu")
    if categories is None and args.pretrained:
        categories = None
    tf = make_transforms(preset, train=False)
    use_sigmoid = (saved or {}).get("loss_type") == "focal"
    n = len(args.images)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 5), squeeze=False)
    for ax, path in zip(axes.flat, args.images):
        pil = Image.open(path).convert("RGB")
        w, h = pil.size
        image, _ = tf(pil, None)
        with torch.no_grad():
            out = model(image[None].to(device))
        logits = out["pred_logits"].float()
        logits = logits[..., :-1] if use_sigmoid else logits
        res = postprocess({"pred_logits": logits, "pred_boxes": out["pred_boxes"].float()},
                          torch.tensor([[h, w]], device=device), use_sigmoid=use_sigmoid)[0]
        keep = res["scores"] >= args.threshold
        draw_boxes(ax, pil, res["boxes"][keep].cpu(), res["labels"][keep].tolist(),
                   res["scores"][keep].tolist(), names=categories)
        ax.set_title(f"{Path(path).name}: {int(keep.sum())} boxes >= {args.threshold}", fontsize=9)
        for b, l, s in zip(res["boxes"][keep].tolist(), res["labels"][keep].tolist(), res["scores"][keep].tolist()):
            name = categories.get(l, str(l)) if categories else str(l)
            print(f"{path}\t{name}\t{s:.3f}\t" + " ".join(f"{v:.1f}" for v in b))
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {Path(args.output).resolve()}")
    return 0


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detr_nb", description="DETR from scratch: train, evaluate, predict")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) a run, then evaluate it")
    _add_config_options(p)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="any TrainConfig field, VALUE in JSON (repeatable)")
    p.set_defaults(func=cmd_train)

    def model_source(q):
        q.add_argument("--run", help="a run directory (uses its newest good checkpoint)")
        q.add_argument("--best", action="store_true", help="with --run: its best.pth instead of the newest")
        q.add_argument("--checkpoint", help="a checkpoint file")
        q.add_argument("--pretrained", help="official DETR weights by name, e.g. detr_r50 (COCO classes)")
        q.add_argument("--impl", default=None, help="torch | scratch (default: as trained)")
        q.add_argument("--device", default="auto")
        q.add_argument("--preset", default=None, help="transform preset (default: as trained)")

    q = sub.add_parser("evaluate", help="COCO mAP of a checkpoint on a dataset split")
    model_source(q)
    q.add_argument("--dataset", default=None, help="default: the run's dataset")
    q.add_argument("--data-root", default=None)
    q.add_argument("--split", default="val")
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--workers", type=int, default=0)
    q.add_argument("--amp", default="auto")
    q.add_argument("--max-images", type=int, default=None)
    q.add_argument("-o", "--output", default=None, help="JSON file for the 12 numbers")
    q.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="draw a checkpoint's detections on images")
    model_source(r)
    r.add_argument("images", nargs="+")
    r.add_argument("--threshold", type=float, default=0.5)
    r.add_argument("-o", "--output", default="predictions.png")
    r.set_defaults(func=cmd_predict)

    from .compare import add_compare_parser   # python -m detr_nb compare (issue 7, notebook 09)
    add_compare_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
