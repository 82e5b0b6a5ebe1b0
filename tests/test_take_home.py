"""The model leaves detr_nb: safetensors weights with their config.json, and Hugging Face's
``DetrForObjectDetection`` (``export --format safetensors | hf``).

The HF round trip is judged on outputs, not names: detr_nb's model and the folder loaded by transformers give the
same logits and boxes (within 1e-4) on images with padding, for the official layout at two depths and with a
dilated last stage, with every weight and every norm's statistics moved off its initial value (so that a mapping
or a norm applied once too often cannot hide behind identity-initialised layers). transformers, timm and safetensors
are the optional extra "hf"; without them these tests skip, but for the one-line error that names it.
"""
import json
import re
import sys

import pytest
import torch

from detr_nb.cli import main
from detr_nb.config import build_model
from detr_nb.errors import UserError
from detr_nb.export import export_hf, export_safetensors, hf_equivalent, hf_parity
from engine_utils import TINY

TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")


def _needs(*modules):
    for m in modules:
        pytest.importorskip(m, reason='optional: pip install "detr_nb[hf]"')


def _moved(model, seed=0):
    """Every parameter nudged and every frozen norm given statistics of its own."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dtype.is_floating_point:
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
    return model.eval()


@pytest.mark.parametrize("name, overrides", [("detr_small", {}), ("detr_r50", {"enc_layers": 2, "dec_layers": 2}),
                                             ("detr_r50_dc5", {"enc_layers": 1, "dec_layers": 1})])
def test_hugging_face_gives_our_outputs_on_padded_images(name, overrides, tmp_path):
    _needs("transformers", "timm")
    import transformers
    model = _moved(build_model(name, num_classes=4, num_queries=20, **overrides))
    export_hf(model, tmp_path / "hf", {0: "cat", 2: "dog", 3: "fox"}, preset="t4")
    delta = hf_parity(model, tmp_path / "hf")
    assert max(delta.values()) <= TOL, delta
    hf = transformers.DetrForObjectDetection.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert hf.config.id2label == {0: "cat", 1: "N/A", 2: "dog", 3: "fox"} and hf.config.num_queries == 20
    # another size, three images, each padded differently
    images = torch.randn(3, 3, 70, 101, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(3, 70, 101, dtype=torch.bool)
    mask[1, :, 60:], mask[2, 33:] = True, True
    with torch.no_grad():
        ours, theirs = model(images, mask), hf.eval()(pixel_values=images, pixel_mask=(~mask).long())
    assert (ours["pred_logits"] - theirs.logits).abs().max() <= TOL
    assert (ours["pred_boxes"] - theirs.pred_boxes).abs().max() <= TOL


def test_hugging_face_pipeline_runs_the_folder(tmp_path):
    _needs("transformers", "timm")
    import transformers
    from PIL import Image
    model = build_model("detr_small", num_classes=2).eval()
    export_hf(model, tmp_path / "hf", {0: "box", 1: "disc"})
    Image.new("RGB", (90, 60), (200, 30, 30)).save(tmp_path / "photo.png")
    found = transformers.pipeline("object-detection", model=str(tmp_path / "hf"), threshold=0.0)(
        str(tmp_path / "photo.png"))
    assert found and {d["label"] for d in found} <= {"box", "disc"}
    assert all(0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= 90 for d in found)


@pytest.fixture(scope="module")
def aided_run(tmp_path_factory, data_root):
    work = tmp_path_factory.mktemp("run")
    from engine_utils import SYN
    assert main(["train", "--data-root", str(data_root), "--data-kwargs", json.dumps(SYN), "--model-overrides",
                 json.dumps(TINY), "--batch-size", "4", "--time-budget", "none", "--max-steps", "1", "--eval-every",
                 "0", "--out", str(work / "run"), "--no-progress", "--device", "cpu"]) == 0
    return work / "run"


def test_a_model_without_a_hugging_face_equivalent_is_one_line(aided_run, capsys, tmp_path):
    _needs("transformers", "timm")
    capsys.readouterr()
    assert main(["export", "--run", str(aided_run), "--format", "hf", "-o", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no Hugging Face export: detr_tiny_aided is a AidedDETR" in err
    assert "--format safetensors or onnx" in err and not (tmp_path / "hf").exists()
    assert hf_equivalent(build_model("detr_r50", num_classes=2, pre_norm=True)) is not None
    assert "dilated resnet18" in hf_equivalent(build_model("detr_small", num_classes=2, dilation=True))
    assert hf_equivalent(build_model("detr_r101", num_classes=2)) is None


def test_safetensors_weights_and_config_rebuild_the_model(aided_run, capsys, tmp_path):
    _needs("safetensors")
    from safetensors.torch import load_file
    from detr_nb import checkpoint as ckpt
    assert main(["export", "--run", str(aided_run), "--format", "safetensors", "-o", str(tmp_path / "m.safetensors")]) == 0
    assert f"wrote {(tmp_path / 'm.safetensors').resolve()}" in capsys.readouterr().out
    config = json.loads((tmp_path / "config.json").read_text())
    state = ckpt.load_checkpoint(aided_run / "checkpoints" / "last.pth")
    assert config["model"] == "detr_tiny_aided" and config["categories"] == {str(k): v for k, v in
                                                                             state["categories"].items()}
    model = build_model(config["model"], num_classes=config["num_classes"], **config["model_config"])
    model.load_state_dict(load_file(tmp_path / "m.safetensors"))      # strict: every key, every shape
    trained = ckpt.model_from_checkpoint(state, "cpu")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model.eval()(images), trained.eval()(images)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


@pytest.mark.parametrize("missing", ["transformers", "safetensors"])
def test_missing_hf_extra_is_one_line(missing, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.setitem(sys.modules, missing + ".torch", None)
    model = build_model("detr_small", num_classes=2)
    with pytest.raises(UserError, match=re.escape(f'needs the optional package {missing}: pip install "detr_nb[hf]"')):
        if missing == "transformers":
            export_hf(model, tmp_path / "hf", {0: "a", 1: "b"})
        else:
            export_safetensors(model, tmp_path / "m.safetensors", {0: "a", 1: "b"})
