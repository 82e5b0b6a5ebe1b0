"""Checkpoints (detr_nb/checkpoint.py): atomic save, weights_only loading, truncated/foreign/other-version files,
fallback to prev.pth, RNG round trip."""
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from detr_nb import checkpoint as ck


def _state(step, value=1.0):
    return {"model": {"w": torch.full((3,), float(value))}, "step": step, "epoch": 0,
            "config": {"lr": 1e-4, "name": "x", "sizes": [1, 2]}, "rng": ck.capture_rng_state()}


def test_save_rotate_and_load(tmp_path):
    m = ck.CheckpointManager(tmp_path)
    m.save(_state(1, 1.0))
    m.save(_state(2, 2.0), is_best=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth", "prev.pth"]
    assert ck.load_checkpoint(tmp_path / "prev.pth")["step"] == 1
    state, path = ck.load_latest(tmp_path)
    assert path.name == "last.pth" and state["step"] == 2 and state["model"]["w"][0] == 2.0
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


def test_truncated_last_falls_back_to_prev(tmp_path):
    m = ck.CheckpointManager(tmp_path)
    m.save(_state(1))
    m.save(_state(2))
    data = (tmp_path / "last.pth").read_bytes()
    (tmp_path / "last.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="cannot be read"):
        ck.load_checkpoint(tmp_path / "last.pth")
    logs = []
    state, path = ck.load_latest(tmp_path, log=logs.append)
    assert path.name == "prev.pth" and state["step"] == 1
    assert any("skipping last.pth" in s for s in logs)


def test_foreign_file_is_rejected_clearly(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "last.pth")  # e.g. official weights
    with pytest.raises(ck.CheckpointError, match="not a detr_nb training checkpoint"):
        ck.load_checkpoint(tmp_path / "last.pth")
    with pytest.raises(ck.CheckpointError, match="no usable checkpoint"):
        ck.load_latest(tmp_path, log=lambda s: None)


@pytest.mark.parametrize("version, written_by", [(1, "an older"), (3, "a newer")])
def test_a_checkpoint_of_another_format_version_is_refused_in_one_line(tmp_path, version, written_by):
    """Version 1 (the package before its thin redesign) is no longer read: the message says so, not a KeyError."""
    ck.CheckpointManager(tmp_path).save(_state(1))
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    torch.save({**state, "version": version}, tmp_path / "last.pth")
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_checkpoint(tmp_path / "last.pth")
    msg = str(info.value)
    assert "\n" not in msg and f"format version {version}" in msg and f"reads {ck.VERSION}" in msg, msg
    assert f"written by {written_by} detr_nb" in msg, msg


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())
    torch.save({"format": ck.FORMAT, "x": Evil()}, tmp_path / "last.pth")
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(tmp_path / "last.pth")


def test_empty_dir_has_no_checkpoint(tmp_path):
    assert ck.load_latest(tmp_path) is None


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    m = ck.CheckpointManager(tmp_path)
    m.save(_state(1))

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        m.save(_state(2))
    monkeypatch.undo()
    assert ck.load_latest(tmp_path)[0]["step"] == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_last_never_goes_missing_during_rotation(tmp_path, monkeypatch, links):
    """A kill between rotating last.pth and moving the new file in (where the kill test's CI flake struck):
    last.pth is still there, readable, and prev.pth holds the same step; where hard links fail (a Drive mount)
    the rotation is a rename, and the newest checkpoint is read from prev.pth."""
    m = ck.CheckpointManager(tmp_path)
    m.save(_state(1))
    m.save(_state(2))
    if not links:
        monkeypatch.setattr(ck.os, "link", lambda *a: (_ for _ in ()).throw(OSError("no hard links")))
    real_replace = os.replace

    def killed_before_the_new_file(src, dst):
        if Path(dst).name == "last.pth" and str(src).endswith(".tmp"):
            raise KeyboardInterrupt     # the rotation is done, the new last.pth is not moved in yet
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", killed_before_the_new_file)
    with pytest.raises(KeyboardInterrupt):
        m.save(_state(3))
    monkeypatch.undo()
    assert ck.load_checkpoint(tmp_path / "prev.pth")["step"] == 2
    assert ck.load_latest(tmp_path)[0]["step"] == 2
    names = sorted(p.name for p in tmp_path.iterdir())
    if links:
        assert ck.load_checkpoint(tmp_path / "last.pth")["step"] == 2 and names == ["last.pth", "prev.pth"]
    else:
        assert names == ["prev.pth"]


def test_rng_round_trip():
    state = ck.capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    ck.restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    assert a == b
