# %% [markdown]
# # 10 · Why DETR is slow to train, and the aids that make it learn on a small budget
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/10_why_detr_is_slow.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 5.8 s on 2 CPU cores (`bench/notebook_times.py`, idle machine):
# a few steps of a very small model on 64 px images, no downloads.
# Full mode on a Colab T4: about 3 minutes, at most 5, an estimate: section 4 trains two models (1.3 and 1.1 M
# parameters) for 300 steps each, which take about 80 s each on 2 idle CPU cores (docs/convergence.md: 3.6-4 steps/s),
# plus drawing 2,000 synthetic images (about 10 s); the rest reads committed measurements.
# Full mode on 2 CPU cores: 1.2 minutes (71 s), measured (`bench/notebook_times.py --key-figures`, machine
# speed 126 ms per main-job step, `bench/train_step.py --speed`).
#
# **Key figure** of a full run (section 4; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): the box loss of the paper's DETR against the aided recipe, recomputed on the same
# data.
#
# ![the box loss of the paper's DETR against the aided recipe, recomputed on the same data](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/10_why_detr_is_slow.png)

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
# Smoke mode (the tests, on a CPU): a few steps of a very small model on 64 px images.
STEPS = 6 if SMOKE else 300          # optimizer steps per variant in the recomputation below
IMAGES = 16 if SMOKE else 2000       # synthetic training images
EVAL_IMAGES = 4 if SMOKE else 200

# %% [markdown]
# Take the paper's DETR, shrink it to the main job's size (a 1.3 M-parameter model on 96 px images), train
# it with the paper's loss, and its AP stays near zero: the loss falls for a few hundred steps, then sits on
# a **plateau** where every query predicts roughly the average box and class accuracy is at chance
# (notebook 07 trains with the aids instead, for that reason). The paper trains 500 COCO epochs for its
# 42.0 AP (300 epochs already give 40.6; the paper's Faster R-CNN baseline reaches 40.2 in 36); users of the official
# code report "AP stays at 0" on small datasets more than anything else. What is measured here is a 96 px
# toy on a CPU budget: it shows the plateau and what moves it, not how the same means scale to COCO.
#
# This notebook explains why, and looks at five remedies from later papers, all measured on the main job
# (`bench/convergence.py`). Three paid and are the main job's model, `detr_tiny_aided` (`detr_nb.aids`,
# never used by the official configurations); two did not pay on this budget and were left out of the
# package (their code is in the history: `docs/convergence.md`), so this notebook only explains them:
#
# | aid | paper | what changes | in `detr_nb` |
# |---|---|---|---|
# | sigmoid focal loss | Lin et al. 2017; Deformable DETR | per-class sigmoid, easy negatives down-weighted | yes |
# | Group DETR | Chen et al. 2022 | K query groups, each matched one-to-one, masked from each other | no |
# | anchor queries + box refinement | DAB-DETR; Deformable DETR | queries are boxes; each layer refines the previous box | refinement, from the encoder's boxes |
# | two-stage query selection | Deformable DETR; DINO | the encoder proposes boxes; the best cells become the queries | yes |
# | query denoising | DN-DETR | noised copies of the true boxes enter the decoder and must be restored, no matching | no |
#
# The committed numbers come from `bench/convergence.py` (`docs/convergence.md`); at the end the
# notebook recomputes a small version of the comparison with the package.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import detr_nb
from detr_nb import TrainConfig, Trainer, build_model
from detr_nb.config import MAIN_JOB_SYNTHETIC, WEIGHTS
from detr_nb.data import render_sample, synthetic_params
from detr_nb.models import HungarianMatcher
from detr_nb.teach.architecture import plot_query_selection, query_selection
from detr_nb.teach.convergence import group_runs, load_convergence, plot_convergence
from detr_nb.teach.paths import workdir

torch.manual_seed(0)
torch.set_num_threads(1 if SMOKE else torch.get_num_threads())
WORK = workdir("10_why_detr_is_slow")
print("torch", torch.__version__, "| detr_nb", detr_nb.__version__, "| smoke:", SMOKE, "| files go to", WORK)

# %% [markdown]
# ## 1. The committed measurements
#
# The package carries the study's measurements (`detr_nb/teach/convergence.json`, written by
# `bench/convergence.py`): every variant's AP-versus-time curve, all trained on the same data with the same
# seed, batch (16), learning rate and wall-clock budget on the same 2 idle CPU cores (150 s for every
# variant; 540 s, the main job's budget at the time, for vanilla and three combinations). Nothing is
# downloaded.

# %%
results = load_convergence()
runs = {k: r for k, r in results["runs"].items() if not r.get("study")}   # round 1 of the study
for key, r in sorted(runs.items(), key=lambda kv: (kv[1].get("budget_s") or 0, kv[0])):
    f = r["final"]
    print(f"{key:16s} {r['steps']:5d} steps  AP {f['AP']:.4f}  AP50 {f['AP50']:.4f}  "
          f"box GIoU loss {f['loss_giou']:.3f}   {r['description']}")

# %%
plot_convergence(group_runs(results, study=8))
plt.show()

# %% [markdown]
# The vanilla model's box loss hardly moves: that is the plateau, and in 540 s vanilla never leaves
# it. On the 150 s budget the focal loss alone, Group DETR alone, query denoising alone and anchor
# refinement alone stay on it too; two-stage query selection is the single aid that moves, and
# adding the focal loss to it learns fastest (round one's main-job combination, AP50 0.5 after about 450 s of
# training; the recipe of round two, section 5, gets there in about 160 s).
# Query denoising on top of that learns about as fast per step but gets about a quarter fewer steps,
# so on a fixed time it is behind; Group DETR on top is behind per step and per second. The next sections
# show the mechanism behind each curve.
#
# ## 2. Why one-to-one matching gives few positives
#
# DETR's Hungarian matcher assigns each object to exactly one query. With Q queries and N objects in
# an image, N queries get a box target and a class target; the Q - N others are told "no object".
# On the main job's data (0-10 shapes per image, Q = 30):

# %%
params = synthetic_params(**{k: v for k, v in MAIN_JOB_SYNTHETIC.items() if k not in ("num_train", "num_val")})
counts = np.array([len(render_sample(params, 0, "train", i)["labels"]) for i in range(40 if SMOKE else 400)])
Q, K = 30, 3
print(f"objects per image: mean {counts.mean():.1f}, max {counts.max()}")
print(f"one-to-one: {counts.mean() / Q:.1%} of the queries get a box target per image")
print(f"Group DETR, K={K}: {K * counts.mean():.1f} positive queries per image (K x), same cost at inference")
h = w = 96 // 8
print(f"two-stage: every one of the {h * w} encoder cells is scored; its one-to-one loss trains the proposals,"
      f" and the decoder starts from the {Q} best of them")

# %% [markdown]
# Worse than the number is its *instability*: early in training all queries predict nearly the same
# box, so the cost matrix is almost flat and which query wins an object is decided by noise. The
# query that was pushed towards an object at step t is often told "no object" for it at step t + 1.
# Measure it: match the same targets against the predictions of an untrained vanilla model (the paper's DETR,
# `detr_tiny`, with the main job's model's backbone, decoder depth and 30 queries, and one encoder layer) under two small perturbations of its
# weights, and count how many objects change query.

# %%
MAIN_JOB_SHAPE = dict(return_layer="layer2", enc_layers=1, dec_layers=3, num_queries=30)   # the vanilla runs' shape
torch.manual_seed(0)
vanilla = build_model("detr_tiny", num_classes=7, **MAIN_JOB_SHAPE).eval()
sample = render_sample(params, 0, "train", 1)
image = torch.from_numpy(sample["image"]).permute(2, 0, 1).float()[None] / 127.5 - 1
b = torch.as_tensor(sample["boxes"], dtype=torch.float32) / 96
target = [{"labels": torch.as_tensor(sample["labels"]),
           "boxes": torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)}]
matcher = HungarianMatcher()
assignments = []
for trial in range(2):
    torch.manual_seed(trial + 1)
    with torch.no_grad():
        for p in vanilla.parameters():
            p.add_(1e-3 * torch.randn_like(p))   # a tiny step, like one optimizer update
        out = vanilla(image)
    rows, cols = matcher(out, target)[0]
    assignments.append(dict(zip(cols.tolist(), rows.tolist())))
changed = sum(assignments[0][n] != assignments[1][n] for n in assignments[0])
spread = out["pred_boxes"][0].std(0)
print(f"{len(assignments[0])} objects; {changed} changed query after a 1e-3 weight perturbation")
print("spread of the 30 predicted boxes (std of cx, cy, w, h):", [round(v, 3) for v in spread.tolist()])

# %% [markdown]
# ## 3. What each aid changes
#
# **Focal loss.** Softmax cross-entropy with a "no object" class down-weighted by 0.1 still spends
# most of its gradient on the many easy negatives. The focal loss $-(1-p_t)^\gamma \log p_t$ fades out
# examples that are already right, and the class bias starts at $-\log((1-\pi)/\pi)$ with prior
# $\pi = 0.01$ so that the first steps do not waste themselves on learning "mostly background".
#
# **Group DETR** (not in `detr_nb`: on this budget it was slower per step without a gain that paid for it).
# K copies of the queries, each matched one-to-one to all objects: K times more positives per image, in
# training only. The groups must not see each other (otherwise the duplicate-removal that self-attention
# learns would be trained across groups), hence a block-diagonal self-attention mask (drawn below, left).

# %% [markdown]
# **Anchor queries and box refinement.** A vanilla query is a free vector (256-d in the paper's DETR,
# 128-d in the main job's model) whose box is found by trial and error. A DAB-DETR query *is* a box: its
# positional query is an MLP of the box's sine embedding, and each decoder layer predicts a correction in logit
# space, $b_l = \sigma(\Delta_l + \sigma^{-1}(b_{l-1}))$, so the layers refine instead of starting over. The
# main job's model refines its boxes this way; its first boxes come from the encoder (next), not from learned
# anchors (measured, and left out: docs/convergence.md).
#
# **Two-stage query selection.** A dense head on the encoder scores every cell and predicts a box
# around the cell's own anchor; this head gets its own Hungarian loss, and the decoder's reference
# boxes are the top-Q cells. Queries start *on* objects, which breaks the plateau of section 2: the
# matching is stable from the first steps because the queries already differ.
#
# **Query denoising** (DN-DETR; not in `detr_nb`: on this budget it learned about as fast per step, with a
# quarter fewer steps in the same time). It side-steps the unstable matching for part of the training signal: in
# training, G copies of every true box enter the decoder as extra queries, each noised with
# $\lambda = 0.4$: its centre moves by at most $\lambda w / 2$ (20 % of its width; the same for the height)
# and each side is scaled by a factor in $[1 - \lambda, 1 + \lambda]$, with the
# true label (flipped to a random class 20 % of the time). Query i
# of a group must give back object i: no Hungarian matching is involved, so these positives are
# stable from the first step. The matching queries must not see them (they would copy the answer) and
# the groups must not see each other; at inference there are none (drawn below, right: a query may read a
# key unless the key is a denoising query of another group).
#
# Both masks take two lines of torch each (True = blocked, drawn white):

# %%
groups = torch.arange(12) // 4                                          # Group DETR: 3 groups of 4 queries
group_mask = groups[:, None] != groups[None, :]                         # (12, 12): another group's query
dn = torch.cat([torch.arange(4) // 2, torch.full((6,), 2)])             # DN-DETR: 2 groups of 2, then 6 matching
denoising_mask = (dn[None, :] < 2) & (dn[:, None] != dn[None, :])       # (10, 10): another group's noised box
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
for ax, mask, title in ((axes[0], group_mask, "Group DETR: 3 groups of 4 queries"),
                        (axes[1], denoising_mask, "DN-DETR: 2 denoising groups of 2,\nthen 6 matching queries")):
    ax.imshow(~mask, cmap="Greys", vmin=0, vmax=1)                      # allowed pairs black
    ax.set(title=title, xlabel="key query", ylabel="attending query")
    ax.title.set_fontsize(9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Recompute a small version
#
# The same comparison with the package's trainer: vanilla against the main job's recipe (`aided`, as the
# package defines it now: section 5), same data, seed and steps. In smoke mode this is a few steps of a very small
# model, enough to run every line; the full mode trains each for a few hundred steps on the CPU.

# %%
SMALL = dict(backbone_width=0.125, hidden_dim=32, nheads=2, dim_feedforward=64, num_queries=10) if SMOKE else {}
data = dict(MAIN_JOB_SYNTHETIC, num_train=IMAGES, num_val=max(EVAL_IMAGES, 4), workers=1 if SMOKE else 2)
if SMOKE:
    data.update(image_size=(64, 64), max_objects=3)
variants = {     # the paper's DETR and loss at the main job's size; the main job's recipe (detr_tiny_aided)
    "vanilla": dict(model="detr_tiny", model_overrides=dict(MAIN_JOB_SHAPE, **SMALL), weight_dict=WEIGHTS, lr=1e-3),
    "aided": dict(model_overrides=SMALL),
}
recomputed = {}
for name, change in variants.items():
    cfg = TrainConfig(**change, data_root=str(WORK / "data"), data_kwargs=data, max_steps=STEPS, time_budget_s=None,
                      warmup_steps=max(1, STEPS // 5), batch_size=4 if SMOKE else 16, out=str(WORK / name),
                      resume=False, eval_at_end=False, progress=not SMOKE, log_every=2 if SMOKE else 10,
                      max_eval_images=EVAL_IMAGES)
    trainer = Trainer(cfg)
    trainer.fit()
    stats = trainer.evaluate(verbose=False)
    logged = [r for r in trainer.history if r.get("kind") == "step"]      # one line every log_every steps
    giou = [r["loss_giou"] for r in logged]
    recomputed[name] = {"AP": stats["AP"], "AP50": stats["AP50"], "loss_giou": giou, "steps": [r["step"] for r in logged]}
    print(f"{name}: {trainer.step} steps, AP {stats['AP']:.4f}, AP50 {stats['AP50']:.4f}, "
          f"box GIoU loss {giou[0]:.3f} -> {giou[-1]:.3f}; run in {trainer.out}")

# %% tags=["key-figure"]
plt.figure(figsize=(5, 3.2))
for name, r in recomputed.items():
    plt.plot(r["steps"], r["loss_giou"], marker="o", ms=3, label=name)
plt.xlabel("optimizer steps")
plt.ylabel("1 - GIoU (matched, last layer)")
plt.title("recomputed: vanilla vs aided")
plt.legend()
plt.show()

# %% [markdown]
# The `aided` model just trained selects its queries in two stages (section 3). On a validation image:
# every encoder cell's best class score, the top-Q cells on the feature grid, and the proposal boxes that
# become the decoder's reference boxes. Most of the selected cells sit on the objects; the decoder then
# only has to refine boxes that already start there.

# %%
image, _ = trainer.val_set[0]
selection = query_selection(trainer.model, image)
print(f"{selection['grid'][0]}x{selection['grid'][1]} cells -> {selection['num_queries']} queries;",
      "best cells (row-major index):", selection["cells"][:5].tolist())
plot_query_selection(image, selection)
plt.show()

# %% [markdown]
# ## 5. Round two: the same detector in fewer steps
#
# The aids above made the model learn; the next question is how many steps it needs. Later DETRs found
# cheap changes that each claim a few AP, and `detr_nb` had each as an option: IoU-aware classification (VarifocalNet/RT-DETR's varifocal loss, DEIM's matchability-aware
# loss, Align-DETR's IA-BCE), Stable-DINO's position-modulated matching cost, DINO's "look forward twice",
# DEIM's mosaics, an EMA of the weights, and RT-DETR's content queries taken from the encoder instead of
# learned. `bench/convergence.py` trained each on the main job's data and model for a fixed number of
# steps (AP at a step does not depend on the machine), on three seeds where it mattered. Only the last one
# paid and stayed; the others are not in the package (docs/convergence.md says which version of the code
# measured each row):

# %%
round_two = group_runs(results, study=16)  # round 2: one group per (variant, steps), one run per seed
for label, group in round_two.items():
    ap = np.array([r["final"]["AP"] for r in group])
    ap50 = np.array([r["final"]["AP50"] for r in group])
    print(f"{label:34s} seeds {','.join(str(r['seed']) for r in group):6s} AP {ap.mean():.3f} ± {ap.std():.3f}"
          f"   AP50 {ap50.mean():.3f} ± {ap50.std():.3f}")

# %%
three_seeds = [label for label, group in round_two.items() if len(group) == 3]
plot_convergence({k: round_two[k] for k in three_seeds}, current=16, figsize=(12, 6.5))
plt.show()

# %% [markdown]
# Most of the means from the literature moved AP by less than changing the seed does (about 0.05 AP
# between seeds at step 1,500), on this small model and data: the IoU-aware losses, the modulated matching
# cost, look-forward-twice, mosaics, one-to-many encoder proposals. One paid: **content queries taken from
# the encoder** (RT-DETR). Two-stage selection already gives each query its *position* from the encoder's
# best cells; with this change it also gives its *content*, the features of that cell, instead of a learned
# vector that must learn from scratch what an object looks like. With it the learning rate can be doubled
# (2e-3), and the main job's recipe `aided` now uses both: over three seeds, AP 0.405 ± 0.012 at step 1,500
# against 0.295 ± 0.025 before, and more at step 1,000 (0.327) than the old recipe at step 1,500. An EMA of
# the weights is ahead early (step 500) and equal at the end, where the cosine schedule has already brought
# the weights to rest. `docs/convergence.md` has every table, the hardware and what did not reach the goal
# (AP 0.45 at step 1,500): the remaining error is mostly in where the boxes sit (AP50 0.70 against AP 0.41).
#
# ## 6. Round three: look where the box is
#
# Round two's recipe trained for a time budget, so a slow laptop got fewer steps and less AP than a fast
# one. The main job now trains a fixed 1,500 steps, and round three looked for what makes those steps count
# (Relation-DETR's position relation, DDQ's distinct queries, more queries, one-to-many supervision, a box
# prior on the cross-attention). One paid: **the box prior** (SMCA's spatially modulated co-attention, here
# from the reference box that each decoder layer refines anyway). A query's cross-attention logit for an
# encoder cell gets $-s_h \, \lVert (c - b_{xy}) / b_{wh} \rVert^2$, with $c$ the cell's centre, $b$ the query's
# reference box and a fixed sharpness $s_h$ per head, from 0.5 to 16: one head looks almost everywhere, the
# sharpest only inside the box. It is the attention's sparsity that the paper's DETR has to learn (the
# takeaways below), given from the first step. Round three's runs, same setup as round two:

# %%
round_three = group_runs(results)           # round 3: the main job's fixed steps; the "round2" variants are
for label, group in round_three.items():    # round two's recipe, before the box prior
    ap = np.array([r["final"]["AP"] for r in group])
    ap50 = np.array([r["final"]["AP50"] for r in group])
    print(f"{label:34s} seeds {','.join(str(r['seed']) for r in group):6s} AP {ap.mean():.3f} ± {ap.std():.3f}"
          f"   AP50 {ap50.mean():.3f} ± {ap50.std():.3f}")

# %% [markdown]
# With the box prior (`prior` above) the model is ahead at every step: over three seeds AP 0.412 at step
# 1,000 against round two's 0.327, and 0.455 ± 0.004 / AP50 0.841 at step 1,500 against 0.405 / 0.695. The
# other candidates moved AP by less than the seeds do, or cost more time per step than they gave (the `round2`
# rows were measured on round two's recipe, with a learned sharpness for the prior).
#
# Then a surprise. Scored layer by layer, that model's encoder proposals alone (the 30 best cells of the
# dense head) reached AP 0.437, and its three decoder layers 0.457 to 0.461: the boxes were as good as the
# features under the dense head. Removing the one encoder layer made them *better* in 1,500 steps (0.485
# against 0.468, seed 0), and 18 % cheaper; a second encoder layer made them much worse (0.352). The paper's
# ablation loses 3.9 AP without the encoder, after 300 COCO epochs with pretrained features; here, from random
# weights and in a few minutes, the freshly initialised attention layer between the CNN and the dense head
# slowed both down more than its global context helped. The time saved buys more images per step at the same
# cost per image: the main job's recipe (`aided` above) is the box prior, no encoder layer, batch 22 and lr
# 3e-3, and it reaches round three's goal, AP >= 0.50 and AP50 >= 0.80 at step 1,500 on seeds 0, 1 and 2.
#
# ## Exercises
#
# 1. Section 2 printed the fraction of queries that get a box target. With Group DETR (K = 3), how many
#    positive queries does one image give the loss, and what fraction of each group's queries is that?
# 2. Why must the matching queries not see the denoising queries in self-attention? What would go wrong
#    at inference, where there are none?
# 3. `AidedDETR` takes its content queries from the selected cells' features, *detached*. What
#    would the gradient do without the detach, and which loss already trains those features?
# 4. The EMA of the weights helps at step 500 and not at step 1,500 of a cosine schedule. Would you expect
#    it to help a run with a constant learning rate at step 1,500?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. K times the number of objects (about 3 x 5 = 15 on this data), but per group the fraction is the same
#    as one-to-one: objects / Q. Group DETR adds positives by adding queries, and each group costs a matching.
# 2. A denoising query holds a noised copy of a true box: a matching query that could attend to it would
#    learn to copy it, and at inference, with no denoising queries, that shortcut is gone and it fails.
# 3. The decoder's losses would flow into the encoder through the content too, pulling the features that the
#    proposals are scored from towards whatever helps the decoder's first layer. The encoder's own dense
#    loss (the two-stage head, keys `*_enc`) trains those features; the detach keeps the two signals apart,
#    as the reference boxes already are.
# 4. Yes, probably: with a constant rate the weights keep jumping around the optimum by about lr x gradient
#    noise, and an average of the last few hundred steps sits closer to it. A cosine to 0 does the same
#    averaging by shrinking the steps, so at its end there is little left for the EMA to remove.
#
# </details>

# %% [markdown]
# ## What to take away
#
# * On this toy the plateau looked like a *matching* problem before a capacity one: with identical,
#   unanchored queries the one-to-one assignment is nearly random and each object trains one query at a time.
# * The literature's canonical cause is the attention: at initialisation each query's cross-attention is spread
#   almost uniformly over all $H \cdot W$ cells, and it takes long training to become sparse enough to pick out
#   one object. Deformable DETR (attend to a few sampled points), Conditional DETR (a spatial query that
#   narrows the attention) and SMCA (a Gaussian prior around each query's box) all attack that; the aids here
#   (reference boxes, refinement, two-stage selection) do it indirectly, by starting each query where an object is.
# * The aids that fix it give the queries a position (anchors, refinement) and start them where the
#   objects are (two-stage selection); the focal loss keeps the many negatives from drowning the few
#   positives. Group DETR and query denoising add positives but, on this budget, made every step
#   slower without a gain that paid for it.
# * Once the model learns, what paid most per step was giving the queries the encoder's content as well
#   as its positions; most refinements from large-scale DETRs were within seed noise here.
# * `python -m detr_nb train` uses the combination by default (`detr_tiny_aided`: two-stage selection with
#   encoder content, box refinement, the box prior, focal loss, no encoder layer, batch 22, lr 3e-3) and
#   prints its recipe;
#   `docs/convergence.md` has the measured tables and the hardware.
