"""What a finished run leaves behind besides its checkpoints: ``eval.json``, ``summary.json``, the summary the
command line prints."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from ..inference.evaluate import save_stats


def summary(state, reason: str, history: Sequence[Mapping], checkpoint: Optional[Path], out: Path) -> Dict[str, Any]:
    """The summary of a run at ``state`` (a :class:`~detr_nb.engine.state.RunState`) that stopped for ``reason``."""
    rates = [r["images_per_s"] for r in history if r.get("kind") == "step"]
    return {"out": str(out), "stopped_by": reason, "step": state.step, "epoch": state.epoch,
            "train_time_s": round(state.clock.seconds(), 1), "skipped_steps": state.skipped_steps,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "images_per_s": float(np.median(rates)) if rates else None}


def write_eval(stats: Mapping[str, float], out: Path, state, cfg) -> None:
    """``out/eval.json``: the 12 COCO numbers and where in the run they were measured."""
    save_stats(stats, out / "eval.json", step=state.step, epoch=state.epoch,
               train_time_s=round(state.clock.seconds(), 1), model=cfg.model, dataset=cfg.dataset)


def write_summary(summary: Mapping[str, Any], out: Path) -> None:
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
