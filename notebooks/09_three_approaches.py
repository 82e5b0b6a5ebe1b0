# %% [markdown]
# # 09 · Three approaches and the initialisation study
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/09_three_approaches.ipynb)
#
# The comparison this project was started for. On one dataset, with the same seeds and the same budget:
#
# 1. **DETR from scratch**: `build_model(..., impl="scratch")`, every layer written as math on tensors;
# 2. **the same model from PyTorch's layers**: `impl="torch"`, the same weights at step 0;
# 3. **the pretrained official DETR, fine-tuned**: `detr_r50` + `load_pretrained` (COCO weights, the class
#    head replaced for our classes).
#
# Then the **initialisation study**: the same model trained from four initialisations (PyTorch's defaults,
# Xavier, He/Kaiming, uniform ±0.02), with the weight histograms at step 0, the gradient standard deviation
# per layer and the weight sums over training.
#
# Everything below is one call, `detr_nb.engine.compare.run_comparison`, the same code as
# `python -m detr_nb compare`; the figures come from `detr_nb.engine.compare`'s plot functions. Runtime → Change
# runtime type → T4 GPU. The official weights (~160 MB) download here, in Colab.

# %%
# Setup: in Colab, install detr_nb from GitHub (torch is already there and is left alone).
import sys
if "google.colab" in sys.modules:
    get_ipython().run_line_magic("pip", 'install -q "git+https://github.com/detr-nb/detr_nb@main"')

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("DETR_NB_SMOKE") == "1"
# Smoke mode (the tests, on a CPU): a tiny synthetic set, a tiny model, a few steps, no pretrained weights.
DATASET = "synthetic" if SMOKE else "pennfudan"     # or "balloon" (detr_nb.data.build_dataset downloads it)
MODEL = "detr_tiny" if SMOKE else "detr_small"      # approaches 1-2 and the init study; approach 3 is detr_r50
PRESET = "none" if SMOKE else "t4"                  # transforms (detr_nb.data.make_transforms)
APPROACHES = ["scratch", "torch"] if SMOKE else ["scratch", "torch", "pretrained"]
INITS = ["default", "uniform002"] if SMOKE else ["default", "xavier", "kaiming", "uniform002"]
STEPS = 4 if SMOKE else None            # a fixed number of steps per run ...
BUDGET_S = None if SMOKE else 600       # ... or seconds per run (7 runs x 10 min on a T4)
SEEDS = [0]
BATCH_SIZE = 2 if SMOKE else 4

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

import detr_nb
from detr_nb import workdir
from detr_nb.engine import compare, compare_figures
from detr_nb.engine.compare import CompareConfig, run_comparison

if SMOKE:
    torch.set_num_threads(1)   # the test machine shares its cores: one thread each avoids contention

# %% [markdown]
# ## The plan
#
# `CompareConfig` holds what is compared and on what. Every run gets the same data order and
# augmentations (the engine derives both from the seed), the same optimiser (AdamW, lr 2e-4, backbone
# lr/10 when the backbone is pretrained), the same paper loss (CE + 5·L1 + 2·GIoU, no-object weight
# 0.1) and the same budget. `run_specs` shows the seven (or, in smoke mode, four) training runs.

# %%
out = workdir(f"compare-{DATASET}")
smoke_model = dict(backbone_width=0.125, return_layer="layer2", hidden_dim=32, nheads=2, enc_layers=1,
                   dec_layers=2, dim_feedforward=64, num_queries=8)
train = compare.compare_train_config(
    dataset=DATASET,
    data_kwargs=dict(num_train=8, num_val=4, image_size=(64, 64), min_objects=1, max_objects=2)
    if SMOKE else {},
    data_root=str(workdir("data") / ("synthetic-09" if SMOKE else DATASET)),
    preset=PRESET, model=MODEL, model_overrides=smoke_model if SMOKE else {},
    max_steps=STEPS, time_budget_s=BUDGET_S, batch_size=BATCH_SIZE, log_every=1 if SMOKE else 10,
    diag_every=2 if SMOKE else 25, max_eval_images=None, threads=1 if SMOKE else None, progress=not SMOKE,
    out=str(out))
cfg = CompareConfig(train=train, approaches=APPROACHES, inits=INITS, seeds=SEEDS)
for spec in compare.run_specs(cfg):
    t = spec["train_config"]
    print(f"{spec['group']:>8} {spec['name']:<10} seed {spec['seed']}: model {t.model}, impl {t.impl}, "
          f"init {t.init or 'official'}, pretrained {t.pretrained}, -> {spec['dir']}")

# %% [markdown]
# The pretrained run needs `detr-r50-e632da11.pth`. `compare.pretrained_unavailable` says whether it can be
# loaded here (in the torch hub cache, or downloadable: in Colab). Elsewhere the run is recorded as
# "not run: <reason>" in `summary.json`, and no number is shown for it.

# %%
print(compare.pretrained_unavailable(cfg.pretrained_model, cfg.download) or "official weights: available")

# %% [markdown]
# ## Run everything
#
# Each run writes its own folder (`metrics.jsonl`, `eval.json`, `diagnostics.jsonl`, `weights_init.json`);
# `summary.json` and `table.md` collect the numbers. In Colab this takes about 7 × `BUDGET_S` seconds.

# %%
report = run_comparison(cfg)
display(Markdown((out / "table.md").read_text()))

# %% [markdown]
# ## Loss curves: scratch, torch, pretrained
#
# Approaches 1 and 2 are the same function with the same weights, so their curves start identical; in
# float32 they part slowly, because the two implementations round differently (~1e-7 per operation) and
# training amplifies any difference (tests/test_compare.py shows that in float64 the curves are identical,
# and that a 1e-7 nudge of the torch model's weights diverges as much). The pretrained model starts from
# features and boxes that already work on COCO.

# %%
fig = compare_figures.plot_loss_comparison(report, "approach")
plt.show()

# %%
fig = compare_figures.plot_map_comparison(report)
plt.show()

# %%
fig = compare_figures.plot_speed(report)
plt.show()

# %% [markdown]
# ## The initialisation study
#
# Only the transformer, `input_proj` and the heads are re-initialised (the backbone keeps its own init).
# Uniform ±0.02 makes every weight tiny (std 0.0115 whatever the layer's width), Kaiming's fan-in rule
# gives the widest weights, Xavier (the official choice) sits between.

# %%
fig = compare_figures.plot_init_histograms(report)
plt.show()

# %%
fig = compare_figures.plot_init_series(report, "grad_std")
plt.show()

# %%
fig = compare_figures.plot_init_series(report, "weight_sum")
plt.show()

# %%
fig = compare_figures.plot_loss_comparison(report, "init")
plt.show()

# %% [markdown]
# ## Reading the results
#
# * The table above is `table.md`; `summary.json` has every number with the hardware line and the load.
# * `python -m detr_nb compare --dataset pennfudan --preset t4 --model detr_small --budget 600` runs the
#   same study from a shell; `docs/results.md` in the repository shows the CPU run on the synthetic set.

# %%
print(f"outputs: {out.resolve()}")
print(json.dumps({r["name"]: r["status"] for r in report["runs"]}, indent=1))
