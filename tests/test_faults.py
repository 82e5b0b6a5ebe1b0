"""Faults a user meets, each ending in one clear line or a counted skip, never in lost work: a training cell
that raises with DataLoader workers, a stop signal with workers, more objects than queries, an unreadable
validation image, a full disk, an unreadable photo in a folder, out-of-range model options and thresholds."""
import errno
import multiprocessing
import os
import signal

import pytest
import torch

from detr_nb import checkpoint as ck
from detr_nb.trainer import Trainer
from engine_utils import PAPER_WEIGHTS, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _workers():
    return [p for p in multiprocessing.active_children() if p.is_alive()]


def test_a_run_that_raised_with_workers_frees_its_folder_and_its_workers(tmp_path, data_root):
    """Notebook 07's third session: a cell raised (a CUDA out-of-memory error, a simulated disconnect) while
    DataLoader workers held a copy of the lock; after close() the same folder trains again in this process."""
    cfg = tiny_config(tmp_path / "run", data_root, workers=2, epochs=100)

    def fail(tr):
        if tr.step == 3:
            raise RuntimeError("CUDA out of memory (simulated)")

    tr = Trainer(cfg, callbacks=[fail])
    with pytest.raises(RuntimeError, match="simulated"):
        tr.fit()
    assert not _workers(), "the interrupted epoch's workers outlived the run"
    tr.close()
    again = Trainer(cfg.replace(max_steps=5))     # was: RunDirInUse naming this process's own pid
    assert again.resumed_from is None and again.fit() == "max_steps"
    again.close()
    third = Trainer(cfg.replace(max_steps=6))
    assert third.step == 5 and third.resumed_from is not None
    third.close()


def test_one_stop_signal_with_workers_is_announced_once(tmp_path, data_root, capfd):
    """Colab's stop button signals the kernel and its DataLoader workers: the workers ignore it, the
    trainer announces it once, saves and returns."""
    cfg = tiny_config(tmp_path / "run", data_root, workers=2, epochs=100)

    def press_stop(tr):
        if tr.step == 2:
            workers = _workers()
            assert len(workers) == 2
            for pid in [os.getpid()] + [p.pid for p in workers]:
                os.kill(pid, signal.SIGINT)

    tr = Trainer(cfg, callbacks=[press_stop])
    try:
        assert tr.fit() == "signal"
    finally:
        tr.close()
    out = capfd.readouterr()
    assert (out.out + out.err).count("SIGINT received") == 1, out.out + out.err
    assert ck.load_checkpoint(tr.last_good)["step"] == tr.step


def test_a_released_lock_is_free_while_forked_children_live(tmp_path):
    """A child forked while the lock was held shares its open file: release() must unlock, not only close."""
    lock = ck.RunLock(tmp_path)
    child = multiprocessing.get_context("fork").Process(target=__import__("time").sleep, args=(30,), daemon=True)
    child.start()
    try:
        lock.release()
        ck.RunLock(tmp_path).release()       # was: RunDirInUse naming this process's own pid
    finally:
        child.kill()
        child.join()


# ----------------------------------------------------------------------------- data and options
def _tiny_train(out, *extra):
    import json
    from engine_utils import TINY
    return ["train", "--model", "detr_tiny", "--model-overrides", json.dumps(TINY), "--preset", "cpu",
            "--weight-dict", json.dumps(PAPER_WEIGHTS), "--batch-size", "2", "--out", str(out), "--device", "cpu",
            "--no-progress", "--log-every", "1", "--time-budget", "none", *extra]


def _one_error_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_more_objects_than_queries_is_refused_before_training(tmp_path, capsys):
    """TINY has 8 queries; one training image holds 12 boxes: 4 could never be matched, so never learned."""
    from detr_nb.cli import main
    from engine_utils import write_coco_folder

    many = [(2 + 5 * (k % 6), 2 + 15 * (k // 6), 4, 4, 1) for k in range(12)]
    root = write_coco_folder(tmp_path / "coco", [(32, 32)] * 3, [[(4, 4, 8, 8, 1)], many, [(10, 10, 6, 6, 1)]])
    write_coco_folder(root, [(32, 32)] * 2, [[(4, 4, 8, 8, 1)], many], split="val")
    assert main(_tiny_train(tmp_path / "run", "--dataset", str(root), "--max-steps", "1")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "0001.png has 12 objects" in line and "8 queries" in line, line
    assert "--set model_overrides.num_queries=12" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()

    # enough queries for training, too few for one validation image: trains, and says so
    few = [[(4, 4, 8, 8, 1)], [(10, 10, 6, 6, 1)], [(2, 2, 5, 5, 1)]]
    write_coco_folder(root, [(32, 32)] * 3, few)
    assert main(_tiny_train(tmp_path / "run2", "--dataset", str(root), "--max-steps", "1")) == 0
    out = capsys.readouterr().out
    assert "validation image" in out and "0001.png has 12 objects" in out and "count as misses" in out, out


def test_an_unreadable_validation_image_is_refused_before_training(tmp_path, data_root, capsys):
    """Evaluation at the end would fail on it after the whole run: the preflight names it, in one line, first."""
    import shutil
    from detr_nb.cli import main

    root = tmp_path / "data"
    shutil.copytree(data_root, root, ignore=shutil.ignore_patterns(".lock"))
    (root / "val" / "000001.png").write_bytes(b"not a png")
    assert main(_tiny_train(tmp_path / "run", "--dataset", str(root), "--max-steps", "1")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "000001.png" in line and "cannot be read" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("override, field", [("num_queries=0", "num_queries"), ("hidden_dim=100", "hidden_dim"),
                                             ("dropout=1.5", "dropout"), ("nheads=0", "nheads"),
                                             ("dec_layers=0", "dec_layers"), ("backbone=\"vgg16\"", "backbone"),
                                             ("backbone_width=0", "backbone_width"),
                                             ("frozen_stages=-1", "frozen_stages"),
                                             ("two_stage=true", "two_stage")])     # an aid's option, removed
def test_an_out_of_range_model_option_is_one_line(tmp_path, capsys, override, field):
    from detr_nb.cli import main

    assert main(["train", "--set", f"model_overrides.{override}", "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"model_overrides.{field}" in line, line
    assert not (tmp_path / "run").exists()     # refused before anything was built or written


# ----------------------------------------------------------------------------- checkpoints and a full disk
def test_a_full_disk_while_checkpointing_loses_nothing_and_says_so_in_one_line(tmp_path, data_root, capsys,
                                                                               monkeypatch):
    import io
    import json
    from detr_nb.cli import main
    from engine_utils import SYN

    out = tmp_path / "run"
    args = _tiny_train(out, "--data-root", str(data_root), "--data-kwargs", json.dumps(SYN), "--no-eval-at-end")
    assert main(args + ["--max-steps", "2"]) == 0
    capsys.readouterr()
    real_save = torch.save

    class FullDisk(io.RawIOBase):    # the device fills up 4 kB into the file
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            self.n += len(b)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FullDisk(f)))
    assert main(args + ["--max-steps", "4"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot write {out / 'checkpoints' / 'last.pth'} (" in line and " MB): no space left" in line, line
    assert f"the last good checkpoint is {out / 'checkpoints' / 'last.pth'} (step 2)" in line, line
    assert "run the same command again" in line, line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pth"]     # no temporary file left
    assert ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"] == 2

    monkeypatch.setattr(torch, "save", real_save)          # space freed: the same command resumes and finishes
    assert main(args + ["--max-steps", "4"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"] == 4


# ----------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("faults") / "run"
    tr = Trainer(tiny_config(out, data_root, max_steps=1))
    tr.fit()
    tr.close()
    return out


def test_predict_on_a_folder_skips_an_unreadable_file_and_counts_it(tmp_path, data_root, tiny_run, capsys):
    import json
    import shutil
    from detr_nb.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((data_root / "val").glob("*.png"))[:3]:
        shutil.copy(p, photos / p.name)
    (photos / "notes.jpg").write_text("not a picture")
    assert main(["predict", str(photos), "--run", str(tiny_run), "--device", "cpu", "-o", str(tmp_path / "p")]) == 1
    printed = capsys.readouterr()
    found = json.load(open(tmp_path / "p" / "predictions.json"))
    assert len(found["images"]) == 3 and [s["image"] for s in found["skipped"]] == [str(photos / "notes.jpg")]
    assert "skipping" in printed.out and "1 unreadable image file(s) skipped, 3 predicted" in printed.out

    # named on the command line, the same file fails in one line, before any image is predicted
    assert main(["predict", str(photos / "notes.jpg"), str(photos), "--run", str(tiny_run), "--device", "cpu",
                 "-o", str(tmp_path / "q")]) == 2
    assert "notes.jpg: not an image" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "q" / "predictions.json").exists()


@pytest.mark.parametrize("threshold", ["1.5", "-0.1", "nan"])
def test_predict_refuses_a_threshold_outside_0_1(tmp_path, data_root, tiny_run, capsys, threshold):
    from detr_nb.cli import main

    image = next((data_root / "val").glob("*.png"))
    assert main(["predict", str(image), "--run", str(tiny_run), "--threshold", threshold,
                 "-o", str(tmp_path / "p")]) == 2
    assert "--threshold must be a score in [0, 1]" in _one_error_line(capsys.readouterr().err)
