# %% [markdown]
# # 07 · Training on a Colab T4: mixed precision, checkpoints, resuming, diagnostics
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/07_training_on_t4.ipynb)
#
# Notebooks 04-06 built the model, the loss and the data. Here they meet in `detr_nb.engine.trainer.Trainer`, the same
# engine that `python -m detr_nb train` runs. A free Colab GPU adds two constraints, and this notebook deals
# with both:
#
# * **the GPU is a T4** (compute capability 7.5, 16 GB): it has fast fp16 tensor cores but no bf16, so we
#   train in fp16 autocast with a gradient scaler;
# * **the runtime goes away** (idle ~90 min, 12 h at most): checkpoints go to Google Drive and a new run with
#   the same output folder resumes where the last checkpoint left off. We simulate a disconnect below and
#   resume from it.
#
# Along the way: live loss curves, and three diagnostics of the optimisation (weight histograms at
# initialisation, gradient standard deviation per layer over time, weight sums over time).
#
# Runtime → Change runtime type → T4 GPU. On a CPU the notebook still runs (fp32, slowly).

# %%
# Setup: in Colab, install detr_nb from GitHub (torch is already there and is left alone).
import sys
if "google.colab" in sys.modules:
    get_ipython().run_line_magic("pip", 'install -q "git+https://github.com/detr-nb/detr_nb@main"')

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("DETR_NB_SMOKE") == "1"
MODEL = "detr_tiny"            # the main job's model; on a T4 also try "detr_small" (ResNet-18, 3+3 layers)
RUN_NAME = "detr_tiny-synthetic-t4"   # a FIXED name: running the notebook again resumes this run
NUM_TRAIN = 8 if SMOKE else 5000
NUM_VAL = 4 if SMOKE else 500
IMAGE_SIZE = (64, 80) if SMOKE else (128, 160)
BATCH_SIZE = 2 if SMOKE else 32
FIRST_STEPS = 4 if SMOKE else 300          # session 1 stops here (a clean stop, with a checkpoint)
DISCONNECT_AT = 6 if SMOKE else 450        # session 2 "loses the runtime" here (no checkpoint)
TOTAL_STEPS = 8 if SMOKE else 4000         # session 3 resumes and trains up to here
LOG_EVERY = 1 if SMOKE else 20             # steps between metrics lines (one host sync each)
DIAG_EVERY = 1 if SMOKE else 50            # steps between gradient/weight statistics
PLOT_EVERY = 4 if SMOKE else 100           # steps between live-plot redraws

# %%
import inspect
import json

import matplotlib.pyplot as plt
import torch

import detr_nb
from detr_nb import workdir
from detr_nb.teach import lessons
from detr_nb.engine.checkpoint import load_checkpoint
from detr_nb.engine.diagnostics import plot_grad_std, plot_histograms, plot_weight_sum, read_records, weight_histograms
from detr_nb.engine.evaluate import draw_predictions
from detr_nb.engine.precision import resolve_device, resolve_precision
from detr_nb.engine.trainer import Trainer
from detr_nb.engine.config import TrainConfig

if SMOKE:
    torch.set_num_threads(1)   # the test machine shares 2 cores between processes: one thread each avoids contention
device = resolve_device("auto")
print("detr_nb", detr_nb.__version__, "| torch", torch.__version__, "| device", device,
      f"({torch.cuda.get_device_name(device)}, capability {torch.cuda.get_device_capability(device)})"
      if device.type == "cuda" else "")

# %% [markdown]
# ## 1. The precision policy
#
# fp16 has 10 mantissa bits and a maximum of 65504; bf16 has fp32's 8 exponent bits (range up to ~3e38)
# but only 7 mantissa bits. Two things go wrong in fp16:
#
# * **overflow**: a large activation or a squared box distance becomes `inf`;
# * **underflow**: small gradients (below ~6e-8) become 0, so parameters stop learning.
#
# Autocast runs matrix multiplies and convolutions in fp16 and keeps reductions and losses in fp32. The
# **GradScaler** handles underflow: it multiplies the loss by a large factor $S$ before `backward()`, so the
# gradients are $S$ times larger while they are in fp16, divides them by $S$ before the optimizer step, and
# skips the step (halving $S$) if any gradient is `inf`/`nan`. bf16 has the range and needs no scaler, but a
# T4 has no bf16 hardware: `torch.cuda.is_bf16_supported()` answers True there through slow emulation, so
# `detr_nb.engine.precision` asks for the compute capability instead.

# %%
print("fp16 max:", torch.finfo(torch.float16).max, "| 70000 in fp16 ->", torch.tensor(70000.0).half().item())
print("a gradient of 1e-8 in fp16 ->", torch.tensor(1e-8).half().item(),
      "| scaled by 2**16 first ->", (torch.tensor(1e-8) * 2**16).half().item())

for name, dev, cap in (("CPU", "cpu", None), ("T4", "cuda", (7, 5)), ("V100", "cuda", (7, 0)),
                       ("A100/L4/H100", "cuda", (8, 0))):
    print(f"{name:14s} -> {resolve_precision(dev, 'auto', capability=cap).describe()}")
print("this machine   ->", resolve_precision(device, "auto").describe())

# %% [markdown]
# The matcher's costs and the box losses always run in fp32 (the criterion turns autocast off and casts up):
# an L1 cost of thousands of boxes, or GIoU's areas, are where fp16 overflows. One optimisation step of the
# trainer, with the official gradient clipping at norm 0.1:

# %%
print(inspect.getsource(Trainer.train_step))

# %% [markdown]
# ## 2. Where the checkpoints go
#
# `lessons.checkpoint_root()` mounts Google Drive in Colab (a permission dialog appears once) and returns
# `MyDrive/detr_nb/runs`; without Drive, and outside Colab, it returns `workdir("runs")`. The **run folder
# has a fixed name**: the trainer resumes automatically from the newest good checkpoint it finds there. The
# data, on the other hand, lives on the runtime's local disk (`workdir()`), which is much faster to read
# than Drive; it is regenerated (or re-downloaded) on a new runtime.

# %%
runs = lessons.checkpoint_root(mount_drive=not SMOKE)
out = runs / RUN_NAME
print("run folder :", out)
print("data folder:", workdir("synthetic"))

config = TrainConfig(
    dataset="synthetic", data_root=str(workdir("synthetic")),
    data_kwargs={"num_train": NUM_TRAIN, "num_val": NUM_VAL, "image_size": IMAGE_SIZE},
    model=MODEL, preset="cpu",              # synthetic images are small: no resizing
    batch_size=BATCH_SIZE, lr=2e-4, weight_decay=1e-4, clip_max_norm=0.1,
    loss_type="ce", weight_dict=None, cost_class=1.0,     # the paper's loss (the main job's default is
    schedule="step", warmup_steps=0,                      # the aided recipe of notebook 10): pinned here
    amp="auto",                             # fp16 + GradScaler on a T4, bf16 on A100+, fp32 on CPU
    time_budget_s=None, max_steps=FIRST_STEPS,
    log_every=LOG_EVERY, diag_every=DIAG_EVERY, checkpoint_every_s=600,
    workers=0 if SMOKE else 2, out=str(out), resume=True,
    max_eval_images=NUM_VAL, eval_batch_size=BATCH_SIZE, progress=True,
)
print(json.dumps({k: v for k, v in config.to_dict().items() if k in (
    "model", "dataset", "batch_size", "lr", "weight_decay", "clip_max_norm", "amp", "max_steps", "out")}, indent=1))

# %% [markdown]
# ## 3. Session 1: the weights at initialisation, then a clean stop
#
# Creating the `Trainer` builds the data, the model, the criterion, AdamW and the scheduler, and resumes if
# the run folder has a checkpoint (the first time it has none). With `diag_every > 0` it also saves
# histograms of the initial weights (`weights_init.json`, from `diagnostics.weight_histograms`).
# DETR's initialisation: Xavier-uniform for every transformer matrix, PyTorch defaults for the heads and
# `input_proj`, N(0, 1) for the query embeddings; the ResNet has its own (Kaiming) init unless ImageNet
# weights are loaded. In the grid below (12 of the tensors), look at shapes and spreads (std in each title):
# uniform for the transformer (Xavier) and the heads (PyTorch's `Linear` default), bell-shaped for the ResNet
# convolutions (Kaiming normal). The query embeddings, printed below the grid, have std 1, an order of
# magnitude wider than anything else.

# %%
live = lessons.LiveLossPlot(every=PLOT_EVERY)
trainer = Trainer(config, callbacks=[live])
print("precision:", trainer.precision.describe(), "| resumed from:", trainer.resumed_from)
# Written when the run was created, so it shows the initial weights even after a resume.
init_hists = json.loads((out / "weights_init.json").read_text())
fig = plot_histograms(init_hists, max_layers=12, title="weights at initialisation (per tensor)")
plt.show()
print("query_embed.weight std at init:", round(init_hists["query_embed.weight"]["std"], 3))

# %% [markdown]
# Now train up to `FIRST_STEPS`. The progress bar shows the loss and images/s; the figure below the cell is
# redrawn every `PLOT_EVERY` steps by the `LiveLossPlot` callback. Reaching `max_steps` is a clean stop:
# the trainer writes a checkpoint before returning. In a notebook, the **Interrupt** button is clean as well
# (the trainer catches the signal, finishes the step, saves and returns).

# %%
reason = trainer.fit()
print(f"stopped by {reason!r} at step {trainer.step}; checkpoint {trainer.last_good}")

# %% [markdown]
# ## 4. Session 2: the runtime disconnects
#
# A fresh `Trainer` on the same folder resumes from `last.pth`: model, AdamW moments, scheduler, GradScaler,
# RNG states, and the position in the epoch (the data order is a function of the seed and the epoch, so the
# remaining batches of a half-done epoch are the same ones). We let it run towards `TOTAL_STEPS`, but a
# callback (`lessons.disconnect_after`) raises at `DISCONNECT_AT` to play the part of a lost runtime:
# unlike a clean stop, **nothing is saved**.

# %%
trainer = Trainer(config, callbacks=[live], max_steps=TOTAL_STEPS)
saved_step = trainer.step
if saved_step < DISCONNECT_AT:
    trainer.callbacks.append(lessons.disconnect_after(DISCONNECT_AT))
    try:
        trainer.fit()
    except lessons.SimulatedDisconnect as err:
        print("!!", err)
    print(f"the runtime reached step {trainer.step}; the newest checkpoint on disk is at step "
          f"{load_checkpoint(trainer.ckpt.last)['step']} (saved by session 1 at {saved_step})")
else:  # a later visit to an older run: it is already past the demo
    print(f"this run is already at step {saved_step}, past DISCONNECT_AT={DISCONNECT_AT}: no demo")
del trainer   # the runtime is gone, and with it everything in memory

# %% [markdown]
# ## 5. Session 3: resume and finish
#
# In Colab you would reconnect, run the cells above this section again (setup, parameters, config) and
# this one: the same `out` folder means the trainer picks up `last.pth`. The steps after the checkpoint are
# trained again, and the lines they had written to `metrics.jsonl` are dropped, so the curves stay
# continuous. The dotted lines in the live plot mark where a session resumed.

# %%
trainer = Trainer(config, callbacks=[live], max_steps=TOTAL_STEPS)
print("resumed from", trainer.resumed_from, "at step", trainer.step)
reason = trainer.fit()
print(f"stopped by {reason!r} at step {trainer.step}")
assert trainer.step == TOTAL_STEPS and trainer.resumed_from is not None

fig = lessons.loss_figure(read_records(out / "metrics.jsonl"), resumes=live.resumes,
                          title=f"{MODEL}: {trainer.step} steps in 3 sessions")
plt.show()

# %% [markdown]
# ## 6. Diagnostics over time
#
# Every `DIAG_EVERY` steps the trainer recorded, for each weight tensor, the standard deviation of its
# gradient (after unscaling, before clipping) and the sum of its weights (`diagnostics.jsonl`).
#
# * **Gradient std per layer**: layers whose gradients are orders of magnitude smaller than the rest learn
#   little; exploding values show up as sudden jumps (and as GradScaler skipping steps in fp16).
# * **Weight sums**: a slowly drifting sum is normal; a straight flat line means the layer does not
#   change (frozen, or its gradient vanished), a runaway means the learning rate is too high for it.
# * **Histograms now vs at initialisation** show how far training has moved each tensor.
#
# One curve of the gradient plot sits at ~0 (1e-14 or below, or off the log scale): it is
# `transformer.decoder.layers.0.self_attn.in_proj_weight`. The decoder's input `tgt` starts as zeros, so in
# the first layer every value vector equals the value bias, whatever the attention weights are: the
# query/key/value projection matrices of that layer cannot change the output and never get a gradient.
# (The official DETR has the same dead weights.) A diagnostic like this one finds such things.

# %%
records = read_records(out / "diagnostics.jsonl")
print(len(records), "records of", len(records[0]["grad_std"]), "weight tensors")
fig, axes = plt.subplots(1, 2, figsize=(14, 4))
plot_grad_std(records, max_layers=10, ax=axes[0])
axes[0].set_title("gradient std per layer", fontsize=9)
plot_weight_sum(records, max_layers=10, ax=axes[1])
axes[1].set_title("weight sum per layer", fontsize=9)
fig.tight_layout()
plt.show()

now_hists = weight_histograms(trainer.ckpt.last)     # straight from the checkpoint file
names = [n for n in init_hists if "transformer" in n][:4] + [n for n in init_hists if "class_embed" in n][:1]
fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.6), squeeze=False)
for ax, n in zip(axes[0], names):
    ax.stairs(init_hists[n]["counts"], init_hists[n]["edges"], label="init")
    ax.stairs(now_hists[n]["counts"], now_hists[n]["edges"], label=f"step {trainer.step}")
    ax.set_title(n[-34:], fontsize=7)
    ax.tick_params(labelsize=6)
axes[0, 0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. How good is it, and where is everything
#
# COCO mAP on the validation images (pycocotools), and predictions drawn on a few of them (solid boxes:
# predictions with score ≥ 0.5; dashed: ground truth). In smoke mode the model has seen a handful of steps
# and finds nothing yet; on a T4 after the full run the shapes should start being found. Notebook 08 goes
# deeper into evaluation.

# %%
stats = trainer.evaluate(verbose=not SMOKE)
print({k: round(v, 3) for k, v in stats.items() if k in ("AP", "AP50", "AP75", "AR100")})
fig = draw_predictions(trainer.model, trainer.val_set, range(min(4, NUM_VAL)), trainer.device,
                       threshold=0.5, precision=trainer.precision)
plt.show()

# %%
print("run folder:", out.resolve())
for path in sorted(out.rglob("*")):
    if path.is_file():
        print(f"  {str(path.relative_to(out)):28s} {path.stat().st_size / 2**20:7.2f} MB")
print(f"checkpoints are in {trainer.ckpt.directory.resolve()} (last.pth = step {trainer.step}); "
      f"run this notebook again with the same RUN_NAME and a larger TOTAL_STEPS to continue training.")

# %% [markdown]
# **Summary.** `resolve_precision` picks fp16 + GradScaler on a T4 (bf16 from capability 8.0, fp32 on CPU);
# the matcher and box losses stay fp32. Checkpoints go to Drive, into a run folder with a fixed name, at
# every epoch end, on clean stops and every `checkpoint_every_s`; a new `Trainer` on that folder resumes
# exactly. Gradient std and weight sums per layer, recorded during training, are the first place to look
# when a run does not learn.
