"""Every command the README, ``--help`` and cli.py's docstring show is run here, as a user types it.

The commands are read from the documents themselves, so a new example without a test fails
``test_every_documented_command_has_a_runner``. Each runner executes the documented text (placeholders such
as ``runs/my-run`` or ``photo.jpg`` replaced by files made here) with only the budget and the data size
shortened, in a fresh working directory: ``python -m detr_nb ...`` through ``detr_nb.cli.main`` and
``python bench/<script>.py ...`` through the script's ``main``, in this process (the interpreter's start is all
they skip; the ``python -m`` entry point itself: tests/test_cli.py), ``torchrun`` and ``bash`` as subprocesses.
Documented variants that differ only in what the shortening overrides share one run; a command another test file
runs names that file and is skipped here.
"""
import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from detr_nb.evaluate import STAT_NAMES
from engine_utils import REPO, SYN, TINY, run_cli, write_coco_folder

README = REPO / "README.md"
# The main job's shortening: the options the README names for a quick try.
BUDGET, STEPS = 3, 44         # a shortened time budget; fixed steps past the 40 that time the estimate
SHORT = ["--max-steps", str(STEPS), "--set", "data_kwargs.num_train=64", "--set", "data_kwargs.num_val=8"]

pytestmark = pytest.mark.usefixtures("one_thread")


def documented_commands():
    """Shell commands in the README's bash blocks and in cli.py's docstring (comments stripped)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        found += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    import detr_nb.cli as cli
    found += [line.split("  #")[0].strip() for line in cli.__doc__.splitlines()
              if line.strip().startswith(("python -m detr_nb", "torchrun"))]
    return list(dict.fromkeys(found))


def detr_nb_main(argv, cwd, env=None):
    """``python -m detr_nb <argv>`` in this process, in ``cwd``: its status, printed output and warnings."""
    from detr_nb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.chdir(cwd)
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        rc = main([str(a) for a in argv])
    warned = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    assert rc == 0, f"{argv} exited {rc}:\n{out.getvalue()[-3000:]}\n{err.getvalue()[-3000:]}"
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue() + warned)


def _detr_nb_args(cmd):
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "detr_nb"], cmd
    return argv[3:]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="session")
def once(tmp_path_factory):
    """``once(key, make)``: ``make(folder)``'s result (JSON data) computed once per test session, by whichever
    pytest-xdist worker asks first (the other waits for it): for documented commands that differ only in what
    their shortening overrides, and for the main command the README shows twice."""
    import fcntl
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent                      # the session's folder, above each worker's own
    root = root / "once"
    root.mkdir(exist_ok=True)

    def get(key, make):
        name = hashlib.sha1(key.encode()).hexdigest()[:12]
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = root / f"{name}.json"
            if not done.exists():
                (root / name).mkdir(exist_ok=True)      # exists when an earlier try failed
                done.write_text(json.dumps(make(root / name)))
            return json.loads(done.read_text())
    return get


def _work_dir(parent, cmd):
    return parent / (re.sub(r"\W+", "_", cmd)[:50] + "_" + hashlib.sha1(cmd.encode()).hexdigest()[:6])


@pytest.fixture(scope="module")
def tiny_run(work, data_root):
    """A small finished run (the main job's model, shrunk, on the tiny synthetic set) for evaluate, predict and
    export."""
    out = work / "runs" / "my-run"
    detr_nb_main(["train", "--data-root", data_root, "--data-kwargs", json.dumps(SYN), "--model", "detr_tiny_aided",
                  "--model-overrides", json.dumps(TINY), "--batch-size", "4", "--time-budget", "none",
                  "--max-steps", "6", "--out", out, "--no-progress", "--device", "cpu"], cwd=work)
    return out


@pytest.fixture(scope="module")
def photos(work):
    """photo.jpg (a phone photo: stored sideways with EXIF orientation 6) and my_photos/ (two images, one text)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(work / "photo.jpg", exif=exif)
    folder = work / "my_photos"
    folder.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    return work


def _eval_numbers(path):
    ev = json.loads(Path(path).read_text())
    assert set(STAT_NAMES) <= set(ev), ev
    return {k: ev[k] for k in STAT_NAMES}


def _check_main_job_outputs(out, printed, stopped_by="max_steps"):
    numbers = _eval_numbers(out / "eval.json")
    assert all(0 <= numbers[k] <= 1 or numbers[k] == -1 for k in STAT_NAMES)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == stopped_by
    if stopped_by == "time_budget":
        assert summary["train_time_s"] <= BUDGET + 10
    else:                           # fixed steps: the estimate after the first 40, in one line
        assert summary["step"] == STEPS and len(re.findall(r"estimated time: [\d.]+ min for the other 4 steps",
                                                           printed)) == 1, printed
    assert (out / "predictions.png").stat().st_size > 0 and (out / "loss.png").stat().st_size > 0
    assert (out / "checkpoints" / "last.pth").exists()
    assert f"AP {numbers['AP']:.4f}  AP50 {numbers['AP50']:.4f}" in printed


# ----------------------------------------------------------------------------- runners, one per command
def run_main_job(cmd, work, once, **_):
    """The README's main command, with only the budget and the data size shortened (run once for both of the
    README's spellings: ``pip install`` is CI's own step)."""
    def train(cwd):
        stdout = detr_nb_main(_detr_nb_args(cmd.split("&&")[-1].strip()) + SHORT + ["--no-progress"], cwd=cwd).stdout
        assert (cwd / "data").is_dir()                    # the synthetic set, drawn where the command ran
        return {"cwd": str(cwd), "stdout": stdout}
    run = once("python -m detr_nb train", train)
    out = Path(re.search(r"output directory: (.+)", run["stdout"]).group(1).strip())
    assert out.parent == (Path(run["cwd"]) / "runs").resolve()
    assert "recipe aided: detr_tiny_aided (AidedDETR)" in run["stdout"]
    _check_main_job_outputs(out, run["stdout"])


def run_main_job_seed(cmd, work, **_):
    """Another seed: the same shortened main job, whose recorded config carries that seed."""
    proc = detr_nb_main(_detr_nb_args(cmd) + SHORT + ["--no-progress", "--out", work / "seed"], cwd=work)
    _check_main_job_outputs(work / "seed", proc.stdout)
    import torch
    state = torch.load(work / "seed" / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert state["config"]["seed"] == int(cmd.split()[-1])


def run_main_dry_run(cmd, work, **_):
    """The main job's recipe as it runs: 1,500 steps on every machine, a cosine over them, no time budget."""
    cfg = json.loads(detr_nb_main(_detr_nb_args(cmd), cwd=work).stdout)
    assert (cfg["recipe"], cfg["model"], cfg["max_steps"], cfg["time_budget_s"], cfg["schedule"]) == (
        "aided", "detr_tiny_aided", 1500, None, "cosine")


def run_quick_try(cmd, work, **_):
    argv = _detr_nb_args(cmd)
    argv[argv.index("--time-budget") + 1] = str(BUDGET)
    argv += ["--set", "data_kwargs.num_train=48", "--set", "data_kwargs.num_val=8", "--no-progress"]
    proc = detr_nb_main(argv, cwd=work)
    out = Path(re.search(r"output directory: (.+)", proc.stdout).group(1).strip())
    _check_main_job_outputs(out, proc.stdout, stopped_by="time_budget")
    assert "estimated time" not in proc.stdout            # a time budget has its own clock


def run_help(cmd, work, **_):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as end:
        from detr_nb.cli import main
        main(_detr_nb_args(cmd))
    assert end.value.code == 0
    for option in ("--recipe", "--time-budget", "--dry-run", "--set", "--batch-size", "--weight-dict"):
        assert option in out.getvalue()


def run_bench_main_job(cmd, work, **_):
    out, data = work / "bench-run", work / "bench-data"
    proc = run_cli(shlex.split(cmd) + SHORT + ["--no-progress", "--out", out, "--data-root", data], cwd=REPO)
    line = re.search(r"main job: wall (\d+) s, AP ([\d.]+), AP50 ([\d.]+), (\d+) steps", proc.stdout)
    assert line, proc.stdout[-2000:]
    numbers = _eval_numbers(out / "eval.json")
    assert float(line.group(2)) == pytest.approx(numbers["AP"], abs=1e-4)


def run_dry_run(cmd, work, **_):
    """--recipe paper resolves to the official DETR hyper-parameters (shared/GUIDE.md section 1)."""
    cfg = json.loads(detr_nb_main(_detr_nb_args(cmd), cwd=work).stdout)
    official = dict(recipe="paper", model="detr_r50", lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4, clip_max_norm=0.1,
                    warmup_steps=0, eos_coef=0.1, weight_dict={"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
                    pretrained_backbone=True, epochs=300, schedule="step", lr_drop=200, batch_size=4,
                    preset="official", time_budget_s=None, dataset="coco2017", model_overrides={})
    assert {k: cfg[k] for k in official} == official


def run_finetune(cmd, work, **_):
    """Offline: balloon from a tiny self-made archive, the "released" weights from a file in torch.hub's cache."""
    import torch
    from detr_nb.config import build_model
    from detr_nb.data import datasets
    from test_data_real import balloon_files, make_zip   # the offline balloon fixture

    cache, hub = work / "cache", work / "torch"
    archive = make_zip(work / "balloon_dataset.zip", balloon_files())
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(datasets.REMOTES, "balloon", datasets.Remote(f"file://{archive}", "balloon_dataset.zip"))
        for split in ("train", "val"):
            datasets.prepare("balloon", split, root=str(cache), progress=False)
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    weights = build_model("detr_r50", num_classes=91).state_dict()
    torch.save({"model": weights}, hub / "hub" / "checkpoints" / "detr-r50-e632da11.pth")
    out = work / "finetune"
    # shortened: one epoch, and the 40 x 30 px photos kept at their size (DETR-R50 at 800 px takes a CPU 20 s)
    proc = detr_nb_main(_detr_nb_args(cmd) + ["--epochs", "1", "--preset", "cpu", "--out", out, "--no-progress",
                                              "--device", "cpu"],
                        cwd=work, env={"DETR_NB_CACHE": str(cache), "TORCH_HOME": str(hub)})
    assert "class_embed is left as initialised" in proc.stdout, proc.stdout    # a new class head, the rest released
    _eval_numbers(out / "eval.json")
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert state["model"]["class_embed.weight"].shape[0] == 2 + 1       # balloon (id 1) + unused 0 + no-object
    for key in ("backbone.0.body.layer1.0.conv1.weight",                # frozen: the released values
                "transformer.encoder.layers.0.linear1.weight"):         # trained one step at lr 1e-4: close to them
        assert torch.allclose(state["model"][key], weights[key], atol=1e-3), key
    assert torch.equal(state["model"]["backbone.0.body.layer1.0.conv1.weight"],
                       weights["backbone.0.body.layer1.0.conv1.weight"])


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(cmd, work, **_):
    """Two processes (gloo) of the main job's model on a COCO folder where most images hold no object: a batch
    without one leaves no parameter without a gradient (DDP would stop the run), and the run evaluates."""
    boxes = [[] for _ in range(8)]
    boxes[5] = [(8, 8, 20, 16, 1)]                          # one image of eight has an object
    for split in ("train", "val"):
        write_coco_folder(work / "coco", [(48, 48)] * 8, boxes, split=split)
    out = work / "ddp"
    argv = shlex.split(cmd.replace("torchrun", f"torchrun --master_addr=127.0.0.1 --master_port={_free_port()}", 1))
    proc = run_cli(argv + ["--dataset", work / "coco", "--model-overrides", json.dumps(TINY), "--batch-size", "1",
                           "--time-budget", "none", "--max-steps", "4", "--log-every", "1", "--out", out,
                           "--no-progress"], cwd=work)
    assert "2 process(es), batch 1x1" in proc.stdout, proc.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3, 4]
    _eval_numbers(out / "eval.json")


def run_evaluate(cmd, work, tiny_run, **_):
    """evaluate --run R gives exactly the numbers R/eval.json holds (one scoring path)."""
    detr_nb_main(_detr_nb_args(cmd.replace("runs/my-run", str(tiny_run))), cwd=work)
    assert _eval_numbers(tiny_run / "eval_val.json") == _eval_numbers(tiny_run / "eval.json")


def run_predict(cmd, work, tiny_run, photos, **_):
    out = work / "predictions"
    argv = _detr_nb_args(cmd.replace("runs/my-run", str(tiny_run)).replace("--out predictions", f"--out {out}"))
    proc = detr_nb_main(argv + ["--threshold", "0.0", "--device", "cpu"], cwd=photos)
    assert "skipped 1 non-image file" in proc.stdout
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert [Path(r["image"]).name for r in records] == ["photo.jpg", "a.png", "b.jpg"]
    assert (records[0]["width"], records[0]["height"]) == (48, 64)     # upright: EXIF orientation 6 applied
    for r in records:
        assert Path(r["annotated"]).stat().st_size > 0 and r["detections"]
        for d in r["detections"]:
            x0, y0, x1, y1 = d["box_xyxy"]
            assert 0 <= x0 <= x1 <= r["width"] + 0.1 and 0 <= y0 <= y1 <= r["height"] + 0.1


def run_export(cmd, work, tiny_run, **_):
    """The run's model to model.onnx, checked by onnxruntime against PyTorch (optional packages: skip without)."""
    pytest.importorskip("onnx", reason='optional: pip install "detr_nb[export]"')
    pytest.importorskip("onnxruntime", reason='optional: pip install "detr_nb[export]"')
    proc = detr_nb_main(_detr_nb_args(cmd.replace("runs/my-run", str(tiny_run))), cwd=work)
    assert f"wrote {(work / 'model.onnx').resolve()}" in proc.stdout and (work / "model.onnx").stat().st_size > 0
    delta = re.search(r"max \|delta\| logits (\S+), boxes (\S+)", proc.stdout)
    assert delta and max(float(delta.group(1)), float(delta.group(2))) <= 1e-4, proc.stdout


def readme_python(section):
    """The python blocks of one README section, in order."""
    text = README.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def run_export_safetensors(cmd, work, tiny_run, **_):
    """The weights and config.json; then the README's plain-PyTorch loading, run as shown, gives the run's
    outputs exactly."""
    pytest.importorskip("safetensors", reason='optional: pip install "detr_nb[hf]"')
    import torch
    from detr_nb import checkpoint as ckpt
    folder = work / "safetensors"
    folder.mkdir()
    proc = detr_nb_main(_detr_nb_args(cmd.replace("runs/my-run", str(tiny_run))), cwd=folder)
    assert f"wrote {(folder / 'model.safetensors').resolve()}" in proc.stdout
    snippet, _ = readme_python("Your model, outside detr_nb")
    scope = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        exec(compile(snippet, "README.md", "exec"), scope)
    trained = ckpt.model_from_checkpoint(ckpt.load_checkpoint(tiny_run / "checkpoints" / "last.pth"), "cpu").eval()
    with torch.no_grad():
        want = trained(scope["images"])
    assert torch.equal(scope["outputs"]["pred_logits"], want["pred_logits"])
    assert scope["names"] == {str(k): v for k, v in ckpt.load_checkpoint(tiny_run / "checkpoints" / "last.pth")
                              ["categories"].items()}


def run_export_hf(cmd, work, photos, **_):
    """The released DETR-R50 (random weights in torch.hub's cache: offline) as a Hugging Face folder, within 1e-4
    of detr_nb on padded images; then the README's loading and pipeline, run as shown, on photo.jpg."""
    pytest.importorskip("transformers", reason='optional: pip install "detr_nb[hf]"')
    pytest.importorskip("timm", reason='optional: pip install "detr_nb[hf]"')
    import torch
    from detr_nb.config import build_model
    shutil.copy(photos / "photo.jpg", work)
    hub = work / "torch_hf"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"model": build_model("detr_r50", num_classes=91).state_dict()},
               hub / "hub" / "checkpoints" / "detr-r50-e632da11.pth")
    proc = detr_nb_main(_detr_nb_args(cmd), cwd=work, env={"TORCH_HOME": str(hub)})
    delta = re.search(r"max \|delta\| logits (\S+), boxes (\S+)", proc.stdout)
    assert delta and max(float(delta.group(1)), float(delta.group(2))) <= 1e-4, proc.stdout
    _, snippet = readme_python("Your model, outside detr_nb")
    scope = {}
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as printed:
        mp.chdir(work)
        exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["model"].config.id2label[18] == "dog" and scope["model"].config.num_queries == 100
    assert "'score'" in printed.getvalue() or printed.getvalue().strip() == "[]"


def run_tests_command(cmd, **_):
    """The test command is CI's own: .ci/run must run exactly it."""
    assert cmd.split("&&")[-1].strip() in (REPO / ".ci" / "run").read_text()


def covered_by(test):
    """A runner for a command another test file runs (the teaching tools'): skipped here, naming that test."""
    def runner(cmd, **_):
        assert (REPO / test.split("::")[0]).is_file(), test
        pytest.skip(f"run by {test}")
    runner.covered_by = test
    return runner


def run_first_minute(cmd, work, tiny_run, **_):
    """Notebook 01's detector remade from a run (the tiny one) into a file of the test's (``--out``: the docs are
    left alone): read back as any checkpoint, it records the AP it printed, the AP of the run's own evaluation."""
    from detr_nb.checkpoint import load_checkpoint, model_from_checkpoint
    from detr_nb.teach import first_minute
    out = work / "first_minute" / "detector.pth"
    argv = shlex.split(cmd.replace("runs/main", str(tiny_run)))[3:]
    docs = [path.read_text() for path in first_minute.STATED_IN]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert first_minute.main(argv + ["--out", str(out), "--data-root", str(work / "first_minute" / "data")]) == 0
    state = load_checkpoint(out)
    assert "optimizer" not in state and model_from_checkpoint(state).num_classes == state["num_classes"]
    assert (f"the shipped detector's AP {state['ap']['AP']:.3f} / AP50 {state['ap']['AP50']:.3f} on "
            f"{SYN['num_val']} synthetic validation images") in printed.getvalue(), printed.getvalue()
    assert abs(state["ap"]["AP"] - _eval_numbers(tiny_run / "eval.json")["AP"]) <= 0.002
    assert [path.read_text() for path in first_minute.STATED_IN] == docs


RUNNERS = {
    "pip install -r requirements.txt && python -m detr_nb train": run_main_job,
    "python -m detr_nb train": run_main_job,
    "pip install -r requirements.txt && python -m pytest -q": run_tests_command,
    "python -m detr_nb train --help": run_help,
    "python -m detr_nb train --seed 1": run_main_job_seed,
    "python -m detr_nb train --dry-run": run_main_dry_run,
    "python -m detr_nb train --time-budget 60 --set data_kwargs.num_train=400 --set data_kwargs.num_val=50":
        run_quick_try,
    "bash bench/main_job.sh": run_bench_main_job,
    "python -m detr_nb train --recipe paper --model detr_r50 --dry-run": run_dry_run,
    "python -m detr_nb train --recipe finetune --dataset balloon": run_finetune,
    "torchrun --nproc_per_node=2 -m detr_nb train": run_torchrun,
    "python -m detr_nb evaluate --run runs/my-run": run_evaluate,
    "python -m detr_nb predict photo.jpg my_photos/ --run runs/my-run --out predictions": run_predict,
    "python -m detr_nb export --run runs/my-run -o model.onnx": run_export,
    "python -m detr_nb export --run runs/my-run --format safetensors -o model.safetensors": run_export_safetensors,
    "python -m detr_nb export --pretrained detr_r50 --format hf -o detr_hf": run_export_hf,
    # notebook 09's study and the notebooks' generator: the teaching tools, tested with the notebooks
    "python -m detr_nb.teach.study --approaches scratch,torch --inits none --max-steps 300":
        covered_by("tests/test_study.py"),
    "python -m detr_nb.teach.nbtools sync": covered_by("tests/test_notebooks.py::test_generated_files_in_sync"),
    "python -m detr_nb.teach.nbtools outputs":
        covered_by("tests/test_notebooks.py::test_outputs_command_keeps_a_smoke_run_and_refuses_an_error"),
    "python -m detr_nb.teach.first_minute runs/main": run_first_minute,
}


def test_every_documented_command_has_a_runner():
    commands = documented_commands()
    assert "pip install -r requirements.txt && python -m detr_nb train" in commands
    missing = [c for c in commands if c not in RUNNERS]
    assert not missing, f"documented but run by no test: {missing}"
    stale = [c for c in RUNNERS if c not in commands]
    assert not stale, f"runners for commands no document shows: {stale}"


@pytest.mark.parametrize("cmd", documented_commands())
def test_documented_command(cmd, request):
    runner = RUNNERS.get(cmd)
    if runner is None:
        pytest.fail(f"no runner for the documented command {cmd!r}")
    names = runner.__code__.co_varnames[:runner.__code__.co_argcount]
    fixtures = {n: request.getfixturevalue(n) for n in ("tiny_run", "photos", "once") if n in names}
    work = _work_dir(request.getfixturevalue("work"), cmd)
    work.mkdir()
    runner(cmd, **{**fixtures, "work": work})


def test_every_option_has_a_one_line_description():
    from detr_nb.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            text = (action.help or "").strip()
            described = re.sub(r"\(default: [^)]*\)", "", text).strip()
            assert len(described) >= 10 and "\n" not in text, f"{name} {action.option_strings or action.dest}: {text!r}"


# ------------------------------------------------------------- commands shown in docstrings (bench/, the package)
def docstring_commands():
    """Usage lines (``python ...``, ``VAR=1 python ...``, ``torchrun ...``) of the docstrings of bench/*.py and
    every detr_nb module, comments stripped; inline mentions in prose (inside ````...````) are not commands."""
    import ast
    found = []
    files = sorted((REPO / "bench").glob("*.py")) + sorted((REPO / "detr_nb").rglob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text())
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        for node in nodes:
            for line in (ast.get_docstring(node) or "").splitlines():
                line = line.split("  #")[0].strip()
                if "``" not in line and re.match(r"^([A-Z_]+=\S+ )?(python|torchrun) ", line):
                    found.append(line)
    return [c for c in dict.fromkeys(found) if c not in documented_commands()]


_SCRIPTS = {}


def run_script(cmd, check=True):
    """``[VAR=VALUE ...] python bench/<script>.py ARGS`` through the script's ``main`` in this process (its import
    and the interpreter's start are the only difference from the command; the CPU time is spent on its work),
    in the repository root: its status and printed output."""
    import importlib.util
    argv = shlex.split(cmd)
    env = dict(a.split("=", 1) for a in argv[:argv.index("python")])
    script = argv[argv.index("python") + 1]
    args = argv[argv.index("python") + 2:]
    if script not in _SCRIPTS:
        name = "bench_" + Path(script).stem
        spec = importlib.util.spec_from_file_location(name, REPO / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module                      # its dataclasses look their module up
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    module = _SCRIPTS[script]
    out, err, environ = io.StringIO(), io.StringIO(), dict(os.environ)
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.chdir(REPO)
        mp.setattr(sys, "argv", [script, *args])
        os.environ.update(env)
        if hasattr(module, "signal"):                   # a handler for its own process: not for pytest's
            mp.setattr(module.signal, "signal", lambda *a: None)
        try:
            rc = module.main(args) if module.main.__code__.co_argcount else module.main()
        except SystemExit as e:
            rc = e.code
        finally:                                        # what it set for its own process (notebook_times.py)
            os.environ.clear()
            os.environ.update(environ)
    proc = SimpleNamespace(returncode=rc or 0, stdout=out.getvalue(), stderr=err.getvalue())
    if check:
        assert proc.returncode == 0, f"{cmd} exited {rc}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _covers(combined, cmd):
    """Whether the one shared run ``combined`` gives every option (and environment variable) ``cmd`` gives."""
    return set(shlex.split(cmd)) <= set(shlex.split(combined))


# The documented variants of bench/layers.py differ only in repeats and threads, which the shortening sets: one
# run with all their options covers them.
LAYERS = "OMP_NUM_THREADS=1 python bench/layers.py --quick --threads 1"


def run_bench_layers(cmd, once, **_):
    """Every row prints torch and scratch times and their ratio (shortened: one repeat, no warm-up)."""
    assert _covers(LAYERS, cmd), f"add the options of {cmd!r} to LAYERS"
    stdout = once(LAYERS, lambda d: run_script(LAYERS + " --repeats 1 --warmup 0").stdout)
    rows = [line for line in stdout.splitlines() if re.search(r"\s[\d.]+\s+[\d.]+\s+[\d.]+$", line)]
    assert len(rows) == 12 and any(r.startswith("DETR detr_r50") for r in rows), stdout


SHORT_STEP = (" --model detr_tiny --size 64 64 --batch 2 --steps 1 --warmup 0 --infer-batches 1 --infer-size 64 64"
              " --infer-steps 1 --profile-rows 3")
TRAIN_STEP_CPU = "python bench/train_step.py --threads 1 --profile"     # the CPU variants: with and without a profile


def run_bench_train_step(cmd, once, **_):
    """The trainer's step timed next to the backbone-only limit (shortened to detr_tiny at 64x64); on a
    machine without a GPU the CUDA command stops at once with one line."""
    import torch
    if "--device cuda" in cmd and not torch.cuda.is_available():
        proc = run_script(cmd, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
            "error: --device cuda: CUDA is not available here"), proc.stderr
        return
    shared = TRAIN_STEP_CPU if _covers(TRAIN_STEP_CPU, cmd) else cmd
    stdout = once(shared, lambda d: run_script(shared + SHORT_STEP).stdout)
    assert re.search(r"detr_nb [\d.]+ img/s, \d+% of backbone-only", stdout), stdout[-2000:]
    if "--profile" in cmd:
        assert "phases (host time" in stdout and "host reads of tensor values in one step" in stdout


def run_machine_speed(cmd, **_):
    """One line: the main job's step time on this machine (shortened to 2 timed steps, 1 warm-up, one thread:
    two spin against the other tests' on a shared machine, several times slower)."""
    proc = run_script(cmd + " --steps 2 --warmup 1 --threads 1")
    assert re.search(r"^machine speed: \d+ ms per main-job step \(detr_tiny_aided, batch 22 at 96", proc.stdout,
                     re.M), proc.stdout[-2000:]


def run_notebook_times(cmd, work, **_):
    """Wall time per notebook in smoke mode, shortened to notebook 03."""
    proc = run_script(re.sub(r"notebook_times\.py( \d\d)+", "notebook_times.py 03", cmd))
    assert re.search(r"^03_attention\s+[\d.]+ s$", proc.stdout, re.M), proc.stdout
    assert "smoke mode;" in proc.stdout


def _notebook_03_full(folder):
    """Notebook 03 in full mode, once for the two full-mode commands: the key figures' run (offline settings, one
    work directory) with the executed notebook kept, its figure and facts written to scratch folders."""
    cmd = f"python bench/notebook_times.py --key-figures --keep {folder / 'nb'} --figures {folder / 'figs'} 03"
    return {"stdout": run_script(cmd).stdout, "folder": str(folder)}


def run_notebook_times_full(cmd, once, **_):
    """In full mode, with --keep: the executed notebook has its outputs (shortened to notebook 03)."""
    assert "--full" in cmd and "--keep runs/nb" in cmd
    run = once("notebook 03, full mode", _notebook_03_full)
    assert re.search(r"^03_attention\s+[\d.]+ s\s+key figure -> ", run["stdout"], re.M), run["stdout"]
    assert "full mode;" in run["stdout"]
    kept = json.loads((Path(run["folder"]) / "nb" / "03_attention.ipynb").read_text())
    assert any(c.get("outputs") for c in kept["cells"] if c["cell_type"] == "code")


def run_key_figures(cmd, once, **_):
    """The key figures, shortened to notebook 03 and written to a scratch folder: its PNG and its run's facts."""
    run = once("notebook 03, full mode", _notebook_03_full)
    assert re.search(r"^03_attention\s+[\d.]+ s\s+key figure -> ", run["stdout"], re.M), run["stdout"]
    figs = Path(run["folder"]) / "figs"
    assert (figs / "03_attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    facts = json.loads((figs / "runs.json").read_text())["03_attention"]
    assert facts["seconds"] > 0 and facts["cores"] >= 1 and facts["set"] == []


def run_bench_convergence(cmd, work, **_):
    """The convergence study, shortened (a few steps or seconds of a small set, 4 evaluation images, at most two
    seeds), writing its JSON, table and figure into a scratch folder: the table and the JSON hold every variant and
    seed run."""
    short = cmd
    for flag, value in (("--steps", "3"), ("--eval-every", "2"), ("--budget-s", "2"), ("--eval-every-s", "1"),
                        ("--speed", "1"), ("--rounds", "1")):
        short = re.sub(rf"{flag} \S+", f"{flag} {value}", short)
    short = re.sub(r"--seeds (\d+) (\d+)( \d+)+", r"--seeds \1 \2", short)     # two seeds show the spread
    out = work / "docs"
    out.mkdir()
    if "--plot-only" in cmd:    # redraws what the committed study holds
        shutil.copy(REPO / "detr_nb" / "teach" / "convergence.json", out / "convergence.json")
    data = dict(SYN, num_train=32, num_val=8, image_size=(96, 96))
    proc = run_script(f"{short} --out-dir {out} --runs {work / 'runs'} --eval-images 4 --threads 1 "
                      f"--data-root {work / 'data'} --data-kwargs '{json.dumps(data)}'")
    assert (out / "convergence.md").exists() and "| variant |" in proc.stdout, proc.stdout[-2000:]
    if "--plot-only" in cmd:
        assert (out / "convergence.png").exists()
        return
    results = json.loads((out / "convergence.json").read_text())
    variants = re.search(r"--variants (.+)$", cmd).group(1).split()
    if "--speed" in cmd:
        assert set(results["speed"]) == set(variants)
        return
    seeds = [int(s) for s in re.search(r"--seeds ([\d ]+) ", short).group(1).split()]
    runs = {(r["variant"], r["seed"]) for r in results["runs"].values()}
    assert runs == {(v, s) for v in variants for s in seeds}, runs
    from detr_nb.teach.convergence import STUDY
    assert all(r["curve"] and r["study"] == STUDY for r in results["runs"].values())


def run_gpu_check(cmd, work, **_):
    """The prepared GPU run. Without CUDA its default command stops at once with one line (status 2, nothing
    written; with CUDA it runs with --quick); the CPU command runs every part at tiny sizes, each recorded in
    summary.json: part 1's tests skipped, part 2's runs measured, part 3's rows parsed, part 4 skipped."""
    import torch
    out, on_cpu = work / "gpu", "--device cpu" in cmd
    cmd = re.sub(r"--out \S+", f"--out {out}", cmd)
    if not on_cpu and not torch.cuda.is_available():
        proc = run_script(cmd, check=False)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: --device cuda: CUDA is not available here (no GPU, or a CPU-only build of torch "
            f"{torch.__version__}); use --device cpu or --device auto"], proc.stderr
        assert not out.exists()
        return
    run_script(("OMP_NUM_THREADS=1 " if on_cpu else "") + cmd + ("" if on_cpu else " --quick"))
    parts = json.loads((out / "summary.json").read_text())["parts"]
    assert [parts[n]["status"] for n in "1234"] == ["ok", "ok", "ok", "skipped"], parts
    n_tests = (REPO / "tests" / "test_cuda.py").read_text().count("\ndef test_")
    tests = parts["1"]["tests"]
    assert tests == {"skipped": n_tests} if on_cpu else (sum(tests.values()) == n_tests and tests.get("passed")), tests
    runs = parts["2"]["runs"]
    assert all(r["steps_per_s"] > 0 for r in runs) and all(0 <= r["AP"] <= 1 for r in runs if "AP" in r)
    if on_cpu:     # the CPU is 1x itself, under 3x: the larger recipe ran too
        assert [r["name"] for r in runs] == ["main job, fp16", "main job", "main job at 96x96, fp16"]
        assert parts["2"]["gpu_over_cpu"] == 1.0 and all(r["steps"] == 3 and r["AP"] is not None for r in runs)
        larger = json.loads((out / "part2" / "data-96" / "manifest.json").read_text())["params"]
        assert larger["image_size"] == [96, 96]                                      # its own data, at its size
    rows = parts["3"]["rows"]
    assert rows and all(r["images_per_s"] > 0 for r in rows.values()) and parts["3"]["inference"][0]["batch"] == 1
    assert not parts["3"]["targets_apply"] and parts["3"]["targets"][0]["needed"] == 250
    assert parts["4"]["reason"].startswith("--quick")
    md = (out / "summary.md").read_text()
    assert f"torch {torch.__version__}" in md and "| 3. throughput" in md and "Skipped: --quick" in md


BENCH_RUNNERS = {
    "python bench/layers.py": run_bench_layers,
    "python bench/layers.py --quick": run_bench_layers,
    "OMP_NUM_THREADS=1 python bench/layers.py --threads 1": run_bench_layers,
    "python bench/train_step.py --device cuda --precision auto fp16 --compile both --profile": run_bench_train_step,
    "python bench/train_step.py --threads 1": run_bench_train_step,
    "python bench/train_step.py --threads 1 --profile": run_bench_train_step,
    "python bench/train_step.py --speed": run_machine_speed,
    "python bench/notebook_times.py 07 11": run_notebook_times,
    "python bench/notebook_times.py 07 --full --keep runs/nb": run_notebook_times_full,
    "python bench/notebook_times.py --key-figures": run_key_figures,
    "python bench/frames.py":
        covered_by("tests/test_thin.py::test_the_cli_reaches_the_hungarian_solver_in_seven_frames"),
    "python -m detr_nb.teach.study --approaches scratch,torch --inits none --max-steps 300 --out runs/compare":
        covered_by("tests/test_study.py"),
    "python -m detr_nb.teach.nbtools sync": RUNNERS["python -m detr_nb.teach.nbtools sync"],
    "python bench/convergence.py --steps 1500 --eval-every 500 --seeds 0 1 2 --variants aided aided+lr3e-3":
        run_bench_convergence,
    "python bench/convergence.py --budget-s 540 --eval-every-s 30 --seeds 0 --variants vanilla aided":
        run_bench_convergence,
    "python bench/convergence.py --speed 20 --rounds 5 --variants vanilla aided": run_bench_convergence,
    "python bench/convergence.py --plot-only": run_bench_convergence,
    "python bench/gpu_check.py --out runs/gpu": run_gpu_check,
    "python bench/gpu_check.py --device cpu --quick --out runs/gpu-cpu": run_gpu_check,
}


def test_every_docstring_command_has_a_runner():
    commands = docstring_commands()
    missing = [c for c in commands if c not in BENCH_RUNNERS]
    assert not missing, f"shown in a docstring, run by no test: {missing}"
    stale = [c for c in BENCH_RUNNERS if c not in commands and c not in documented_commands()]
    assert not stale, f"runners for commands no docstring shows: {stale}"


@pytest.mark.parametrize("cmd", docstring_commands())
def test_docstring_command(cmd, request):
    runner = BENCH_RUNNERS.get(cmd)
    if runner is None:
        pytest.fail(f"no runner for the docstring command {cmd!r}")
    names = runner.__code__.co_varnames[:runner.__code__.co_argcount]
    work = _work_dir(request.getfixturevalue("work"), cmd)
    work.mkdir()
    runner(cmd, work=work, **({"once": request.getfixturevalue("once")} if "once" in names else {}))
