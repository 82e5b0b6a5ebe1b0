"""Take a trained DETR home: export it to ONNX and run it with onnxruntime, without PyTorch's model code.

    from detr_nb.export import export_onnx, OnnxDetector
    export_onnx(model, "model.onnx")                 # images (B, 3, H, W) -> pred_logits, pred_boxes
    detector = OnnxDetector("model.onnx")            # onnxruntime; called like the model
    outputs = detector(images)                       # {"pred_logits", "pred_boxes"} as torch tensors

The file takes ``images`` (B, 3, H, W) float32, normalised as ``detr_nb.data.make_transforms(preset,
train=False)`` makes them, with any batch size, height and width (and with ``mask=True`` a second input
``mask`` (B, H, W) bool, True on padding), and gives the last decoder layer's ``pred_logits`` (B, Q, C+1) and
``pred_boxes`` (B, Q, 4): no auxiliary outputs, no encoder proposals. ``OnnxDetector`` returns the model's
dict, so the post-processing and ``detr_nb.predict.detect`` take it unchanged.

``onnx`` and ``onnxruntime`` (and ``onnxscript`` for the dynamo exporter) are optional: ``pip install
"detr_nb[export]"``.

Which exporter: torch.onnx has two. The TorchScript exporter (``dynamo=False``) traces one forward pass; the
dynamo exporter (torch.export, the default from torch 2.9, needs onnxscript) captures the program with
symbolic shapes. Both export these models with dynamic height and width and match PyTorch to ~1e-6
(tests/test_export.py): two-stage query selection has no Python-side branch on the number of feature cells
(``aids.model.AidedDETR.forward``). The default, ``exporter="auto"``, is the TorchScript exporter
wherever torch still has it, because it is the one that runs on every torch this package supports (torch 2.3
has no ``torch.onnx.export(dynamo=True)``), it exports in 0.3 s (detr_tiny) to 2 s (DETR-R50) where the
dynamo exporter takes 7 s to 17 s (2 CPU cores, torch 2.14), and it needs no onnxscript. Torch marks it
deprecated, so where it is gone "auto" uses the dynamo exporter (``exporter="dynamo"`` asks for it anywhere
from torch 2.5). The tracer's weakness, Python arithmetic on shapes frozen into constants, is why the tests
run one file at several sizes, one of them with fewer feature cells than queries.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor
from torch.export import Dim

from .errors import UserError
from .models.layers import Switchable

EXPORTERS = ("auto", "torchscript", "dynamo")
DEFAULT_OPSET = 17        # LayerNormalization is one op from 17; torch 2.3's default; every onnxruntime >= 1.14
INPUTS, OUTPUTS = ("images", "mask"), ("pred_logits", "pred_boxes")


def require(module: str, what: str = "ONNX export", extra: str = "export"):
    """Import an optional package, or a one-line :class:`UserError` that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f'{what} needs the optional package {module.split(".")[0]}: pip install "detr_nb[{extra}]"'
                        ) from None


def _has_torchscript_exporter() -> bool:
    """Whether this torch still has the TorchScript exporter (torch.onnx.utils up to 2.8, then internal)."""
    for name in ("torch.onnx._internal.torchscript_exporter", "torch.onnx.utils"):
        try:
            importlib.import_module(name)
            return True
        except ImportError:
            pass
    return False


def has_dynamo_exporter() -> bool:
    """Whether ``torch.onnx.export`` takes ``dynamo=`` (torch >= 2.5)."""
    return "dynamo" in inspect.signature(torch.onnx.export).parameters


def resolve_exporter(exporter: str = "auto") -> str:
    """"torchscript" or "dynamo": the exporter that ``exporter`` means on this torch (see the module doc)."""
    if exporter not in EXPORTERS:
        raise UserError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter == "auto":
        return "torchscript" if _has_torchscript_exporter() else "dynamo"
    if exporter == "dynamo" and not has_dynamo_exporter():
        raise UserError(f"the dynamo ONNX exporter needs torch >= 2.5 (this is torch {torch.__version__}); "
                        "use exporter='torchscript'")
    return exporter


class InferenceOutputs(nn.Module):
    """The model as ONNX sees it: (images[, mask]) -> (pred_logits, pred_boxes) of the last decoder layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        out = self.model(images, mask)
        return out["pred_logits"], out["pred_boxes"]


@contextlib.contextmanager
def inference_mode(model: nn.Module):
    """Inside the block ``model`` is in eval mode and on PyTorch's fused ops (``impl="torch"``: the same
    weights, ops the exporters know); both restored after."""
    impls = [(m, m.impl) for m in model.modules() if isinstance(m, Switchable)]
    training = model.training
    try:
        model.eval()
        for m, _ in impls:
            m.impl = "torch"
        yield model
    finally:
        for m, impl in impls:
            m.impl = impl
        model.train(training)


def example_inputs(model: nn.Module, mask: bool = False, batch: int = 2) -> Tuple[Tensor, ...]:
    """Random normalised images (``batch``, 3, H, W) whose feature map is 3 x 4 (no dimension of size 1, which
    torch.export would specialise), and a padding mask (the second image padded on the right) with ``mask``."""
    stride = getattr(getattr(model, "backbone", None), "stride", 32)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 3 * stride, 4 * stride, generator=g)
    if not mask:
        return (images,)
    m = torch.zeros(batch, 3 * stride, 4 * stride, dtype=torch.bool)
    m[1:, :, 3 * stride:] = True
    return images, m


def _export_torchscript(wrapper, args, path, opset, names) -> None:
    dims = {"images": {0: "batch", 2: "height", 3: "width"}, "mask": {0: "batch", 1: "height", 2: "width"},
            "pred_logits": {0: "batch"}, "pred_boxes": {0: "batch"}}
    with warnings.catch_warnings():
        # TracerWarnings: the model's input checks (`if images.shape[1] != 3`) become constants, as they
        # should; DeprecationWarning: torch >= 2.9 announces the removal of this exporter (see module doc).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        kwargs = {"dynamo": False} if has_dynamo_exporter() else {}
        torch.onnx.export(wrapper, args, str(path), input_names=list(names), output_names=list(OUTPUTS),
                          dynamic_axes={k: v for k, v in dims.items() if k in names + OUTPUTS},
                          opset_version=opset, do_constant_folding=True, **kwargs)


def _export_dynamo(wrapper, args, path, opset, names) -> None:
    require("onnxscript", "the dynamo ONNX exporter")
    batch, height, width = Dim("batch", min=1, max=1024), Dim("height", min=16), Dim("width", min=16)
    shapes = [{0: batch, 2: height, 3: width}, {0: batch, 1: height, 2: width}][:len(args)]
    quiet = logging.getLogger("onnxscript")   # "Skipping constant folding for op Split...", once per attention
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(None), warnings.catch_warnings():   # its progress lines; and a warning
            # that the mask's axes share the images' names, which is what the shared Dims say
            warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
            program = torch.onnx.export(wrapper, args, dynamo=True, input_names=list(names),
                                        output_names=list(OUTPUTS), dynamic_shapes=tuple(shapes),
                                        opset_version=opset)
    finally:
        quiet.setLevel(level)
    program.save(str(path), external_data=False)


def export_onnx(model: nn.Module, path: Union[str, Path], *, opset: Optional[int] = None, mask: bool = False,
                exporter: str = "auto", check: bool = True) -> Path:
    """Write ``model`` (any DETR of this package) to ``path`` as ONNX for inference; returns the path.

    Inputs ``images`` (B, 3, H, W) float32, any B, H, W, and with ``mask=True`` ``mask`` (B, H, W) bool
    (True = padding; without it the images are taken as unpadded). Outputs ``pred_logits`` (B, Q, C+1) and
    ``pred_boxes`` (B, Q, 4), the last decoder layer's. ``opset``: the ONNX opset (default 17 with the
    TorchScript exporter, torch's own default with the dynamo one). ``exporter``: "auto" | "torchscript" |
    "dynamo" (see the module doc). ``check``: run ``onnx.checker`` on the file. The model is left as it was.
    """
    onnx = require("onnx")
    kind = resolve_exporter(exporter)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = INPUTS if mask else INPUTS[:1]
    with inference_mode(model), torch.no_grad():
        device = next(model.parameters()).device
        args = tuple(a.to(device) for a in example_inputs(model, mask))
        wrapper = InferenceOutputs(model).eval()
        if kind == "torchscript":
            _export_torchscript(wrapper, args, path, opset or DEFAULT_OPSET, names)
        else:
            _export_dynamo(wrapper, args, path, opset, names)
    if check:
        onnx.checker.check_model(str(path))
    return path


class OnnxDetector:
    """An exported DETR run by onnxruntime, called like the PyTorch model: ``detector(images, mask=None)`` ->
    ``{"pred_logits", "pred_boxes"}`` torch tensors on the images' device, so the post-processing and
    ``detr_nb.predict.detect`` work on it unchanged."""

    def __init__(self, path: Union[str, Path], providers: Optional[list] = None):
        ort = require("onnxruntime", "running an ONNX model")
        if not Path(path).is_file():
            raise UserError(f"{path}: no such ONNX file")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def eval(self) -> "OnnxDetector":   # detect() calls model.eval()
        return self

    def __call__(self, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        feed = {"images": images.detach().float().cpu().numpy()}
        if "mask" in self.input_names:
            if mask is None:
                mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool)
            feed["mask"] = mask.detach().bool().cpu().numpy()
        elif mask is not None and bool(mask.any()):
            raise UserError(f"{self.path} was exported without a mask input: run padded batches through a file "
                            "exported with mask=True (--mask), or one image at a time")
        outs = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        return {k: torch.from_numpy(outs[k]).to(images.device) for k in OUTPUTS}


def parity(model: nn.Module, detector: OnnxDetector, images: Tensor, mask: Optional[Tensor] = None
           ) -> Dict[str, float]:
    """Max |onnxruntime - PyTorch| of the logits and boxes on ``images`` (and ``mask``): ``{"pred_logits": ...,
    "pred_boxes": ...}``. PyTorch is the model itself (its own query selection), in eval mode on the fused ops."""
    with inference_mode(model), torch.no_grad():
        device = next(model.parameters()).device
        want = model(images.to(device), None if mask is None else mask.to(device))
    got = detector(images, mask)
    return {k: float((got[k].cpu() - want[k].float().cpu()).abs().max()) for k in OUTPUTS}


# ----------------------------------------------------------------------------- weights, and Hugging Face
def export_safetensors(model: nn.Module, path: Union[str, Path], categories: Dict[int, str],
                       category_ids: Optional[Dict[int, int]] = None) -> Path:
    """The weights as safetensors at ``path``, and ``config.json`` beside them: the model's name and
    configuration, its number of classes, and each label's name and category id. Loading needs detr_nb's model
    code only (README, "Your model, outside detr_nb")."""
    safetensors = require("safetensors.torch", "the safetensors export", "hf")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
    config = {"model": model.name, "num_classes": model.num_classes, "model_config": dataclasses.asdict(model.config),
              "categories": {int(k): v for k, v in categories.items()},
              "category_ids": {int(k): int(v) for k, v in (category_ids or {k: k for k in categories}).items()}}
    path.with_name("config.json").write_text(json.dumps(config, indent=1))
    return path


def hf_equivalent(model: nn.Module) -> Optional[str]:
    """None when ``model`` has the layout of Hugging Face's ``DetrForObjectDetection`` (the paper's DETR on a whole
    frozen-BatchNorm ResNet, post-norm: detr_r50/r101, their DC5 and their fine-tunes), else why not."""
    cfg = model.config
    if type(model).__name__ != "DETR":
        return f"{model.name} is a {type(model).__name__}, which Hugging Face's DETR does not have"
    if cfg.backbone_norm != "frozen_bn" or cfg.backbone_width != 1.0 or cfg.return_layer != "layer4" or cfg.pre_norm:
        return f"{model.name}'s backbone or norm differs from Hugging Face's DETR (a whole ResNet, frozen BatchNorm)"
    if cfg.dilation and cfg.backbone in ("resnet18", "resnet34"):   # timm dilates BasicBlocks otherwise
        return f"{model.name}'s dilated {cfg.backbone} differs from timm's, which Hugging Face's DETR runs"
    return None


def _hf_value(key: str, ours: Dict[str, Tensor]) -> Tensor:
    """The value of one key of ``DetrForObjectDetection``'s state dict (transformers 4.x and 5.x names) from ours."""
    m = re.fullmatch(r"model\.backbone\.(?:conv_encoder\.)?model\.(.+)", key)
    if m:
        return ours[f"backbone.0.body.{m.group(1)}"]
    m = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.([qkvo]|out)_proj\.(weight|bias)", key)
    if m:
        part, i, attn, which, kind = m.groups()
        prefix = f"transformer.{part}.layers.{i}.{'self_attn' if attn == 'self_attn' else 'multihead_attn'}"
        if which in ("o", "out"):
            return ours[f"{prefix}.out_proj.{kind}"]
        return ours[f"{prefix}.in_proj_{kind}"].chunk(3)["qkv".index(which)]    # ours packs q, k, v
    m = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(?:mlp\.)?(\w+)\.(weight|bias)", key)
    if m:
        part, i, name, kind = m.groups()
        norms = ({"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"} if part == "encoder" else
                 {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"})
        return ours[f"transformer.{part}.layers.{i}.{ {'fc1': 'linear1', 'fc2': 'linear2', **norms}[name]}.{kind}"]
    renamed = {"model.input_projection": "input_proj", "model.query_position_embeddings": "query_embed",
               "model.decoder.layernorm": "transformer.decoder.norm", "class_labels_classifier": "class_embed",
               "bbox_predictor": "bbox_embed"}
    prefix = next(p for p in renamed if key.startswith(p + "."))
    return ours[renamed[prefix] + key[len(prefix):]]


def export_hf(model: nn.Module, folder: Union[str, Path], categories: Dict[int, str], preset: str = "official") -> Path:
    """A folder that ``transformers.DetrForObjectDetection.from_pretrained(folder)`` loads offline, with the
    same weights (``config.json`` + ``model.safetensors``), and the image processor of ``preset`` (its eval
    resize; "cpu" and "none" keep the size), so ``pipeline("object-detection", model=folder)`` runs; a one-line
    UserError for a model without an equivalent (:func:`hf_equivalent`). Needs transformers and timm (its ResNet
    has torchvision's names)."""
    transformers = require("transformers", "the Hugging Face export", "hf")
    require("timm", "the Hugging Face export", "hf")
    why = hf_equivalent(model)
    if why:
        raise UserError(f"no Hugging Face export: {why}; export it with --format safetensors or onnx")
    cfg = model.config
    named = {int(k): str(v) for k, v in categories.items()}
    labels = {k: named.get(k, "N/A") for k in range(model.num_classes)}   # unused ids: "N/A", as facebook/detr-resnet-50
    hf_config = transformers.DetrConfig(
        num_labels=model.num_classes, num_queries=cfg.num_queries, d_model=cfg.hidden_dim, encoder_layers=cfg.enc_layers,
        decoder_layers=cfg.dec_layers, encoder_attention_heads=cfg.nheads, decoder_attention_heads=cfg.nheads,
        encoder_ffn_dim=cfg.dim_feedforward, decoder_ffn_dim=cfg.dim_feedforward, dropout=cfg.dropout,
        auxiliary_loss=False, backbone=cfg.backbone, use_timm_backbone=True, use_pretrained_backbone=False,
        dilation=cfg.dilation, id2label=labels, label2id={v: k for k, v in labels.items()})
    transformers.utils.logging.disable_progress_bar()     # its per-shard bars on every save and load
    hf = transformers.DetrForObjectDetection(hf_config)
    ours = model.state_dict()
    hf.load_state_dict({k: _hf_value(k, ours) for k in hf.state_dict()}, strict=True)
    hf.save_pretrained(str(folder))
    sizes = {"official": (800, 1333), "t4": (640, 1000)}     # make_transforms' eval resize
    resize = {"size": dict(zip(("shortest_edge", "longest_edge"), sizes[preset]))} if preset in sizes else \
        {"do_resize": False}
    transformers.DetrImageProcessor(**resize).save_pretrained(str(folder))
    return Path(folder)


def hf_parity(model: nn.Module, folder: Union[str, Path]) -> Dict[str, float]:
    """Max |Hugging Face - detr_nb| of the logits and boxes of the folder :func:`export_hf` wrote, on two random
    images, the second padded on the right and bottom (``pixel_mask`` 0 there, our mask True)."""
    transformers = require("transformers", "the Hugging Face check", "hf")
    hf = transformers.DetrForObjectDetection.from_pretrained(str(folder)).eval()
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, :, 96:] = mask[1, 64:] = True
    with inference_mode(model), torch.no_grad():
        want = model(images.to(next(model.parameters()).device), mask.to(next(model.parameters()).device))
        got = hf(pixel_values=images, pixel_mask=(~mask).long())
    return {"pred_logits": float((got.logits - want["pred_logits"].cpu()).abs().max()),
            "pred_boxes": float((got.pred_boxes - want["pred_boxes"].cpu()).abs().max())}
