"""The package's shape: every function of the paper's code runs when its recipes train, the CLI reaches the
Hungarian solver in a few frames, and the paper imports nothing of the runner."""
import ast
import os
import sys
from pathlib import Path

import torch

import detr_nb
from detr_nb.trainer import train
from engine_utils import REPO, SYN

MODELS = REPO / "detr_nb" / "models"


def defined_functions(folder: Path):
    """``{(file, first line): name}`` of every def in ``folder`` (the first line is the first decorator's)."""
    found = {}
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                line = min([node.lineno] + [d.lineno for d in node.decorator_list])
                found[(str(path), line)] = node.name
    return found


def fake_imagenet_resnet50(torch_home: Path):
    """torchvision's ResNet-50 weights file where torch.hub looks for it (random values, the real names)."""
    import torchvision
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    torch.save(torchvision.models.resnet50().state_dict(), folder / url.rsplit("/", 1)[-1])


def test_every_function_of_the_paper_runs_in_its_recipes(tmp_path, monkeypatch, data_root):
    """The paper recipe (detr_r50 on an ImageNet ResNet-50) and the main job's recipe, each trained for two steps
    and evaluated with impl scratch and torch, call every function and method defined in detr_nb/models."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)      # torch.hub.get_dir() reads TORCH_HOME again
    fake_imagenet_resnet50(tmp_path / "torch")
    called = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(str(MODELS)):
            called.add((frame.f_code.co_filename, frame.f_code.co_firstlineno))

    common = dict(dataset="synthetic", data_root=str(data_root), data_kwargs=dict(SYN), preset="cpu", max_steps=2,
                  batch_size=2, time_budget_s=None, progress=False, device="cpu", log_every=1)
    sys.setprofile(profile)
    try:
        for recipe, model in (("paper", "detr_r50"), ("aided", "detr_tiny_aided")):
            for impl in ("scratch", "torch"):
                train(recipe=recipe, model=model, impl=impl, out=str(tmp_path / f"{recipe}-{impl}"), **common)
    finally:
        sys.setprofile(None)
    defined = defined_functions(MODELS)
    never = sorted(f"{Path(f).name}:{line} {name}" for (f, line), name in defined.items() if (f, line) not in called)
    assert not never, f"defined in detr_nb/models but never run by the recipes: {never}"


def test_the_paper_imports_only_torch_torchvision_scipy_numpy_and_itself():
    allowed = {"torch", "torchvision", "scipy", "numpy", "__future__"} | set(sys.stdlib_module_names)
    for path in MODELS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, f"{path.name} imports {node.module}"
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1, f"{path.name} imports from outside models/: {'.' * node.level}{node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, f"{path.name} imports {alias.name}"


def test_nothing_outside_teach_imports_it():
    package = REPO / "detr_nb"
    for path in package.rglob("*.py"):
        if "teach" in path.relative_to(package).parts:
            continue
        source = path.read_text()
        assert "teach" not in {n.module.split(".")[0] for n in ast.walk(ast.parse(source))
                               if isinstance(n, ast.ImportFrom) and n.module}, path


def test_the_cli_reaches_the_hungarian_solver_in_seven_frames(tmp_path):
    """``python -m detr_nb train`` -> the solver: at most 7 package frames in at most 6 files."""
    import re
    import subprocess
    from engine_utils import cli_env
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "frames.py")], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    frames, files = map(int, re.search(r"(\d+) package frames in (\d+) files", proc.stdout).groups())
    assert frames <= 7 and files <= 6, proc.stdout
