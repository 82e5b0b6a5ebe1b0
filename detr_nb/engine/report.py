"""What a finished run leaves behind: eval.json, the figures (predictions.png, loss.png, the diagnostics
charts) and the summary the command line prints."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np


def finish_run(tr, reason: str) -> Dict[str, Any]:
    """After ``tr.fit()`` stopped for ``reason``: evaluate (unless a signal stopped it), draw, summarise."""
    summary: Dict[str, Any] = {"out": str(tr.out), "stopped_by": reason, "step": tr.step, "epoch": tr.epoch,
                               "train_time_s": round(tr.clock.seconds(), 1), "skipped_steps": tr.skipped_steps,
                               "checkpoint": str(tr.last_good) if tr.last_good else None}
    rates = [r["images_per_s"] for r in tr.history if r.get("kind") == "step"]
    summary["images_per_s"] = float(np.median(rates)) if rates else None
    if reason == "signal":
        tr.log(f"stopped by a signal at step {tr.step}; checkpoint {tr.last_good}. Run the same command again "
               f"to resume.")
        return summary
    if tr.cfg.eval_at_end:
        n = len(tr.val_set) if not tr.cfg.max_eval_images else min(len(tr.val_set), tr.cfg.max_eval_images)
        tr.log(f"evaluating on {n} validation images (COCO mAP, pycocotools)")
        stats = tr.evaluate(verbose=True)
        if tr.is_main and stats is not None:
            from .evaluate import save_stats
            save_stats(stats, tr.out / "eval.json", step=tr.step, epoch=tr.epoch, train_time_s=summary["train_time_s"],
                       model=tr.cfg.model, dataset=tr.cfg.dataset)
            tr.metrics.write({"kind": "eval", "step": tr.step, "epoch": tr.epoch, **stats})
            summary["eval"] = stats
    summary["figures"] = {k: str(v) for k, v in tr.draw().items()}
    tr.log(f"outputs: {tr.out.resolve()}")
    return summary


def draw_run(trainer) -> Dict[str, Path]:
    """Draw ``trainer``'s figures into its ``out`` folder; returns ``{name: path}``."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .diagnostics import plot_grad_std, plot_losses, plot_weight_sum, read_records
    from .evaluate import draw_predictions, scoring_for

    cfg, out, figs = trainer.cfg, trainer.out, {}

    def save(name, fig):
        figs[name] = out / f"{name}.png"
        fig.savefig(figs[name], dpi=90)
        plt.close(fig)

    n = min(cfg.num_pictures, len(trainer.val_set))
    if n:
        save("predictions", draw_predictions(trainer.eval_model, trainer.val_set, range(n), trainer.device,
                                             threshold=cfg.picture_threshold, precision=trainer.precision,
                                             **scoring_for(cfg.loss_type)))
    if (out / "metrics.jsonl").exists():
        fig = plot_losses(read_records(out / "metrics.jsonl"))
        fig.axes[0].set_title(f"{cfg.model} on {cfg.dataset}")
        save("loss", fig)
    if trainer.diag is not None and (out / "diagnostics.jsonl").exists():
        records = read_records(out / "diagnostics.jsonl")
        save("grad_std", plot_grad_std(records))
        save("weight_sum", plot_weight_sum(records))
    return figs
