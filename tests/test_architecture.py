"""The folder tree is the architecture: the paper (``models``) imports nothing of the package, the aids only the
paper, the data pipeline only the box arithmetic and the errors, the runner's flat modules those three, nothing
imports ``teach``; no import cycles; and docs/ARCHITECTURE.md's diagram is the one the imports draw
(docs/architecture.py)."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("architecture", REPO / "docs" / "architecture.py")
A = importlib.util.module_from_spec(spec)
spec.loader.exec_module(A)


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted({A.component(name) for name, _ in A.modules()} - set(A.ALLOWED))
    assert not unknown, f"modules outside the layers of docs/architecture.py: {unknown}"


def test_layers_import_downward_only():
    assert A.violations() == []


def test_no_import_cycles():
    assert A.cycles() == []


def test_the_rule_can_fail(monkeypatch):
    """The checks see real violations and a real cycle (so the two tests above can fail)."""
    real = A.imports_of
    extra = {"models.detr": {"trainer"}, "trainer": {"models.detr"}, "data.coco": {"models.matcher", "models.box_ops"},
             "aids.loss": {"config"}, "checkpoint": {"teach.training"}}
    monkeypatch.setattr(A, "imports_of", lambda name, path: real(name, path) | extra.get(name, set()))
    found = A.violations()
    for line in ("models.detr imports trainer", "data.coco imports models.matcher", "aids.loss imports config",
                 "checkpoint imports teach.training"):
        assert line in found, (line, found)
    assert "trainer imports models.detr" not in found and "data.coco imports models.box_ops" not in found
    assert any({"models.detr", "trainer"} <= set(c) for c in A.cycles())


def test_architecture_diagram_is_up_to_date():
    assert A.DOC.read_text() == A.expected_doc(), "run: python docs/architecture.py"
