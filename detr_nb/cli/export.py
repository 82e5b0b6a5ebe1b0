"""``python -m detr_nb export``: a run's model (or official weights) to an ONNX file, checked against PyTorch."""
from __future__ import annotations

from pathlib import Path

from .source import add_model_source, load_model


def add_export_parser(sub) -> None:
    q = sub.add_parser("export", help="write a model to ONNX (dynamic image size) and check it with onnxruntime")
    add_model_source(q)
    for action in q._actions:   # exporting runs on the CPU unless asked: the parity check compares with the CPU
        if action.dest == "device":
            action.default = "cpu"
            action.help = "cpu | cuda | cuda:N, where PyTorch runs for the export and the check (default: cpu)"
        elif action.dest == "impl":
            action.help = "ignored: the export and the check run PyTorch's fused ops, the same weights"
    q.add_argument("-o", "--output", default=None,
                   help="the .onnx file to write (default: <run>/model.onnx, else model.onnx)")
    q.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17 with the torchscript exporter)")
    q.add_argument("--mask", action="store_true",
                   help="add a second input, mask (B, H, W) bool True on padding, for padded batches")
    q.add_argument("--exporter", default="auto", choices=("auto", "torchscript", "dynamo"),
                   help="torch.onnx exporter; auto = torchscript where torch has it (default: auto)")
    q.add_argument("--check-size", default="100x140",
                   help="HxW of the random image of the parity check (default: 100x140)")
    q.set_defaults(func=cmd_export)


def _size(text: str):
    from ..errors import UserError
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--check-size must be HxW, e.g. 100x140, got {text!r}") from None
    if h < 1 or w < 1:
        raise UserError(f"--check-size must be positive, got {text!r}")
    return h, w


def cmd_export(args) -> int:
    import torch
    from ..inference.export import OnnxDetector, export_onnx, parity, require, resolve_exporter
    from ..engine.precision import resolve_device

    require("onnx")
    require("onnxruntime", "the parity check")
    h, w = _size(args.check_size)
    kind = resolve_exporter(args.exporter)
    model, saved, _ = load_model(args, resolve_device(args.device))
    out = Path(args.output) if args.output else (
        Path(args.run) / "model.onnx" if args.run and Path(args.run).is_dir() else Path("model.onnx"))
    export_onnx(model, out, opset=args.opset, mask=args.mask, exporter=kind)
    size_mb = out.stat().st_size / 2 ** 20
    preset = args.preset or (saved.preset if saved else "official")
    print(f"wrote {out.resolve()} ({size_mb:.1f} MB, {kind} exporter)")
    print(f"inputs: images (B, 3, H, W) float32 normalised as detr_nb.data.make_transforms({preset!r}, train=False)"
          + (", mask (B, H, W) bool True on padding" if args.mask else "")
          + "; outputs: pred_logits, pred_boxes")
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    delta = parity(model, OnnxDetector(out), images)
    print(f"parity on a random 1x3x{h}x{w} image, onnxruntime vs PyTorch: max |delta| logits "
          f"{delta['pred_logits']:.2e}, boxes {delta['pred_boxes']:.2e}")
    return 0
