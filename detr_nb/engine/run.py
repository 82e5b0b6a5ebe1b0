"""A whole run: :func:`train` (``python -m detr_nb train``) = a :class:`~detr_nb.engine.trainer.Trainer`, then
:func:`run`: fit, evaluate, draw, and what a finished run leaves behind besides its checkpoints (``eval.json``,
the figures, ``summary.json``, the summary the command line prints)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from ..inference.evaluate import save_stats
from . import distributed as D
from .trainer import Trainer


def train(config=None, callbacks: Sequence[Callable] = (), **overrides) -> Dict[str, Any]:
    """Train (or resume) a run and evaluate it; returns its summary (``out``, ``eval``, ``step``...).

    ``train()`` is the main job; ``train(TrainConfig(recipe="paper", dataset="coco2017"))`` or
    ``train(epochs=5, out="runs/x")`` change it. Under ``torchrun`` every process calls it and they end together.
    """
    with D.ends_together():
        summary = run(Trainer(config, callbacks=callbacks, **overrides))
        D.barrier()       # rank 0 still evaluates and draws when the others are done
        return summary


def run(trainer: Trainer) -> Dict[str, Any]:
    """fit -> evaluate (eval.json) -> figures -> summary (summary.json); prints where everything is.
    The trainer's output directory is released at the end."""
    tr, cfg = trainer, trainer.cfg
    try:
        reason = tr.fit()
        result = summary(tr.state, reason, tr.history, tr.last_good, tr.out)
        if reason == "signal":
            tr.log(f"stopped by a signal at step {tr.step}; checkpoint {tr.last_good}. Run the same command again "
                   f"to resume.")
            return result
        if cfg.eval_at_end:
            tr.log(f"evaluating on {cfg.eval_images(len(tr.val_set))} validation images (COCO mAP, pycocotools)")
            stats = tr.evaluate(verbose=True)
            if stats is not None:
                write_eval(stats, tr.out, tr.state, cfg)
                tr.metrics.write({"kind": "eval", "step": tr.step, "epoch": tr.epoch, **stats})
                result["eval"] = stats
        if tr.is_main:
            figures = draw_figures(cfg, tr.out, tr.model, tr.val_set, tr.device, tr.precision.autocast, tr.history)
            result["figures"] = {k: str(v) for k, v in figures.items()}
            with open(tr.out / "summary.json", "w") as f:
                json.dump(result, f, indent=2, default=str)
            tr.log(f"outputs: {tr.out.resolve()}")
        return result
    finally:
        tr.close()


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


def draw_figures(cfg, out: Path, model, val_set, device, autocast, history) -> Dict[str, Path]:
    """The figures of a run of ``cfg`` in ``out`` (``detr_nb.figures.run``): ``model``'s predictions on the first
    ``num_pictures`` images of ``val_set``, the loss curves of ``history``, the diagnostics when recorded."""
    from ..aids import scoring_for
    from ..figures.run import draw_run
    from ..inference.evaluate import category_names, sample_predictions
    from .diagnostics import read_records

    samples = sample_predictions(model, val_set, range(min(cfg.num_pictures, len(val_set))), device, autocast,
                                 scoring_for(cfg.loss_type))
    diag = out / "diagnostics.jsonl"
    return draw_run(out, samples, history, read_records(diag) if cfg.diag_every and diag.exists() else None,
                    names=category_names(val_set), title=f"{cfg.model} on {cfg.dataset}")
