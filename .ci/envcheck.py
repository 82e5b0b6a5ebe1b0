"""Helpers for the pinned CI environments (.ci/venv.sh), run with the environment's own python.

  python .ci/envcheck.py deps                      the package's dependencies from pyproject.toml, one a line
  python .ci/envcheck.py check PINS [--minimum]    the environment is what PINS says, and its notebook kernel
                                                   is this python

``check`` fails when
  * a package pinned in PINS (``name==version``) is installed at another version, or missing;
  * with --minimum: a lower bound declared in requirements.txt or pyproject.toml is not exactly the version
    pinned in PINS (so every declared minimum is the version CI tests), a declared requirement is not pinned,
    or requires-python's lower bound is not this python's major.minor;
  * a notebook executed through nbclient with ``kernel_name="python3"`` (as tests/test_notebooks.py does) runs
    in another python than this one.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: pytest brings tomli there
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_lines(path: Path) -> list:
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict:
    from packaging.requirements import Requirement

    pins = {}
    for line in _requirement_lines(path):
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            sys.exit(f"{path}: every line must pin one version with ==, got {line!r}")
        pins[_canon(req.name)] = specs[0].version
    return pins


def check_versions(pins: dict) -> list:
    from packaging.version import Version

    errors = []
    for name, want in pins.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            errors.append(f"{name}: pinned {want}, not installed")
            continue
        if Version(have).public != Version(want).public:  # torch's metadata has no +cuXXX, torch.__version__ has
            errors.append(f"{name}: pinned {want}, installed {have}")
    return errors


TEST_TOOLS = {"pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel"}


def check_minimums(pins: dict) -> list:
    """Every declared lower bound is exactly the pinned (tested) version."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    errors = []
    project = _pyproject()["project"]
    declared = [("pyproject.toml", d) for d in project["dependencies"]]
    declared += [("requirements.txt", d) for d in _requirement_lines(ROOT / "requirements.txt")]
    for where, line in declared:
        req = Requirement(line)
        name = _canon(req.name)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if "==" in {s.operator for s in req.specifier}:
            if where == "requirements.txt" and name in TEST_TOOLS:
                continue   # pinned exactly for the README's test command; each CI environment pins its own
            errors.append(f"{where}: {line!r} pins an exact version; declare lower bounds only")
        if len(lows) != 1:
            errors.append(f"{where}: {line!r} needs one lower bound (>=)")
        elif name not in pins:
            errors.append(f"{where}: {line!r} is not pinned in the minimum environment")
        elif Version(lows[0]) != Version(pins[name]):
            errors.append(f"{where}: {line!r} declares {lows[0]}, the minimum environment tests {pins[name]}")
    rp = SpecifierSet(project["requires-python"])
    lows = [s.version for s in rp if s.operator == ">="]
    here = "%d.%d" % sys.version_info[:2]
    if len(lows) != 1 or Version(lows[0]) != Version(here):
        errors.append(f"pyproject.toml: requires-python {str(rp)!r}, the minimum environment runs Python {here}")
    return errors


def check_kernel() -> list:
    """Run one cell the way tests/test_notebooks.py does and compare the kernel's interpreter with ours."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    spec = KernelSpecManager().get_kernel_spec("python3")
    print(f"kernelspec python3: {spec.resource_dir}  argv[0]={spec.argv[0]}")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys; print(sys.executable); print(sys.prefix)")])
    NotebookClient(nb, kernel_name="python3", timeout=120, startup_timeout=120).execute()
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs).split()
    print(f"notebook kernel runs {out[0]} (prefix {out[1]}); this python: {sys.executable} (prefix {sys.prefix})")
    if out[1] != sys.prefix:
        return [f"the notebook kernel runs {out[0]}, not this environment's python {sys.executable}"]
    return []


def main(argv: list) -> int:
    if argv[:1] == ["deps"]:
        print("\n".join(_pyproject()["project"]["dependencies"]))
        return 0
    if len(argv) >= 2 and argv[0] == "check":
        pins = read_pins(Path(argv[1]))
        errors = check_versions(pins)
        if "--minimum" in argv[2:]:
            errors += check_minimums(pins)
        errors += check_kernel()
        import numpy, torch, torchvision  # noqa: E401
        print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
              f"numpy {numpy.__version__}, cuda available: {torch.cuda.is_available()}")
        for e in errors:
            print("ENV ERROR:", e, file=sys.stderr)
        return 1 if errors else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
