"""``python -m detr_nb train|evaluate|predict``: a tiny training run writes its outputs, evaluate and
predict read them back, and a real SIGTERM leaves a checkpoint the next run resumes from."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from detr_nb import checkpoint as ck
from detr_nb.cli import build_parser, config_from_args, main
from detr_nb.evaluate import STAT_NAMES
from engine_utils import REPO, SYN, TINY, cli_env


def _tiny_args(out, root, *extra):
    return ["train", "--data-root", str(root), "--data-kwargs", json.dumps(SYN), "--model-overrides", json.dumps(TINY),
            "--batch-size", "4", "--out", str(out), "--device", "cpu", "--no-progress", "--eval-batch-size", "4",
            "--num-pictures", "2", "--log-every", "1", *extra]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from detr_nb.data import ensure_synthetic
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(str(root), **SYN)
    return root


def test_defaults_are_the_main_job():
    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert cfg.dataset == "synthetic" and cfg.model == "detr_tiny_aided" and cfg.loss_type == "focal" and cfg.device == "auto"
    assert cfg.time_budget_s is not None and cfg.time_budget_s <= 540 and cfg.eval_at_end
    cfg = config_from_args(build_parser().parse_args(["train", "--time-budget", "none", "--no-resume",
                                                      "--set", "lr_drop=5", "--set", "init=\"xavier\""]))
    assert cfg.time_budget_s is None and not cfg.resume and cfg.lr_drop == 5 and cfg.init == "xavier"


def test_train_evaluate_predict(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    assert main(_tiny_args(out, data_root, "--max-steps", "3", "--time-budget", "none")) == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in printed
    assert f"output directory: {out.resolve()}" in printed
    ev = json.load(open(out / "eval.json"))
    assert all(k in ev for k in STAT_NAMES)
    lines = [json.loads(l) for l in open(out / "metrics.jsonl")]
    steps = [r for r in lines if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "lr", "grad_norm", "images_per_s", "mem_mb"):
        assert key in steps[0], key
    assert (out / "predictions.png").stat().st_size > 0 and (out / "loss.png").exists()
    assert ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"] == 3

    assert main(["evaluate", "--run", str(out), "--device", "cpu", "--batch-size", "4"]) == 0
    assert set(STAT_NAMES) <= set(json.load(open(out / "eval_val.json")))
    picture = tmp_path / "pred.png"
    image = next((data_root / "val").glob("*.png"))
    assert main(["predict", str(image), "--run", str(out), "--device", "cpu", "--threshold", "0.0",
                 "-o", str(picture)]) == 0
    assert picture.stat().st_size > 0


def test_sigterm_writes_a_checkpoint_and_the_next_run_resumes(tmp_path, data_root):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "detr_nb", *_tiny_args(out, data_root, "--time-budget", "none", "--epochs", "1000",
                                                       "--no-eval-at-end")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and sum(1 for _ in open(metrics)) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "SIGTERM received" in text
    state = ck.load_checkpoint(out / "checkpoints" / "last.pth")
    assert state["step"] >= 2
    # the same command again resumes (here told to stop one step later)
    main(_tiny_args(out, data_root, "--time-budget", "none", "--max-steps", str(state["step"] + 1),
                    "--no-eval-at-end", "--num-pictures", "0"))
    assert ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"] == state["step"] + 1
