"""``python -m detr_nb train|evaluate|predict`` (detr_nb/cli.py): a tiny training run writes its outputs, evaluate
and predict read them back, a SIGTERM leaves a checkpoint the next run resumes from, options resolve over the
recipes, and errors a user can fix are one line with status 2."""
import json
import os
import signal

import pytest

from detr_nb import checkpoint as ck
from detr_nb.cli import build_parser, config_from_args, main
from detr_nb.config import RECIPES, TrainConfig
from detr_nb.evaluate import STAT_NAMES
from detr_nb.trainer import Trainer
from engine_utils import SYN, TINY, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_args(out, root, *extra):
    return ["train", "--data-root", str(root), "--data-kwargs", json.dumps(SYN), "--model-overrides", json.dumps(TINY),
            "--batch-size", "4", "--out", str(out), "--device", "cpu", "--no-progress", "--log-every", "1", *extra]


def test_defaults_are_the_main_job():
    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert cfg.dataset == "synthetic" and cfg.model == "detr_tiny_aided" and cfg.device == "auto"
    assert cfg.weight_dict == {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0} and cfg.lr == 3e-3
    assert cfg.time_budget_s is None and cfg.max_steps == 1500 and cfg.eval_at_end     # the same on every machine
    cfg = config_from_args(build_parser().parse_args(["train", "--time-budget", "none", "--no-resume",
                                                      "--set", "lr_drop=5", "--set", "model_overrides.dropout=0.2"]))
    assert cfg.time_budget_s is None and not cfg.resume and cfg.lr_drop == 5 and cfg.model_overrides == {"dropout": 0.2}


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
    for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_ce_enc", "lr", "grad_norm",
                "images_per_s", "mem_mb"):
        assert key in steps[0], key
    assert (out / "predictions.png").stat().st_size > 0 and (out / "loss.png").exists()
    assert ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"] == 3

    assert main(["evaluate", "--run", str(out), "--device", "cpu", "--batch-size", "4"]) == 0
    assert set(STAT_NAMES) <= set(json.load(open(out / "eval_val.json")))
    folder = tmp_path / "pred"
    image = next((data_root / "val").glob("*.png"))
    assert main(["predict", str(image), "--run", str(out), "--device", "cpu", "--threshold", "0.0",
                 "-o", str(folder)]) == 0
    (record,) = json.load(open(folder / "predictions.json"))["images"]
    # every (query, class) pair, as fewer than 100 exist: 8 queries x 7 class columns (ids 0..6)
    assert record["image"] == str(image) and len(record["detections"]) == TINY["num_queries"] * 7
    assert (folder / f"{image.stem}.png").stat().st_size > 0


def test_sigterm_writes_a_checkpoint_and_the_next_run_resumes(tmp_path, data_root, capsys, monkeypatch):
    """A SIGTERM (Colab's stop button, a scheduler's notice) after step 2 of an endless run: the run stops after
    the step, writes a checkpoint and exits with 130; the same command then resumes from there."""
    out = tmp_path / "run"
    real_step = Trainer.train_step

    def step_then_terminate(self, micro_batches):
        terms = real_step(self, micro_batches)
        if self.step == 1:            # the second step is being taken (the counter moves after it)
            os.kill(os.getpid(), signal.SIGTERM)
        return terms
    monkeypatch.setattr(Trainer, "train_step", step_then_terminate)
    # should the trainer's handler be missing, the signal must not end the test process
    previous = signal.signal(signal.SIGTERM, lambda *a: pytest.fail("SIGTERM reached no trainer handler"))
    try:
        assert main(_tiny_args(out, data_root, "--time-budget", "none", "--epochs", "1000", "--no-eval-at-end")) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    printed = capsys.readouterr().out
    assert printed.count("SIGTERM received") == 1 and "Run the same command again to resume" in printed, printed
    state = ck.load_checkpoint(out / "checkpoints" / "last.pth")
    assert state["step"] == 2
    monkeypatch.undo()
    # the same command again resumes (here told to stop one step later)
    assert main(_tiny_args(out, data_root, "--time-budget", "none", "--max-steps", str(state["step"] + 1),
                           "--no-eval-at-end")) == 0
    assert "resumed from" in capsys.readouterr().out
    assert ck.load_checkpoint(out / "checkpoints" / "last.pth")["step"] == state["step"] + 1


def test_recipes_resolve_and_explicit_options_win():
    parse = lambda *a: config_from_args(build_parser().parse_args(["train", *a]))
    paper = parse("--recipe", "paper", "--lr", "2e-4", "--dataset", "synthetic")
    assert (paper.lr, paper.lr_backbone, paper.warmup_steps, paper.model) == (2e-4, 1e-5, 0, "detr_r50")
    assert paper.weight_dict == {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert paper.data_kwargs == {}            # the aided recipe's synthetic parameters do not follow another recipe
    fine = parse("--recipe", "finetune", "--model", "detr_r101")
    assert fine.pretrained == "detr_r101" and fine.dataset == "balloon" and fine.lr == 1e-4
    quick = parse("--set", "data_kwargs.num_train=64", "--set", "data_kwargs.image_size=[80, 80]")
    assert quick.data_kwargs["num_train"] == 64 and quick.data_kwargs["image_size"] == [80, 80]
    assert quick.data_kwargs["max_objects"] == 10      # the other synthetic parameters stay the main job's
    coco = parse("--dataset", "balloon")
    assert coco.data_kwargs == {} and coco.model == "detr_tiny_aided"
    assert TrainConfig(recipe="paper").replace(recipe="aided", lr=0.5).lr == 0.5
    assert TrainConfig(recipe="paper", lr=0.5).replace(recipe="aided").lr == 0.5   # explicit values survive
    assert TrainConfig(recipe="paper").replace(recipe="aided").lr == 3e-3


def test_chained_replaces_equal_one_fresh_config():
    """The recipe is resolved from the options given, whatever the path: a chain of replace() calls gives what a
    fresh config of the same options gives (a replace used to mark every field as given, so a later recipe
    changed nothing: recipe paper, then out, then recipe aided kept the paper's lr, loss and model)."""
    import dataclasses

    chained = TrainConfig(recipe="paper").replace(out="x").replace(recipe="aided")
    assert chained.to_dict() == TrainConfig(recipe="aided", out="x").to_dict()
    assert (chained.lr, chained.weight_dict["loss_ce"], chained.model) == (3e-3, 2.0, "detr_tiny_aided")
    for start in RECIPES:
        for end in RECIPES:
            a = TrainConfig(recipe=start, seed=3).replace(batch_size=2).replace(recipe=end).replace(out="y")
            assert a.to_dict() == TrainConfig(recipe=end, seed=3, batch_size=2, out="y").to_dict(), (start, end)
    # another dataset drops the data parameters given for the old one (and a dataset's own stay)
    moved = TrainConfig(data_kwargs={"num_train": 9}).replace(dataset="balloon")
    assert moved.data_kwargs == {} and moved.replace(dataset="synthetic").data_kwargs == RECIPES["aided"]["data_kwargs"]
    # the paper's recipe is the fields' defaults: a recipe holds only its differences
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig(recipe="paper").to_dict() == {**defaults, "recipe": "paper"}
    assert all(r[k] != defaults[k] for r in RECIPES.values() for k in r)


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["train", "--accum-steps", "0"], "--accum-steps must be an integer >= 1, got 0"),
    (["train", "--model", "detr_r50"], "frozen-BatchNorm ResNet"),
    (["train", "--dataset", "no/such/folder"], "neither synthetic"),
    (["train", "--recipe", "fast"], "--recipe must be one of aided, paper, finetune"),
    (["train", "--set", "bogus=1"], "--set expects FIELD=VALUE"),
    (["predict", "missing.jpg", "--run", "."], "no checkpoint found"),
])
def test_user_errors_are_one_line(tmp_path, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_a_user_error_ends_the_process_with_status_2_and_one_line(tmp_path):
    """The same, as a process: ``python -m detr_nb`` exits with main's status and prints no traceback."""
    proc = run_cli(["train", "--batch-size", "0"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --batch-size must be an integer >= 1, got 0"], proc.stderr


def test_a_nan_loss_ends_train_with_status_1_and_one_line(tmp_path, data_root, capsys):
    """lr 1e30: the first step sends the weights to infinity, the second loss is NaN."""
    out = tmp_path / "run"
    assert main(_tiny_args(out, data_root, "--lr", "1e30", "--max-steps", "3", "--time-budget", "none",
                           "--no-eval-at-end")) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: non-finite loss at step 2: ") and "loss=nan" in lines[0]
    assert "no checkpoint was written" in lines[0], lines


def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --device cuda: CUDA is not available here (no GPU, or a CPU-only build of torch {torch.__version__}); "
        "use --device cpu or --device auto"]


def test_predict_errors_name_the_input(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(_tiny_args(out, data_root, "--max-steps", "1", "--time-budget", "none", "--no-eval-at-end")) == 0
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "empty").mkdir()
    for item, message in (("missing.jpg", "missing.jpg: no such file, folder or URL"),
                          ("notes.jpg", "notes.jpg: not an image that PIL can read"),
                          ("empty", "empty: the folder holds no image"),
                          ("http://127.0.0.1:9/x.jpg", "cannot download http://127.0.0.1:9/x.jpg")):
        capsys.readouterr()
        assert main(["predict", item, "--run", str(out), "--device", "cpu"]) == 2, item
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (item, lines)


def test_predict_reads_a_url(tmp_path, data_root):
    """An http URL (a server on 127.0.0.1) and a file:// URL give the same boxes as the file itself."""
    import functools
    import http.server
    import threading
    out = tmp_path / "run"
    assert main(_tiny_args(out, data_root, "--max-steps", "1", "--time-budget", "none", "--no-eval-at-end")) == 0
    image = next((data_root / "val").glob("*.png"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(image.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{image.name}"
        assert main(["predict", str(image), url, image.as_uri(), "--run", str(out), "--device", "cpu",
                     "--threshold", "0.2", "-o", str(tmp_path / "p")]) == 0
    finally:
        server.shutdown()
    a, b, c = json.load(open(tmp_path / "p" / "predictions.json"))["images"]
    assert b["image"] == url and a["detections"] == b["detections"] == c["detections"]
    assert len({a["annotated"], b["annotated"], c["annotated"]}) == 3      # one picture each, none overwritten


def test_a_coco_folder_trains_and_evaluates(tmp_path, capsys):
    """--dataset <folder>: no synthetic parameters leak into it (this crashed with a TypeError)."""
    from engine_utils import write_coco_folder
    sizes = [(64, 48), (48, 64), (56, 56), (64, 64)]
    boxes = [[(5, 6, 20, 14, 1)], [(10, 10, 30, 20, 2)], [(3, 3, 40, 40, 1), (45, 45, 8, 8, 2)], [(20, 5, 10, 50, 2)]]
    for split in ("train", "val"):
        write_coco_folder(tmp_path / "coco", sizes, boxes, split=split, categories=("box", "bar"))
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "coco"), "--model-overrides", json.dumps(TINY),
                 "--batch-size", "2", "--max-steps", "2", "--time-budget", "none", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 classes" not in printed and "3 classes" in printed      # ids 1, 2 -> num_classes 3
    assert set(STAT_NAMES) <= set(json.load(open(out / "eval.json")))


def test_open_input_reads_files_and_urls_like_predict(tmp_path, data_root):
    """The notebooks' photo reader: a path and its file:// URL give the same upright pixels; bad inputs
    give predict's one-line errors."""
    import numpy as np
    from detr_nb.predict import open_input
    from detr_nb.errors import UserError
    image = next((data_root / "val").glob("*.png"))
    a, b = open_input(str(image)), open_input(image.as_uri())
    assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))
    (tmp_path / "notes.jpg").write_text("not an image")
    for item, message in ((str(tmp_path / "missing.jpg"), "no such file or URL"),
                          (str(tmp_path / "notes.jpg"), "not an image that PIL can read"),
                          ("http://127.0.0.1:9/x.jpg", "cannot download")):
        with pytest.raises(UserError, match=message):
            open_input(item)


@pytest.mark.parametrize("command", ["evaluate", "predict x.jpg", "export -o m.onnx"])
def test_unknown_pretrained_name_is_one_line(tmp_path, command, capsys, monkeypatch):
    """--pretrained with a name that was never released: one line naming the choices (was a traceback)."""
    monkeypatch.chdir(tmp_path)
    assert main(command.split() + ["--pretrained", "detr_r18", "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: --pretrained detr_r18: not a released DETR; one of detr_r50, detr_r50_dc5, detr_r101, detr_r101_dc5"], \
        lines
