"""The helpers behind notebooks 01-04 and 08's attention maps (detr_nb.teach: images, cnn, params, positions,
attention), checked against PyTorch references and on the properties the notebooks claim."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detr_nb import build_model  # noqa: E402
from detr_nb.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from detr_nb.models.attention import MultiheadAttention  # noqa: E402
from detr_nb.models.backbone import Backbone, ResNet  # noqa: E402
from detr_nb.models.position_encoding import PositionEmbeddingSine  # noqa: E402
from detr_nb.teach import attention as A  # noqa: E402
from detr_nb.teach import cnn, images, params, positions  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures(one_thread):
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("detr_tiny", num_classes=5).eval()


# ------------------------------------------------------------------ images, 01
def test_sample_image_and_tensor():
    img = images.sample_image()
    assert img.mode == "RGB" and img.size == (512, 600)
    assert images.image_to_tensor(img, short_side=100).shape == (3, 117, 100)
    assert max(images.image_to_tensor(img, short_side=800, max_side=300).shape[1:]) == 300
    raw = torch.from_numpy(np.asarray(img, dtype="float32") / 255).permute(2, 0, 1)     # undoing ImageNet's
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    back = images.image_to_tensor(img) * std + mean
    torch.testing.assert_close(back, raw)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 0), (3, 2, 1), ((2, 3), 1, 1), (1, 1, 0)])
def test_im2col_loops_matches_unfold_and_conv(k, stride, pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6)
    cols = cnn.im2col_loops(x, k, stride, pad)
    torch.testing.assert_close(cols, F.unfold(x, k, padding=pad, stride=stride))
    w = torch.randn(4, 3, *((k, k) if isinstance(k, int) else k))
    ref = F.conv2d(x, w, stride=stride, padding=pad)
    torch.testing.assert_close((w.reshape(4, -1) @ cols).reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)


def test_plot_im2col_output_is_the_convolution():
    x, w = torch.arange(25.0).reshape(5, 5), torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    shown = cnn.plot_im2col(x, w, (1, 2), padding=1).axes[3].images[0].get_array()
    torch.testing.assert_close(torch.as_tensor(shown.data), F.conv2d(x[None, None], w[None, None], padding=1)[0, 0])


def test_stage_features_strides_and_last_equals_body():
    torch.manual_seed(0)
    body = ResNet("resnet18", norm="bn", width=0.5).eval()
    x = torch.randn(1, 3, 64, 96)
    feats = cnn.stage_features(body, x)
    assert list(feats) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [64 // f.shape[-2] for f in feats.values()] == [4, 4, 8, 16, 32]
    with torch.no_grad():
        torch.testing.assert_close(feats["layer4"], body(x))
    assert len(cnn.plot_feature_maps(feats, image=x[0], channels=3).axes) == 5 * 4


def test_parameter_table_of_the_resnet50_backbone():
    """DETR's freezing: conv1 and layer1 frozen; the official counts."""
    body = ResNet("resnet50")
    Backbone(body, frozen_stages=1)
    rows = {r.component: r for r in params.parameter_table(body, depth=1)}
    assert list(rows) == ["conv1", "layer1", "layer2", "layer3", "layer4", "total", "buffers"]   # frozen BN: buffers
    assert (rows["total"].total, rows["total"].trainable) == (23_454_912, 23_232_512)
    assert rows["conv1"].trainable == rows["layer1"].trainable == 0 and rows["layer4"].frozen == 0
    assert rows["buffers"].total == 106_240
    fig = params.plot_parameter_table(list(rows.values()))
    assert len(fig.axes[0].patches) == 2 * 5
    assert "23,454,912" in params.format_parameter_table(list(rows.values()))


def test_parameter_table_of_detr_r50_and_what_sharing_saves():
    model = build_model("detr_r50", num_classes=91)
    rows = {r.component: r for r in params.parameter_table(model)}
    assert (rows["total"].total, rows["total"].trainable) == (41_524_768, 41_302_368)
    assert {k: rows[k].total for k in ("backbone", "input_proj", "query_embed", "class_embed", "bbox_embed")} == \
        {"backbone": 23_454_912, "input_proj": 524_544, "query_embed": 25_600, "class_embed": 23_644,
         "bbox_embed": 132_612}
    assert rows["encoder"].total + rows["decoder"].total == 17_363_456 and "other" not in rows
    naive = {r["part"]: r for r in params.naive_parameter_counts(model, feature_hw=(4, 5))}
    assert naive["input_proj"]["detr"] == 524_544 and naive["input_proj"]["naive"] == 2048 * 20 * 256 * 20 + 256 * 20
    assert naive["class + box heads"]["naive"] == (23_644 + 132_612) * 100 * 6
    assert all(r["naive"] > r["detr"] for r in naive.values())


# ------------------------------------------------------------------ 02
def test_similarity_map_peaks_at_the_chosen_pixel_and_falls_off():
    pos = PositionEmbeddingSine()(torch.zeros(1, 10, 15, dtype=torch.bool))
    for yx in [(0, 0), (3, 7), (9, 14)]:
        sim = positions.position_similarity(pos, *yx)
        assert sim.shape == (10, 15) and torch.isclose(sim[yx], torch.tensor(1.0))
        others = sim.flatten()[torch.arange(150) != yx[0] * 15 + yx[1]]
        assert float(others.max()) < 1 - 1e-4                      # a unique peak
        flat = pos[0].flatten(1)                                    # cosine similarity by hand
        ref = F.cosine_similarity(pos[0, :, yx[0], yx[1]][:, None], flat, dim=0).reshape(10, 15)
        torch.testing.assert_close(sim, ref)
    fig = positions.plot_pixel_encoding(pos, 2, 5)
    torch.testing.assert_close(torch.as_tensor(fig.axes[2].images[0].get_array().data),
                               positions.position_similarity(pos, 2, 5))


# ------------------------------------------------------------------ 03: recording attention
@pytest.mark.parametrize("impl", ["scratch", "torch"])
def test_recorded_weights_are_torchs_need_weights(impl):
    """record_attention (forward hooks) gives nn.MultiheadAttention's weights (need_weights=True), padding
    included, and leaves the module's output alone."""
    torch.manual_seed(0)
    mha = MultiheadAttention(16, 4, impl=impl).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 4:] = True
    out, w = A.attention_with_weights(mha, q, kv, kv, key_padding_mask=kpm)
    ref_out, ref_w = A.to_torch_mha(mha)(q, kv, kv, key_padding_mask=kpm, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(out, mha(q, kv, kv, key_padding_mask=kpm))
    assert float(w[1, :, :, 4:].abs().max()) == 0.0 and not mha._forward_hooks      # the hook is gone


def test_toy_attention_heads_are_readable():
    mha, x = A.positional_toy_attention(num_tokens=12, embed_dim=32, num_heads=4)
    _, w = A.attention_with_weights(mha, x, x, x)
    ref_w = A.to_torch_mha(mha)(x, x, x, average_attn_weights=False)[1]
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    # notebook 03's claim: head 0 (high frequencies) is local, the last head almost uniform
    assert w[0, 0].diagonal().mean() > 0.3 and float(w[0, -1].max() - w[0, -1].min()) < 0.02
    for h in range(4):       # each head's scores depend on the distance only; the peak on the diagonal
        assert torch.equal(w[0, h].argmax(-1), torch.arange(12))
        torch.testing.assert_close(w[0, h, 5, 3] / w[0, h, 5, 5], w[0, h, 8, 6] / w[0, h, 8, 8])
    assert len(A.plot_attention_heads(w).axes) == 4
    heights = [p.get_height() for p in A.plot_attention_query(w, head=1, query=3).axes[1].patches]
    torch.testing.assert_close(torch.tensor(heights, dtype=torch.float32), w[0, 1, 3])


# ------------------------------------------------------------------ 08: a DETR's attention maps
def test_attention_maps_of_a_detr(tiny):
    torch.manual_seed(0)
    images_, mask = torch.randn(2, 3, 96, 128), torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, :, 64:] = True                                         # image 1 is half padding
    maps = A.attention_maps(tiny, images_, mask)
    (h, w), Q = maps["feature_size"], tiny.num_queries
    assert (h, w) == (6, 8) and maps["image_size"] == (96, 128) and not maps["aided"]
    assert [m.shape for m in maps["encoder"]] == [(2, 8, 48, 48)] * 2 and [m.shape for m in maps["decoder"]] == \
        [(2, 8, Q, 48)] * 2
    with torch.no_grad():
        ref = tiny(images_, mask)
    torch.testing.assert_close(maps["outputs"]["pred_logits"], ref["pred_logits"])   # recording changes nothing
    for layer in maps["encoder"] + maps["decoder"]:
        torch.testing.assert_close(layer.sum(-1), torch.ones(layer.shape[:-1]))
    pad = maps["feature_mask"][1].flatten()
    assert bool(pad.any()) and float(maps["encoder"][0][1][..., pad].abs().max()) == 0.0   # padding gets nothing
    a = A.encoder_attention_at(maps, 50, 20, batch=1)
    assert a.shape == (h, w) and torch.isclose(a.sum(), torch.tensor(1.0)) and float(a[:, 4:].abs().max()) == 0.0
    torch.testing.assert_close(A.encoder_attention_at(maps, 50, 20),       # image pixels to cells at stride 16
                               A.encoder_attention_at(maps, 3, 1, image_coords=False))
    torch.testing.assert_close(A.encoder_attention_at(maps, 50, 20, head=2),
                               maps["encoder"][-1][0, 2, 3 * w + 1].reshape(h, w))
    torch.testing.assert_close(A.decoder_attention_of(maps, 7, layer=0, batch=1),
                               maps["decoder"][0][1, :, 7].mean(0).reshape(h, w))
    assert len(A.encoder_attention_figure(images_[0], maps, [(10, 10), (40, 50)]).axes) == 3
    fig = A.decoder_attention_figure(images_[0], maps, [0, 4], names={1: "a"})
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == 1


def test_query_predictions_score_each_query_as_its_model_is_trained():
    """Softmax without "no object" for the paper's DETR; the best sigmoid of the real classes for an aided model
    (focal loss); boxes in the input's pixels."""
    torch.manual_seed(0)
    for name in ("detr_tiny", "detr_tiny_aided"):
        model = build_model(name, num_classes=5).eval()
        maps = A.attention_maps(model, torch.randn(1, 3, 64, 96))
        logits, boxes = maps["outputs"]["pred_logits"][0], maps["outputs"]["pred_boxes"][0]
        prob = logits[:, :-1].sigmoid() if name == "detr_tiny_aided" else logits.softmax(-1)[:, :-1]
        found = A.query_predictions(maps)
        torch.testing.assert_close(found["scores"], prob.max(-1).values)
        assert torch.equal(found["labels"], prob.argmax(-1)) and maps["aided"] == (name == "detr_tiny_aided")
        cx, cy, w, h = boxes.unbind(-1)
        torch.testing.assert_close(found["boxes"], torch.stack([(cx - w / 2) * 96, (cy - h / 2) * 64,
                                                                (cx + w / 2) * 96, (cy + h / 2) * 64], -1))
