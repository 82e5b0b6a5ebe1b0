"""Command line: ``python -m detr_nb train | evaluate | predict | export`` (notebooks 07-11 make the same calls).

    python -m detr_nb train                                   # the main job: synthetic data, CPU, 1,500 steps
    python -m detr_nb train --seed 1                          # the same job from another seed
    python -m detr_nb train --dry-run                         # its recipe, resolved: fixed steps, no time budget
    python -m detr_nb train --time-budget 60 --set data_kwargs.num_train=400 --set data_kwargs.num_val=50
    python -m detr_nb train --recipe finetune --dataset balloon     # fine-tune the released DETR-R50
    python -m detr_nb train --recipe paper --model detr_r50 --dry-run   # print the official recipe, resolved
    torchrun --nproc_per_node=2 -m detr_nb train                  # DDP, one process per GPU
    python -m detr_nb evaluate --run runs/my-run               # COCO numbers of its newest checkpoint
    python -m detr_nb predict photo.jpg my_photos/ --run runs/my-run --out predictions
    python -m detr_nb export --run runs/my-run -o model.onnx  # ONNX + onnxruntime check (the "export" extra)
    python -m detr_nb export --run runs/my-run --format safetensors -o model.safetensors   # + config.json
    python -m detr_nb export --pretrained detr_r50 --format hf -o detr_hf   # DetrForObjectDetection (the "hf" extra)

``train`` has one option per field of :class:`detr_nb.config.TrainConfig`; a ``--recipe`` sets the fields you do
not give. ``--set FIELD=VALUE`` sets any field (VALUE in JSON) and ``--set FIELD.KEY=VALUE`` one key of a dict
field. Errors you can fix (a bad option, a missing file) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import List, Optional

import torch

from . import checkpoint as ckpt
from .config import RECIPES, TrainConfig, amp_dtype, build_model, check_config, flag, resolve_device
from .data import REAL_DATASETS, build_dataset
from .errors import UserError
from .evaluate import evaluate_run, save_stats
from .export import (OnnxDetector, export_hf, export_onnx, export_safetensors, hf_parity, parity, require,
                     resolve_exporter)
from .predict import check_threshold, predict_paths
from .pretrained import CHECKPOINTS, COCO_CLASSES, available, load_pretrained
from .trainer import NonFiniteLossError, train

RECIPE_FIELDS = {k for recipe in RECIPES.values() for k in recipe}


def json_value(text: str):
    """A JSON value, or the text itself when it is not JSON (a bare string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with its help text; options not given are absent from the namespace."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        none_ok = typing.get_origin(hint) is typing.Union          # Optional[X]: "none" gives None
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if none_ok else hint
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "from the recipe" if f.name in RECIPE_FIELDS else "none" if default is None else json.dumps(default)
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {shown})")
        if base is bool:
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
            continue
        kind = base if base in (int, float, str) else json.loads   # dicts as JSON
        p.add_argument(flag(f.name), metavar="JSON" if kind is json.loads else f.name.upper(),
                       type=(lambda t, k=kind: None if t.lower() in ("none", "null") else k(t)) if none_ok else kind,
                       **kw)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                   help="any TrainConfig field, VALUE in JSON; FIELD.KEY=VALUE sets one key of a dict field")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe, then the options given, then ``--set``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    keyed = []
    for item in args.set:
        key, sep, text = item.partition("=")
        name, dot, sub = key.partition(".")
        if not sep or name not in names or (dot and not sub):
            raise UserError(f"--set expects FIELD=VALUE or FIELD.KEY=VALUE with a TrainConfig field, got {item!r}")
        if dot:
            keyed.append((name, sub, json_value(text)))
        else:
            values[name] = json_value(text)
    folder = values.get("dataset") not in ("synthetic",) + REAL_DATASETS and os.path.isdir(str(values.get("dataset")))
    why = "given"
    if folder and "recipe" not in values:   # your own data: start from DETR-R50 when its weights can be had
        offline = available("detr_r50")
        values["recipe"] = "aided" if offline else "finetune"
        why = (f"the released DETR-R50 weights cannot be had: {offline}; --recipe finetune starts from them when "
               "they can" if offline else "the released weights are at hand; --recipe aided trains the small model "
               "from scratch instead")
    cfg = TrainConfig(**values)
    if folder and os.environ.get("RANK", "0") == "0":
        start = f"from the released {cfg.pretrained} weights" if cfg.pretrained else "from scratch"
        print(f"your data {values['dataset']}: recipe {cfg.recipe}, model {cfg.model} {start} ({why})",
              file=sys.stderr if getattr(args, "dry_run", False) else sys.stdout)   # --dry-run's stdout is JSON
    for name, sub, value in keyed:   # one key of a dict field, on top of the recipe's value
        if not isinstance(getattr(cfg, name), dict):
            raise UserError(f"--set {name}.{sub}: {name} is not a dict (it is {getattr(cfg, name)!r})")
        cfg = cfg.replace(**{name: {**getattr(cfg, name), sub: value}})
    return cfg


def add_model_source(q) -> None:
    q.add_argument("--run", help="a run folder (its newest good checkpoint)")
    q.add_argument("--best", action="store_true", help="with --run: its best.pth instead of the newest")
    q.add_argument("--checkpoint", help="a checkpoint file")
    q.add_argument("--pretrained", help="released DETR weights by name, e.g. detr_r50 (COCO classes)")
    q.add_argument("--impl", default=None, help="torch | scratch (default: as trained)")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    q.add_argument("--preset", default=None, help="transform preset (default: as trained)")


def load_model(args, device):
    """``(model, the run's TrainConfig or None, label -> name, label -> category id or None)`` from --run /
    --checkpoint / --pretrained (the released weights' labels are COCO's category ids)."""
    if args.pretrained:
        if args.pretrained not in CHECKPOINTS:
            raise UserError(f"--pretrained {args.pretrained}: not a released DETR; one of {', '.join(CHECKPOINTS)}")
        model = build_model(args.pretrained, num_classes=91, impl=args.impl or "torch")
        return load_pretrained(model, args.pretrained).to(device).eval(), None, dict(COCO_CLASSES), None
    if not (args.checkpoint or args.run):
        raise UserError("give --run DIR, --checkpoint FILE or --pretrained NAME")
    path = Path(args.checkpoint or args.run)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = ckpt.load_latest(folder, log=lambda m: print(m, file=sys.stderr))
        if args.best and (folder / ckpt.BEST).is_file():
            found = (ckpt.load_checkpoint(folder / ckpt.BEST), folder / ckpt.BEST)
        if found is None:
            raise UserError(f"no checkpoint found in {path}")
        state, path = found
    else:
        state = ckpt.load_checkpoint(path)
    print(f"checkpoint {path} (epoch {state['epoch']}, step {state['step']})")
    return ckpt.model_from_checkpoint(state, device, impl=args.impl), TrainConfig.from_dict(state["config"]), \
        state["categories"], state["category_ids"]


def cmd_evaluate(args) -> int:
    device = resolve_device(args.device)
    model, saved, _, _ = load_model(args, device)
    if saved is None:   # released weights: the COCO classes, the paper's transforms
        saved = TrainConfig(recipe="paper", dataset=args.dataset or "coco2017", pretrained=args.pretrained)
    changes = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root), ("val_split", args.split),
                                 ("preset", args.preset), ("batch_size", args.batch_size),
                                 ("max_eval_images", args.max_images), ("workers", args.workers)) if v is not None}
    cfg = check_config(saved.replace(progress=True, **changes))   # another dataset: without the run's data_kwargs
    val_set = build_dataset(cfg.dataset, cfg.val_split, cfg.preset, root=cfg.data_root, **cfg.data_kwargs)
    print(f"evaluating on {min(len(val_set), cfg.max_eval_images or len(val_set))} images of {cfg.dataset}/"
          f"{cfg.val_split}")
    dtype = amp_dtype(device, args.amp)
    run = Path(args.run) if args.run and Path(args.run).is_dir() else None
    out = Path(args.output) if args.output else run / f"eval_{cfg.val_split}.json" if run else Path("eval.json")
    detections = run / "detections.json" if run and not args.output else out.with_name(out.stem + "_detections.json")
    stats = evaluate_run(model, val_set, cfg, device, (lambda: torch.autocast(device.type, dtype)) if dtype else
                         contextlib.nullcontext, detections_file=detections)
    save_stats(stats, out, dataset=cfg.dataset, split=cfg.val_split)
    print(f"wrote {out.resolve()} and the detections in COCO's result format, {detections.resolve()}")
    return 0


def cmd_predict(args) -> int:
    check_threshold(args.threshold)               # before the model is loaded
    device = resolve_device(args.device)
    model, saved, categories, category_ids = load_model(args, device)
    found = predict_paths(model, args.images, args.out, preset=args.preset or (saved.preset if saved else "official"),
                          device=device, threshold=args.threshold, categories={int(k): v for k, v in categories.items()},
                          category_ids=category_ids and {int(k): int(v) for k, v in category_ids.items()},
                          coco=args.format == "coco")
    print(f"wrote {Path(args.out).resolve() / 'predictions.json'}")
    return 1 if found["skipped"] else 0


def cmd_export(args) -> int:
    device = resolve_device(args.device)
    run = Path(args.run) if args.run and Path(args.run).is_dir() else None
    default = {"onnx": "model.onnx", "safetensors": "model.safetensors", "hf": "hf_model"}[args.format]
    out = Path(args.output) if args.output else (run / default if run else Path(default))
    if args.format == "onnx":
        require("onnx")
        require("onnxruntime", "the parity check")
        try:
            h, w = (int(v) for v in args.check_size.lower().split("x"))
        except ValueError:
            raise UserError(f"--check-size must be HxW, e.g. 100x140, got {args.check_size!r}") from None
        kind = resolve_exporter(args.exporter)
    model, saved, categories, category_ids = load_model(args, device)
    preset = args.preset or (saved.preset if saved else "official")
    if args.format == "safetensors":
        export_safetensors(model, out, categories, category_ids)
        print(f"wrote {out.resolve()} ({out.stat().st_size / 2**20:.1f} MB) and {out.with_name('config.json').resolve()}"
              f"; images normalised as detr_nb.data.make_transforms({preset!r}, train=False)")
        return 0
    if args.format == "hf":
        export_hf(model, out, categories, preset)
        delta = hf_parity(model, out)
        print(f"wrote {out.resolve()}: DetrForObjectDetection.from_pretrained loads it; on two random images, one "
              f"padded, max |delta| logits {delta['pred_logits']:.2e}, boxes {delta['pred_boxes']:.2e}")
        return 0
    export_onnx(model, out, opset=args.opset, mask=args.mask, exporter=kind)
    print(f"wrote {out.resolve()} ({out.stat().st_size / 2**20:.1f} MB, {kind} exporter)")
    print(f"inputs: images (B, 3, H, W) float32 normalised as detr_nb.data.make_transforms({preset!r}, train=False)"
          + (", mask (B, H, W) bool True on padding" if args.mask else "") + "; outputs: pred_logits, pred_boxes")
    delta = parity(model, OnnxDetector(out), torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)))
    print(f"parity on a random 1x3x{h}x{w} image, onnxruntime vs PyTorch: max |delta| logits "
          f"{delta['pred_logits']:.2e}, boxes {delta['pred_boxes']:.2e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detr_nb", description="DETR from scratch: train, evaluate, "
                                                                            "predict, export")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (or resume) a run, then evaluate it")
    add_config_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")

    q = sub.add_parser("evaluate", help="COCO mAP of a checkpoint on a dataset split")
    add_model_source(q)
    q.add_argument("--dataset", help="dataset name or COCO folder (default: the run's)")
    q.add_argument("--data-root", help="where the dataset is cached (default: the run's)")
    q.add_argument("--split", help="split to evaluate (default: the run's validation split)")
    q.add_argument("--batch-size", type=int, help="images per batch (default: the run's)")
    q.add_argument("--workers", type=int, help="DataLoader worker processes (default: the run's)")
    q.add_argument("--amp", default="auto", help="auto | fp32 | fp16 | bf16 (default: auto)")
    q.add_argument("--max-images", type=int, help="evaluate the first N images (default: as the run evaluated)")
    q.add_argument("-o", "--output", help="JSON file for the 12 numbers (default: <run>/eval_<split>.json)")
    q.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="detect objects in images, folders or URLs; write annotated images + JSON")
    add_model_source(r)
    r.add_argument("images", nargs="+", help="image files, folders of images, or http(s)/file URLs")
    r.add_argument("--threshold", type=float, default=0.5, help="draw and list boxes with at least this score "
                                                                "(default: 0.5)")
    r.add_argument("-o", "--out", default="predictions", help="folder for <image>.png and predictions.json "
                                                               "(default: predictions)")
    r.add_argument("--format", default="detr_nb", choices=("detr_nb", "coco"),
                   help="predictions.json: one record per image (detr_nb), or COCO's result format (coco)")
    r.set_defaults(func=cmd_predict)

    e = sub.add_parser("export", help="write a model as ONNX, safetensors or a Hugging Face folder, and check it")
    add_model_source(e)
    e.set_defaults(func=cmd_export, device="cpu")   # the parity checks compare with PyTorch on the CPU
    e.add_argument("--format", default="onnx", choices=("onnx", "safetensors", "hf"),
                   help="onnx (onnxruntime-checked), safetensors (+ config.json) or hf (a DetrForObjectDetection "
                        "folder) (default: onnx)")
    e.add_argument("-o", "--output", help="the file, or the folder for hf (default: model.onnx, model.safetensors "
                                          "or hf_model, in the run folder with --run)")
    e.add_argument("--opset", type=int, help="ONNX opset (default: 17 with the torchscript exporter)")
    e.add_argument("--mask", action="store_true", help="a second input, mask (B, H, W) bool True on padding")
    e.add_argument("--exporter", default="auto", choices=("auto", "torchscript", "dynamo"),
                   help="torch.onnx exporter; auto = torchscript where torch has it (default: auto)")
    e.add_argument("--check-size", default="100x140", help="HxW of the parity check's random image (default: 100x140)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "train":
            return args.func(args)
        cfg = config_from_args(args)
        if args.dry_run:
            print(json.dumps(check_config(cfg).to_dict(), indent=2, default=str))
            return 0
        summary = train(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (UserError, FileNotFoundError) as e:   # things the user can fix: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":     # under torchrun, rank 0 speaks
        return 0
    if summary.get("eval"):
        ev = summary["eval"]
        print(f"AP {ev['AP']:.4f}  AP50 {ev['AP50']:.4f}  after {summary['step']} steps ({summary['train_time_s']:.0f} s "
              f"of training, {summary['images_per_s'] or 0:.1f} images/s)")
    print(f"output directory: {Path(summary['out']).resolve()}")
    return 130 if summary["stopped_by"] == "signal" else 0
