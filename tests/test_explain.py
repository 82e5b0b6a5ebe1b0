"""detr_nb.teach: the functions behind the figures and widgets of notebooks 01-04 and 08,
checked against PyTorch references and on the properties the notebooks claim."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detr_nb import build_model, parameter_table  # noqa: E402
from detr_nb import figures as F_
from detr_nb import teach as E
from detr_nb.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detr_nb.model.backbone import Backbone, ResNet  # noqa: E402
from detr_nb.model.position_encoding import PositionEmbeddingSine  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("detr_tiny", num_classes=5).eval()


# ------------------------------------------------------------------ images
def test_sample_image_and_tensor():
    img = E.sample_image()
    assert img.mode == "RGB" and img.size == (512, 600)
    x = E.image_to_tensor(img, short_side=100)
    assert x.shape == (3, 117, 100) and x.dtype == torch.float32
    x = E.image_to_tensor(img, short_side=800, max_side=300)
    assert max(x.shape[1:]) == 300
    # ImageNet normalisation: undoing it gives back [0, 1] pixels.
    raw = torch.from_numpy(__import__("numpy").asarray(img, dtype="float32") / 255).permute(2, 0, 1)
    back = E.image_to_tensor(img) * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(back, raw)


# ------------------------------------------------------------------ 01
@pytest.mark.parametrize("k,stride,pad", [(3, 1, 0), (3, 2, 1), ((2, 3), 1, 1), (1, 1, 0)])
def test_im2col_loops_matches_unfold_and_conv(k, stride, pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6)
    cols = E.im2col_loops(x, k, stride, pad)
    torch.testing.assert_close(cols, F.unfold(x, k, padding=pad, stride=stride))
    kk = (k, k) if isinstance(k, int) else k
    w = torch.randn(4, 3, *kk)
    ref = F.conv2d(x, w, stride=stride, padding=pad)
    y = (w.reshape(4, -1) @ cols).reshape(ref.shape)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_plot_im2col_output_is_the_convolution():
    x = torch.arange(25.0).reshape(5, 5)
    w = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    fig = F_.plot_im2col(x, w, (1, 2), padding=1)
    shown = fig.axes[3].images[0].get_array()
    ref = F.conv2d(x[None, None], w[None, None], padding=1)[0, 0]
    assert shown.shape == (5, 5)
    torch.testing.assert_close(torch.as_tensor(shown.data), ref)


def test_stage_features_strides_and_last_equals_body():
    torch.manual_seed(0)
    body = ResNet("resnet18", norm="gn", width=0.5).eval()
    x = torch.randn(1, 3, 64, 96)
    feats = E.stage_features(body, x)
    assert list(feats) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    strides = [64 // f.shape[-2] for f in feats.values()]
    assert strides == [4, 4, 8, 16, 32]
    with torch.no_grad():
        torch.testing.assert_close(feats["layer4"], body(x))
    fig = F_.plot_feature_maps(feats, image=x[0], channels=3)
    assert len(fig.axes) == 5 * 4


def test_grouped_parameter_table_resnet50_backbone():
    bb = Backbone("resnet50")      # DETR's freezing: conv1 (+bn1) and layer1 frozen
    rows = {r.component: r for r in E.grouped_parameter_table(bb.body)}
    assert list(rows)[:6] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"] or \
        list(rows)[:5] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert rows["total"].total == 23_454_912 and rows["total"].trainable == 23_232_512
    assert rows["conv1"].trainable == 0 and rows["layer1"].trainable == 0
    assert rows["layer4"].frozen == 0
    assert rows["buffers"].total == 106_240
    fig = F_.plot_parameter_table(list(rows.values()))
    assert len(fig.axes[0].patches) == 2 * sum(1 for r in rows.values() if r.component not in ("total", "buffers"))


def test_grouped_table_agrees_with_parameter_table(tiny):
    own = {r.component: r for r in E.grouped_parameter_table(tiny)}
    ref = {r.component: r for r in parameter_table(tiny)}
    assert own["total"] == ref["total"] and own["buffers"] == ref["buffers"]
    assert own["backbone"].total == ref["backbone"].total


# ------------------------------------------------------------------ 02
def test_sine_1d_formula():
    p = torch.tensor([0.0, 1.0, 3.5])
    enc = E.sine_encoding_1d(p, num_feats=8, temperature=100.0)
    for j in range(4):
        f = 100.0 ** (-2 * j / 8)
        torch.testing.assert_close(enc[:, 2 * j], torch.sin(p * f))
        torch.testing.assert_close(enc[:, 2 * j + 1], torch.cos(p * f))
    # every (sin, cos) pair has unit norm: |enc|^2 = num_feats / 2
    torch.testing.assert_close((enc ** 2).sum(-1), torch.full((3,), 4.0))


def test_sine_1d_and_coordinates_rebuild_the_package_encoding():
    mask = torch.zeros(2, 6, 9, dtype=torch.bool)
    mask[1, 4:] = True
    mask[1, :, 5:] = True
    pos = PositionEmbeddingSine()(mask)                            # (2, 256, 6, 9)
    y, x = E.normalized_coordinates(mask)
    torch.testing.assert_close(E.sine_encoding_1d(y).permute(0, 3, 1, 2), pos[:, :128])
    torch.testing.assert_close(E.sine_encoding_1d(x).permute(0, 3, 1, 2), pos[:, 128:])
    # normalisation: each image's valid region spans (0, 2*pi], padding or not
    assert torch.allclose(x[0, 0, -1], torch.tensor(2 * math.pi)) and torch.allclose(x[1, 0, 4], torch.tensor(2 * math.pi))
    torch.testing.assert_close(x[1, :4, :5], E.normalized_coordinates(torch.zeros(1, 4, 5, dtype=torch.bool))[1][0])


@pytest.mark.parametrize("yx", [(0, 0), (3, 7), (9, 14)])
def test_similarity_map_peaks_at_the_chosen_pixel(yx):
    pos = PositionEmbeddingSine()(torch.zeros(1, 10, 15, dtype=torch.bool))
    sim = E.position_similarity(pos, *yx)
    assert sim.shape == (10, 15)
    assert divmod(int(sim.argmax()), 15) == yx
    assert torch.isclose(sim[yx], torch.tensor(1.0)) and float(sim.max()) <= 1 + 1e-5
    # unique peak: every other pixel is strictly less similar
    others = sim.flatten()[torch.arange(150) != yx[0] * 15 + yx[1]]
    assert float(others.max()) < 1 - 1e-4
    # similarity falls off with distance along the row
    row = sim[yx[0]]
    if yx[1] + 3 < 15:
        assert row[yx[1] + 1] > row[yx[1] + 3]


def test_plot_pixel_encoding_runs():
    pos = PositionEmbeddingSine()(torch.zeros(1, 6, 8, dtype=torch.bool))
    fig = F_.plot_pixel_encoding(pos, 2, 5, E.position_similarity(pos, 2, 5))
    torch.testing.assert_close(torch.as_tensor(fig.axes[2].images[0].get_array().data), E.position_similarity(pos, 2, 5))


# ------------------------------------------------------------------ 03
def test_toy_attention_matches_torch_and_rows_sum_to_one():
    mha, x = E.positional_toy_attention(num_tokens=12, embed_dim=32, num_heads=4)
    out, w = E.attention_weights(mha, x, x, x)
    assert w.shape == (1, 4, 12, 12)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 12))
    ref_out, ref_w = E.to_torch_mha(mha)(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    # the claim of notebook 03: head 0 (high frequencies) is local, the last head almost uniform
    diag0 = w[0, 0].diagonal().mean()
    assert diag0 > 0.3
    assert float(w[0, -1].max() - w[0, -1].min()) < 0.02
    # each head's scores depend on the distance only (softmax ratios are shift invariant); peak on the diagonal
    for h in range(4):
        assert torch.equal(w[0, h].argmax(-1), torch.arange(12))
        torch.testing.assert_close(w[0, h, 5, 3] / w[0, h, 5, 5], w[0, h, 8, 6] / w[0, h, 8, 8])


@pytest.mark.parametrize("impl", ["scratch", "torch"])
def test_key_padding_and_attn_mask_vs_torch(impl):
    torch.manual_seed(0)
    from detr_nb.nn.attention import MultiheadAttention
    mha = MultiheadAttention(16, 4, impl=impl).eval()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 4:] = True
    am = torch.zeros(5, 7, dtype=torch.bool)
    am[0, :2] = True
    out, w = E.attention_weights(mha, q, kv, kv, key_padding_mask=kpm, attn_mask=am)
    ref_out, ref_w = E.to_torch_mha(mha)(q, kv, kv, key_padding_mask=kpm, attn_mask=am, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    assert float(w[1, :, :, 4:].abs().max()) == 0.0 and float(w[:, :, 0, :2].abs().max()) == 0.0
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))
    # the padded sequence gives what its unpadded prefix gives alone
    out1, _ = E.attention_weights(mha, q[1:], kv[1:, :4], kv[1:, :4], attn_mask=am[:, :4])
    torch.testing.assert_close(out[1:], out1, rtol=1e-5, atol=1e-5)


def test_attention_plots_show_the_weights():
    mha, x = E.positional_toy_attention(num_tokens=8, embed_dim=16, num_heads=2)
    _, w = E.attention_weights(mha, x, x, x)
    fig = F_.plot_attention_heads(w)
    assert len(fig.axes) == 2
    fig = F_.plot_attention_query(w, head=1, query=3)
    heights = torch.tensor([p.get_height() for p in fig.axes[1].patches], dtype=torch.float32)
    torch.testing.assert_close(heights, w[0, 1, 3])


# ------------------------------------------------------------------ 04
def test_coco_classes_table():
    assert len(E.COCO_CLASSES) == 80 and max(E.COCO_CLASSES) == 90 and min(E.COCO_CLASSES) == 1
    assert E.COCO_CLASSES[1] == "person" and E.COCO_CLASSES[18] == "dog" and E.COCO_CLASSES[90] == "toothbrush"
    assert 12 not in E.COCO_CLASSES and 83 not in E.COCO_CLASSES


def test_naive_counts_use_the_model(tiny):
    rows = {r["part"]: r for r in E.naive_parameter_counts(tiny, feature_hw=(4, 5))}
    table = {r.component: r.total for r in parameter_table(tiny)}
    assert rows["input_proj"]["detr"] == table["input_proj"]
    assert rows["class + box heads"]["detr"] == table["class_embed"] + table["bbox_embed"]
    cin, c = tiny.input_proj.in_channels, tiny.input_proj.out_channels
    assert rows["input_proj"]["naive"] == cin * 20 * c * 20 + c * 20
    assert rows["class + box heads"]["naive"] == rows["class + box heads"]["detr"] * 25 * 2
    assert all(r["naive"] > r["detr"] for r in rows.values())


def test_naive_counts_official_r50():
    model = build_model("detr_r50", num_classes=91)
    rows = {r["part"]: r for r in E.naive_parameter_counts(model)}
    assert rows["input_proj"]["detr"] == 524_544
    assert rows["class + box heads"]["detr"] == 23_644 + 132_612
    assert rows["input_proj"]["naive"] > 10 ** 11


def test_plot_detections_threshold_and_top_k(tiny):
    img = torch.randn(3, 64, 80)
    with torch.no_grad():
        out = tiny(img[None])
    fig, ax = plt.subplots()
    kept = F_.plot_detections(img, out, top_k=3, ax=ax)
    assert kept["boxes"].shape == (3, 4) and len(ax.patches) == 3
    assert bool((kept["scores"][:-1] >= kept["scores"][1:]).all())
    kept = F_.plot_detections(img, out, threshold=1.1, ax=ax)
    assert kept["scores"].numel() == 0
    # boxes are in the pixels of the image shown
    assert float(kept["boxes"].numel()) == 0
    kept = F_.plot_detections(img, out, threshold=0.0)
    assert bool((kept["boxes"][:, 2] <= 80 + 1e-4).all()) and bool((kept["boxes"][:, 3] <= 64 + 1e-4).all())


# ------------------------------------------------------------------ 08
def test_attention_maps_shapes_and_normalisation(tiny):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, :, 64:] = True                                         # image 1 is half padding
    maps = E.attention_maps(tiny, images, mask)
    h, w = maps["feature_size"]
    assert (h, w) == (6, 8) and maps["image_size"] == (96, 128)
    assert len(maps["encoder"]) == 2 and len(maps["decoder"]) == 2
    assert maps["encoder"][0].shape == (2, 8, 48, 48) and maps["decoder"][-1].shape == (2, 8, 25, 48)
    with torch.no_grad():
        ref = tiny(images, mask)
    torch.testing.assert_close(maps["outputs"]["pred_logits"], ref["pred_logits"])   # recording changes nothing
    for layer in maps["encoder"] + maps["decoder"]:
        torch.testing.assert_close(layer.sum(-1), torch.ones(layer.shape[:-1]))
    # padded feature cells get no attention
    pad = maps["feature_mask"][1].flatten()
    assert bool(pad.any()) and float(maps["encoder"][0][1][..., pad].abs().max()) == 0.0
    a = E.encoder_attention_at(maps, 50, 20, batch=1)
    assert a.shape == (h, w) and torch.isclose(a.sum(), torch.tensor(1.0))
    assert float(a[:, 4:].abs().max()) == 0.0
    # image coordinates map to feature cells at the stride (16)
    torch.testing.assert_close(E.encoder_attention_at(maps, 50, 20), E.encoder_attention_at(maps, 3, 1, image_coords=False))
    torch.testing.assert_close(E.encoder_attention_at(maps, 50, 20, head=2),
                               maps["encoder"][-1][0, 2, 3 * w + 1].reshape(h, w))
    d = E.decoder_attention_of(maps, 7, layer=0, batch=1)
    assert d.shape == (h, w) and torch.isclose(d.sum(), torch.tensor(1.0))
    torch.testing.assert_close(d, maps["decoder"][0][1, :, 7].mean(0).reshape(h, w))


def test_attention_map_plots(tiny):
    img = torch.randn(3, 64, 64)
    maps = E.attention_maps(tiny, img[None])
    points = [(10, 10), (40, 50)]
    fig = F_.plot_encoder_attention(img, points, [E.encoder_attention_at(maps, y, x) for y, x in points])
    assert len(fig.axes) == 3
    fig = F_.plot_decoder_attention(img, [0, 4], [E.decoder_attention_of(maps, q) for q in (0, 4)],
                                    E.query_predictions(maps), names={1: "a"})
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == 1


def test_query_predictions_score_each_query_as_its_loss_does(tiny):
    """Softmax without "no object" for the paper's loss; the best sigmoid over the real classes (the unused
    "no object" column ignored) for focal-loss models; boxes in the input's pixels."""
    maps = E.attention_maps(tiny, torch.randn(1, 3, 64, 96))
    logits, boxes = maps["outputs"]["pred_logits"][0], maps["outputs"]["pred_boxes"][0]    # (Q, C+1), (Q, 4)
    soft = E.query_predictions(maps)
    torch.testing.assert_close(soft["scores"], logits.softmax(-1)[:, :-1].max(-1).values)
    from detr_nb.aids.focal import sigmoid_scores
    sig = E.query_predictions(maps, scoring=sigmoid_scores)
    torch.testing.assert_close(sig["scores"], logits[:, :-1].sigmoid().max(-1).values)
    assert torch.equal(sig["labels"], logits[:, :-1].argmax(-1))
    cx, cy, w, h = boxes.unbind(-1)
    torch.testing.assert_close(sig["boxes"], torch.stack([(cx - w / 2) * 96, (cy - h / 2) * 64,
                                                          (cx + w / 2) * 96, (cy + h / 2) * 64], -1))


def test_uploaded_files_read_ipywidgets_7_and_8_values(tmp_path):
    """Colab's ipywidgets 7 gives a dict, ipywidgets 8 a tuple of dicts: both give the same (name, bytes)."""
    import io
    from PIL import Image
    from detr_nb.teach.uploads import image_from_bytes, uploaded_files

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6                                              # stored sideways, shown upright
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    v7 = {"photo.jpg": {"metadata": {"name": "photo.jpg", "type": "image/jpeg", "size": len(data)}, "content": data}}
    v8 = ({"name": "photo.jpg", "type": "image/jpeg", "size": len(data), "content": memoryview(data)},)
    assert uploaded_files(v7) == uploaded_files(v8) == [("photo.jpg", data)]
    assert uploaded_files(()) == [] and uploaded_files({}) == []
    image = image_from_bytes(uploaded_files(v8)[0][1])
    assert image.mode == "RGB" and image.size == (20, 40)          # EXIF orientation 6 applied


def test_first_photo_says_in_one_line_why_nothing_can_be_shown():
    """Colab's widget delivers a phone photo (1 MB or more) empty: one line naming that, not a traceback."""
    import io
    from PIL import Image
    from detr_nb.teach.uploads import first_photo

    said = []
    assert first_photo([], log=said.append) is None and "no photo arrived" in said[-1]
    assert first_photo([("IMG_1234.JPG", b"")], log=said.append) is None
    assert "IMG_1234.JPG arrived empty" in said[-1] and "1 MB" in said[-1] and "file picker" in said[-1]
    assert first_photo([("notes.jpg", b"not a picture")], log=said.append) is None
    assert said[-1].startswith("notes.jpg is not an image")
    buf = io.BytesIO()
    Image.new("RGB", (30, 10)).save(buf, "PNG")
    name, image = first_photo([("a.png", buf.getvalue())], log=said.append)
    assert name == "a.png" and image.size == (30, 10) and len(said) == 3
    assert all("\n" not in line for line in said)
