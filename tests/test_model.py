"""The whole DETR: official parameter counts and keys, scratch == torch, padding invariance, gradients, config
errors, released checkpoints (offline)."""
import hashlib
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import detr_nb.pretrained as P
from detr_nb.config import MODELS, build_model
from detr_nb.models import DETRConfig, layers
from detr_nb.pretrained import CHECKPOINTS, load_pretrained, sha256_prefix


def _meta_model(name, **kw):
    with torch.device("meta"):   # structure and counts only: no memory, no init cost
        return build_model(name, num_classes=91, **kw)


def _tiny(**kw):
    torch.manual_seed(0)
    return build_model("detr_tiny", num_classes=5, **kw)


# ---------------------------------------------------------------- official structure ----------
def counts(model, prefix=""):
    """(all, trainable) parameters whose name starts with ``prefix``."""
    ps = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)


def test_r50_parameter_counts_match_the_official():
    m = _meta_model("detr_r50")
    assert counts(m) == (41_524_768, 41_302_368)
    assert sum(b.numel() for b in m.buffers()) == 106_240
    assert counts(m, "backbone.") == (23_454_912, 23_232_512)
    assert counts(m, "transformer.")[0] == 17_363_456
    assert [counts(m, k)[0] for k in ("input_proj.", "query_embed.", "class_embed.", "bbox_embed.")] == \
        [524_544, 25_600, 23_644, 132_612]
    assert len(m.state_dict()) == 458


@pytest.mark.parametrize("name,total,trainable", [("detr_r101", 60_464_672, 60_242_272),
                                                  ("detr_r50_dc5", 41_524_768, 41_302_368),
                                                  ("detr_r101_dc5", 60_464_672, 60_242_272)])
def test_other_official_counts(name, total, trainable):
    assert counts(_meta_model(name)) == (total, trainable)


def official_reference_shapes(num_classes=91, num_queries=100):
    """The released checkpoint's key set, rebuilt independently of our code: torchvision's ResNet-50
    (no fc, no num_batches_tracked), PyTorch's own Transformer layers (same names as the official),
    the decoder norm and the heads."""
    with torch.device("meta"):
        rn = torchvision.models.resnet50(weights=None).state_dict()
        enc = nn.TransformerEncoderLayer(256, 8, 2048).state_dict()
        dec = nn.TransformerDecoderLayer(256, 8, 2048).state_dict()
    shapes = {f"backbone.0.body.{k}": v.shape for k, v in rn.items()
              if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for i in range(6):
        shapes.update({f"transformer.encoder.layers.{i}.{k}": v.shape for k, v in enc.items()})
        shapes.update({f"transformer.decoder.layers.{i}.{k}": v.shape for k, v in dec.items()})
    shapes.update({"transformer.decoder.norm.weight": (256,), "transformer.decoder.norm.bias": (256,),
                   "class_embed.weight": (num_classes + 1, 256), "class_embed.bias": (num_classes + 1,),
                   "query_embed.weight": (num_queries, 256),
                   "input_proj.weight": (256, 2048, 1, 1), "input_proj.bias": (256,)})
    for i, (o, n) in enumerate([(256, 256), (256, 256), (4, 256)]):
        shapes.update({f"bbox_embed.layers.{i}.weight": (o, n), f"bbox_embed.layers.{i}.bias": (o,)})
    return {k: torch.Size(v) for k, v in shapes.items()}


@pytest.fixture(scope="module")
def r50_official_weights():
    """A real R50 DETR loaded strictly from a random state dict with the official keys and shapes."""
    shapes = official_reference_shapes()
    assert len(shapes) == 458
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, s in shapes.items():
        t = torch.randn(s, generator=g) * 0.05
        if k.endswith("running_var"):
            t = t.abs() + 0.5
        state[k] = t
    torch.manual_seed(0)
    model = build_model("detr_r50", num_classes=91)
    model.load_state_dict(state, strict=True)
    return model.eval(), state


def test_official_key_set_loads_strictly(r50_official_weights):
    model, state = r50_official_weights
    own = model.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in state.items()}
    torch.testing.assert_close(own["transformer.decoder.layers.5.multihead_attn.in_proj_weight"],
                               state["transformer.decoder.layers.5.multihead_attn.in_proj_weight"])


def test_r50_scratch_equals_torch(r50_official_weights):
    model, _ = r50_official_weights
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = layers.set_impl(model, "torch")(x)
        b = layers.set_impl(model, "scratch")(x)
    layers.set_impl(model, "torch")
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(b["pred_boxes"], a["pred_boxes"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- behaviour (tiny config) -----
def test_output_contract():
    m = _tiny().eval()
    out = m(torch.randn(2, 3, 48, 64))
    assert out["pred_logits"].shape == (2, 25, 6) and out["pred_boxes"].shape == (2, 25, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == m.config.dec_layers - 1
    assert out["aux_outputs"][0]["pred_logits"].shape == (2, 25, 6)
    assert "aux_outputs" not in _tiny(aux_loss=False)(torch.randn(1, 3, 32, 32))
    assert isinstance(m.config, DETRConfig) and m.num_classes == 5


def test_detr_small_builds_and_runs():
    m = build_model("detr_small", num_classes=3).eval()
    out = m(torch.randn(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, 50, 4) and len(out["aux_outputs"]) == 2
    assert m.backbone.num_channels == 512 and m.config.backbone == "resnet18"


def test_scratch_equals_torch_tiny_eval_float64():
    m = _tiny(backbone_norm="frozen_bn", dropout=0.1).double().eval()
    x = torch.randn(2, 3, 48, 64, dtype=torch.float64)
    mask = torch.zeros(2, 48, 64, dtype=torch.bool)
    mask[1, :, 32:] = True
    with torch.no_grad():
        a = layers.set_impl(m, "torch")(x, mask)
        b = layers.set_impl(m, "scratch")(x, mask)
    for k in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-10)
    torch.testing.assert_close(b["aux_outputs"][0]["pred_boxes"], a["aux_outputs"][0]["pred_boxes"], rtol=0, atol=1e-10)


def test_scratch_equals_torch_tiny_float32_bn_and_grads():
    """Default float32 tiny (trained BatchNorm): outputs within 1e-5, gradients close."""
    m = _tiny()
    x = torch.randn(2, 3, 48, 48)
    outs, grads = [], []
    for impl in ("torch", "scratch"):
        layers.set_impl(m, impl)
        m.zero_grad()
        out = m(x)
        (out["pred_logits"].logsumexp(-1).sum() + out["pred_boxes"].sum()).backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    torch.testing.assert_close(outs[1]["pred_logits"], outs[0]["pred_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(outs[1]["pred_boxes"], outs[0]["pred_boxes"], rtol=0, atol=1e-5)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-3, atol=1e-4, msg=n)


def test_padding_invariance():
    """An image's predictions don't change when the batch pads it to a larger size.

    What DETR's masks guarantee is checked exactly: mask downsampling, position encoding, encoder
    and decoder attention ignore the padded cells, whatever the features there. The CNN itself is
    not padding invariant (its border pixels see the padded cells' activations, in the official
    model too), so the backbone is replaced here by fixed features: the valid cells are the same
    in both runs, the padded cells are garbage.
    """
    m = _tiny().eval()
    body = m.backbone[0]
    C, s = body.num_channels, body.stride
    feat = torch.randn(1, C, 64 // s, 48 // s)              # the image's own features (h, w) = (4, 3)
    padded = torch.randn(2, C, 96 // s, 112 // s) * 100     # garbage wherever image 0 is padding
    padded[0, :, :64 // s, :48 // s] = feat[0]
    body.forward = lambda images: feat if images.shape[0] == 1 else padded
    alone = m(torch.randn(1, 3, 64, 48))
    mask = torch.zeros(2, 96, 112, dtype=torch.bool)
    mask[0, 64:, :] = True
    mask[0, :, 48:] = True
    batched = m(torch.randn(2, 3, 96, 112), mask)
    for k in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(batched[k][0], alone[k][0], rtol=1e-4, atol=1e-5)
    # and the padding does matter if the mask is dropped (the test can fail)
    unmasked = m(torch.randn(2, 3, 96, 112))
    assert not torch.allclose(unmasked["pred_logits"][0], alone["pred_logits"][0], atol=1e-3)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_every_trainable_parameter_gets_a_gradient(pre_norm):
    """All parameters get a gradient from a loss on all outputs (train mode, dropout on).

    Structural exception, in the official architecture too: the first decoder layer starts from
    tgt = 0. Pre-norm, its norm1 normalises a zero vector (output = bias), so norm1.weight never
    gets a gradient. (Post-norm, every key of that self-attention carries the same value, so only
    attention dropout gives its q/k weights a gradient.) Biases are randomised first: at init they
    are zero, which silences a few more parameters of that layer for the first step."""
    m = _tiny(dropout=0.1, pre_norm=pre_norm).train()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
    out = m(torch.randn(2, 3, 48, 48))
    loss = sum(o["pred_logits"].logsumexp(-1).sum() + o["pred_boxes"].sum()
               for o in [out] + out["aux_outputs"])
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == (["transformer.decoder.layers.0.norm1.weight"] if pre_norm else [])
    assert (m.transformer.encoder.norm is not None) == pre_norm   # pre-norm has a final encoder norm


def test_frozen_parameters_get_no_gradient():
    m = _tiny(backbone_norm="frozen_bn", frozen_stages=1)
    m(torch.randn(1, 3, 32, 32))["pred_boxes"].sum().backward()
    assert not m.backbone[0].body.conv1.weight.requires_grad and m.backbone[0].body.conv1.weight.grad is None
    assert m.backbone[0].body.layer2[0].conv1.weight.grad is not None


def test_an_image_without_its_batch_dimension_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _tiny()(torch.randn(3, 32, 32))


def test_build_model_errors():
    with pytest.raises(ValueError, match="detr_r50.*detr_tiny"):
        build_model("detr_r5O", num_classes=3)
    with pytest.raises(ValueError, match="num_querys.*num_queries"):
        build_model("detr_tiny", num_classes=3, num_querys=10)
    with pytest.raises(ValueError, match="hidden_dim"):
        build_model("detr_tiny", num_classes=3, hidden_dim=100)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_classes"):
            build_model("detr_tiny", num_classes=bad)
    with pytest.raises(ValueError, match="impl"):
        build_model("detr_tiny", num_classes=3, impl="fast")
    assert {"detr_r50", "detr_r50_dc5", "detr_r101", "detr_r101_dc5", "detr_tiny", "detr_small",
            "detr_tiny_aided"} == set(MODELS)


def test_build_model_impl_switch():
    m = build_model("detr_tiny", num_classes=3, impl="scratch")
    impls = {x.impl for x in m.modules() if isinstance(x, layers.Switchable)}
    assert impls == {"scratch"}


# ---------------------------------------------------------------- checkpoints (offline) -------
def _write_checkpoint(model, path_dir, stem):
    tmp = path_dir / "tmp.pth"
    torch.save({"model": model.state_dict()}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    final = path_dir / f"{stem}-{digest[:8]}.pth"
    tmp.rename(final)
    return final


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    src = tmp_path / "src"
    src.mkdir()
    return src


def test_load_pretrained_file_url_and_num_classes_change(hub_dir):
    src_model = _tiny()
    ckpt = _write_checkpoint(src_model, hub_dir, "detr-tiny")
    torch.manual_seed(1)
    target = build_model("detr_tiny", num_classes=5)
    load_pretrained(target, url=ckpt.as_uri(), progress=False)
    for k, v in src_model.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    # another num_classes: the class head is skipped with a warning, the rest loads
    other = build_model("detr_tiny", num_classes=9)
    head = other.class_embed.weight.clone()
    with pytest.warns(UserWarning, match="class_embed"):
        load_pretrained(other, url=ckpt.as_uri(), progress=False)
    assert torch.equal(other.class_embed.weight, head)
    assert torch.equal(other.query_embed.weight, src_model.query_embed.weight)


def test_load_pretrained_rejects_bad_hash_and_bad_keys(hub_dir):
    src_model = _tiny()
    ckpt = _write_checkpoint(src_model, hub_dir, "detr-tiny")
    bad = ckpt.with_name("detr-tiny-00000000.pth")
    ckpt.rename(bad)
    with pytest.raises(RuntimeError, match="hash"):
        load_pretrained(_tiny(), url=bad.as_uri(), progress=False)
    good = _write_checkpoint(src_model, hub_dir, "detr-tiny2")
    with pytest.raises(ValueError, match="shape mismatch.*linear1.weight"):   # another body: refused, key named
        load_pretrained(build_model("detr_tiny", num_classes=5, dim_feedforward=64), url=good.as_uri(), progress=False)
    with pytest.raises(ValueError, match="missing in checkpoint.*layer4"):
        load_pretrained(build_model("detr_tiny", num_classes=5, return_layer="layer4"), url=good.as_uri(),
                        progress=False)
    with pytest.raises(ValueError, match="known"):
        load_pretrained(_tiny(), "detr_r18")


def test_load_pretrained_warns_on_dc5_mixup(hub_dir, monkeypatch):
    """detr_r50 and detr_r50_dc5 share keys and shapes: the config comparison must catch it."""
    m = _meta_model("detr_r50_dc5")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: {"model": m.state_dict()})
    monkeypatch.setattr(P, "load_checkpoint_state", lambda model, state: [])
    with pytest.warns(UserWarning, match="dilation=True"):
        load_pretrained(m, "detr_r50")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pretrained(m, "detr_r50_dc5")


def test_checkpoint_table():
    assert set(CHECKPOINTS) == {"detr_r50", "detr_r50_dc5", "detr_r101", "detr_r101_dc5"}
    assert sha256_prefix(CHECKPOINTS["detr_r50"]) == "e632da11"
    assert CHECKPOINTS["detr_r101_dc5"] == "https://dl.fbaipublicfiles.com/detr/detr-r101-dc5-a2e86def.pth"
