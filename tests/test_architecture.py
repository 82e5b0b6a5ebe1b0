"""The folder tree is the architecture: layers import downward only, no import cycles, small modules and
functions, and docs/ARCHITECTURE.md's diagram is the one the imports draw (docs/architecture.py)."""
import ast
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("architecture", REPO / "docs" / "architecture.py")
A = importlib.util.module_from_spec(spec)
spec.loader.exec_module(A)

MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
LONG_OK = "# long function:"      # a comment with the reason lets a function be longer


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted({A.component(name) for name, _ in A.modules()} - set(A.ALLOWED))
    assert not unknown, f"modules outside the layers of docs/architecture.py: {unknown}"


def test_layers_import_downward_only():
    assert A.violations() == []


def test_the_core_is_the_paper():
    """nn/, model/ and setpred/ import nothing but each other: no aid, no engine, no teaching helper; and no core
    signature or docstring names an aid's options (the aids plug in through the class term and the refine hook)."""
    core = {"nn", "model", "setpred"}
    assert {(a, b) for a, b in A.component_edges() if a in core and b not in core | {"errors"}} == set()
    for dotted, path in A.modules():
        if A.component(dotted) in core:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef):
                    args = [a.arg for a in node.args.args + node.args.kwonlyargs]
                    assert not set(args) & {"loss_type", "focal_alpha", "focal_gamma", "dn_groups", "use_sigmoid",
                                            "topk", "iou_aware", "iou_power", "query_pos_hook"}, (dotted, node.name)


def test_no_import_cycles():
    assert A.cycles() == []


def test_the_rule_can_fail(monkeypatch):
    """The checks see a real violation and a real cycle (so the two tests above can fail)."""
    real = A.imports_of
    monkeypatch.setattr(A, "imports_of", lambda name, path: real(name, path) | (
        {"engine.trainer"} if name == "model.detr" else {"model.detr"} if name == "engine.trainer" else
        {"aids.focal"} if name == "setpred.criterion" else set()))
    assert "model.detr imports engine.trainer" in A.violations()
    assert "setpred.criterion imports aids.focal" in A.violations()
    assert any({"model.detr", "engine.trainer"} <= set(c) for c in A.cycles())


@pytest.mark.parametrize("name, path", list(A.modules()), ids=[n for n, _ in A.modules()])
def test_small_modules_and_functions(name, path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{name}: {len(source.splitlines())} lines"
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            said = any(LONG_OK in lines[i] for i in range(max(0, node.lineno - 3), node.lineno + 1))
            assert n <= MAX_FUNCTION_LINES or said, f"{name}.{node.name}: {n} lines and no '{LONG_OK}' comment"


def test_architecture_diagram_is_up_to_date():
    assert A.DOC.read_text() == A.expected_doc(), "run: python docs/architecture.py"
