"""detr_nb.teach.lessons: the helpers behind notebooks 05-07 (figures drawn headless, no browser)."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from detr_nb import figures  # noqa: E402
from detr_nb.teach import lessons  # noqa: E402
from detr_nb.teach.matching import explain_matching  # noqa: E402


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
    panels = lessons.augmentations(ds, 0, {"flip": RandomHorizontalFlip(1.0), "crop": RandomSizeCrop(20, 40)}, seed=2)
    fig = figures.plot_augmentations(panels, names=ds.categories)
    assert len(fig.axes) == 3
    n_raw = len(ds.get_raw(0)[1]["boxes"])
    n_crop = len(lessons.augment(ds, 0, RandomSizeCrop(20, 40), seed=2)[1]["boxes"])
    assert [len(ax.patches) for ax in fig.axes] == [n_raw, n_raw, n_crop]
    assert "crop" in fig.axes[2].get_title()
    plt.close("all")


# ---- notebook 07 ----------------------------------------------------------------------------------

def test_checkpoint_root_drive_or_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_NB_WORKDIR", str(tmp_path / "work"))
    assert lessons.checkpoint_root(colab=False) == tmp_path / "work" / "runs"
    # Colab with Drive already mounted: the run folder lives on Drive.
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    root = lessons.checkpoint_root(colab=True, mount_point=str(tmp_path / "drive"))
    assert root == tmp_path / "drive" / "MyDrive" / "detr_nb" / "runs" and root.is_dir()
    # Colab where mounting fails (no google.colab module here): falls back to the work dir, says why.
    messages = []
    root = lessons.checkpoint_root(colab=True, mount_point=str(tmp_path / "nodrive"), log=messages.append)
    assert root == tmp_path / "work" / "runs" and "not mounted" in messages[0]


class _FakeTrainer:
    def __init__(self, step=0, resumed_from=None):
        self.step, self.resumed_from, self.history = step, resumed_from, []

    def advance(self, loss):
        self.step += 1
        self.history.append({"kind": "step", "step": self.step, "loss": loss, "loss_ce": loss / 2,
                             "loss_bbox": loss / 5, "loss_giou": loss / 4, "class_error": 50.0,
                             "cardinality_error": 3.0})


def test_live_loss_plot_redraws_on_schedule_and_marks_resumes():
    live = figures.LiveLossPlot(every=2, display=False)
    t = _FakeTrainer()
    for k in range(5):
        t.advance(10.0 - k)
        live(t)
    assert live.draws == 2  # steps 2 and 4
    line = [ln for ln in live.last_figure.axes[0].get_lines() if ln.get_label() == "loss"][0]
    assert list(line.get_xdata()) == [1, 2, 3, 4] and list(line.get_ydata()) == [10.0, 9.0, 8.0, 7.0]
    live(t)  # same step, nothing new logged: no redraw
    assert live.draws == 2
    t2 = _FakeTrainer(step=4, resumed_from="last.pth")
    t2.history = list(t.history[:4])
    for loss in (6.5, 6.0):  # the trainer calls back after every step
        t2.advance(loss)
        live(t2)
    assert live.resumes == [4] and live.draws == 3
    assert any(ln.get_xdata()[0] == 4 for ln in live.last_figure.axes[0].get_lines() if ln.get_linestyle() == ":")
    plt.close("all")


def test_loss_figure_ignores_non_step_lines():
    hist = [{"kind": "step", "step": 1, "loss": 3.0}, {"kind": "epoch", "step": 1, "loss": 2.0},
            {"kind": "step", "step": 2, "loss": 2.5}]
    fig = figures.loss_figure(hist)
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "loss"]
    assert list(line.get_ydata()) == [3.0, 2.5]
    assert "no steps" in figures.loss_figure([]).axes[0].get_title()
    plt.close("all")


def _disconnect_config(tmp_path, out):
    """Every setting the exact-resume comparison depends on, spelled out (TrainConfig's defaults are the
    main job and may change). The schedule is constant with no warm-up, so that the learning rate of a step
    does not depend on ``max_steps``: a session started with max_steps=2 and one raised to 4 take the same
    steps as one run with max_steps=4. (Under the main job's cosine schedule, raising max_steps changes every
    step's learning rate and the weights could never agree.)"""
    from detr_nb.engine.config import TrainConfig

    return TrainConfig(dataset="synthetic", data_root=str(tmp_path / "syn"),
                       data_kwargs={"num_train": 4, "num_val": 2, "image_size": (48, 56), "workers": 1,
                                    "progress": False},
                       preset="cpu",                    # random flips: per-sample augmentation seeds matter
                       model="detr_tiny_aided", impl="torch", pretrained=None,
                       pretrained_backbone=False,
                       model_overrides={"dropout": 0.1},   # dropout on: the restored RNG state matters too
                       loss_type="focal", eos_coef=0.1, cost_class=2.0,
                       weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
                       schedule="constant", warmup_steps=0, lr=1e-3, lr_backbone=None, weight_decay=1e-4,
                       clip_max_norm=0.1, epochs=10, time_budget_s=None, batch_size=2, accum_steps=1,
                       device="cpu", amp="fp32", compile=False, workers=0, threads=1, seed=0,
                       log_every=1, diag_every=0, checkpoint_every_s=1e9, eval_every=0, eval_at_end=False,
                       num_pictures=0, progress=False, resume=True, out=str(out))


def test_disconnect_after_kills_a_real_run_and_resume_continues(tmp_path, one_thread):
    """A run interrupted without a checkpoint resumes from the last one and reaches the same weights
    (bit for bit) as a run that never stopped."""
    from detr_nb.engine.trainer import Trainer

    # the reference: 4 steps (2 epochs of 2 steps) in one go
    straight = Trainer(_disconnect_config(tmp_path, tmp_path / "straight"), max_steps=4)
    assert straight.fit() == "max_steps" and straight.step == 4
    reference = {k: v.clone() for k, v in straight.model.state_dict().items()}

    cfg = _disconnect_config(tmp_path, tmp_path / "run")
    first = Trainer(cfg, max_steps=2)
    assert first.fit() == "max_steps" and first.step == 2  # one epoch of 2 steps: checkpoint at step 2
    second = Trainer(cfg, callbacks=[lessons.disconnect_after(3)], max_steps=4)
    assert second.resumed_from is not None and second.step == 2
    with pytest.raises(lessons.SimulatedDisconnect):
        second.fit()
    assert second.step == 3
    lost = {k: v.clone() for k, v in second.model.state_dict().items()}
    third = Trainer(cfg, max_steps=4)
    assert third.step == 2  # the step after the checkpoint was lost
    assert third.fit() == "max_steps" and third.step == 4
    steps = [r["step"] for r in third.history if r.get("kind") == "step"]
    assert steps == [1, 2, 3, 4]  # the lost session's lines were dropped, no duplicates

    weights = third.model.state_dict()
    assert weights.keys() == reference.keys()
    differ = [k for k in reference if not torch.equal(weights[k], reference[k])]
    assert differ == [], f"{len(differ)} of {len(reference)} tensors differ from the uninterrupted run: {differ[:5]}"
    # ... and the comparison has teeth: the weights at step 3 (the lost session) are not the final ones
    assert any(not torch.equal(lost[k], reference[k]) for k in reference if reference[k].is_floating_point())
