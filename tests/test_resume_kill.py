"""A Colab disconnect loses nothing: real training subprocesses killed with SIGKILL, then run again.

The main job's own model and loss (``detr_tiny_aided``, focal loss, the ``aided`` recipe), shrunk: the
trained time survives the kill, a corrupt newest checkpoint never destroys the good one, two runs cannot
share an output directory, a resume under other settings is refused, and a killed run ends with the
weights of one that never stopped."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detr_nb.engine import checkpoint as ck
from engine_utils import SYN, TINY, cli_env, run_cli


def _args(out, data, *extra):
    return ["train", "--data-root", str(data), "--data-kwargs", json.dumps(SYN), "--model-overrides", json.dumps(TINY),
            "--batch-size", "4", "--out", str(out), "--device", "cpu", "--no-progress", "--log-every", "1",
            "--no-eval-at-end", "--num-pictures", "0", *extra]


def _spawn(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "detr_nb", *args], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _metrics(out):
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass     # a line cut by the kill
    return [r for r in rows if r.get("kind") == "step"]


def _kill_when(proc, condition, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail("timed out waiting for the run to reach the kill point")


def test_a_killed_run_resumes_with_the_time_it_had_trained(tmp_path, data_root):
    out = tmp_path / "run"
    budget = 24
    args = _args(out, data_root, "--time-budget", str(budget), "--checkpoint-every", "1", "--epochs", "100000")
    proc = _spawn(args, tmp_path)

    def checkpoint_past(seconds):
        try:
            return ck.load_checkpoint(out / "checkpoints" / "last.pth")["elapsed_s"] >= seconds
        except ck.CheckpointError:
            return False
    _kill_when(proc, lambda: checkpoint_past(budget / 2))
    state = ck.load_checkpoint(out / "checkpoints" / "last.pth")
    trained, step = state["elapsed_s"], state["step"]
    lr_then = [r for r in _metrics(out) if r["step"] == step][0]["lr"]
    assert budget / 2 <= trained < budget

    run_cli(args, cwd=tmp_path)
    after = [r for r in _metrics(out) if r["step"] > step]
    assert after, "the resumed run trained no step"
    assert after[0]["time_s"] >= trained                         # the clock goes on from the checkpoint
    assert after[0]["lr"] <= lr_then * 1.001                     # the time-based cosine does not jump back up
    resumed_for = after[-1]["time_s"] - trained
    assert resumed_for < budget - trained + 8, (trained, resumed_for)   # it trains what was left, not a new budget
    final = ck.load_checkpoint(out / "checkpoints" / "last.pth")
    assert budget <= final["elapsed_s"] < budget + 8


def test_a_corrupt_newest_checkpoint_never_costs_the_good_one(tmp_path, data_root):
    out = tmp_path / "run"
    proc = _spawn(_args(out, data_root, "--time-budget", "none", "--epochs", "100000"), tmp_path)
    ckpts = out / "checkpoints"
    _kill_when(proc, lambda: (ckpts / "prev.pth").exists() and any(r["step"] >= 8 for r in _metrics(out)))
    good = ck.load_checkpoint(ckpts / "prev.pth")["step"]
    # the kill hit while last.pth was being copied: a third of it replaced it (a new file, as a copy makes:
    # right after a rotation last.pth and prev.pth are one file, hard-linked, until the new last.pth lands)
    data = (ckpts / "last.pth").read_bytes()
    (ckpts / "copy.tmp").write_bytes(data[: len(data) // 3])
    os.replace(ckpts / "copy.tmp", ckpts / "last.pth")
    # the next session falls back to prev.pth, trains one step and saves once
    proc = run_cli(_args(out, data_root, "--time-budget", "none", "--max-steps", str(good + 1)), cwd=tmp_path)
    assert "skipping last.pth" in proc.stdout + proc.stderr
    assert ck.load_checkpoint(ckpts / "last.pth")["step"] == good + 1
    assert ck.load_checkpoint(ckpts / "prev.pth")["step"] == good     # still readable: not the corrupt file
    assert (ckpts / "last.pth.corrupt").exists()


def test_two_runs_cannot_share_an_output_directory(tmp_path, data_root):
    out = tmp_path / "run"
    first = _spawn(_args(out, data_root, "--time-budget", "none", "--epochs", "100000"), tmp_path)
    try:
        deadline = time.time() + 240
        while not _metrics(out) and time.time() < deadline:
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.1)
        second = run_cli(_args(out, data_root, "--time-budget", "none", "--max-steps", "1"), cwd=tmp_path, check=False)
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and "in use by another training run" in err[0] and f"pid {first.pid}" in err[0], err
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    # the kill released the lock: the same command now resumes the first run
    steps = max(r["step"] for r in _metrics(out))
    run_cli(_args(out, data_root, "--time-budget", "none", "--max-steps", str(steps + 2)), cwd=tmp_path)


@pytest.mark.parametrize("change", [("--batch-size", "2", "batch_size"), ("--seed", "7", "seed"),
                                    ("--accum-steps", "2", "accum_steps"),
                                    ("--data-kwargs", json.dumps({**SYN, "num_train": 16}), "data_kwargs")])
def test_a_resume_under_other_settings_is_refused(tmp_path, data_root, change, capsys):
    """In-process (the refusal needs a checkpoint, not a kill: the kill tests above cover that)."""
    from detr_nb.cli import main
    out = tmp_path / "run"
    assert main(_args(out, data_root, "--time-budget", "none", "--max-steps", "2")) == 0
    before = ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"]
    flag, value, key = change
    args = _args(out, data_root, "--time-budget", "none", "--max-steps", "100")
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and key in err and len(err.strip().splitlines()) == 1, err
    assert ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"] == before       # untouched


def test_a_killed_aided_run_ends_with_the_weights_of_one_that_never_stopped(tmp_path, data_root):
    common = ("--time-budget", "none", "--max-steps", "24", "--epochs", "100000", "--model-overrides",
              json.dumps({**TINY, "dropout": 0.1}))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_cli(_args(whole, data_root, *common), cwd=tmp_path)   # a process too: the same threads, the same sums
    proc = _spawn(_args(killed, data_root, *common), tmp_path)
    _kill_when(proc, lambda: (killed / "checkpoints" / "prev.pth").exists() and
               any(r["step"] % 3 == 2 for r in _metrics(killed) if r["step"] > 6))   # mid-epoch, after a save
    resumed_from = ck.load_checkpoint(killed / "checkpoints" / "last.pth")["step"]
    assert 0 < resumed_from < 24
    run_cli(_args(killed, data_root, *common), cwd=tmp_path)
    a = ck.load_checkpoint(whole / "checkpoints" / "last.pth")
    b = ck.load_checkpoint(killed / "checkpoints" / "last.pth")
    assert a["step"] == b["step"] == 24 and a["config"]["loss_type"] == "focal"
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    steps = [r["step"] for r in _metrics(killed)]
    assert steps == list(range(1, 25))     # the killed session's lines past its checkpoint were dropped
