"""The helpers behind notebook 05's matching lesson (detr_nb.teach.matching), notebook 07's training sessions
(teach.training, teach.paths) and notebook 11's uploads (teach.uploads), drawn headless."""
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from torchvision import ops  # noqa: E402

from detr_nb.models import HungarianMatcher  # noqa: E402
from detr_nb.teach import matching  # noqa: E402
from detr_nb.teach.paths import checkpoint_root  # noqa: E402
from detr_nb.teach.training import LiveLossPlot, SimulatedDisconnect, disconnect_after  # noqa: E402
from detr_nb.teach.uploads import first_photo, image_from_bytes, uploaded_files  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def reference_cost(logits, boxes, labels, tgt_boxes, wc=1.0, wb=5.0, wg=2.0):
    """Eq. 1 pair by pair with torchvision's GIoU: an independent copy of the official cost, (Q, N)."""
    prob, xyxy = logits.softmax(-1), lambda b: ops.box_convert(b, "cxcywh", "xyxy")
    cost = torch.zeros(len(logits), len(labels))
    for q in range(len(logits)):
        for n in range(len(labels)):
            giou = ops.generalized_box_iou(xyxy(boxes[q:q + 1]), xyxy(tgt_boxes[n:n + 1]))[0, 0]
            cost[q, n] = wb * (boxes[q] - tgt_boxes[n]).abs().sum() - wc * prob[q, labels[n]] - wg * giou
    return cost


def random_scene(Q, N, seed):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(Q + N, 2, generator=g) * 0.6 + 0.2, torch.rand(Q + N, 2, generator=g) * 0.3 + 0.1], 1)
    return torch.randn(Q, 5, generator=g) * 2, boxes[:Q], torch.randint(0, 4, (N,), generator=g), boxes[Q:]


# ---- notebook 05 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [(1, 5, 2), (2, 1, 3)])
def test_cost_terms_are_the_matchers_cost_and_explain_its_assignment(weights):
    """The terms read with the matcher's own class_cost give the official cost; the matcher's assignment is the
    one of least total (scipy on that cost), and each pair's table row adds up."""
    logits, boxes, labels, tgt = random_scene(6, 3, seed=17)
    e = matching.explain_matching(logits, boxes, labels, tgt, HungarianMatcher(*weights))
    torch.testing.assert_close(e["total"], reference_cost(logits, boxes, labels, tgt, *weights), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights[0] * e["class"] + weights[1] * e["bbox"] + weights[2] * e["giou"], e["total"])
    rows, cols = linear_sum_assignment(e["total"].numpy())
    assert e["pred_idx"].tolist() == rows.tolist() and e["tgt_idx"].tolist() == cols.tolist()
    assert e["matched_cost"] == pytest.approx(sum(p["total"] for p in e["pairs"]), abs=1e-5)
    for pair in e["pairs"]:
        assert pair["total"] == pytest.approx(pair["class"] + pair["bbox"] + pair["giou"], abs=1e-5)
    none = matching.explain_matching(logits, boxes, labels[:0], tgt[:0])
    assert none["total"].shape == (6, 0) and len(none["pred_idx"]) == 0


def test_toy_scene_class_term_decides_object_0():
    s = matching.toy_scene()
    e = matching.explain_matching(s["pred_logits"], s["pred_boxes"], s["tgt_labels"], s["tgt_boxes"])
    assert e["bbox"][1, 0] < e["bbox"][0, 0] and e["giou"][1, 0] < e["giou"][0, 0]      # query 1 is closer ...
    assert dict(zip(e["tgt_idx"].tolist(), e["pred_idx"].tolist()))[0] == 0           # ... query 0 wins the cat


@pytest.mark.parametrize("Q,N,seed", [(5, 3, 0), (6, 6, 1), (4, 1, 2), (3, 0, 3)])
def test_brute_force_assignment_equals_scipy(Q, N, seed):
    cost = torch.randn(Q, N, generator=torch.Generator().manual_seed(seed))
    rows, cols, total = matching.brute_force_assignment(cost)
    r, c = linear_sum_assignment(cost.numpy())
    assert rows.tolist() == r.tolist() and cols.tolist() == c.tolist()
    assert total == pytest.approx(float(cost.numpy()[r, c].sum()), abs=1e-6)
    with pytest.raises(ValueError):
        matching.brute_force_assignment(torch.zeros(2, 3))


def test_iou_giou_sweep_values_and_gradients():
    w = 0.2
    r = matching.iou_giou_sweep([0.3, 0.5, w, w], [0.0, 0.1, 0.3, 0.5])
    assert r["iou"].tolist() == pytest.approx([1.0, 0.1 / 0.3, 0.0, 0.0])     # overlap (w - s) / (w + s)
    assert r["giou"][2].item() == pytest.approx(-0.1 / 0.5) and r["giou"][3].item() == pytest.approx(-0.3 / 0.7)
    assert r["d_iou"][2:].abs().max() == 0 and (r["d_giou"][2:] < 0).all()
    eps = 1e-6                                                                   # autograd vs a finite difference
    hi, lo = (matching.iou_giou_sweep([0.3, 0.5, w, w], [0.3 + d], requires_grad=False)["giou"] for d in (eps, -eps))
    assert r["d_giou"][2].item() == pytest.approx(((hi - lo) / (2 * eps)).item(), rel=1e-4)


def test_duplicate_penalty_set_loss_grows_naive_shrinks():
    p = np.array([0.05, 0.3, 0.6, 0.9, 0.99])
    d = matching.duplicate_penalty(p)
    assert not d["duplicate_matched"].any()
    assert np.all(np.diff(d["set_ce"]) > 0) and np.all(np.diff(d["naive_ce"]) < 0)
    # loss_ce is the weighted mean: the duplicate's -0.1 log(1 - p) over weights 3 * 1 + 0.1, plus the three
    # exact copies' terms (probability 1 - 3e-4 on their class)
    expected = (3 * -math.log(1 - 3e-4) + 0.1 * -np.log((1 - p) / (1 + 2e-4))) / 3.1
    np.testing.assert_allclose(d["set_ce"], expected, rtol=2e-3, atol=1e-4)


def test_matching_view_moves_the_box_and_draws():
    s = matching.toy_scene()
    e, fig = matching.matching_view(s, 4, *s["tgt_boxes"][0].tolist())
    assert (4, 0) in list(zip(e["pred_idx"].tolist(), e["tgt_idx"].tolist()))
    assert e["bbox"][4, 0] == pytest.approx(0.0) and e["giou"][4, 0] == pytest.approx(-1.0)
    assert len(fig.axes) >= 5
    e0, _ = matching.matching_view(s, 4, *s["pred_boxes"][4].tolist())           # not moved: the original match
    orig = matching.explain_matching(s["pred_logits"], s["pred_boxes"], s["tgt_labels"], s["tgt_boxes"])
    assert torch.equal(e0["pred_idx"], orig["pred_idx"]) and torch.equal(e0["tgt_idx"], orig["tgt_idx"])
    moved = matching.move_box(s["pred_boxes"], 0, cx=0.1)
    assert moved[0, 0] == pytest.approx(0.1) and torch.equal(moved[1:], s["pred_boxes"][1:])
    fig = matching.plot_matching(s["pred_boxes"], s["tgt_boxes"], e["pred_idx"], e["tgt_idx"], s["tgt_labels"])
    assert len(fig.axes[0].patches) == 5 + 3               # 2 unmatched and 3 matched predictions, 3 objects


# ---- notebook 07 ----------------------------------------------------------------------------------
def test_checkpoint_root_drive_or_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_NB_WORKDIR", str(tmp_path / "work"))
    assert checkpoint_root(colab=False) == tmp_path / "work" / "runs"
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)                        # Colab, Drive mounted
    root = checkpoint_root(colab=True, mount_point=str(tmp_path / "drive"))
    assert root == tmp_path / "drive" / "MyDrive" / "detr_nb" / "runs" and root.is_dir()
    messages = []                                   # Colab where mounting fails (no google.colab module here)
    root = checkpoint_root(colab=True, mount_point=str(tmp_path / "nodrive"), log=messages.append)
    assert root == tmp_path / "work" / "runs" and "not mounted" in messages[0]


class FakeTrainer:
    def __init__(self, step=0, resumed_from=None, history=()):
        self.step, self.resumed_from, self.history = step, resumed_from, list(history)

    def advance(self, loss):
        self.step += 1
        self.history.append({"kind": "step", "step": self.step, "loss": loss, "loss_ce": loss / 2,
                             "loss_bbox": loss / 5, "loss_giou": loss / 4, "class_error": 50.0,
                             "cardinality_error": 3.0})


def test_live_loss_plot_redraws_on_schedule_and_marks_resumes():
    live, t = LiveLossPlot(every=2, show=False), FakeTrainer()
    for k in range(5):
        t.advance(10.0 - k)
        live(t)
    assert live.draws == 2                                                     # steps 2 and 4
    line = [ln for ln in live.last_figure.axes[0].get_lines() if ln.get_label() == "loss"][0]
    assert list(line.get_xdata()) == [1, 2, 3, 4] and list(line.get_ydata()) == [10.0, 9.0, 8.0, 7.0]
    live(t)                                                                    # nothing new logged: no redraw
    assert live.draws == 2
    t2 = FakeTrainer(step=4, resumed_from="last.pth", history=t.history[:4])
    for loss in (6.5, 6.0):
        t2.advance(loss)
        live(t2)
    assert live.resumes == [4] and live.draws == 3
    assert any(ln.get_xdata()[0] == 4 for ln in live.last_figure.axes[0].get_lines() if ln.get_linestyle() == ":")


def test_disconnect_after_raises_at_its_step():
    callback, t = disconnect_after(3), FakeTrainer(step=2)
    callback(t)
    t.step = 3
    with pytest.raises(SimulatedDisconnect, match="runtime lost at step 3"):
        callback(t)


# ---- notebook 11 ----------------------------------------------------------------------------------
def test_uploaded_files_read_ipywidgets_7_and_8_values():
    """Colab's ipywidgets 7 gives a dict, ipywidgets 8 a tuple of dicts: both give the same (name, bytes)."""
    buf, exif = io.BytesIO(), Image.Exif()
    exif[0x0112] = 6                                                           # stored sideways, shown upright
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    v7 = {"photo.jpg": {"metadata": {"name": "photo.jpg", "type": "image/jpeg", "size": len(data)}, "content": data}}
    v8 = ({"name": "photo.jpg", "type": "image/jpeg", "size": len(data), "content": memoryview(data)},)
    assert uploaded_files(v7) == uploaded_files(v8) == [("photo.jpg", data)]
    assert uploaded_files(()) == [] and uploaded_files({}) == []
    image = image_from_bytes(uploaded_files(v8)[0][1])
    assert image.mode == "RGB" and image.size == (20, 40)                      # EXIF orientation 6 applied


def test_first_photo_says_in_one_line_why_nothing_can_be_shown():
    said = []
    assert first_photo([], log=said.append) is None and "no photo arrived" in said[-1]
    assert first_photo([("IMG_1234.JPG", b"")], log=said.append) is None
    assert "IMG_1234.JPG arrived empty" in said[-1] and "1 MB" in said[-1] and "file picker" in said[-1]
    assert first_photo([("notes.jpg", b"not a picture")], log=said.append) is None
    assert said[-1].startswith("notes.jpg is not an image")
    buf = io.BytesIO()
    Image.new("RGB", (30, 10)).save(buf, "PNG")
    name, image = first_photo([("a.png", buf.getvalue())], log=said.append)
    assert name == "a.png" and image.size == (30, 10) and len(said) == 3 and all("\n" not in s for s in said)


def test_a_disconnect_loses_the_steps_after_the_checkpoint_and_the_resume_reaches_the_same_weights(tmp_path,
                                                                                                   one_thread):
    """Notebook 07's three sessions on a real run: a clean stop (checkpoint), a disconnect (none), a resume; the
    weights at the end equal bit for bit those of a run that never stopped. The schedule is constant, so that a
    step's learning rate does not depend on max_steps; dropout and random flips make the restored RNG matter."""
    from detr_nb import TrainConfig, Trainer
    from engine_utils import SYN, TINY

    def config(out):
        return TrainConfig(data_root=str(tmp_path / "syn"), data_kwargs={**SYN, "num_train": 4, "num_val": 2},
                           preset="cpu", model_overrides={**TINY, "dropout": 0.1}, schedule="constant",
                           warmup_steps=0, lr=1e-3, time_budget_s=None, batch_size=2, device="cpu", seed=0,
                           log_every=1, checkpoint_every_s=1e9, eval_at_end=False, progress=False, out=str(out))

    straight = Trainer(config(tmp_path / "straight"), max_steps=4)
    assert straight.fit() == "max_steps" and straight.step == 4
    reference = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.close()
    first = Trainer(config(tmp_path / "run"), max_steps=2)
    assert first.fit() == "max_steps" and first.step == 2          # one epoch of 2 steps: a checkpoint at step 2
    first.close()
    second = Trainer(config(tmp_path / "run"), callbacks=[disconnect_after(3)], max_steps=4)
    assert second.resumed_from is not None and second.step == 2
    with pytest.raises(SimulatedDisconnect):
        second.fit()
    lost = {k: v.clone() for k, v in second.model.state_dict().items()}
    second.close()
    third = Trainer(config(tmp_path / "run"), max_steps=4)
    assert third.step == 2 and third.fit() == "max_steps"          # the step after the checkpoint was lost
    assert [r["step"] for r in third.history if r.get("kind") == "step"] == [1, 2, 3, 4]   # no duplicated lines
    weights = third.model.state_dict()
    third.close()
    assert [k for k in reference if not torch.equal(weights[k], reference[k])] == []
    assert any(not torch.equal(lost[k], reference[k]) for k in reference if reference[k].is_floating_point())
