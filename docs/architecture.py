"""The package's layers, read from its imports: ``python docs/architecture.py`` rewrites the diagram in
docs/ARCHITECTURE.md (tests/test_architecture.py fails when it is out of date, or when an import goes
against the layers).

Every module of ``detr_nb`` belongs to a component (its sub-package, or its own name at the root: each module of
the runner is one); an import from one component to another is an edge of the diagram. :data:`ALLOWED` is the
rule: each component may import only from the components (or single modules) listed for it.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "detr_nb"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
START, END = "<!-- layers:start (python docs/architecture.py) -->", "<!-- layers:end -->"

# Lowest first. A component imports only from the components (or the modules, dotted) listed for it. The paper
# (``models``) imports nothing of the package; the aids extend it; the data pipeline needs only the box
# arithmetic; the runner, flat modules at the root, composes those three; ``teach`` may use everything and
# nothing imports it.
RUNNER = ("pretrained", "config", "figures", "evaluate", "predict", "export", "checkpoint", "trainer", "cli")
ALLOWED: Dict[str, Set[str]] = {
    "errors": set(),
    "models": set(),
    "aids": {"models"},
    "data": {"errors", "models.box_ops"},
    **{name: {"errors", "models", "aids", "data", *RUNNER} - {name} for name in RUNNER},
    "teach": {"errors", "models", "aids", "data", *RUNNER},
}
ORDER = list(ALLOWED)


def modules() -> Iterator[Tuple[str, Path]]:
    """``(dotted name under detr_nb, path)`` of every module (``__init__`` and ``__main__`` excluded)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.name in ("__init__", "__main__") and len(rel.parts) == 1:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def component(dotted: str) -> str:
    return dotted.split(".")[0]


def imports_of(dotted: str, path: Path) -> Set[str]:
    """The detr_nb modules ``dotted`` imports (at module level or inside functions)."""
    package = dotted.split(".")[:-1] if path.name != "__init__.py" else dotted.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("detr_nb"):
                target = node.module[len("detr_nb."):] if node.module != "detr_nb" else ""
            else:
                continue
            for alias in node.names:   # "from . import x" may name a module
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if (PACKAGE / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name[len("detr_nb."):] for a in node.names if a.name.startswith("detr_nb.")}
    return {t for t in found if t and t != dotted}


def graph() -> Dict[str, Set[str]]:
    """Module -> the modules it imports."""
    return {name: imports_of(name, path) for name, path in modules()}


def component_edges() -> Set[Tuple[str, str]]:
    return {(component(a), component(b)) for a, targets in graph().items() for b in targets
            if component(a) != component(b)}


def allowed(importer: str, target: str) -> bool:
    """Whether module ``importer`` may import module ``target`` (dotted names under detr_nb)."""
    rule = ALLOWED.get(component(importer), set())
    parts = target.split(".")
    return component(importer) == component(target) or any(".".join(parts[:i]) in rule
                                                            for i in range(1, len(parts) + 1))


def violations() -> list:
    return sorted(f"{a} imports {b}" for a, targets in graph().items() for b in targets if not allowed(a, b))


def cycles() -> list:
    """Import cycles between modules (strongly connected components with more than one module)."""
    g, index, low, stack, on, out, counter = graph(), {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))
    for v in g:
        if v not in index:
            visit(v)
    return out


def mermaid() -> str:
    """The component graph as a Mermaid flowchart (GitHub draws it), lowest layer at the bottom."""
    edges = component_edges()
    lines = ["```mermaid", "flowchart BT"]
    for c in ORDER:
        n = sum(1 for name, _ in modules() if component(name) == c)
        lines.append(f'    {c}["{c} ({n} module{"s" if n != 1 else ""})"]')
    for a, b in sorted(edges, key=lambda e: (ORDER.index(e[0]), ORDER.index(e[1]))):
        if b != "errors":     # the user-facing errors, usable everywhere: not drawn
            lines.append(f"    {a} --> {b}")
    lines += ["```"]
    return "\n".join(lines)


def expected_doc() -> str:
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{mermaid()}\n{END}{tail}"


if __name__ == "__main__":
    DOC.write_text(expected_doc())
    print(f"wrote {DOC}")
    for v in violations():
        print("layer violation:", v)
    for c in cycles():
        print("import cycle:", " <-> ".join(c))
