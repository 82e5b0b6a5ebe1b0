"""Session-wide pieces of the test suite: the small synthetic dataset that the engine tests train on, one
torch thread for the tests that ask, and the bookkeeping of notebook hangs (tests/test_notebooks.py).

A notebook whose kernel stops answering (a cell timeout or a dead kernel) is retried once in a fresh
kernel, and never silently: each hang is recorded in the ``notebook_hangs`` list of the session, warned
about (pytest's warnings summary), printed in a "notebook hangs" section of the terminal summary, and
appended to ``.pytest_cache/d/detr_nb/notebook_hangs.log`` so that hangs can be counted across runs.
A second hang in one session fails the test it happens in (see ``execute_with_one_retry``).
"""
from __future__ import annotations

import time

import pytest

_HANGS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """engine_utils.SYN drawn once for the whole session (no test writes into it)."""
    from detr_nb.data import ensure_synthetic
    from engine_utils import SYN

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(str(root), **SYN)
    return root


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine more threads are several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def notebook_hangs(pytestconfig) -> list:
    """This session's notebook hangs, one line each (appended by tests/test_notebooks.py)."""
    return pytestconfig.stash.setdefault(_HANGS, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    hangs = config.stash.get(_HANGS, [])
    if not hangs:
        return
    terminalreporter.section("notebook hangs", sep="=", red=True, bold=True)
    for line in hangs:
        terminalreporter.line(line, red=True)
    terminalreporter.line(f"{len(hangs)} hang(s) in this session: the first is retried once in a fresh kernel, "
                          f"a second one fails its test.", red=True)
    cache = getattr(config, "cache", None)
    if cache is not None:
        log = cache.mkdir("detr_nb") / "notebook_hangs.log"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(log, "a") as f:
            f.writelines(f"{stamp} {line}\n" for line in hangs)
        terminalreporter.line(f"(appended to {log})", red=True)
