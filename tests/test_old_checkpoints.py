"""Checkpoints written by earlier versions still load, evaluate and resume.

* tests/fixtures/checkpoint_838caf2.pth was written by commit 838caf2 (the flat package):
  ``python -m detr_nb train`` on the tiny synthetic set below with the tiny model, 2 steps.
* tests/fixtures/checkpoint_1422181.pth was written by commit 1422181, the last with the options measured and
  left off (issue 16), all switched on: the same command with ``look_forward_twice``, ``--ema-decay 0.9``,
  ``--iou-aware vfl``, ``--cost-iou-power 0.5``, ``--enc-repeat 2``, ``--mosaic-prob 0.5``, ``--cache-images``.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from detr_nb.cli import main
from detr_nb.engine import checkpoint as ck
from detr_nb.engine.build import model_from_checkpoint
from engine_utils import TINY

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_838caf2.pth"
REMOVED = Path(__file__).parent / "fixtures" / "checkpoint_1422181.pth"
DATA = {"num_train": 8, "num_val": 2, "image_size": [64, 64], "min_objects": 1, "max_objects": 2, "workers": 1,
        "progress": False}


def _train_args(run, root, *extra):
    return ["train", "--data-root", str(root), "--data-kwargs", json.dumps(DATA), "--model-overrides",
            json.dumps(TINY), "--batch-size", "4", "--max-steps", "3", "--time-budget", "none", "--out", str(run),
            "--device", "cpu", "--no-progress", "--num-pictures", "0", *extra]


def _run_with(fixture, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(fixture, run / "checkpoints" / "last.pth")
    return run


def test_an_old_checkpoint_rebuilds_its_model():
    state = ck.load_checkpoint(FIXTURE)
    assert state["step"] == 2 and state["model_name"] == "detr_tiny_aided" and "recipe" not in state["config"]
    model = model_from_checkpoint(state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k]), k
    out = model(torch.randn(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, TINY["num_queries"], 8)


def test_an_old_run_resumes_and_evaluates(tmp_path, capsys):
    run = _run_with(FIXTURE, tmp_path)
    # detr_tiny_aided's content queries are the encoder's since issue 16: the old model, learned ones, is named
    assert main(_train_args(run, tmp_path / "syn", "--set", "model_overrides.query_content=learned")) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "step 2" in printed
    assert ck.load_checkpoint(run / "checkpoints" / "last.pth")["step"] == 3
    assert main(["evaluate", "--checkpoint", str(FIXTURE), "--data-root", str(tmp_path / "syn"), "--device", "cpu",
                 "-o", str(tmp_path / "old.json")]) == 0
    assert "AP50" in json.loads((tmp_path / "old.json").read_text())


def test_a_checkpoint_trained_with_removed_options_loads_evaluates_and_resumes(tmp_path, capsys):
    """Its model is rebuilt (look_forward_twice changed gradients only) and evaluated with the average of its
    weights, as that run was; a resume says which removed options it continues without."""
    state = ck.load_checkpoint(REMOVED)
    assert state["model_config"]["look_forward_twice"] and state["config"]["ema_decay"] == 0.9
    model = model_from_checkpoint(state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["ema"]["module"][k]), k
    run = _run_with(REMOVED, tmp_path)
    assert main(_train_args(run, tmp_path / "syn")) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "step 2" in printed
    note = next(line for line in printed.splitlines() if line.startswith("note:"))
    for option in ("iou_aware='vfl'", "ema_decay=0.9", "mosaic_prob=0.5", "cache_images=True", "enc_repeat=2"):
        assert option in note, note
    assert ck.load_checkpoint(run / "checkpoints" / "last.pth")["step"] == 3


def test_an_old_checkpoint_keeps_the_model_it_was_trained_with(monkeypatch):
    """A named config's default that changed after a checkpoint was written (detr_tiny_aided's content queries)
    does not change the model rebuilt from that checkpoint: fields it lacks take the value it was trained with."""
    import dataclasses

    from detr_nb import configs

    monkeypatch.setitem(configs.CONFIGS, "detr_tiny_aided",
                        dataclasses.replace(configs.CONFIGS["detr_tiny_aided"], query_content="encoder"))
    state = ck.load_checkpoint(FIXTURE)
    assert "query_content" not in state["model_config"]
    model = model_from_checkpoint(state)             # strict load: the learned content queries are there
    assert model.query_content == "learned" and "tgt_embed.weight" in state["model"]


def test_a_resume_into_another_model_is_refused_with_the_fix(tmp_path, capsys):
    run = _run_with(FIXTURE, tmp_path)
    args = _train_args(run, tmp_path / "syn")
    args[args.index("--model-overrides") + 1] = json.dumps(dict(TINY, query_content="encoder"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "query_content='learned'" in err and "--set model_overrides.query_content=learned" in err
    assert ck.load_checkpoint(run / "checkpoints" / "last.pth")["step"] == 2       # untouched


@pytest.mark.parametrize("fixture", [FIXTURE, REMOVED], ids=["838caf2", "1422181"])
def test_old_configs_resolve_to_todays_options(fixture):
    """TrainConfig.from_dict keeps what today's options can say and drops the rest."""
    from detr_nb.engine.config import TrainConfig
    saved = ck.load_checkpoint(fixture)["config"]
    cfg = TrainConfig.from_dict(saved)
    assert (cfg.model, cfg.batch_size, cfg.seed) == (saved["model"], saved["batch_size"], saved["seed"])
    assert not hasattr(cfg, "ema_decay") and not hasattr(cfg, "init")
