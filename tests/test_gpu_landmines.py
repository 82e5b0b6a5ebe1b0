"""GPU-only failure modes, guarded on the CPU: per-sample seeding that must not touch CUDA's RNG, and fp16
overflows, which GradScaler skips (the T4's policy, its GradScaler here on the CPU): the step is left out and
training goes on, without GradScaler the run stops in one line, and overflows that never end stop it too."""
import math
import random

import numpy as np
import pytest
import torch

from detr_nb import checkpoint as ck
from detr_nb.data import SeededSamples
from detr_nb.trainer import MAX_SKIPPED_IN_A_ROW, NonFiniteLossError, Trainer
from engine_utils import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class _Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_per_sample_seeding_leaves_cuda_alone(monkeypatch):
    """Reseeding CUDA per sample would make dropout on the GPU repeat with every sample seed."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a per-sample seed reached the CUDA generators")
    monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
    monkeypatch.setattr(torch.cuda, "manual_seed", forbidden)
    ds = SeededSamples(_Draws())
    assert ds[(0, 123)] == ds[(1, 123)] and ds[(0, 124)] != ds[(0, 123)]   # the draws follow the sample seed


class _Overflow(torch.nn.Module):
    """The model, with its logits pushed to +inf on the chosen calls (an fp16 overflow in the forward pass)."""

    def __init__(self, model, at):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        out = self.model(*args, **kwargs)
        if self.at == "all" or self.calls in self.at:
            out["pred_logits"] = out["pred_logits"] + float("inf")
        return out


def _trainer(tmp_path, data_root, at, scaler=True, **kw):
    """The main job's model and loss on the tiny set; with ``scaler`` the GradScaler of the fp16 policy."""
    tr = Trainer(tiny_config(tmp_path / "run", data_root, model="detr_tiny_aided", **{"epochs": 100, **kw}))
    if scaler:
        tr.scaler = torch.amp.GradScaler("cpu", enabled=True)
    tr.ddp_model = _Overflow(tr.model, at)
    return tr


def test_an_fp16_overflow_skips_the_step_and_training_goes_on(tmp_path, data_root):
    tr = _trainer(tmp_path, data_root, at={3}, max_steps=6)
    weights = []
    # parameters (the forward pass itself still moves BatchNorm's running statistics, as under GradScaler)
    tr.callbacks.append(lambda t: weights.append({k: v.detach().clone() for k, v in t.model.named_parameters()}))
    assert tr.fit() == "max_steps" and tr.step == 6
    tr.close()
    assert tr.state.skipped_steps == 1
    for k in weights[1]:                       # step 3 left the weights as step 2 had them; step 4 moved on
        assert torch.equal(weights[1][k], weights[2][k]), k
    assert any(not torch.equal(weights[2][k], weights[3][k]) for k in weights[2])
    assert all(torch.isfinite(v).all() for v in weights[-1].values())
    rows = [r for r in tr.history if r["kind"] == "step"]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 1, 1] and math.isnan(rows[2]["loss"])
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(rows) if i != 2)
    assert ck.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")["skipped_steps"] == 1


def test_without_a_scaler_the_overflow_stops_the_run_in_one_line(tmp_path, data_root):
    """The matcher takes the infinite predictions (no crash in scipy); the loss check names the step."""
    tr = _trainer(tmp_path, data_root, at={3}, scaler=False, max_steps=6)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 3: loss_ce=(nan|inf)") as info:
        tr.fit()
    tr.close()
    assert "\n" not in str(info.value)


def test_repeated_fp16_overflows_end_the_run(tmp_path, data_root):
    tr = _trainer(tmp_path, data_root, at="all", max_steps=MAX_SKIPPED_IN_A_ROW + 5)
    with pytest.raises(NonFiniteLossError, match=f"{MAX_SKIPPED_IN_A_ROW} fp16 steps in a row overflowed"):
        tr.fit()
    tr.close()
    assert tr.step == MAX_SKIPPED_IN_A_ROW
