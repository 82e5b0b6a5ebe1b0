"""The figures of notebook 09's comparison (``detr_nb.study``): loss curves, mAP, speed and the initialisation
study's histograms and gradient statistics. Each takes the comparison's report (its ``summary.json``) with
every finished run's records loaded (``detr_nb.study.report.with_records``: ``metrics``, ``diagnostics``,
``weights_init``)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from .training import LOSS_TERMS, plot_grad_std, plot_weight_sum


def finished(report: Dict[str, Any], group: str) -> List[Dict]:
    """The runs of ``group`` (approach | init) that finished."""
    return [r for r in report["runs"] if r["group"] == group and r["status"] == "ok"]


def _setting(report: Dict[str, Any], key: str):
    """A training setting of a comparison (``config.train``; summaries written before it held them flat)."""
    return report["config"].get("train", report["config"])[key]


def figure_subtitle(report: Dict[str, Any]) -> str:
    budget = f"{report['steps']} steps" if report.get("steps") else f"{report['budget_s']:.0f} s per run"
    seeds = ",".join(str(s) for s in report["seeds"])
    return f"{report['dataset']} · {report['hardware']} · {budget} · seed{'s' if len(report['seeds']) > 1 else ''} {seeds}"


def _label(r: Dict, report: Dict) -> str:
    return r["name"] + (f" s{r['seed']}" if len(report["seeds"]) > 1 else "")


def plot_loss_comparison(report: Dict[str, Any], group: str = "approach", terms: Sequence[str] = LOSS_TERMS):
    """One panel per loss term, one line per run of ``group`` (approach | init)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(terms), figsize=(3.4 * len(terms), 3.2), squeeze=False)
    runs = finished(report, group)
    for i, r in enumerate(runs):
        rows = [m for m in r.get("metrics", []) if m.get("kind") == "step"]
        lw = 1.0 + 2.0 * (len(runs) - 1 - i) / max(1, len(runs) - 1)   # wider lines first: overlaps stay visible
        for ax, term in zip(axes[0], terms):
            ax.plot([m["step"] for m in rows], [m[term] for m in rows], lw=lw, alpha=0.85, label=_label(r, report))
    for ax, term in zip(axes[0], terms):
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step", fontsize=8)

        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    if runs:
        axes[0][0].legend(fontsize=7)
    _not_run_note(fig, report, group)
    what = "Three approaches" if group == "approach" else "Init schemes"
    fig.suptitle(f"{what}: training loss (mean per {_setting(report, 'log_every')} steps)\n"
                 f"{figure_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def _not_run_note(fig, report, group):
    skipped = [r for r in report["runs"] if r["group"] == group and r["status"] != "ok"]
    if skipped:
        text = "; ".join(f"{r['name']}: not run" for r in skipped)
        fig.text(0.99, 0.01, text, ha="right", va="bottom", fontsize=7, color="0.4")


def plot_map_comparison(report: Dict[str, Any], groups: Sequence[str] = ("approach", "init")):
    """Validation AP and AP50 over training steps (every ``eval_every`` epochs + the final evaluation)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for group in groups:
        for r in finished(report, group):
            recs = r.get("metrics", [])
            pts = {m["step"]: (m["val_AP"], m["val_AP50"]) for m in recs if m.get("kind") == "epoch" and "val_AP" in m}
            pts.update({m["step"]: (m["AP"], m["AP50"]) for m in recs if m.get("kind") == "eval"})
            steps = sorted(pts)
            style = "-o" if group == "approach" else "--."
            for i, ax in enumerate(axes):
                ax.plot(steps, [pts[s][i] for s in steps], style, ms=3, lw=1.1, label=f"{group}: {_label(r, report)}")
    for ax, name in zip(axes, ("AP", "AP50")):
        ax.set_title(f"validation {name} (COCO, pycocotools)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=6)
    fig.suptitle(f"mAP over training\n{figure_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_speed(report: Dict[str, Any]):
    """Bar chart of training images per second (median over the logged windows) of every run."""
    import matplotlib.pyplot as plt

    runs = [r for g in ("approach", "init") for r in finished(report, g)]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    labels = [f"{r['group']}: {_label(r, report)}" for r in runs]
    values = [r["images_per_s"] or 0.0 for r in runs]
    bars = ax.barh(labels, values, color=["C0" if r["group"] == "approach" else "C2" for r in runs])
    for b, v in zip(bars, values):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:.1f}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("training images / s", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, axis="x")
    _not_run_note(fig, report, "approach")
    fig.suptitle(f"Training speed\n{figure_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_init_histograms(report: Dict[str, Any], max_layers: int = 4, bins: int = 60):
    """Weights at step 0 under each init scheme: one panel per layer, one outline per scheme."""
    import matplotlib.pyplot as plt
    import torch

    runs = [r for r in finished(report, "init") if r["seed"] == report["seeds"][0]]
    hists = {r["name"]: r["weights_init"] for r in runs if r.get("weights_init")}
    names = _init_layers(next(iter(hists.values()))) if hists else []
    names = names[:max_layers]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.4 * max(1, len(names)), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        for scheme, h in hists.items():
            if name not in h:
                continue
            e = torch.tensor(h[name]["edges"])
            c = torch.tensor(h[name]["counts"])
            dens = c / (c.sum() * (e[1:] - e[:-1]))   # density: schemes with other ranges stay comparable
            ax.stairs(dens.tolist(), e.tolist(), lw=1.2, label=f"{scheme} (std {h[name]['std']:.3g})")
        ax.set_title(name, fontsize=7)
        ax.set_yscale("log")
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    fig.suptitle(f"Weights at initialisation (density, log scale)\n{figure_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def _init_layers(hist: Dict[str, Any]) -> List[str]:
    """A few re-initialised layers worth looking at: encoder attention + FFN, decoder cross-attention, heads."""
    wanted = ("transformer.encoder.layers.0.self_attn.in_proj_weight", "transformer.encoder.layers.0.linear1.weight",
              "transformer.decoder.layers.0.multihead_attn.in_proj_weight", "bbox_embed.layers.0.weight",
              "class_embed.weight", "input_proj.weight")
    names = [n for n in wanted if n in hist]
    return names or [n for n in hist if not n.startswith("backbone.")]


def plot_init_series(report: Dict[str, Any], key: str = "grad_std", max_layers: int = 8):
    """``grad_std`` (log scale) or ``weight_sum`` per layer over steps, one panel per init scheme."""
    import matplotlib.pyplot as plt

    runs = [r for r in finished(report, "init") if r["seed"] == report["seeds"][0]]
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(3.6 * max(1, len(runs)), 3.4), squeeze=False,
                             sharey=key == "grad_std")
    fn = plot_grad_std if key == "grad_std" else plot_weight_sum
    for ax, r in zip(axes[0], runs):
        recs = r.get("diagnostics", [])
        if recs:   # the same layers in every panel: the transformer and heads, not the backbone
            keep = [n for n in recs[0][key] if not n.startswith("backbone.")]
            recs = [{"step": x["step"], key: {n: x[key][n] for n in keep}} for x in recs]
        fn(recs, max_layers=max_layers, ax=ax)
        ax.set_title(f"init {r['name']}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(ax.get_ylabel(), fontsize=8)
        ax.tick_params(labelsize=6)
        if ax.get_legend():
            ax.get_legend().remove()
    handles, labels = axes[0][0].get_legend_handles_labels()   # the same layers in every panel: one legend
    what = "Gradient std per layer" if key == "grad_std" else "Weight sum per layer"
    fig.suptitle(f"{what} over training (every {_setting(report, 'diag_every')} steps)\n{figure_subtitle(report)}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    return fig
