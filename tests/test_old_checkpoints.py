"""Checkpoints written before the package was split into layers still load, evaluate and resume.

tests/fixtures/checkpoint_838caf2.pth was written by commit 838caf2 (the flat package):
``python -m detr_nb train`` on the tiny synthetic set below with the tiny model, 2 steps."""
import json
import shutil
from pathlib import Path

import torch

from detr_nb.engine import checkpoint as ck
from detr_nb.engine.build import model_from_checkpoint
from engine_utils import TINY, run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_838caf2.pth"
DATA = {"num_train": 8, "num_val": 2, "image_size": [64, 64], "min_objects": 1, "max_objects": 2, "workers": 1,
        "progress": False}


def test_an_old_checkpoint_rebuilds_its_model():
    state = ck.load_checkpoint(FIXTURE)
    assert state["step"] == 2 and state["model_name"] == "detr_tiny_aided" and "recipe" not in state["config"]
    model = model_from_checkpoint(state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k]), k
    out = model(torch.randn(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, TINY["num_queries"], 8)


def test_an_old_run_resumes_and_evaluates(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE, run / "checkpoints" / "last.pth")
    # detr_tiny_aided's content queries are the encoder's since issue 16: the old model, learned ones, is named
    args = ["train", "--data-root", tmp_path / "syn", "--data-kwargs", json.dumps(DATA), "--model-overrides",
            json.dumps(TINY), "--set", "model_overrides.query_content=learned", "--batch-size", "4", "--max-steps",
            "3", "--time-budget", "none", "--out", run, "--device", "cpu", "--no-progress", "--num-pictures", "0"]
    proc = run_cli(args, cwd=tmp_path)
    assert "resumed from" in proc.stdout and "step 2" in proc.stdout
    assert ck.load_checkpoint(run / "checkpoints" / "last.pth")["step"] == 3
    run_cli(["evaluate", "--checkpoint", FIXTURE, "--data-root", tmp_path / "syn", "--device", "cpu",
             "-o", tmp_path / "old.json"], cwd=tmp_path)
    assert "AP50" in json.loads((tmp_path / "old.json").read_text())


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


def test_a_resume_into_another_model_is_refused_with_the_fix(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE, run / "checkpoints" / "last.pth")
    args = ["train", "--data-root", tmp_path / "syn", "--data-kwargs", json.dumps(DATA), "--model-overrides",
            json.dumps(dict(TINY, query_content="encoder")), "--batch-size", "4", "--max-steps", "3",
            "--time-budget", "none", "--out", run, "--device", "cpu", "--no-progress", "--num-pictures", "0"]
    proc = run_cli(args, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "query_content='learned'" in proc.stderr and "--set model_overrides.query_content=learned" in proc.stderr
    assert ck.load_checkpoint(run / "checkpoints" / "last.pth")["step"] == 2       # untouched
