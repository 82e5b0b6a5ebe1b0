"""Notebook 05's proof that the pieces fit: the paper's DETR, its set loss and AdamW learn one batch by heart."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import detr_nb  # noqa: E402
from detr_nb.teach.overfit import overfit_one_batch, plot_overfit  # noqa: E402
from engine_utils import TINY  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(data_root, n=2):
    from detr_nb.data import build_dataset, collate_fn
    from engine_utils import SYN
    ds = build_dataset("synthetic", "train", "none", root=str(data_root), **SYN)     # the session's tiny set
    return ds, collate_fn([ds[i] for i in range(n)])


def test_the_papers_detr_overfits_one_batch_and_its_matched_queries_move_onto_the_objects(data_root):
    ds, (images, mask, targets) = _batch(data_root)
    torch.manual_seed(0)
    model = detr_nb.build_model("detr_tiny", num_classes=ds.num_classes, **TINY)
    assert type(model) is detr_nb.DETR                             # the paper's DETR, no aid
    result = overfit_one_batch(model, images, mask, targets, steps=200, lr=1e-3, snapshots=(0, 100))
    losses = [r["loss"] for r in result["losses"]]
    assert len(losses) == 200 and losses[0] / losses[-1] > 5, losses[::20]
    first, middle, last = result["snapshots"]
    assert [s["step"] for s in result["snapshots"]] == [0, 100, 200]
    H, W = images.shape[-2:]
    for b, t in enumerate(targets):
        gt = detr_nb.box_cxcywh_to_xyxy(t["boxes"]) * torch.tensor([W, H, W, H])

        def matched_iou(shot):
            p = shot["images"][b]
            order = p["tgt_idx"].argsort()
            return detr_nb.box_iou(p["boxes"][p["pred_idx"][order]], gt)[0].diag()    # (N,) object by object
        assert (matched_iou(last) > 0.5).all() and matched_iou(last).mean() > matched_iou(first).mean()
        p = last["images"][b]
        assert sorted(p["tgt_idx"].tolist()) == list(range(len(t["labels"])))       # every object matched once


def test_the_overfit_figure_draws_every_snapshot_and_the_matching(data_root):
    ds, (images, mask, targets) = _batch(data_root)
    torch.manual_seed(0)
    model = detr_nb.build_model("detr_tiny", num_classes=ds.num_classes, **TINY)
    result = overfit_one_batch(model, images, mask, targets, steps=4, snapshots=(0, 2))
    fig = plot_overfit(result, images, targets, names=ds.categories)
    panels = fig.axes[1:]
    assert len(fig.axes[0].lines) >= 4 and len(panels) == 2 * 3
    n_obj = len(targets[0]["labels"])
    lines = [l for l in panels[0].lines]                                # one line per matched object
    assert len(lines) == n_obj
    plt.close("all")
