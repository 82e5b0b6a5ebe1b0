"""A Colab disconnect loses nothing: real training processes killed with SIGKILL, then run again.

The main job's own model and loss (``detr_tiny_aided`` with the focal loss, the ``aided`` recipe), shrunk: the
trained time survives the kill, a corrupt newest checkpoint never destroys the good one, two runs cannot
share an output directory, a resume under other settings is refused, and a killed run ends with the
weights of one that never stopped. The killed run is a process; the runs it is compared with, and the
sessions that resume it, run in this one (``detr_nb.cli.main``, one torch thread as the process has).
"""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detr_nb import checkpoint as ck
from detr_nb.cli import main
from engine_utils import SYN, TINY, cli_env

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(out, data, *extra):
    return ["train", "--data-root", str(data), "--data-kwargs", json.dumps(SYN), "--model-overrides", json.dumps(TINY),
            "--batch-size", "4", "--out", str(out), "--device", "cpu", "--no-progress", "--log-every", "1",
            "--no-eval-at-end", *extra]


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
    budget = 6
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

    assert main(args) == 0
    after = [r for r in _metrics(out) if r["step"] > step]
    assert after, "the resumed run trained no step"
    assert after[0]["time_s"] >= trained                         # the clock goes on from the checkpoint
    assert after[0]["lr"] <= lr_then * 1.001                     # the time-based cosine does not jump back up
    resumed_for = after[-1]["time_s"] - trained
    assert resumed_for < budget - trained + 5, (trained, resumed_for)   # it trains what was left, not a new budget
    final = ck.load_checkpoint(out / "checkpoints" / "last.pth")
    assert budget <= final["elapsed_s"] < budget + 5


def test_a_corrupt_newest_checkpoint_never_costs_the_good_one(tmp_path, data_root, capsys):
    out, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert main(_args(out, data_root, "--time-budget", "none", "--max-steps", "8")) == 0   # saved at 3, 6 and 8
    good = ck.load_checkpoint(ckpts / "prev.pth")["step"]
    assert good == 6
    # a kill hit while last.pth was being copied: a third of it replaced it (a new file, as a copy makes:
    # right after a rotation last.pth and prev.pth are one file, hard-linked, until the new last.pth lands)
    data = (ckpts / "last.pth").read_bytes()
    (ckpts / "copy.tmp").write_bytes(data[: len(data) // 3])
    os.replace(ckpts / "copy.tmp", ckpts / "last.pth")
    capsys.readouterr()
    # the next session falls back to prev.pth, trains one step and saves once
    assert main(_args(out, data_root, "--time-budget", "none", "--max-steps", str(good + 1))) == 0
    printed = capsys.readouterr()
    assert "skipping last.pth" in printed.out + printed.err
    assert ck.load_checkpoint(ckpts / "last.pth")["step"] == good + 1
    assert ck.load_checkpoint(ckpts / "prev.pth")["step"] == good     # still readable: not the corrupt file
    assert (ckpts / "last.pth.corrupt").exists()


def _hold_the_lock(out, held):
    ck.RunLock(out)
    held.set()
    time.sleep(120)


def test_two_runs_cannot_share_an_output_directory(tmp_path, data_root, capsys):
    """Another process holds the folder's lock (a training run, here one that only locks): this run stops in one
    line naming it; once that process is killed, the kernel has released the lock and the same command trains."""
    out = tmp_path / "run"
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    first = ctx.Process(target=_hold_the_lock, args=(out, held), daemon=True)
    first.start()
    try:
        assert held.wait(30)
        assert main(_args(out, data_root, "--time-budget", "none", "--max-steps", "1")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another training run" in err[0] and f"pid {first.pid}" in err[0], err
        assert not (out / "checkpoints").exists()
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.join(30)
    assert main(_args(out, data_root, "--time-budget", "none", "--max-steps", "1")) == 0
    assert ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"] == 1


@pytest.mark.parametrize("change", [("--batch-size", "2", "batch_size"), ("--seed", "7", "seed"),
                                    ("--accum-steps", "2", "accum_steps"),
                                    ("--data-kwargs", json.dumps({**SYN, "num_train": 16}), "data_kwargs")])
def test_a_resume_under_other_settings_is_refused(tmp_path, data_root, change, capsys):
    """In-process (the refusal needs a checkpoint, not a kill: the kill tests above cover that)."""
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
    assert main(_args(whole, data_root, *common)) == 0
    proc = _spawn(_args(killed, data_root, *common), tmp_path)
    _kill_when(proc, lambda: (killed / "checkpoints" / "prev.pth").exists() and
               any(r["step"] % 3 == 2 for r in _metrics(killed) if r["step"] > 6))   # mid-epoch, after a save
    resumed_from = ck.load_checkpoint(killed / "checkpoints" / "last.pth")["step"]
    assert 0 < resumed_from < 24
    assert main(_args(killed, data_root, *common)) == 0
    a = ck.load_checkpoint(whole / "checkpoints" / "last.pth")
    b = ck.load_checkpoint(killed / "checkpoints" / "last.pth")
    assert a["step"] == b["step"] == 24 and a["model_name"] == "detr_tiny_aided"
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    steps = [r["step"] for r in _metrics(killed)]
    assert steps == list(range(1, 25))     # the killed session's lines past its checkpoint were dropped
