# %% [markdown]
# # 07 · Training on a Colab T4: mixed precision, checkpoints, resuming, diagnostics
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/07_training_on_t4.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 7.2 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about 5 minutes, an estimate (no GPU was lent to this project): the install, the
# main job's 1,500 optimizer steps in three sessions (the same run on every machine; a model this small is
# bound by kernel launches and the host more than by the GPU), the evaluation of 300 validation images.
# Full mode on 2 CPU cores: 4.0 minutes (237 s), measured (`bench/notebook_times.py --key-figures`, machine
# speed 126 ms per main-job step, `bench/train_step.py --speed`): 1,500 steps in the three sessions, AP 0.516,
# AP50 0.872 on the 300 validation images, the main job's default seed to the digit.
#
# **Key figure** of a full run (section 5; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): the training losses over three sessions, two of them resumed from a checkpoint.
#
# ![the training losses over three sessions, two of them resumed from a checkpoint](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/07_training_on_t4.png)
#
# Notebooks 04-06 built the model, the loss and the data. Here they meet in `detr_nb.trainer.Trainer`, the
# trainer that `python -m detr_nb train` runs, with the main job's recipe (`aided`, `detr_nb/config.py`):
# `detr_tiny_aided`, a small DETR with convergence aids (two-stage query selection that gives the decoder
# its queries' positions and content from a dense head on the CNN features, boxes refined layer by layer, a
# box prior on the cross-attention, the focal loss), on the synthetic shapes of notebook 06. The paper's plain DETR would
# still be on its plateau after these minutes, every query predicting the average box: notebook 10 shows
# that plateau, with the measured runs, and explains each aid. Here the model learns, and at the end you
# see it find the shapes.
#
# A free Colab GPU adds two constraints, and this notebook deals with both:
#
# * **the GPU is a T4** (compute capability 7.5, 16 GB): fast fp16 tensor cores but no bf16, so we train
#   in fp16 autocast with a gradient scaler;
# * **the runtime goes away** (idle ~90 min, 12 h at most): a run folder with a fixed name and a new run
#   on it resumes where the last checkpoint left off. We simulate a disconnect below and resume from it.
#
# Along the way: live loss curves, and three diagnostics of the optimisation (weight histograms at
# initialisation, gradient standard deviation per layer over time, weight sums over time).
#
# Runtime → Change runtime type → T4 GPU. On a CPU the notebook still runs (fp32, slower).

# %%
# Setup: in Colab, install detr_nb from GitHub (torch is already there and is left alone).
import sys
if "google.colab" in sys.modules:
    import subprocess
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/detr-nb/detr_nb@main"],
                         capture_output=True, text=True)
    if pip.returncode:
        lines = [line.strip() for line in pip.stderr.splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith(("fatal:", "ERROR:"))), lines[-1] if lines else "")
        raise SystemExit(f"cannot install detr_nb from https://github.com/detr-nb/detr_nb: {why} (a fork sets its own URL as "
                         "REPO_URL in detr_nb/__init__.py)")

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("DETR_NB_SMOKE") == "1"
# Keep the checkpoints on Google Drive (Colab asks for permission once): a recycled runtime (a disconnect)
# keeps them, and notebook 08, in a runtime of its own, finds this run there. Off, or permission declined:
# they stay in /content, and a recycled runtime takes them with it.
USE_DRIVE = True
RUN_NAME = "aided-synthetic-t4"            # a FIXED name: running the notebook again resumes this run
FIRST_STEPS = 3 if SMOKE else 300          # session 1 stops here (a clean stop, with a checkpoint)
DISCONNECT_AT = 5 if SMOKE else 450        # session 2 "loses the runtime" here (no checkpoint)
MAX_STEPS = 8 if SMOKE else 1500           # the run's steps, the main job's (session 3 ends there)
LOG_EVERY = 1 if SMOKE else 20             # steps between metrics lines (one host sync each)
DIAG_EVERY = 1 if SMOKE else 100           # steps between gradient/weight statistics
PLOT_EVERY = 4 if SMOKE else 200           # steps between live-plot redraws

# %%
import inspect
import json

import matplotlib.pyplot as plt
import torch
from IPython.display import display

import detr_nb
from detr_nb import TrainConfig, Trainer
from detr_nb.checkpoint import load_checkpoint
from detr_nb.config import MAIN_JOB_SYNTHETIC, amp_dtype, resolve_device
from detr_nb.evaluate import category_names, sample_predictions
from detr_nb.figures import draw_predictions, loss_figure
from detr_nb.teach.diagnostics import GradientStats, plot_histograms, plot_layer_series, read_jsonl, weight_histograms
from detr_nb.teach.paths import checkpoint_root, workdir
from detr_nb.teach.training import LiveLossPlot, SimulatedDisconnect, disconnect_after, show_tensorboard

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
# skips the step (halving $S$) if any gradient is `inf`/`nan`. The trainer does the same when the forward
# pass itself overflows (the matcher sees an `inf` output): the step is skipped and counted
# (`skipped_steps` in `metrics.jsonl`), and only 20 in a row stop the run. bf16 has the range and needs no
# scaler, but a T4 has no bf16 hardware: `torch.cuda.is_bf16_supported()` answers True there through slow
# emulation, so `detr_nb.config.amp_dtype` asks for the compute capability instead: fp16 + GradScaler below 8.0
# (a T4 is 7.5, a V100 7.0), bf16 from 8.0 (A100, L4, H100), fp32 on a CPU.

# %%
print("fp16 max:", torch.finfo(torch.float16).max, "| 70000 in fp16 ->", torch.tensor(70000.0).half().item())
print("a gradient of 1e-8 in fp16 ->", torch.tensor(1e-8).half().item(),
      "| scaled by 2**16 first ->", (torch.tensor(1e-8) * 2**16).half().item())

print(inspect.getsource(amp_dtype))
print("this machine ->", amp_dtype(device, "auto") or "float32 (no autocast)")

# %% [markdown]
# The matcher's costs and the box losses always run in fp32 (the criterion turns autocast off and casts up):
# an L1 cost of thousands of boxes, or GIoU's areas, are where fp16 overflows. One optimisation step of the
# trainer, with the official gradient clipping at norm 0.1:

# %%
print(inspect.getsource(Trainer.train_step))

# %% [markdown]
# ## 2. The recipe and where the checkpoints go
#
# `TrainConfig()` is the main job; every field we give overrides the recipe. With `USE_DRIVE`,
# `checkpoint_root` mounts Google Drive and returns `MyDrive/detr_nb/runs`; otherwise (and outside
# Colab) `workdir("runs")`. The **run folder has a fixed name**: the trainer resumes automatically from the
# newest good checkpoint it finds there. The data lives on the runtime's local disk (`workdir()`), faster
# to read than Drive; it is redrawn on a new runtime.

# %%
runs = checkpoint_root(mount_drive=USE_DRIVE)
out = runs / RUN_NAME
print("run folder :", out)
print("data folder:", workdir("data"))

data = dict(MAIN_JOB_SYNTHETIC, num_train=8, num_val=4, image_size=(64, 64), max_objects=3) if SMOKE else dict(MAIN_JOB_SYNTHETIC)
tiny = dict(backbone_width=0.125, hidden_dim=32, nheads=2, dim_feedforward=64, num_queries=8)
config = TrainConfig(
    data_root=str(workdir("data") / ("synthetic-07" if SMOKE else "synthetic")), data_kwargs=data,
    model_overrides=tiny if SMOKE else {},  # smoke mode: the same model, shrunk to run in seconds on a CPU
    amp="auto",                             # fp16 + GradScaler on a T4, bf16 on A100+, fp32 on CPU
    max_steps=MAX_STEPS, batch_size=4 if SMOKE else 22,   # fixed steps and no time budget, as the main job
    log_every=LOG_EVERY, checkpoint_every_s=300,
    # data workers feed a GPU; on a CPU they would take cores from the model (2 workers halved the steps)
    workers=2 if device.type == "cuda" and not SMOKE else 0, out=str(out), resume=True, progress=True,
)
print(json.dumps({k: v for k, v in config.to_dict().items() if k in (
    "recipe", "model", "dataset", "weight_dict", "batch_size", "lr", "warmup_steps", "schedule", "amp",
    "max_steps", "time_budget_s", "out")}, indent=1))

# %% [markdown]
# ## 3. Session 1: the weights at initialisation, then a clean stop
#
# Creating the `Trainer` draws the data (the first time), builds the model, the criterion, AdamW and the
# scheduler, and resumes if the run folder has a checkpoint. Its callbacks run after every optimizer step: the
# live plot, and `GradientStats`, which records per-layer statistics every `DIAG_EVERY` steps (section 6). We
# keep histograms of the initial weights in the run folder (`weights_init.json`, from
# `diagnostics.weight_histograms`), written once, so that a resumed session shows the same ones. In the
# grid below (12 of the tensors), look at shapes and spreads (std in each title): uniform for the
# transformer's matrices (Xavier) and the class head (PyTorch's `Linear` default), a single spike at zero for
# the box head's last layer (it starts at zero, so every query's first box is its reference box),
# bell-shaped for the ResNet's convolutions (Kaiming normal). The class biases, not drawn (only tensors of
# two or more dimensions are), start at the focal loss's prior, $-\log(99) \approx -4.6$.

# %%
live = LiveLossPlot(every=PLOT_EVERY)
diagnostics = GradientStats(every=DIAG_EVERY)          # writes out/diagnostics.jsonl
trainer = Trainer(config, callbacks=[live, diagnostics])
print("precision:", trainer.dtype or "float32", "+ GradScaler" if trainer.scaler.is_enabled() else "",
      "| resumed from:", trainer.resumed_from)
init_file = out / "weights_init.json"
if not init_file.exists():                             # the run's first session: the weights as built
    init_file.write_text(json.dumps(weight_histograms(trainer.model)))
init_hists = json.loads(init_file.read_text())
fig = plot_histograms(init_hists, max_layers=12, title="weights at initialisation (per tensor)")
plt.show()

# %% [markdown]
# Now train up to `FIRST_STEPS` (`fit(until=...)`: this session ends there, the learning-rate schedule
# still runs over all `MAX_STEPS`). The progress bar counts the steps; the figure below the cell is redrawn
# every `PLOT_EVERY` steps by the `LiveLossPlot` callback. Reaching `until` is a clean stop: the trainer writes
# a checkpoint before returning. In a notebook, the **Interrupt** button is
# clean as well (the trainer catches the signal, finishes the step, saves and returns).

# %%
reason = trainer.fit(until=FIRST_STEPS)
print(f"stopped by {reason!r} at step {trainer.step} after {trainer.time_s():.0f} s; checkpoint {trainer.last_good}")

# %% [markdown]
# ## 4. Session 2: the runtime disconnects
#
# A fresh `Trainer` on the same folder resumes from `last.pth`: model, AdamW moments, scheduler, GradScaler,
# RNG states, the position in the epoch (the data order is a function of the seed and the epoch, so the
# remaining batches of a half-done epoch are the same ones) and the step count (the learning rate follows it). A callback (`disconnect_after`) raises at `DISCONNECT_AT` to play
# the part of a lost runtime: unlike a clean stop, **nothing is saved**.

# %%
trainer = Trainer(config, callbacks=[live, diagnostics])
saved_step = trainer.step
if saved_step < DISCONNECT_AT:
    trainer.callbacks.append(disconnect_after(DISCONNECT_AT))
    try:
        trainer.fit()
    except SimulatedDisconnect as err:
        print("!!", err)
    print(f"the runtime reached step {trainer.step}; the newest checkpoint on disk is at step "
          f"{load_checkpoint(trainer.last_good)['step']} (saved by session 1 at {saved_step})")
else:  # a later visit to an older run: it is already past the demo
    print(f"this run is already at step {saved_step}, past DISCONNECT_AT={DISCONNECT_AT}: no demo")
trainer.close()   # the runtime is gone, and with it everything in memory (close releases the run folder)
del trainer

# %% [markdown]
# ## 5. Session 3: resume and finish
#
# In Colab you would reconnect, run the cells above this section again (setup, parameters, config) and
# this one: the same `out` folder means the trainer picks up `last.pth`. The steps after the checkpoint are
# trained again, and the lines they had written to `metrics.jsonl` are dropped (`GradientStats` drops its records
# of those steps too), so the curves stay continuous. The dotted lines in the live plot mark where a session resumed. This session trains until the
# run's `MAX_STEPS`.

# %% tags=["key-figure"]
trainer = Trainer(config, callbacks=[live, diagnostics])
print("resumed from", trainer.resumed_from, "at step", trainer.step, f"after {trainer.time_s():.0f} s of training")
reason = trainer.fit()
print(f"stopped by {reason!r} at step {trainer.step} ({trainer.state.skipped_steps} fp16 steps skipped)")
assert trainer.resumed_from is not None

fig = loss_figure(read_jsonl(out / "metrics.jsonl"), resumes=live.resumes,
                  title=f"{config.model}: {trainer.step} steps in 3 sessions")
display(fig)

# %% [markdown]
# **TensorBoard.** The trainer also writes TensorBoard event files beside `metrics.jsonl`: each loss term,
# the learning rate, the evaluation AP, and the predictions figure at each evaluation. In any notebook,
# `%load_ext tensorboard` then `%tensorboard --logdir <run folder>` shows them (Colab has TensorBoard
# installed); `show_tensorboard` runs those two lines in Colab, and elsewhere prints the command.

# %%
show_tensorboard(out, start=not SMOKE)   # the smoke run (tests) starts no server

# %% [markdown]
# ## 6. Diagnostics over time
#
# Every `DIAG_EVERY` steps the `GradientStats` callback recorded, for each weight tensor, the standard deviation
# of its gradient and the sum of its weights (`diagnostics.jsonl`). A callback runs after the optimizer step, so
# it sees the gradient the optimizer used: unscaled, and clipped to a total norm of 0.1 (the paper's clip, which
# most steps hit): compare the layers with each other, not the scale with another run's.
#
# * **Gradient std per layer**: layers whose gradients are orders of magnitude smaller than the rest learn
#   little; exploding values show up as sudden jumps (and as GradScaler skipping steps in fp16).
# * **Weight sums**: a slowly drifting sum is normal; a straight flat line means the layer does not
#   change (frozen, or its gradient vanished), a runaway means the learning rate is too high for it.
# * **Histograms now vs at initialisation** show how far training has moved each tensor.
#
# In the paper's DETR the decoder's input starts as zeros, so in the first decoder layer every value vector
# of the self-attention is the value bias: $W_v$ gets no gradient there. Its $W_q$ and $W_k$ see the object
# queries and do get one, through attention dropout (0.1 in the paper): without dropout the weights sum to 1
# and the output is that bias whatever they are. `detr_tiny_aided` takes its decoder's content queries from
# the encoder (the features of the selected cells), so no curve here should sit at zero.

# %%
records = read_jsonl(out / "diagnostics.jsonl")
print(len(records), "records of", len(records[0]["grad_std"]), "weight tensors")
fig, axes = plt.subplots(1, 2, figsize=(14, 4))
plot_layer_series(records, "grad_std", max_layers=10, ax=axes[0])
axes[0].set_title("gradient std per layer", fontsize=9)
plot_layer_series(records, "weight_sum", max_layers=10, ax=axes[1])
axes[1].set_title("weight sum per layer", fontsize=9)
fig.tight_layout()
plt.show()

now_hists = weight_histograms(trainer.last_good)      # straight from the checkpoint file
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
# ## 7. How good is it: the 12 COCO numbers, and its boxes
#
# COCO mAP on the validation images (pycocotools): AP averages over IoU thresholds 0.5 to 0.95, AP50 is the
# lenient one, APs/APm/APl split by object size, AR is the recall with 1, 10 or 100 detections per image.
# A focal-loss model is scored as it was trained: sigmoid scores, the 100 best (query, class) pairs per
# image (`detr_nb.config.build_postprocess`). Then predictions on validation images: solid boxes are predictions with score
# ≥ 0.5, dashed ones the ground truth. After the 1,500 steps most shapes are found with the right class
# (the main job, the same recipe and steps: AP 0.45-0.46 / AP50 0.82-0.85 over four seeds, docs/convergence.md; fp16 on a T4 learns
# alike per step); in smoke mode the model has trained a handful of steps and finds nothing yet. Notebook 08 goes deeper into evaluation.

# %%
stats = trainer.evaluate(verbose=True)
samples = sample_predictions(trainer.model, trainer.val_set, range(min(8, len(trainer.val_set))), trainer.device,
                             trainer.autocast)
fig = draw_predictions(samples, threshold=0.5, names=category_names(trainer.val_set))
fig.savefig(out / "predictions.png", dpi=90)
display(fig)

# %%
print("run folder:", out.resolve())
for path in sorted(out.rglob("*")):
    if path.is_file():
        print(f"  {str(path.relative_to(out)):28s} {path.stat().st_size / 2**20:7.2f} MB")
print(f"checkpoints are in {trainer.ckpt.directory.resolve()} (last.pth = step {trainer.step}); "
      f"`python -m detr_nb predict your_photo.jpg --run {out}` draws its boxes on any image.")
trainer.close()

# %% [markdown]
# **Summary.** `amp_dtype` picks fp16 + GradScaler on a T4 (bf16 from capability 8.0, fp32 on CPU);
# the matcher and box losses stay fp32. Checkpoints go into a run folder with a fixed name (on Drive with
# `USE_DRIVE`), at every epoch end, on clean stops and every `checkpoint_every_s`; a new `Trainer` on that
# folder resumes exactly, on the same schedule. Gradient std and weight sums per layer, recorded during
# training, are the first place to look when a run does not learn.
#
# ## Exercises
#
# Predict first, then check (a new `RUN_NAME` for each, so that nothing resumes the run above).
#
# 1. Train with `amp="fp32"` on the T4 for the same steps. Faster or slower, and a better or worse AP?
# 2. Resume this run with `batch_size=32`. What happens, and why does the trainer do that?
# 3. Run the same configuration with `model="detr_tiny"` (the paper's DETR, so the paper's loss) and
#    `weight_dict={"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}` for the same steps. What does the loss curve do, and what
#    AP do you expect?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. Slower (fp32 does not use the T4's fp16 tensor cores; the small model is partly bound by data loading
#    and kernel launches, so expect well under the 8x of the raw matmul throughput), and about the same AP:
#    per step the two learn alike, and the run has the same steps.
# 2. The trainer refuses, with a one-line error: the checkpoint was trained with batch 22, and the position
#    in the epoch and the data order depend on it, so a silent resume would train on the wrong samples. Use
#    another `RUN_NAME` (or `resume=False`) to start afresh.
# 3. The loss falls for a few hundred steps, then flattens: every query predicts roughly the average box, and
#    AP stays near 0 (0.001 measured in 540 s on 2 CPU cores, docs/convergence.md). Notebook 10 is about this plateau and how the aids
#    of this notebook's recipe escape it.
#
# </details>
