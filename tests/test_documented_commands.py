"""Every command the README, ``--help`` and cli.py's docstring show is run here, as a user types it.

The commands are read from the documents themselves, so a new example without a test fails
``test_every_documented_command_has_a_runner``. Each runner executes the documented text (placeholders such
as ``runs/my-run`` or ``photo.jpg`` replaced by files made here) with only the budget and the data size
shortened, in a fresh working directory, as a subprocess.
"""
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from detr_nb.inference.evaluate import STAT_NAMES
from engine_utils import REPO, SYN, TINY, run_cli

README = REPO / "README.md"
# The main job's shortening: the options the README names for a quick try.
SHORT = ["--time-budget", "6", "--set", "data_kwargs.num_train=160", "--set", "data_kwargs.num_val=24"]
_RUNS = {}    # command -> (process, run folder): the README shows the main command twice (with pip, without)


def documented_commands():
    """Shell commands in the README's bash blocks and in cli.py's docstring (comments stripped)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        found += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    import detr_nb.cli as cli
    found += [line.split("  #")[0].strip() for line in cli.__doc__.splitlines()
              if line.strip().startswith(("python -m detr_nb", "torchrun"))]
    return list(dict.fromkeys(found))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def tiny_run(work):
    """A small finished run (the tiny model on a tiny synthetic set) for evaluate and predict."""
    out = work / "runs" / "my-run"
    run_cli(["train", "--data-root", work / "syn", "--data-kwargs", json.dumps(SYN), "--model", "detr_tiny_aided",
             "--model-overrides", json.dumps(TINY), "--batch-size", "4", "--time-budget", "none", "--max-steps", "6",
             "--eval-batch-size", "3", "--num-pictures", "2", "--out", out, "--no-progress", "--device", "cpu"],
            cwd=work)
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


# ----------------------------------------------------------------------------- runners, one per command
def run_main_job(cmd, work, **_):
    """The README's main command, with only the budget and the data size shortened (run once for both of the
    README's spellings: ``pip install`` is CI's own step)."""
    train = cmd.split("&&")[-1].strip()
    if train not in _RUNS:
        cwd = work / "main"
        cwd.mkdir()
        proc = run_cli(shlex.split(train) + SHORT + ["--no-progress"], cwd=cwd)
        out = Path(re.search(r"output directory: (.+)", proc.stdout).group(1).strip())
        assert out.parent == (cwd / "runs").resolve()
        _RUNS[train] = proc, out
    proc, out = _RUNS[train]
    numbers = _eval_numbers(out / "eval.json")
    assert all(0 <= numbers[k] <= 1 or numbers[k] == -1 for k in STAT_NAMES)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "time_budget" and summary["train_time_s"] <= 6 + 10
    assert (out / "predictions.png").stat().st_size > 0 and (out / "checkpoints" / "last.pth").exists()
    assert f"AP {numbers['AP']:.4f}  AP50 {numbers['AP50']:.4f}" in proc.stdout


def run_quick_try(cmd, work, **_):
    cwd = work / "quick"
    cwd.mkdir()
    argv = shlex.split(cmd)
    argv[argv.index("--time-budget") + 1] = "6"
    argv += ["--set", "data_kwargs.num_train=120", "--set", "data_kwargs.num_val=16", "--no-progress"]
    proc = run_cli(argv, cwd=cwd)
    out = Path(re.search(r"output directory: (.+)", proc.stdout).group(1).strip())
    _eval_numbers(out / "eval.json")
    assert json.loads((out / "summary.json").read_text())["train_time_s"] <= 6 + 10


def run_help(cmd, work, **_):
    proc = run_cli(shlex.split(cmd), cwd=work)
    for option in ("--recipe", "--time-budget", "--dry-run", "--set", "--batch-size"):
        assert option in proc.stdout


def run_bench_main_job(cmd, work, **_):
    out, data = work / "bench-run", work / "bench-data"
    proc = run_cli(shlex.split(cmd) + SHORT + ["--no-progress", "--out", out, "--data-root", data], cwd=REPO)
    line = re.search(r"main job: wall (\d+) s, AP ([\d.]+), AP50 ([\d.]+), (\d+) steps", proc.stdout)
    assert line, proc.stdout[-2000:]
    numbers = _eval_numbers(out / "eval.json")
    assert float(line.group(2)) == pytest.approx(numbers["AP"], abs=1e-4)


def run_dry_run(cmd, work, **_):
    """--recipe paper resolves to the official DETR hyper-parameters (shared/GUIDE.md section 1)."""
    cfg = json.loads(run_cli(shlex.split(cmd), cwd=work).stdout)
    official = dict(recipe="paper", model="detr_r50", lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4, clip_max_norm=0.1,
                    warmup_steps=0, loss_type="ce", eos_coef=0.1, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0,
                    weight_dict={"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}, pretrained_backbone=True,
                    epochs=300, schedule="step", lr_drop=200, lr_gamma=0.1, batch_size=4, preset="official",
                    time_budget_s=None, dataset="coco2017")
    assert {k: cfg[k] for k in official} == official


def run_finetune(cmd, work, **_):
    """Offline: balloon from a tiny self-made archive, the "released" weights from a file in torch.hub's cache."""
    import torch
    from detr_nb.configs import build_model
    from detr_nb.data import real
    from test_data_real import balloon_files, make_zip   # the offline balloon fixture

    cache, hub = work / "cache", work / "torch"
    archive = make_zip(work / "balloon_dataset.zip", balloon_files())
    mp = pytest.MonkeyPatch()
    mp.setitem(real.REMOTES, "balloon", real.Remote(f"file://{archive}", "balloon_dataset.zip"))
    real.prepare("balloon", "train", root=str(cache), progress=False)
    mp.undo()
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    weights = build_model("detr_r50", num_classes=91).state_dict()
    torch.save({"model": weights}, hub / "hub" / "checkpoints" / "detr-r50-e632da11.pth")
    out = work / "finetune"
    # shortened: one epoch, and the 40 x 30 px photos kept at their size (DETR-R50 at 800 px takes a CPU 20 s)
    proc = run_cli(shlex.split(cmd) + ["--epochs", "1", "--preset", "cpu", "--out", out, "--no-progress",
                                       "--device", "cpu"], cwd=work, env={"DETR_NB_CACHE": str(cache), "TORCH_HOME": str(hub)})
    assert "loaded pretrained weights detr_r50" in proc.stdout + proc.stderr
    _eval_numbers(out / "eval.json")
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert state["model"]["class_embed.weight"].shape[0] == 2 + 1       # balloon (id 1) + unused 0 + no-object
    assert torch.equal(state["model"]["backbone.0.body.layer1.0.conv1.weight"],  # frozen: the released values
                       weights["backbone.0.body.layer1.0.conv1.weight"])


def run_torchrun(cmd, work, **_):
    out = work / "ddp"
    from test_ddp import _free_port
    proc = run_cli(shlex.split(cmd.replace("torchrun", f"torchrun --master_addr=127.0.0.1 --master_port={_free_port()}", 1)) +
                   ["--data-root", work / "ddp-data", "--data-kwargs", json.dumps(SYN), "--model-overrides",
                    json.dumps(TINY), "--batch-size", "2", "--time-budget", "none", "--max-steps", "3",
                    "--eval-batch-size", "2", "--out", out, "--no-progress"], cwd=work)
    assert "world size 2" in proc.stdout
    _eval_numbers(out / "eval.json")


def run_evaluate(cmd, work, tiny_run, **_):
    """evaluate --run R gives exactly the numbers R/eval.json holds (one scoring path)."""
    run_cli(shlex.split(cmd.replace("runs/my-run", str(tiny_run))), cwd=work)
    assert _eval_numbers(tiny_run / "eval_val.json") == _eval_numbers(tiny_run / "eval.json")


def run_predict(cmd, work, tiny_run, photos, **_):
    out = work / "predictions"
    argv = shlex.split(cmd.replace("runs/my-run", str(tiny_run)).replace("--out predictions", f"--out {out}"))
    proc = run_cli(argv + ["--threshold", "0.0", "--device", "cpu"], cwd=photos)
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
    proc = run_cli(shlex.split(cmd.replace("runs/my-run", str(tiny_run))), cwd=work)
    assert f"wrote {(work / 'model.onnx').resolve()}" in proc.stdout and (work / "model.onnx").stat().st_size > 0
    delta = re.search(r"max \|delta\| logits (\S+), boxes (\S+)", proc.stdout)
    assert delta and max(float(delta.group(1)), float(delta.group(2))) <= 1e-4, proc.stdout


def run_nbtools_sync(cmd, work, **_):
    """On a copy of the repository: the committed notebooks are already what sync writes."""
    copy = work / "repo"
    for name in ("detr_nb", "notebooks"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*_work"))
    shutil.copy(README, copy / "README.md")
    proc = run_cli(shlex.split(cmd), cwd=copy, env={"PYTHONPATH": str(copy)})
    assert proc.stdout.strip() == "", proc.stdout


def run_tests_command(cmd, **_):
    """The test command is CI's own: .ci/run must run exactly it."""
    assert cmd.split("&&")[-1].strip() in (REPO / ".ci" / "run").read_text()


def run_compare(cmd, work, **_):
    out = work / "compare"
    run_cli(shlex.split(cmd.replace("--max-steps 300", "--max-steps 2")) +
            ["--data-root", work / "cmp-data", "--data-kwargs", json.dumps(SYN), "--model-overrides", json.dumps(TINY),
             "--out", out, "--max-eval-images", "4", "--no-progress", "--device", "cpu"], cwd=work)
    report = json.loads((out / "summary.json").read_text())
    assert {r["name"] for r in report["runs"]} == {"scratch", "torch"}


RUNNERS = {
    "pip install -r requirements.txt && python -m detr_nb train": run_main_job,
    "python -m detr_nb train": run_main_job,
    "pip install -r requirements.txt && python -m pytest -q": run_tests_command,
    "python -m detr_nb train --help": run_help,
    "python -m detr_nb train --time-budget 60 --set data_kwargs.num_train=400 --set data_kwargs.num_val=50":
        run_quick_try,
    "bash bench/main_job.sh": run_bench_main_job,
    "python -m detr_nb train --recipe paper --model detr_r50 --dry-run": run_dry_run,
    "python -m detr_nb train --recipe finetune --dataset balloon": run_finetune,
    "torchrun --nproc_per_node=2 -m detr_nb train": run_torchrun,
    "python -m detr_nb evaluate --run runs/my-run": run_evaluate,
    "python -m detr_nb predict photo.jpg my_photos/ --run runs/my-run --out predictions": run_predict,
    "python -m detr_nb.teach.nbtools sync": run_nbtools_sync,
    "python -m detr_nb export --run runs/my-run -o model.onnx": run_export,
    "python -m detr_nb compare --approaches scratch,torch --inits none --max-steps 300": run_compare,
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
    fixtures = {n: request.getfixturevalue(n) for n in ("work", "tiny_run", "photos") if n in names}
    work = request.getfixturevalue("work") / re.sub(r"\W+", "_", cmd)[:60]
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


def run_shell(cmd, env=None, check=True, timeout=600):
    """``cmd`` through bash in the repository root (bench scripts use paths relative to it)."""
    import os
    import subprocess
    import sys
    from engine_utils import cli_env
    full_env = {**cli_env(), **(env or {})}
    full_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + full_env.get("PATH", os.environ["PATH"])
    proc = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def run_bench_layers(cmd, **_):
    """Every row prints torch and scratch times and their ratio (shortened: one repeat, no warm-up)."""
    proc = run_shell(cmd + " --repeats 1 --warmup 0", env={"OMP_NUM_THREADS": "1"})
    rows = [line for line in proc.stdout.splitlines() if re.search(r"\s[\d.]+\s+[\d.]+\s+[\d.]+$", line)]
    assert len(rows) == 12 and any(r.startswith("DETR detr_r50") for r in rows), proc.stdout


SHORT_STEP = (" --model detr_tiny --size 64 64 --batch 2 --steps 1 --warmup 0 --infer-batches 1 --infer-size 64 64"
              " --infer-steps 1 --profile-rows 3")


def run_bench_train_step(cmd, **_):
    """The engine's train step timed next to the backbone-only limit (shortened to detr_tiny at 64x64); on a
    machine without a GPU the CUDA command stops at once with one line."""
    import torch
    if "--device cuda" in cmd and not torch.cuda.is_available():
        proc = run_shell(cmd, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
            "error: --device cuda: CUDA is not available here"), proc.stderr
        return
    proc = run_shell(cmd + SHORT_STEP, env={"OMP_NUM_THREADS": "1"})
    assert re.search(r"detr_nb [\d.]+ img/s, \d+% of backbone-only", proc.stdout), proc.stdout[-2000:]
    if "--profile" in cmd:
        assert "phases (host time" in proc.stdout and "host reads of tensor values in one step" in proc.stdout


def run_machine_speed(cmd, **_):
    """One line: the main job's step time on this machine (shortened to 2 timed steps, 1 warm-up)."""
    proc = run_shell(cmd + " --steps 2 --warmup 1")
    assert re.search(r"^machine speed: \d+ ms per main-job step \(detr_tiny_aided, batch 16 at 96", proc.stdout,
                     re.M), proc.stdout[-2000:]


def run_notebook_times(cmd, work, **_):
    """Wall time per notebook, shortened to notebook 03; with --keep, the executed notebook has its outputs."""
    short = re.sub(r"notebook_times\.py( \d\d)+", "notebook_times.py 03", cmd).replace("runs/nb", str(work / "nb"))
    proc = run_shell(short)
    assert re.search(r"^03_attention\s+[\d.]+ s$", proc.stdout, re.M), proc.stdout
    assert ("full mode;" if "--full" in cmd else "smoke mode;") in proc.stdout
    if "--keep" in cmd:
        kept = json.loads((work / "nb" / "03_attention.ipynb").read_text())
        assert any(c.get("outputs") for c in kept["cells"] if c["cell_type"] == "code")


def run_key_figures(cmd, work, **_):
    """The key figures, shortened to notebook 03 and written to a scratch folder: its PNG and its run's facts."""
    proc = run_shell(f"{cmd} --figures {work / 'figs'} 03")
    assert re.search(r"^03_attention\s+[\d.]+ s\s+key figure -> ", proc.stdout, re.M), proc.stdout
    assert (work / "figs" / "03_attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((work / "figs" / "runs.json").read_text())["03_attention"]
    assert run["seconds"] > 0 and run["cores"] >= 1 and run["set"] == []


def run_bench_convergence(cmd, work, **_):
    """The convergence study, shortened (a few steps or seconds of a small set, 4 evaluation images), writing
    its JSON, table and figure into a scratch folder: the table and the JSON hold every variant and seed run."""
    short = cmd
    for flag, value in (("--steps", "3"), ("--eval-every", "2"), ("--budget-s", "3"), ("--eval-every-s", "2"),
                        ("--speed", "1"), ("--rounds", "1")):
        short = re.sub(rf"{flag} \S+", f"{flag} {value}", short)
    out = work / "docs"
    out.mkdir()
    if "--plot-only" in cmd:    # redraws what the committed study holds
        shutil.copy(REPO / "detr_nb" / "teach" / "convergence.json", out / "convergence.json")
    data = dict(SYN, num_train=32, num_val=8, image_size=(96, 96))
    proc = run_shell(f"{short} --out-dir {out} --runs {work / 'runs'} --eval-images 4 --threads 1 "
                     f"--data-root {work / 'data'} --data-kwargs '{json.dumps(data)}'", timeout=900)
    assert (out / "convergence.md").exists() and "| variant |" in proc.stdout, proc.stdout[-2000:]
    if "--plot-only" in cmd:
        assert (out / "convergence.png").exists()
        return
    results = json.loads((out / "convergence.json").read_text())
    variants = re.search(r"--variants ([^-]+)", cmd).group(1).split()
    if "--speed" in cmd:
        assert set(results["speed"]) == set(variants)
        return
    seeds = [int(s) for s in re.search(r"--seeds ([\d ]+)", cmd).group(1).split()]
    runs = {(r["variant"], r["seed"]) for r in results["runs"].values()}
    assert runs == {(v, s) for v in variants for s in seeds}, runs
    assert all(r["curve"] and r["study"] == 16 for r in results["runs"].values())


def run_gpu_check(cmd, work, **_):
    """The prepared GPU run. Without CUDA its default command stops at once with one line (status 2, nothing
    written; with CUDA it runs with --quick); the CPU command runs every part at tiny sizes, each recorded in
    summary.json: part 1's tests skipped, part 2's runs measured, part 3's rows parsed, part 4 skipped."""
    import torch
    out, on_cpu = work / "gpu", "--device cpu" in cmd
    cmd = re.sub(r"--out \S+", f"--out {out}", cmd)
    if not on_cpu and not torch.cuda.is_available():
        proc = run_shell(cmd, check=False)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: --device cuda: CUDA is not available here (no GPU, or a CPU-only build of torch "
            f"{torch.__version__}); use --device cpu or --device auto"], proc.stderr
        assert not out.exists()
        return
    run_shell(cmd + ("" if on_cpu else " --quick"), env={"OMP_NUM_THREADS": "1"})
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
    "python bench/notebook_times.py 07 --full --keep runs/nb": run_notebook_times,
    "python bench/notebook_times.py --key-figures": run_key_figures,
    "python -m detr_nb.teach.nbtools sync": run_nbtools_sync,
    "python bench/convergence.py --steps 1000 --eval-every 250 --seeds 0 --variants best best+groups best+enccontent":
        run_bench_convergence,
    "python bench/convergence.py --steps 1500 --eval-every 250 --seeds 0 1 2 --variants best aided":
        run_bench_convergence,
    "python bench/convergence.py --budget-s 540 --eval-every-s 30 --seeds 0 --variants best aided":
        run_bench_convergence,
    "python bench/convergence.py --speed 20 --rounds 5 --variants best aided": run_bench_convergence,
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
    work = request.getfixturevalue("work") / re.sub(r"\W+", "_", cmd)[:60]
    work.mkdir()
    runner(cmd, work=work)
