"""detr_nb.lessons: the helpers behind notebooks 05-07 (figures drawn headless, no browser)."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from detr_nb import lessons  # noqa: E402
from detr_nb.matching_viz import explain_matching  # noqa: E402


# ---- notebook 05 ----------------------------------------------------------------------------------

def test_toy_scene_class_term_decides_target_0():
    s = lessons.toy_scene()
    assert s["pred_logits"].shape == (5, s["num_classes"] + 1) and s["pred_boxes"].shape == (5, 4)
    e = explain_matching(s["pred_logits"], s["pred_boxes"], s["tgt_labels"], s["tgt_boxes"])
    # Query 1 is geometrically closer to target 0 ...
    assert e["bbox"][1, 0] < e["bbox"][0, 0] and e["giou"][1, 0] < e["giou"][0, 0]
    # ... but query 0 wins it through the class term.
    assert dict(zip(e["tgt_idx"].tolist(), e["pred_idx"].tolist()))[0] == 0


@pytest.mark.parametrize("Q,N,seed", [(5, 3, 0), (6, 6, 1), (4, 1, 2), (3, 0, 3)])
def test_brute_force_assignment_equals_scipy(Q, N, seed):
    cost = torch.randn(Q, N, generator=torch.Generator().manual_seed(seed))
    rows, cols, total = lessons.brute_force_assignment(cost)
    r, c = linear_sum_assignment(cost.numpy())
    assert rows.tolist() == r.tolist() and cols.tolist() == c.tolist()
    assert total == pytest.approx(float(cost.numpy()[r, c].sum()), abs=1e-6)
    with pytest.raises(ValueError):
        lessons.brute_force_assignment(torch.zeros(2, 3))


def test_iou_giou_sweep_values_and_gradients():
    w = 0.2
    r = lessons.iou_giou_sweep([0.3, 0.5, w, w], [0.0, 0.1, 0.3, 0.5])
    # overlap of width w - s with the same height: IoU = (w - s) / (w + s)
    assert r["iou"].tolist() == pytest.approx([1.0, 0.1 / 0.3, 0.0, 0.0])
    # separated by s - w: enclosing width w + s, union 2 w^2: GIoU = -(s - w) / (w + s)
    assert r["giou"][2].item() == pytest.approx(-0.1 / 0.5) and r["giou"][3].item() == pytest.approx(-0.3 / 0.7)
    assert r["d_iou"][2:].abs().max() == 0 and (r["d_giou"][2:] < 0).all()
    # autograd agrees with a finite difference of GIoU
    eps = 1e-6
    hi = lessons.iou_giou_sweep([0.3, 0.5, w, w], [0.3 + eps], requires_grad=False)["giou"]
    lo = lessons.iou_giou_sweep([0.3, 0.5, w, w], [0.3 - eps], requires_grad=False)["giou"]
    assert r["d_giou"][2].item() == pytest.approx(((hi - lo) / (2 * eps)).item(), rel=1e-4)


def test_duplicate_penalty_set_loss_grows_naive_shrinks():
    p = np.array([0.05, 0.3, 0.6, 0.9, 0.99])
    d = lessons.duplicate_penalty(p)
    assert not d["duplicate_matched"].any()
    assert np.all(np.diff(d["set_ce"]) > 0) and np.all(np.diff(d["naive_ce"]) < 0)
    # loss_ce is the weighted mean: the duplicate's term -0.1 log(1 - p) over weights 3 * 1 + 1 * 0.1,
    # plus the 3 perfect copies' tiny terms (probability 1 - 3e-4 on their class).
    own = -math.log((1 - 3e-4) / 1.0)
    expected = (3 * own + 0.1 * -np.log((1 - p) / (1 + 2e-4))) / 3.1
    np.testing.assert_allclose(d["set_ce"], expected, rtol=2e-3, atol=1e-4)


def test_matching_view_moves_the_box_and_draws():
    s = lessons.toy_scene()
    e, fig = lessons.matching_view(s, 4, *s["tgt_boxes"][0].tolist())
    assert (4, 0) in list(zip(e["pred_idx"].tolist(), e["tgt_idx"].tolist()))
    assert e["bbox"][4, 0] == pytest.approx(0.0) and e["giou"][4, 0] == pytest.approx(-1.0)
    assert len(fig.axes) >= 5
    e0, _ = lessons.matching_view(s, 4, *s["pred_boxes"][4].tolist())  # not moved: the original match
    orig = explain_matching(s["pred_logits"], s["pred_boxes"], s["tgt_labels"], s["tgt_boxes"])
    assert torch.equal(e0["pred_idx"], orig["pred_idx"]) and torch.equal(e0["tgt_idx"], orig["tgt_idx"])
    plt.close("all")


# ---- notebook 06 ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    from detr_nb.data import build_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return build_dataset("synthetic", "train", preset="none", root=str(root), num_train=6, num_val=2,
                         workers=1, progress=False)


def test_augment_is_seeded_and_moves_boxes(tiny_synthetic):
    import random

    from detr_nb.data import RandomHorizontalFlip, RandomResize, RandomSizeCrop

    ds = tiny_synthetic
    image, target = ds.get_raw(0)
    w, h = image.size
    _, flipped = lessons.augment(ds, 0, RandomHorizontalFlip(p=1.0))
    b = target["boxes"]
    torch.testing.assert_close(flipped["boxes"], torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1))
    im2, resized = lessons.augment(ds, 0, RandomResize([2 * min(w, h)]))
    sx, sy = im2.size[0] / w, im2.size[1] / h
    torch.testing.assert_close(resized["boxes"], b * torch.tensor([sx, sy, sx, sy]))
    state = random.getstate()
    a1 = lessons.augment(ds, 0, RandomSizeCrop(20, 60), seed=5)
    a2 = lessons.augment(ds, 0, RandomSizeCrop(20, 60), seed=5)
    assert random.getstate() == state  # the caller's random stream is untouched
    assert a1[0].size == a2[0].size and torch.equal(a1[1]["boxes"], a2[1]["boxes"])
    assert torch.equal(a1[1]["labels"], a2[1]["labels"]) and len(a1[1]["labels"]) == len(a1[1]["boxes"])


def test_plot_augmentations_draws_every_box(tiny_synthetic):
    from detr_nb.data import RandomHorizontalFlip, RandomSizeCrop

    ds = tiny_synthetic
    fig = lessons.plot_augmentations(ds, 0, {"flip": RandomHorizontalFlip(1.0), "crop": RandomSizeCrop(20, 40)}, seed=2)
    assert len(fig.axes) == 3
    n_raw = len(ds.get_raw(0)[1]["boxes"])
    n_crop = len(lessons.augment(ds, 0, RandomSizeCrop(20, 40), seed=2)[1]["boxes"])
    assert [len(ax.patches) for ax in fig.axes] == [n_raw, n_raw, n_crop]
    assert "crop" in fig.axes[2].get_title()
    plt.close("all")
