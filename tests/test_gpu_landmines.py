"""GPU-only failure modes, guarded on the CPU: per-sample seeding that must not touch CUDA's RNG,
cudnn.benchmark only for fixed-size inputs, fp16 overflows skipped as GradScaler users expect, and
query denoising under DDP with a batch that holds no object."""
import json
import random

import numpy as np
import pytest
import torch

from detr_nb.engine import checkpoint as ck
from detr_nb.engine.precision import Precision
from detr_nb.engine.metrics import MAX_SKIPPED_IN_A_ROW, NonFiniteLossError
from detr_nb.engine.sampler import SeededSamples
from detr_nb.engine.trainer import Trainer
from engine_utils import SYN, TINY, run_cli, tiny_config, write_coco_folder


class _Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_per_sample_seeding_leaves_cuda_alone_and_the_callers_rng(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a per-sample seed reached the CUDA generators")
    monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
    monkeypatch.setattr(torch.cuda, "manual_seed", forbidden)
    ds = SeededSamples(_Draws())

    def reseed():    # the caller's own streams
        random.seed(1)
        np.random.seed(1)
        torch.default_generator.manual_seed(1)
    reseed()
    before = (random.random(), np.random.rand(), torch.rand(()))
    reseed()
    a, b = ds[(0, 123)], ds[(1, 123)]
    assert a == b and ds[(0, 124)] != a            # the draws follow the sample seed only
    assert (random.random(), np.random.rand(), torch.rand(())) == before   # the caller's streams are untouched


def test_cudnn_benchmark_only_for_fixed_size_inputs():
    from detr_nb.engine.speed import fixed_input_size
    assert fixed_input_size("cpu", [(96, 96)] * 5)
    assert fixed_input_size("none", [(64, 48), (64, 48)])
    assert not fixed_input_size("cpu", [(96, 96), (128, 96)])          # sizes differ
    assert not fixed_input_size("official", [(96, 96)] * 5)            # multi-scale resizes
    assert not fixed_input_size("t4", [(96, 96)] * 5)
    assert not fixed_input_size("cpu", None)


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
    tr = Trainer(tiny_config(tmp_path / "run", data_root, model="detr_tiny_aided", loss_type="focal",
                             **{"epochs": 100, **kw}))
    if scaler:   # the T4's policy (fp16 + GradScaler), its GradScaler on the CPU
        tr.precision = Precision("cpu", None, True)
        tr.scaler = tr.precision.make_scaler()
    tr.ddp_model = _Overflow(tr.model, at)
    return tr


def test_an_fp16_overflow_skips_the_step_and_training_goes_on(tmp_path, data_root):
    tr = _trainer(tmp_path, data_root, at={3}, max_steps=6)
    weights = []
    # parameters (the forward pass itself still moves BatchNorm's running statistics, as under GradScaler)
    tr.callbacks.append(lambda t: weights.append({k: v.detach().clone() for k, v in t.model.named_parameters()}))
    assert tr.fit() == "max_steps" and tr.step == 6
    assert tr.state.skipped_steps == 1
    for k in weights[1]:                       # step 3 left the weights as step 2 had them; step 4 moved on
        assert torch.equal(weights[1][k], weights[2][k]), k
    assert any(not torch.equal(weights[2][k], weights[3][k]) for k in weights[2])
    rows = [r for r in tr.history if r["kind"] == "step"]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 1, 1] and "loss" not in rows[2]
    assert all(np.isfinite(r["loss"]) for i, r in enumerate(rows) if i != 2)
    assert ck.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")["skipped_steps"] == 1


def test_without_a_scaler_the_overflow_stops_the_run_with_its_cause(tmp_path, data_root):
    tr = _trainer(tmp_path, data_root, at={3}, scaler=False, max_steps=6)
    with pytest.raises(NonFiniteLossError, match=r"step 3: bad matcher input: image \d+, predicted box"):
        tr.fit()


def test_repeated_fp16_overflows_end_the_run(tmp_path, data_root):
    tr = _trainer(tmp_path, data_root, at="all", max_steps=MAX_SKIPPED_IN_A_ROW + 5)
    with pytest.raises(NonFiniteLossError, match=f"{MAX_SKIPPED_IN_A_ROW} steps in a row overflowed in fp16"):
        tr.fit()
    assert tr.step == MAX_SKIPPED_IN_A_ROW


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_query_denoising_under_ddp_with_a_batch_without_objects(tmp_path):
    """DN-DETR's label embedding gets no gradient from a batch without objects; DDP then stops the run."""
    from test_ddp import _free_port
    sizes = [(48, 48)] * 8
    boxes = [[] for _ in range(8)]
    boxes[5] = [(8, 8, 20, 16, 1)]                      # one image of eight has an object
    for split in ("train", "val"):
        write_coco_folder(tmp_path / "coco", sizes, boxes, split=split)
    out = tmp_path / "run"
    proc = run_cli(["torchrun", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                    "-m", "detr_nb", "train", "--dataset", str(tmp_path / "coco"),
                    "--model-overrides", json.dumps({**TINY, "dn_groups": 2}), "--batch-size", "1",
                    "--time-budget", "none", "--max-steps", "4", "--out", str(out), "--device", "cpu",
                    "--no-progress", "--log-every", "1", "--no-eval-at-end", "--num-pictures", "0"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3, 4]
    assert any("loss_bbox_dn" in r for r in rows)       # the one object did get denoising queries
