"""``python -m detr_nb evaluate`` (the COCO numbers of a checkpoint) and ``predict`` (your own pictures)."""
from __future__ import annotations

from pathlib import Path

from ..engine.config import TrainConfig
from .source import add_model_source, load_model


def add_evaluate_parsers(sub) -> None:
    q = sub.add_parser("evaluate", help="COCO mAP of a checkpoint on a dataset split")
    add_model_source(q)
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
    add_model_source(r)
    r.add_argument("images", nargs="+", help="image files, folders of images, or http(s)/file URLs")
    r.add_argument("--threshold", type=float, default=0.5, help="draw and list boxes with at least this score "
                                                                "(default: 0.5)")
    r.add_argument("-o", "--out", default="predictions",
                   help="folder for <image>.png and predictions.json (default: predictions)")
    r.set_defaults(func=cmd_predict)


def cmd_evaluate(args) -> int:
    from ..engine.build import build_datasets, evaluate_run
    from ..engine.config import check_config
    from ..engine.precision import resolve_device, resolve_precision
    from ..inference.evaluate import save_stats

    device = resolve_device(args.device)
    model, saved, _ = load_model(args, device)
    if saved is None:   # official weights: the COCO classes, the paper's scoring and transforms
        saved = TrainConfig(recipe="paper", dataset=args.dataset or "coco2017", pretrained=args.pretrained)
    changes = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root), ("val_split", args.split),
                                 ("preset", args.preset), ("eval_batch_size", args.batch_size),
                                 ("max_eval_images", args.max_images), ("workers", args.workers)) if v is not None}
    cfg = check_config(saved.replace(progress=True, **changes))    # another dataset: without the run's data_kwargs
    val_set = build_datasets(cfg, splits=("val",))["val"]
    print(f"evaluating on {cfg.eval_images(len(val_set))} images of {cfg.dataset}/{cfg.val_split}")
    stats = evaluate_run(model, val_set, cfg, device, resolve_precision(device, args.amp))
    out = Path(args.output) if args.output else (
        Path(args.run) / f"eval_{cfg.val_split}.json" if args.run and Path(args.run).is_dir() else Path("eval.json"))
    save_stats(stats, out, dataset=cfg.dataset, split=cfg.val_split)
    print(f"wrote {out.resolve()}")
    return 0


def cmd_predict(args) -> int:
    from ..aids import scoring_for
    from ..engine.precision import resolve_device
    from ..inference.predict import check_threshold, predict_paths

    check_threshold(args.threshold)               # before the model is loaded
    device = resolve_device(args.device)
    model, saved, categories = load_model(args, device)
    preset = args.preset or (saved.preset if saved else "official")
    scoring = scoring_for(saved.loss_type if saved else "ce")
    categories = {int(k): v for k, v in (categories or {}).items()}
    found = predict_paths(model, args.images, args.out, preset=preset, scoring=scoring, device=device,
                          threshold=args.threshold, categories=categories)
    print(f"wrote {Path(args.out).resolve() / 'predictions.json'}")
    return 1 if found["skipped"] else 0
