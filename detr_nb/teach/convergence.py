"""The convergence study's results (``convergence.json`` beside this module, installed with the package): loading, grouping over seeds and plotting (notebook 10).

``bench/convergence.py`` writes the JSON and the committed figure with :func:`plot_convergence`; notebook 10
reads the same file with :func:`load_convergence` and draws the same figure.

A run is one (variant, budget, seed); its ``curve`` holds the evaluations along the way (``step``,
``train_s``, ``AP``, ``AP50``, ``loss_giou``, the 1-minute ``load``). Runs of the same variant and budget on
several seeds form a group (:func:`group_runs`), drawn as the mean with a +-1 std band. Runs written before
issue 16 (no ``study`` field, seed 42) are the previous study's and keep their own groups.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence


RESULTS_FILE = Path(__file__).resolve().with_name("convergence.json")   # package data (pyproject.toml)
STUDY = 16         # the issue whose runs carry a "study" field; earlier runs are the issue-8 study


def load_convergence(path=None) -> dict:
    """The committed results (``path``: another results file, e.g. a study of your own)."""
    return json.loads(Path(path or RESULTS_FILE).read_text())


def budget_tag(run: dict) -> str:
    return f"{run['budget_s']:g}s" if run.get("budget_s") else str(run["steps"])


def group_label(run: dict) -> str:
    """``variant@budget``, with `` (issue 8)`` for the previous study's runs."""
    label = f"{run['variant']}@{budget_tag(run)}"
    return label if run.get("study") == STUDY else label + " (issue 8)"


def group_runs(results: dict, study: Optional[int] = STUDY) -> Dict[str, List[dict]]:
    """``{label: runs of that variant and budget, one per seed}``, runs of ``study`` only (None: all),
    step budgets first, then time budgets, each in increasing order, in the order the variants were run."""
    groups: Dict[str, List[dict]] = {}
    for r in results["runs"].values():
        if study is None or r.get("study", 8) == study:
            groups.setdefault(group_label(r), []).append(r)
    order = {label: i for i, label in enumerate(groups)}
    key = lambda lab: (bool(groups[lab][0].get("budget_s")), groups[lab][0].get("budget_s") or 0, order[lab])
    return {lab: sorted(groups[lab], key=lambda r: r["seed"]) for lab in sorted(groups, key=key)}


def crossing(curve: Sequence[dict], key: str, level: float, x: str = "train_s") -> Optional[float]:
    """Where ``key`` first reaches ``level``, linearly interpolated between the two evaluations around it
    (``x`` = "train_s" or "step"); None if it never does."""
    prev = None
    for c in curve:
        if c[key] >= level:
            if prev is None or c[key] == prev[key]:
                return float(c[x])
            return prev[x] + (level - prev[key]) * (c[x] - prev[x]) / (c[key] - prev[key])
        prev = c
    return None
