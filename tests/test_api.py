"""The top-level API the notebooks, CLI and issues rely on."""
import pytest
import torch

import detr_nb


def test_public_names_resolve():
    for name in detr_nb.__all__:
        assert getattr(detr_nb, name) is not None, name


def test_unknown_model_lists_known_names():
    with pytest.raises(Exception) as err:
        detr_nb.build_model("detr_r5O", num_classes=91)
    for known in ("detr_r50", "detr_r101", "detr_r50_dc5", "detr_r101_dc5", "detr_tiny"):
        assert known in str(err.value)


def test_end_to_end_with_top_level_names():
    """build_model -> SetCriterion (with HungarianMatcher) -> PostProcess, on one tiny batch."""
    torch.manual_seed(0)
    model = detr_nb.build_model("detr_tiny", num_classes=4).eval()
    images = torch.randn(2, 3, 64, 80)
    mask = torch.zeros(2, 64, 80, dtype=torch.bool)
    mask[1, :, 60:] = True
    out = model(images, mask)
    Q = model.config.num_queries
    assert out["pred_logits"].shape == (2, Q, 5) and out["pred_boxes"].shape == (2, Q, 4)
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .5, .3, .4]])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    criterion = detr_nb.SetCriterion(4, detr_nb.HungarianMatcher(), {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2})
    losses = criterion(out, targets)
    assert torch.isfinite(losses["loss"])
    results = detr_nb.PostProcess()(out, torch.tensor([[64, 80], [64, 60]]))
    assert len(results) == 2 and results[0]["boxes"].shape == (Q, 4)
    assert (results[1]["boxes"][:, 0::2] <= 60 + 1e-4).all() and (results[1]["boxes"] >= -1e-4).all()


def test_the_installed_package_carries_its_data(tmp_path):
    """A pip install (Colab: ``pip install git+...``) ships every non-Python file the package reads: notebook
    10's convergence measurements load from the installed wheel, with no clone and no download."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    pytest.importorskip("setuptools")
    import shutil

    repo = Path(detr_nb.__file__).resolve().parents[1]
    src = tmp_path / "src"      # a copy: an in-tree build would leave build/ behind, and reuse a stale one
    shutil.copytree(repo / "detr_nb", src / "detr_nb", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ("No module named" in proc.stderr or "invalid command 'bdist_wheel'" in proc.stderr):
        pytest.skip("pip or its build backend cannot build wheels here (setuptools < 70.1 without wheel)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel, = tmp_path.glob("detr_nb-*.whl")
    data_files = sorted(str(p.relative_to(repo)) for p in (repo / "detr_nb").rglob("*")
                        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)
    assert data_files == ["detr_nb/teach/convergence.json", "detr_nb/teach/detector.pth"]   # new data: here and pyproject
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(data_files) <= names, set(data_files) - names
