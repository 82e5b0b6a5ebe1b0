"""The trainer (detr_nb/trainer.py) on a tiny model and a tiny synthetic set (CPU): overfitting, exact resume,
NaN handling, unreadable images, stopping rules, schedules, the time budget's clock."""
import json
import time
import warnings
from types import SimpleNamespace

import pytest
import torch

from detr_nb import box_ops
from detr_nb import checkpoint as ck
from detr_nb.config import TrainConfig, build_postprocess
from detr_nb.data import collate_fn, ensure_synthetic
from detr_nb.trainer import NonFiniteLossError, Trainer
from engine_utils import SYN, TINY, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_overfits_one_batch(tmp_path):
    """The paper's DETR and loss learn two images by heart: an image's N most confident predictions are its N
    objects, each of the right class with IoU > 0.5 (duplicates may remain below them this early)."""
    root = tmp_path / "two"
    two = {**SYN, "num_train": 2, "num_val": 1}
    ensure_synthetic(str(root), **two)
    cfg = tiny_config(tmp_path / "run", root, data_kwargs=two, preset="none", batch_size=2, epochs=120,
                      weight_decay=0.0, log_every=10)
    tr = Trainer(cfg)
    tr.fit()
    tr.close()
    losses = [r["loss"] for r in tr.history if r["kind"] == "step"]
    assert losses[0] / min(losses[-3:]) >= 10, losses[::10]

    images, mask, targets = collate_fn([tr.train_set[i] for i in range(2)])
    tr.model.eval()
    with torch.no_grad():
        results = build_postprocess(tr.model)(tr.model(images, mask), torch.ones(2, 2))
    for res, t in zip(results, targets):
        keep = res["scores"].topk(len(t["labels"])).indices
        iou, _ = box_ops.box_iou(box_ops.box_cxcywh_to_xyxy(t["boxes"]), res["boxes"][keep])  # (N, N)
        same_class = t["labels"][:, None] == res["labels"][keep][None, :]
        # every target is found by one of the N best: a prediction of its class with IoU > 0.5
        assert ((iou > 0.5) & same_class).any(1).all(), (iou, t["labels"], res["labels"][keep])


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kill_and_resume_gives_the_same_weights(tmp_path, data_root):
    # dropout on, flips on: RNG states and per-sample augmentation seeds are both exercised
    kw = dict(model_overrides={**TINY, "dropout": 0.1}, epochs=3)
    full = Trainer(tiny_config(tmp_path / "full", data_root, **kw))
    assert full.steps_per_epoch == 3
    assert full.fit() == "epochs"
    full.close()
    reference = _weights(full)

    # (1) stopped mid-epoch (step 4 = epoch 1, batch 1), resumed in a new Trainer
    first = Trainer(tiny_config(tmp_path / "b", data_root, max_steps=4, **kw))
    assert first.fit() == "max_steps"
    first.close()
    state = ck.load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pth")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 1)
    second = Trainer(tiny_config(tmp_path / "b", data_root, **kw))
    assert second.step == 4
    second.fit()
    second.close()
    _assert_same(reference, _weights(second))

    # (2) killed hard at step 5 (no checkpoint then): resumes from the end of epoch 0 and redoes 4-5
    def kill(tr):
        if tr.step == 5:
            raise RuntimeError("simulated kill")
    killed = Trainer(tiny_config(tmp_path / "c", data_root, **kw), callbacks=[kill])
    with pytest.raises(RuntimeError, match="simulated kill"):
        killed.fit()
    killed.close()
    resumed = Trainer(tiny_config(tmp_path / "c", data_root, **kw))
    assert resumed.step == 3
    resumed.fit()
    resumed.close()
    _assert_same(reference, _weights(resumed))
    steps = [r["step"] for r in map(json.loads, open(tmp_path / "c" / "metrics.jsonl")) if r["kind"] == "step"]
    assert steps == list(range(1, 10))   # lines written after the checkpoint by the killed run are dropped


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_root):
    cfg = tiny_config(tmp_path / "run", data_root, epochs=5, log_every=10)
    tr = Trainer(cfg)
    real = tr.criterion.forward
    calls = {"n": 0}

    def poisoned(outputs, targets):
        calls["n"] += 1
        losses = real(outputs, targets)
        if calls["n"] == 5:
            losses["loss_ce"] = losses["loss_ce"] * float("nan")
            losses["loss"] = losses["loss"] + losses["loss_ce"]
        return losses

    tr.criterion.forward = poisoned
    with pytest.raises(NonFiniteLossError) as info:
        tr.fit()
    tr.close()
    msg = str(info.value)
    assert "\n" not in msg and "step 5" in msg and "loss_ce=nan" in msg and "last.pth" in msg, msg
    state = ck.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    errors = [r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "error"]
    assert errors and errors[0]["step"] == 5


def test_unreadable_training_image_is_skipped_with_a_warning(tmp_path, data_root):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    (root / "train" / "000003.png").write_bytes(b"not a png")
    cut = root / "train" / "000005.png"
    cut.write_bytes(cut.read_bytes()[:200])                            # the header reads, the pixels do not
    # a warning naming each file; the next image takes its place, and every step has its full batch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = Trainer(tiny_config(tmp_path / "run", None, dataset=str(root), epochs=1, data_kwargs={}))
        tr.fit()
        tr.close()
    assert tr.step == 3 and tr.train_set.num_skipped == 2
    shown = " ".join(str(w.message) for w in caught)
    assert "000003.png" in shown and "000005.png" in shown


def test_best_checkpoint_follows_the_validation_ap(tmp_path, data_root):
    """With --eval-every 1 each epoch line carries the validation numbers, and best.pth holds the epoch of the best
    AP (the first, on a tie); without evaluations it holds the epoch of the lowest mean loss."""
    tr = Trainer(tiny_config(tmp_path / "eval", data_root, epochs=3, eval_every=1))
    tr.fit()
    tr.close()
    epochs = [r for r in tr.history if r["kind"] == "epoch"]
    assert len(epochs) == 3 and all("val_AP" in r and "val_AP50" in r for r in epochs)
    best = max(epochs, key=lambda r: (r["val_AP"], -r["step"]))
    assert ck.load_checkpoint(tmp_path / "eval" / "checkpoints" / "best.pth")["step"] == best["step"]

    tr = Trainer(tiny_config(tmp_path / "loss", data_root, epochs=3))
    tr.fit()
    tr.close()
    epochs = [r for r in tr.history if r["kind"] == "epoch"]
    best = min(epochs, key=lambda r: (r["loss"], r["step"]))
    assert ck.load_checkpoint(tmp_path / "loss" / "checkpoints" / "best.pth")["step"] == best["step"]


def test_time_budget_and_max_steps(tmp_path, data_root):
    tr = Trainer(tiny_config(tmp_path / "t", data_root, time_budget_s=0.0))
    assert tr.fit() == "time_budget" and tr.step == 0
    tr.close()
    assert ck.load_checkpoint(tmp_path / "t" / "checkpoints" / "last.pth")["step"] == 0
    tr = Trainer(tiny_config(tmp_path / "m", data_root, max_steps=2, accum_steps=2, batch_size=2))
    assert tr.steps_per_epoch == 3 and tr.fit() == "max_steps" and tr.state.batch_in_epoch == 4
    tr.close()


def test_a_session_until_a_step_stops_cleanly_and_leaves_the_schedule_alone(tmp_path, data_root):
    """fit(until=k) ends this session at step k with a checkpoint; the next session goes on to max_steps on the
    same cosine, step for step the learning rates of one uninterrupted run."""
    kw = dict(max_steps=6, schedule="cosine", warmup_steps=2)
    whole = Trainer(tiny_config(tmp_path / "whole", data_root, **kw))
    lrs = []
    whole.callbacks.append(lambda tr: lrs.append(tr.optimizer.param_groups[0]["lr"]))
    assert whole.fit() == "max_steps" and whole.step == 6
    whole.close()
    first = Trainer(tiny_config(tmp_path / "split", data_root, **kw))
    assert first.fit(until=2) == "until" and first.step == 2
    first.close()
    assert ck.load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pth")["step"] == 2
    second = Trainer(tiny_config(tmp_path / "split", data_root, **kw))
    split = []
    second.callbacks.append(lambda tr: split.append(tr.optimizer.param_groups[0]["lr"]))
    assert second.fit() == "max_steps" and second.step == 6
    second.close()
    assert split == pytest.approx(lrs[2:], rel=1e-12) and lrs[-1] < lrs[2]


def _lr_factor(cfg, step, steps_per_epoch=10, time_s=0.0):
    """``Trainer.lr_factor`` of a run of ``cfg`` with ``steps_per_epoch``, ``time_s`` seconds into its budget."""
    return Trainer.lr_factor(SimpleNamespace(cfg=cfg, steps_per_epoch=steps_per_epoch, time_s=lambda: time_s), step)


def test_lr_schedules():
    cfg = TrainConfig(schedule="step", epochs=30, lr_drop=20, time_budget_s=None, warmup_steps=0)
    assert _lr_factor(cfg, 0) == 1.0 and _lr_factor(cfg, 199) == 1.0 and _lr_factor(cfg, 200) == pytest.approx(0.1)
    cfg = TrainConfig(schedule="cosine", epochs=10, warmup_steps=10, time_budget_s=None, max_steps=None)
    assert _lr_factor(cfg, 0) == pytest.approx(0.1)
    assert _lr_factor(cfg, 9) == pytest.approx(1.0)
    assert _lr_factor(cfg, 55) == pytest.approx(0.5)
    assert _lr_factor(cfg, 100) == pytest.approx(0.0, abs=1e-12)
    assert _lr_factor(TrainConfig(schedule="step", time_budget_s=60.0), 10**6) == 1.0  # a time budget: no step drop
    # the main job: warm-up, then a cosine over its fixed steps, whatever the clock says
    main = TrainConfig()
    assert main.schedule == "cosine" and main.time_budget_s is None and main.max_steps == 1500
    assert _lr_factor(main, 49, time_s=0.0) == pytest.approx(0.5)
    assert _lr_factor(main, 800, time_s=10**6) == pytest.approx(0.5)
    assert _lr_factor(main, 1500) == pytest.approx(0.0, abs=1e-12)
    # with --time-budget too, the cosine follows whichever budget runs out first
    budget = TrainConfig(time_budget_s=60.0)
    assert _lr_factor(budget, 800, time_s=6.0) == pytest.approx(0.5)
    assert _lr_factor(budget, 150, time_s=30.0) == pytest.approx(0.5)
    assert _lr_factor(budget, 150, time_s=90.0) == pytest.approx(0.0, abs=1e-12)


def test_excluded_time_does_not_count_against_the_budget(tmp_path, data_root):
    seen = []

    def callback(tr):                                         # e.g. an evaluation between steps
        t = time.perf_counter()
        time.sleep(0.5)
        before = tr.time_s()
        tr.exclude_time(time.perf_counter() - t)
        seen.append((before, tr.time_s()))

    tr = Trainer(tiny_config(tmp_path / "x", data_root, max_steps=2), callbacks=[callback])
    setup = tr.time_s()                                       # the setup so far counts against the budget
    t0 = time.perf_counter()
    tr.fit()
    wall = time.perf_counter() - t0
    tr.close()
    assert len(seen) == 2
    for before, after in seen:
        assert before - 0.6 < after < before - 0.45
    assert setup < tr.state.elapsed_s < wall + setup - 0.95   # both sleeps left out, setup counted
