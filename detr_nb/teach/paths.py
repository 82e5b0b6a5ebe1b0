"""Where notebooks and runs write their files (introduced in notebook 01, used by all).

Colab: ``/content/detr_nb`` (fast local disk; copy checkpoints to Drive separately).
Elsewhere: ``./detr_nb_work``. ``DETR_NB_WORKDIR`` overrides both (the notebook tests point it
to a temporary directory).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional


def in_colab() -> bool:
    return "google.colab" in sys.modules


def workdir(sub: Optional[str] = None) -> Path:
    """The working directory for data and runs, created on first use; ``sub`` names a folder inside it."""
    base = os.environ.get("DETR_NB_WORKDIR") or ("/content/detr_nb" if in_colab() else "detr_nb_work")
    path = Path(base) / sub if sub else Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
