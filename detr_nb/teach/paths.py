"""Where notebooks and runs write their files.

Colab: ``/content/detr_nb`` (fast local disk), or Google Drive for the runs when it is mounted (it survives a
recycled runtime). Elsewhere: ``./detr_nb_work``. ``DETR_NB_WORKDIR`` overrides both (the notebook tests point
it to a temporary directory).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional


def in_colab() -> bool:
    return "google.colab" in sys.modules


def workdir(sub: Optional[str] = None) -> Path:
    """The working directory for data and runs, created on first use; ``sub`` names a folder inside it."""
    base = os.environ.get("DETR_NB_WORKDIR") or ("/content/detr_nb" if in_colab() else "detr_nb_work")
    path = Path(base) / sub if sub else Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_root(mount_drive: bool = True, colab: Optional[bool] = None, mount_point: Optional[str] = None,
                    log: Callable = print) -> Path:
    """Where training runs live: in Colab ``<mount_point>/MyDrive/detr_nb/runs`` on Google Drive (``/content/drive``,
    or ``$DETR_NB_DRIVE``), mounted first when ``mount_drive`` (Colab asks for permission), so that a checkpoint
    survives a recycled runtime and another notebook's runtime finds it; else, or when Drive cannot be mounted,
    ``workdir("runs")``. ``colab`` overrides the detection (tests)."""
    colab = in_colab() if colab is None else colab
    mount_point = mount_point or os.environ.get("DETR_NB_DRIVE", "/content/drive")
    my_drive = Path(mount_point) / "MyDrive"
    if colab and mount_drive and not my_drive.is_dir():
        try:
            from google.colab import drive  # only in Colab

            drive.mount(mount_point)
        except Exception as e:  # declined, or no Colab module
            log(f"Google Drive not mounted ({type(e).__name__}: {e}); checkpoints stay on the runtime's disk, "
                f"which is wiped when the runtime is recycled")
    if colab and my_drive.is_dir():
        path = my_drive / "detr_nb" / "runs"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return workdir("runs")
