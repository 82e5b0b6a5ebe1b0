"""ONNX export (detr_nb/export.py, ``python -m detr_nb export``): onnxruntime against PyTorch.

One exported file runs at several image sizes (dynamic height and width) and batch sizes, for the vanilla
DETR, the aided one (two-stage query selection + iterative refinement) and the official DETR-R50 architecture
(narrowed, random weights; the released checkpoint would only change the numbers). onnx and onnxruntime are
optional extras (``pip install "detr_nb[export]"``; requirements.txt installs them for CI): without them these
tests skip, except the one-line error that says how to install them.
"""
import importlib.util
import re
import sys

import pytest
import torch

from detr_nb import build_model, set_impl
from detr_nb.export import has_dynamo_exporter
from detr_nb.errors import UserError
from engine_utils import TINY

TOL = 1e-4
HAVE = {m: importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript")}
pytestmark = pytest.mark.usefixtures("one_thread")
needs_onnx = pytest.mark.skipif(not (HAVE["onnx"] and HAVE["onnxruntime"]),
                                reason='onnx and onnxruntime are optional: pip install "detr_nb[export]"')


def _tiny(name, **kw):
    torch.manual_seed(0)
    return build_model(name, num_classes=5, **{**TINY, **kw})


def _images(b, h, w, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _check(model, detector, sizes, mask=None, label=""):
    """max |delta| per size (printed with -s); every one within TOL."""
    from detr_nb.export import parity
    for b, h, w in sizes:
        delta = parity(model, detector, _images(b, h, w), None if mask is None else mask(b, h, w))
        print(f"{label} {b}x3x{h}x{w}: max |delta| logits {delta['pred_logits']:.1e}, boxes {delta['pred_boxes']:.1e}")
        assert delta["pred_logits"] <= TOL and delta["pred_boxes"] <= TOL, (b, h, w, delta)


@needs_onnx
@pytest.mark.parametrize("name", ["detr_tiny", "detr_tiny_aided"])
def test_one_file_runs_at_every_size(name, tmp_path):
    """64x96 and 80x64 (and a batch of two, and a map with fewer cells than queries) through ONE file."""
    from detr_nb.export import OnnxDetector, export_onnx
    model = _tiny(name)
    path = export_onnx(model, tmp_path / "m.onnx")
    detector = OnnxDetector(path)
    images = detector.session.get_inputs()[0]
    assert [images.name] + images.shape == ["images", "batch", 3, "height", "width"]
    assert detector.output_names == ["pred_logits", "pred_boxes"]       # no aux, no encoder outputs
    # 16x16 -> a 2x2 feature map (stride 8): 4 cells for 8 queries, two-stage repeats its proposals
    _check(model, detector, [(1, 64, 96), (1, 80, 64), (2, 48, 40), (1, 16, 16)], label=name)
    out = detector(_images(1, 64, 96))
    assert out["pred_logits"].shape == (1, 8, 6) and out["pred_boxes"].shape == (1, 8, 4)


@needs_onnx
def test_the_model_is_left_as_it_was(tmp_path):
    """A scratch-impl model in training mode exports (on the fused ops) and comes back unchanged."""
    from detr_nb.export import OnnxDetector, export_onnx
    model = set_impl(_tiny("detr_tiny_aided"), "scratch")
    model.train()
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training
    assert {m.impl for m in model.modules() if hasattr(m, "impl")} == {"scratch"}
    _check(model, OnnxDetector(tmp_path / "m.onnx"), [(1, 64, 96)], label="detr_tiny_aided (scratch impl)")


@needs_onnx
def test_padding_mask_input(tmp_path):
    """With mask=True a padded batch gives the model's own outputs; without it a padded batch is refused."""
    from detr_nb.export import OnnxDetector, export_onnx

    def padded(b, h, w):
        m = torch.zeros(b, h, w, dtype=torch.bool)
        m[-1, :, w // 2:] = True
        m[0, h - 8:, :] = True
        return m
    model = _tiny("detr_tiny_aided")
    detector = OnnxDetector(export_onnx(model, tmp_path / "mask.onnx", mask=True))
    assert [i.name for i in detector.session.get_inputs()] == ["images", "mask"]
    _check(model, detector, [(2, 64, 96), (2, 80, 64)], mask=padded, label="detr_tiny_aided padded")
    _check(model, detector, [(1, 64, 96)], label="detr_tiny_aided no mask")   # zeros, as the model does
    plain = OnnxDetector(export_onnx(model, tmp_path / "plain.onnx"))
    with pytest.raises(UserError, match="without a mask input"):
        plain(_images(2, 64, 96), padded(2, 64, 96))


@needs_onnx
def test_official_detr_r50_architecture(tmp_path):
    """The official DETR-R50's architecture (ResNet-50 bottlenecks, frozen BatchNorm, 6+6 layers, 100 queries,
    aux heads), at a quarter of its width to export in a second, random weights: one file, two sizes."""
    from detr_nb.export import OnnxDetector, export_onnx
    torch.manual_seed(0)
    model = build_model("detr_r50", num_classes=91, backbone_width=0.25, hidden_dim=64, dim_feedforward=256)
    assert (model.config.enc_layers, model.config.dec_layers, model.config.num_queries) == (6, 6, 100)
    detector = OnnxDetector(export_onnx(model, tmp_path / "r50.onnx"))
    _check(model, detector, [(1, 64, 96), (1, 96, 64)], label="detr_r50 (quarter width)")


@needs_onnx
@pytest.mark.skipif(not HAVE["onnxscript"] or not has_dynamo_exporter(),
                    reason="the dynamo exporter needs torch >= 2.5 and onnxscript")
def test_dynamo_exporter(tmp_path):
    """The exporter "auto" falls back to where torch drops the TorchScript one: the aided model, every size."""
    from detr_nb.export import OnnxDetector, export_onnx
    model = _tiny("detr_tiny_aided")
    detector = OnnxDetector(export_onnx(model, tmp_path / "m.onnx", exporter="dynamo", mask=True))
    _check(model, detector, [(1, 64, 96), (1, 80, 64), (2, 48, 40), (1, 16, 16)], label="dynamo detr_tiny_aided")


@needs_onnx
def test_postprocess_and_detect_take_its_outputs(tmp_path):
    """predict.detect runs an OnnxDetector, with its PyTorch model's post-processing, as it runs the model: the same
    boxes."""
    from PIL import Image
    import numpy as np
    from detr_nb.config import build_postprocess
    from detr_nb.data import make_transforms
    from detr_nb.export import OnnxDetector, export_onnx
    from detr_nb.predict import detect
    model = _tiny("detr_tiny_aided").eval()
    detector = OnnxDetector(export_onnx(model, tmp_path / "m.onnx"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    transforms = make_transforms("cpu", train=False)
    want = detect(model, image, transforms, "cpu")
    got = detect(detector, image, transforms, "cpu", postprocess=build_postprocess(model))
    assert len(want["labels"]) == 8 * 5              # the aided scoring's (query, class) pairs, not one per query
    assert torch.equal(want["labels"], got["labels"])
    assert torch.allclose(want["scores"], got["scores"], atol=TOL) and torch.allclose(want["boxes"], got["boxes"], atol=1e-3)


@needs_onnx
def test_export_command_with_a_mask_input(tmp_path, data_root, capsys):
    """``export --run R -o m.onnx --mask`` on a tiny trained run: the file with its two inputs, the line that says
    how to feed it, the parity line (the command as documented, without --mask: test_documented_commands.py)."""
    from detr_nb.cli import main
    from detr_nb.export import OnnxDetector
    from detr_nb.trainer import Trainer
    from engine_utils import tiny_config
    run = tmp_path / "runs" / "r"
    tr = Trainer(tiny_config(run, data_root, model="detr_tiny_aided", max_steps=1))
    tr.fit()
    tr.close()
    capsys.readouterr()
    assert main(["export", "--run", str(run), "-o", str(tmp_path / "m.onnx"), "--mask"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {(tmp_path / 'm.onnx').resolve()}" in printed
    assert "make_transforms('cpu', train=False), mask (B, H, W) bool True on padding" in printed, printed
    delta = re.search(r"max \|delta\| logits (\S+), boxes (\S+)", printed)
    assert delta and float(delta.group(1)) <= TOL and float(delta.group(2)) <= TOL, printed
    assert [i.name for i in OnnxDetector(tmp_path / "m.onnx").session.get_inputs()] == ["images", "mask"]


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_missing_optional_package_is_one_line(missing, monkeypatch, capsys, tmp_path):
    """Without onnxruntime (or onnx) the API and the command say how to install it, in one line."""
    from detr_nb.cli import main
    from detr_nb.export import OnnxDetector, export_onnx
    monkeypatch.setitem(sys.modules, missing, None)      # import fails as if not installed
    with pytest.raises(UserError, match=re.escape('pip install "detr_nb[export]"')):
        if missing == "onnxruntime":
            OnnxDetector(tmp_path / "m.onnx")
        else:
            export_onnx(_tiny("detr_tiny"), tmp_path / "m.onnx")
    assert main(["export", "--run", str(tmp_path / "no-run"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and missing in err and 'pip install "detr_nb[export]"' in err, err
