"""The package's diagrams show what the model computes: Figure 2's arrows carry the shapes the model's pieces
give when called one by one, the matching graph bolds exactly the Hungarian pairs, and the two-stage flow marks
the top-Q cells and draws their proposals."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text
from scipy.optimize import linear_sum_assignment

from detr_nb import build_model
from detr_nb.data import render_sample, synthetic_params
from detr_nb.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detr_nb.teach.architecture import plot_detr_architecture, plot_query_selection, query_selection, tensor_shapes
from detr_nb.teach.matching import plot_matching_graph

AID_BOXES = {"proposal_head", "top_cells"}
PAPER_BOXES = {"image", "backbone", "proj", "pos", "encoder", "decoder", "heads", "preds"}


@pytest.fixture(autouse=True)
def close_figures(one_thread):
    yield
    plt.close("all")


def texts(fig):
    return [t.get_text() for t in fig.findobj(Text)]


def shown(fig, shape) -> bool:
    """Whether ``shape`` is printed, as ``(1, 128, 4, 6)``, in one of the figure's texts."""
    label = str(tuple(int(s) for s in shape))
    return any(label in t for t in texts(fig))


def box_names(fig):
    return {p.get_gid() for p in fig.findobj(Patch)} - {None}


@torch.no_grad()
def shapes_by_hand(model, H, W):
    """The path's shapes from the model's pieces called one at a time (no hooks), and its outputs."""
    model.eval()
    x = torch.zeros(1, 3, H, W)
    feat = model.backbone[0](x)                                        # (1, Cb, h, w)
    mask = torch.zeros(1, *feat.shape[-2:], dtype=torch.bool)          # (1, h, w): no padding
    pos = model.backbone[1](mask)                                      # (1, C, h, w)
    src = model.input_proj(feat)                                       # (1, C, h, w)
    memory = model.transformer.encoder(src.flatten(2).transpose(1, 2), key_padding_mask=mask.flatten(1),
                                       pos=pos.flatten(2).transpose(1, 2))   # (1, hw, C)
    out = model(x)
    cfg = model.config
    return {"image": x.shape, "backbone": feat.shape, "mask": mask.shape, "pos": pos.shape, "projected": src.shape,
            "memory": memory.shape, "decoder": (cfg.dec_layers, 1, cfg.num_queries, cfg.hidden_dim),
            "logits": out["pred_logits"].shape, "boxes": out["pred_boxes"].shape}, out


def test_figure2_of_detr_tiny_prints_the_shapes_of_its_path():
    torch.manual_seed(0)
    model = build_model("detr_tiny", num_classes=5)
    expected, _ = shapes_by_hand(model, 64, 96)
    assert tuple(expected["backbone"]) == (1, 128, 4, 6)               # half-width ResNet-18 to layer3, stride 16
    model.train()
    shapes = tensor_shapes(model, image_size=(64, 96))
    assert model.training                                               # its mode is given back
    for key, shape in expected.items():
        assert shapes[key] == tuple(shape), key
    assert shapes["queries"] == (25, 128) and shapes["content"] == (1, 25, 128) and not shapes["aided"]
    assert tensor_shapes(model, image_size=(64, 96), batch=2)["decoder"] == (2, 2, 25, 128)   # (L, B, Q, C)
    fig = plot_detr_architecture(shapes)
    assert tuple(fig.get_size_inches()) == (12, 4)
    for key, shape in list(expected.items()) + [("queries", (25, 128))]:
        assert shown(fig, shape), f"{key} {tuple(shape)} not in the figure"
    assert PAPER_BOXES | {"queries"} <= box_names(fig)
    assert not box_names(fig) & (AID_BOXES | {"anchors"})
    assert not any("refinement" in t for t in texts(fig))


def test_figure2_of_the_aided_model_adds_the_two_stage_paths():
    torch.manual_seed(0)
    model = build_model("detr_tiny_aided", num_classes=5)
    expected, out = shapes_by_hand(model, 96, 96)
    shapes = tensor_shapes(model, image_size=(96, 96))
    for key, shape in expected.items():
        assert shapes[key] == tuple(shape), key
    enc = out["enc_outputs"]
    aided = {"enc_logits": enc["pred_logits"].shape, "enc_boxes": enc["pred_boxes"].shape,
             "ref_boxes": (1, 30, 4), "content": (1, 30, 128)}    # 12x12 cells -> 30 queries of 128 channels
    assert tuple(aided["enc_logits"]) == (1, 144, 6)
    for key, shape in aided.items():
        assert shapes[key] == tuple(shape), key
    assert shapes["aided"] and "queries" not in shapes
    fig = plot_detr_architecture(shapes)
    for key, shape in list(expected.items()) + list(aided.items()):
        assert shown(fig, shape), f"{key} {tuple(shape)} not in the figure"
    assert AID_BOXES | PAPER_BOXES <= box_names(fig)
    assert "queries" not in box_names(fig)                              # no learned object queries in this model
    assert any("refinement" in t for t in texts(fig))


def test_figure2_of_detr_r50_on_the_meta_device():
    """R50 at 800x1066 without allocating it: shapes only; the backbone's is torchvision ResNet-50's."""
    import torchvision

    with torch.device("meta"):
        model = build_model("detr_r50", num_classes=91)
        resnet = torchvision.models.resnet50()
        trunk = torch.nn.Sequential(*list(resnet.children())[:-2])   # without avgpool and fc
    assert next(model.parameters()).is_meta
    with torch.no_grad():
        reference = trunk(torch.zeros(1, 3, 800, 1066, device="meta")).shape
    assert tuple(reference) == (1, 2048, 25, 34)
    shapes = tensor_shapes(model, image_size=(800, 1066))
    assert shapes["backbone"] == tuple(reference)
    assert shapes["memory"] == (1, 25 * 34, 256) and shapes["decoder"] == (6, 1, 100, 256)
    assert shapes["logits"] == (1, 100, 92) and shapes["queries"] == (100, 256)
    fig = plot_detr_architecture(shapes)
    for shape in (reference, (1, 256, 25, 34), (1, 850, 256), (6, 1, 100, 256), (1, 100, 92), (1, 100, 4)):
        assert shown(fig, shape), shape


def test_matching_graph_bolds_exactly_the_matched_edges():
    torch.manual_seed(1)
    cost = torch.rand(5, 3) * 4                                         # (Q, N)
    rows, cols = linear_sum_assignment(cost.numpy())
    fig = plot_matching_graph(cost, torch.as_tensor(rows), torch.as_tensor(cols), labels=[2, 7, 2])
    ax = fig.axes[0]
    y_pred = ax.collections[0].get_offsets()[:, 1]                     # node q at (0, y_pred[q])
    y_obj = ax.collections[1].get_offsets()[:, 1]                      # object n at (1, y_obj[n])
    edges = {}
    for line in ax.lines:
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        assert (x0, x1) == (0, 1)
        q, n = int(abs(y_pred - y0).argmin()), int(abs(y_obj - y1).argmin())
        assert abs(y_pred[q] - y0) < 1e-9 and abs(y_obj[n] - y1) < 1e-9
        edges[(q, n)] = line
    assert len(ax.lines) == 15 and len(edges) == 15                    # Q*N edges, each pair once
    bold = {pair for pair, line in edges.items() if line.get_linewidth() > 2}
    assert bold == set(zip(rows.tolist(), cols.tolist())) and len(bold) == 3
    thin = sorted((float(cost[p]), edges[p].get_alpha()) for p in edges if p not in bold)
    alphas = [a for _, a in thin]
    assert alphas == sorted(alphas, reverse=True) and alphas[0] > alphas[-1]   # cheaper = darker
    words = texts(fig)
    for q, n in zip(rows, cols):
        assert f"{float(cost[q, n]):.2f}" in words
    unmatched = {f"q{q}  no object" for q in range(5) if q not in rows}
    assert unmatched == {w for w in words if "no object" in w} and len(unmatched) == 2


def _normalised_image(size: int) -> torch.Tensor:
    sample = render_sample(synthetic_params(image_size=[size, size]), 0, "train", 0)
    image = torch.from_numpy(sample["image"]).permute(2, 0, 1).float() / 255            # (3, H, W)
    return (image - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def test_query_selection_marks_the_top_cells_and_draws_their_proposals():
    torch.manual_seed(0)
    model = build_model("detr_tiny_aided", num_classes=5).eval()
    image = _normalised_image(96)
    sel = query_selection(model, image)
    assert sel["grid"] == (12, 12) and sel["cells"].shape == (30,) and sel["boxes"].shape == (30, 4)
    with torch.no_grad():
        enc = model(image[None])["enc_outputs"]                        # the model's own forward, for reference
    scores = enc["pred_logits"][0, :, :5].max(-1).values                # (hw,) best real class
    torch.testing.assert_close(sel["scores"].flatten(), scores)
    top = sorted(range(144), key=lambda i: -float(scores[i]))[:30]     # brute force
    assert sel["cells"].tolist() == top
    torch.testing.assert_close(sel["boxes"], enc["pred_boxes"][0, top])

    fig = plot_query_selection(image, sel)
    assert any("144 cells -> 30 queries" in t for t in texts(fig))
    grid_ax = next(a for a in fig.axes if a.get_title().startswith("the top-30 cells"))
    marked = {}
    for t in grid_ax.texts:
        if t.get_gid() == "rank":
            x, y = t.get_position()
            marked[int(t.get_text())] = round(y) * 12 + round(x)
    assert [marked[r] for r in range(1, 31)] == top and len(marked) == 30
    box_ax = next(a for a in fig.axes if "reference boxes" in a.get_title())
    drawn = torch.tensor([[*r.get_xy(), r.get_width(), r.get_height()] for r in box_ax.patches
                          if isinstance(r, Rectangle)])                 # (Q, 4) x0, y0, w, h pixels
    cx, cy, w, h = sel["boxes"].unbind(-1)
    expected = torch.stack([(cx - w / 2) * 96, (cy - h / 2) * 96, w * 96, h * 96], -1)
    torch.testing.assert_close(drawn, expected, rtol=1e-5, atol=1e-4)


def test_query_selection_needs_two_stage():
    model = build_model("detr_tiny", num_classes=5)
    with pytest.raises(ValueError, match="two-stage"):
        query_selection(model, torch.zeros(3, 64, 64))
