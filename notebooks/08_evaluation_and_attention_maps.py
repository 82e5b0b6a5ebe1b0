# %% [markdown]
# # 08 · Evaluation and attention maps: COCO mAP, predictions, where DETR looks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/08_evaluation_and_attention_maps.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 7.5 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about 3 minutes with notebook 07's checkpoint (on Google Drive), an estimate: the
# install, the 159 MB DETR-R50 checkpoint, the evaluation of 300 small images; without that checkpoint, 4 more
# minutes of training (`TRAIN_MINUTES`, a time budget the trainer stops on).
# Full mode on 2 CPU cores: 15 s, measured (`bench/notebook_times.py --key-figures`, machine speed 126 ms per
# main-job step, `bench/train_step.py --speed`; with notebook 07's checkpoint, `OFFICIAL = False`: no DETR-R50
# download).
#
# **Key figure** of a full run (section 6; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): AP after each decoder layer of the model 07 trained, with and without NMS.
#
# ![AP after each decoder layer of the model 07 trained, with and without NMS](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/08_evaluation_and_attention_maps.png)

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
# Look for notebook 07's run on Google Drive, where notebook 07 keeps it (Colab asks for permission once).
# Each notebook has a runtime of its own: without Drive, 07's run is not here, and section 1 trains a model.
USE_DRIVE = True
RUN_NAME = "aided-synthetic-t4"          # notebook 07's run, evaluated here if its checkpoint is found
TRAIN_MINUTES = 0.3 if SMOKE else 4      # only when no checkpoint of notebook 07 is found: a short run
THRESHOLD = 0.5                          # for drawing only; COCO AP uses every detection
OFFICIAL = not SMOKE                     # also look inside the official DETR-R50 on a real photo
COCO_ANALYSES = False                    # section 6 on the official DETR-R50 too: downloads COCO val2017 (1 GB)
CROWD = dict(counts=(5, 8), images_per_count=1, image_size=(64, 64)) if SMOKE else {}   # section 6's crowds

# %% [markdown]
# A detector is judged by COCO's mean average precision (mAP), and understood by looking at what it
# attends to. This notebook:
#
# 1. gets a trained model: the checkpoint of notebook 07 if it exists, otherwise the same recipe trained
#    here with the package's trainer (in smoke mode: a few steps on 8 tiny images, so the numbers are near 0);
# 2. computes COCO mAP with pycocotools through `detr_nb.evaluate`, step by step, and shows why DETR
#    keeps every query's box;
# 3. draws predictions next to the ground truth;
# 4. opens the transformer: the **encoder self-attention** of a chosen pixel and the **decoder
#    cross-attention** of each object query, interactively (as in the paper's figures 3 and 6);
# 5. in Colab, the same maps for the official DETR-R50 on a real photograph.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import detr_nb
import detr_nb.evaluate as E
from detr_nb import TrainConfig, Trainer
from detr_nb.checkpoint import load_checkpoint, model_from_checkpoint
from detr_nb.config import MAIN_JOB_SYNTHETIC, build_postprocess
from detr_nb.data import build_dataset, collate_fn, make_transforms
from detr_nb.figures import draw_predictions
from detr_nb.pretrained import COCO_CLASSES
from detr_nb.teach import architecture, checks, images
from detr_nb.teach.analysis import (crowd_summary, crowd_test, layer_ap, plot_crowd, plot_layer_ap, plot_slots,
                                    slot_predictions)
from detr_nb.teach.attention import (attention_maps, decoder_attention_figure, decoder_attention_of,
                                     encoder_attention_at, encoder_attention_figure, query_predictions)
from detr_nb.teach.paths import checkpoint_root, workdir

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("torch", torch.__version__, "| detr_nb", detr_nb.__version__, "| smoke:", SMOKE, "| device:", device)

# %% [markdown]
# ## 1. A trained model
#
# Notebook 07 trains `detr_tiny_aided` (the main job's `aided` recipe) on the synthetic shapes and keeps its
# checkpoints in a run folder with a fixed name (`RUN_NAME`) under `checkpoint_root()`: on Google Drive,
# the one place a notebook's runtime shares with another's. If that checkpoint exists,
# `model_from_checkpoint` rebuilds the model from the configuration stored in it, and the run's own
# configuration says which validation set it was trained for. Otherwise we train the same recipe here with
# the same trainer (`Trainer`, the code behind `python -m detr_nb train`) for a short `TRAIN_MINUTES`: its
# numbers are then those of a shorter run than 07's.

# %%
runs = checkpoint_root(mount_drive=USE_DRIVE)
last = runs / RUN_NAME / "checkpoints" / "last.pth"
found = last if last.exists() and not SMOKE else None     # smoke mode always trains its own tiny model

if found is not None:
    state = load_checkpoint(found)
    config = TrainConfig.from_dict(state["config"])
    model = model_from_checkpoint(state, device=device)
    val_set = build_dataset(config.dataset, config.val_split, config.preset, root=config.data_root, **config.data_kwargs)
    print(f"loaded notebook 07's checkpoint: {found} (step {state['step']})")
else:
    data = dict(MAIN_JOB_SYNTHETIC, num_train=8, num_val=4, image_size=(64, 64), max_objects=3) if SMOKE else dict(MAIN_JOB_SYNTHETIC)
    tiny = dict(backbone_width=0.125, hidden_dim=32, nheads=2, dim_feedforward=64, num_queries=8)
    config = TrainConfig(                   # the aided recipe (TrainConfig's default), as in notebook 07
        data_root=str(workdir("data") / ("synthetic-07" if SMOKE else "synthetic")), data_kwargs=data,
        model_overrides=tiny if SMOKE else {}, amp="auto", batch_size=4 if SMOKE else 22,
        time_budget_s=TRAIN_MINUTES * 60, max_steps=6 if SMOKE else None, log_every=1 if SMOKE else 50,
        workers=0 if SMOKE else 2, out=str(workdir("runs") / ("08_smoke" if SMOKE else "08_" + RUN_NAME)),
        eval_at_end=False, progress=True,
    )
    print(f"no checkpoint of notebook 07 found at {last}{' (smoke mode)' if SMOKE else ''}: training a short run "
          f"here, {TRAIN_MINUTES} minutes" + ("" if device.type == "cuda" else
          " on the CPU (in Colab, Runtime > Change runtime type > T4 GPU trains several times faster)"))
    trainer = Trainer(config)                # builds the datasets (and writes the synthetic data if missing)
    reason = trainer.fit()
    model, val_set = trainer.model, trainer.val_set
    print(f"stopped by {reason!r} after {trainer.step} steps; checkpoint {trainer.last_good}")
model = model.to(device).eval()
postprocess = build_postprocess(model)   # aided (focal loss): sigmoid scores, the 100 best (query, class) pairs
names = E.category_names(val_set)
print("model:", config.model, "| post-processing:", type(postprocess).__name__)
print("classes:", names, "| validation images:", len(val_set))

# %% [markdown]
# Notebook 04 drew the paper's Figure 2 for DETR-R50. The model evaluated here is the main job's
# `detr_tiny_aided`: the same backbone -> encoder -> decoder -> heads, and, in orange, what its convergence
# aids add: a dense head on the encoder's cells proposes a box per cell, the best `Q` cells become the
# decoder's reference boxes (and, detached, their features its content queries), and every decoder layer
# refines the box of the layer before (notebook 10 explains each).

# %%
fig = architecture.plot_detr_architecture(architecture.tensor_shapes(model, tuple(val_set[0][0].shape[-2:])))
plt.show()

# %% [markdown]
# ## 2. COCO mAP, step by step
#
# **From outputs to COCO results.** The model's post-processing turns the outputs into (score, label, box)
# triples, with boxes from normalised $(c_x, c_y, w, h)$ to pixels of the image's *original* size. How a score is
# made depends on the loss the model was trained with (`build_postprocess(model)`, the one rule that training,
# the CLI and the pictures share):
#
# * the paper's cross-entropy: softmax over the classes, drop "no object", keep the best class: one
#   triple per query;
# * the focal loss of the aided recipe: every (query, class) pair has its own sigmoid score (there is no
#   "no object" class), and each image keeps its 100 best pairs, as in Deformable DETR, so a query unsure
#   between two classes gives both.
#
# `to_coco_results` writes one dict per triple in COCO's format (`bbox` = $[x, y, w, h]$). Over the validation
# images (what `E.evaluate` does before scoring):

# %%
loader = torch.utils.data.DataLoader(val_set, batch_size=8, collate_fn=collate_fn)
detections = []
with torch.no_grad():
    for batch, mask, targets in loader:
        outputs = model(batch.to(device), mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)       # (B, 2): each original (h, w)
        detections += E.to_coco_results(postprocess(outputs, sizes), [int(t["image_id"]) for t in targets])
print(len(detections), "detections for", len(val_set), "images; the first two:")
for d in detections[:2]:
    print({k: (round(v, 3) if isinstance(v, float) else [round(x, 1) for x in v] if isinstance(v, list) else v)
           for k, v in d.items()})

# %% [markdown]
# **Average precision.** Sort all detections of a class by score. Walking down the list, a detection is a
# true positive if it overlaps a not-yet-matched ground-truth box of that class with IoU $\ge t$, else a
# false positive; this traces a precision-recall curve. COCO's AP at threshold $t$ is the mean of the
# (interpolated) precision at 101 recall levels $r \in \{0, 0.01, \dots, 1\}$:
#
# $$\mathrm{AP}_t = \frac{1}{101} \sum_{r} \max_{\tilde r \ge r} p(\tilde r), \qquad
# \mathrm{AP} = \frac{1}{10} \sum_{t \in \{0.50, 0.55, \dots, 0.95\}} \mathrm{AP}_t \quad \text{(averaged over classes)}.$$
#
# AP50 and AP75 fix $t$; APs/APm/APl restrict to small / medium / large objects ($< 32^2$, $< 96^2$,
# larger, in pixels); AR$k$ is the recall with at most $k$ detections per image *and per class* (pycocotools
# applies its limit to each category of each image). `coco_evaluate` runs
# pycocotools' `COCOeval` and returns the 12 numbers by name:

# %%
coco_gt = E.coco_gt_of(val_set)
stats = E.coco_evaluate(coco_gt, detections, verbose=False)
print("  ".join(f"{k} {stats[k]:.3f}" for k in E.STAT_NAMES))
print("(-1 = no ground-truth object of that size in the validation set)")
if SMOKE:
    print("\n(smoke mode: a few training steps on 8 images - AP near 0 is expected)")

# %% [markdown]
# ### Your turn: AP from a precision-recall curve
#
# Write COCO's AP of one class at one IoU threshold, given each detection's score and whether it was a
# true positive: sort by score (best first; equal scores keep their order), cumulative precision and recall
# after each detection, the **envelope** (each precision replaced by the best one at this recall or beyond),
# read at the 101 recall points $0, 0.01, \dots, 1$ (0 beyond the last recall reached), averaged. No
# detections give 0; `num_gt = 0` gives -1, COCO's "undefined". The check compares with
# `detr_nb.teach.average_precision.average_precision`, which is itself tested against pycocotools.

# %%
def my_average_precision(scores, is_tp, num_gt):
    """scores (D,), is_tp (D,) bool, num_gt objects of this class -> AP, a float."""
    raise NotImplementedError("your turn: write my_average_precision")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def average_precision_solution(scores, is_tp, num_gt):
    if num_gt == 0:
        return -1.0
    if len(scores) == 0:
        return 0.0
    order = torch.sort(torch.as_tensor(scores, dtype=torch.float64), descending=True, stable=True).indices
    hit = torch.as_tensor(is_tp, dtype=torch.bool)[order]                        # (D,) best score first
    tp, fp = hit.double().cumsum(0), (~hit).double().cumsum(0)
    precision, recall = tp / (tp + fp), tp / num_gt                              # (D,) each
    envelope = precision.flip(0).cummax(0).values.flip(0)                        # monotone from the right
    points = torch.as_tensor(np.linspace(0.0, 1.0, 101))                         # COCO's recall points
    first = torch.searchsorted(recall, points)                                   # first detection reaching each
    sampled = torch.where(first < len(recall), envelope[first.clamp(max=len(recall) - 1)], torch.zeros(()))
    return float(sampled.mean())


if SMOKE:
    my_average_precision = average_precision_solution

# %%
checks.check_average_precision(my_average_precision)

# %% [markdown]
# **Why keep every query?** Low-score boxes sit at the end of the sorted list: they can only add recall
# (new true positives) at low precision, and AP takes, at each recall level, the best precision reached at
# that recall *or beyond*, so appending them never lowers the curve. A score threshold cuts the curve short.
# The same detections with only scores above `THRESHOLD` kept:

# %%
kept = [d for d in detections if d["score"] > THRESHOLD]
stats_thr = E.coco_evaluate(coco_gt, kept, verbose=False) if kept else {k: 0.0 for k in E.STAT_NAMES}
print(f"all {len(detections)} detections: AP {stats['AP']:.3f}  AR100 {stats['AR100']:.3f}")
print(f"score > {THRESHOLD} ({len(kept)} kept): AP {stats_thr['AP']:.3f}  AR100 {stats_thr['AR100']:.3f}")
assert stats_thr["AP"] <= stats["AP"] + 1e-6

# %% [markdown]
# `E.evaluate(model, val_set)` is all of the above in one call (the trainer and the CLI run it through
# `E.evaluate_run`, which also applies the run's evaluation settings).
#
# ## 3. Predictions drawn
#
# Solid boxes: predictions with score $\ge$ `THRESHOLD`; dashed: ground truth. Each panel is the image the
# model saw.

# %%
samples = E.sample_predictions(model, val_set, range(min(4, len(val_set))), device)
fig = draw_predictions(samples, threshold=THRESHOLD, names=names)
display(fig)

# %% [markdown]
# ## 4. Where the transformer looks
#
# `attention_maps` runs one forward pass inside `record_attention` (`detr_nb.teach.attention`), whose forward
# hooks make every attention layer record its weights $\mathrm{softmax}(QK^\top/\sqrt d)$ per head. For a feature grid of
# $h \times w = S$ cells:
#
# * encoder layer $\ell$: self-attention $(B, \text{heads}, S, S)$ - row $i$ says which cells cell $i$ reads;
# * decoder layer $\ell$: cross-attention $(B, \text{heads}, Q, S)$ - row $q$ says where object query $q$
#   looks in the image.
#
# Each row is a probability distribution; reshaped to $(h, w)$ and upsampled it becomes a heat map over the
# image (averaged over heads here). In the paper the encoder already separates object instances, and the
# decoder attends to object *extremities* (paws, heads, edges) to place the box. The main job's model has no
# encoder layer (in 1,500 steps from random weights it learned better without one: notebook 10, section 6), so
# its decoder reads the CNN features directly; section 5 shows an encoder's maps, the official DETR-R50's.

# %%
image, target = val_set[0]                               # (3, H, W) normalised, the model's input size
maps = attention_maps(model, image[None].to(device))     # tensors come back on the CPU
print("feature grid", maps["feature_size"], "| encoder layers", len(maps["encoder"]),
      "| decoder layers", len(maps["decoder"]), tuple(maps["decoder"][0].shape))
H, W = image.shape[-2:]
points = [(H // 4, W // 4), (H // 2, W // 2), (3 * H // 4, 3 * W // 4)]
if maps["encoder"]:
    fig = encoder_attention_figure(image, maps, points)
    plt.show()
else:
    print("no encoder self-attention to draw: this model has no encoder layer")

# %% [markdown]
# The decoder's view: the queries that score highest on this image, each with its cross-attention map and
# the box it predicts.

# %%
scores = query_predictions(maps)["scores"]      # (Q,) each query's best real-class score
top = scores.argsort(descending=True)[:4].tolist()
print("top queries:", top, "scores", [round(float(scores[q]), 2) for q in top])
fig = decoder_attention_figure(image, maps, top, names=names)
plt.show()

# %% [markdown]
# ## 5. The official DETR-R50 on a real photograph (Colab)
#
# A model trained for minutes on shapes has little structure to show. The released DETR-R50 (500 epochs on
# COCO, 42.0 AP) does: we load it with `load_pretrained` and record its attention on Grace Hopper's
# portrait at the paper's resolution (shorter side 800: a grid of about $30 \times 25$ cells). In smoke mode, or with
# `OFFICIAL = False` where nothing can be downloaded, this is skipped, and the widgets below use the small model of
# section 1: these two figures need the official weights.

# %%
if OFFICIAL:
    official = detr_nb.build_model("detr_r50", num_classes=91)
    detr_nb.load_pretrained(official, "detr_r50")
    official = official.to(device).eval()
    photo = images.image_to_tensor(images.sample_image(), short_side=800)
    photo_maps = attention_maps(official, photo[None].to(device))
    del official
    pH, pW = photo.shape[-2:]
    fig = encoder_attention_figure(photo, photo_maps, [(int(pH * 0.35), int(pW * 0.5)),
                                                             (int(pH * 0.1), int(pW * 0.5)),
                                                             (int(pH * 0.8), int(pW * 0.5)),
                                                             (int(pH * 0.3), int(pW * 0.1))])
    plt.show()
    p_scores = query_predictions(photo_maps)["scores"]      # the paper's softmax scores
    ranked = p_scores.argsort(descending=True).tolist()
    confident = [q for q in ranked if p_scores[q] > 0.7][:4] or ranked[:2]
    fig = decoder_attention_figure(photo, photo_maps, confident, names=COCO_CLASSES)
    plt.show()
    w_image, w_maps, w_names = photo, photo_maps, COCO_CLASSES
else:
    print("OFFICIAL is off (smoke mode, or no download): these figures need the official weights; "
          "the widgets use the small model trained above")
    w_image, w_maps, w_names = image, maps, names

# %% [markdown]
# ### Explore: encoder self-attention at a chosen pixel
#
# Pick a pixel (image coordinates) and an encoder layer; the map shows, averaged over the heads, how much
# that pixel's token reads from every other cell. In Colab move the sliders; the cell after the widgets
# calls the same functions once directly.

# %%
import ipywidgets as widgets

wH, wW = w_image.shape[-2:]
n_enc, n_dec = len(w_maps["encoder"]), len(w_maps["decoder"])


def show_encoder(y=wH // 2, x=wW // 2, layer=n_enc - 1):
    encoder_attention_figure(w_image, w_maps, [(y, x)], layer=layer)
    plt.show()


def show_decoder(query=0, layer=n_dec - 1):
    decoder_attention_figure(w_image, w_maps, [query], layer=layer, names=w_names)
    plt.show()


if n_enc:
    widgets.interact(show_encoder,
                     y=widgets.IntSlider(value=wH // 2, min=0, max=wH - 1, description="y", continuous_update=False),
                     x=widgets.IntSlider(value=wW // 2, min=0, max=wW - 1, description="x", continuous_update=False),
                     layer=widgets.Dropdown(options=list(range(n_enc)), value=n_enc - 1, description="layer"))
else:
    print("no encoder layer to explore in this model (the official DETR-R50 has six: section 5 with OFFICIAL on)")

# %% [markdown]
# ### Explore: decoder cross-attention per object query
#
# Queries are listed best score first. Low-scoring queries ("no object") often attend diffusely; confident
# ones concentrate on the object, mostly on its borders.

# %%
w_scores = query_predictions(w_maps)["scores"]
order = w_scores.argsort(descending=True).tolist()
widgets.interact(show_decoder,
                 query=widgets.Dropdown(options=[(f"query {q} (score {w_scores[q]:.2f})", q) for q in order],
                                        value=order[0], description="query"),
                 layer=widgets.Dropdown(options=list(range(n_dec)), value=n_dec - 1, description="layer"));

# %%
# The widgets' functions, called directly (this is what runs without a browser), and two checks.
show_decoder(order[0], layer=n_dec - 1)
dec_map = decoder_attention_of(w_maps, order[0])
print("decoder map", tuple(dec_map.shape), f"sum {dec_map.sum().item():.3f}")
assert torch.isclose(dec_map.sum(), torch.tensor(1.0), atol=1e-4)
if n_enc:
    show_encoder(wH // 3, wW // 3, layer=0)
    enc_map = encoder_attention_at(w_maps, wH // 3, wW // 3, layer=0)
    print("encoder map", tuple(enc_map.shape), f"sum {enc_map.sum().item():.3f}")
    assert torch.isclose(enc_map.sum(), torch.tensor(1.0), atol=1e-4)

# %% [markdown]
# ## 6. The paper's analyses, on the model you trained
#
# Section 4.2 of the paper looks inside a trained DETR three ways. Each runs here on the model of section 1
# (and, with `COCO_ANALYSES` in Colab, on the official DETR-R50 and COCO's validation images).
#
# **AP after each decoder layer, with and without NMS** (the paper's Figure 4). Every decoder layer's output
# goes through the same heads (the auxiliary losses train them all), so each layer's predictions can be
# scored on their own. In the paper, AP rises at every layer; non-maximum suppression helps the first layers,
# whose queries have not yet seen each other enough to avoid predicting one object twice, and slightly lowers
# AP at the last, where it can only remove true positives: the reason DETR needs no NMS.

# %% tags=["key-figure"]
rows = layer_ap(model, val_set, device, max_images=None if not SMOKE else 4)
for r in rows:
    print(f"layer {r['layer']}: AP {r['AP']:.3f} (with NMS {r['AP_nms']:.3f})  AP50 {r['AP50']:.3f} "
          f"(with NMS {r['AP50_nms']:.3f})")
fig = plot_layer_ap(rows, title=f"{config.model}: AP after each decoder layer")
plt.show()

# %% [markdown]
# In the run behind this notebook's key figure (notebook 07's model, its 1,500 steps on the CPU), AP went 0.513,
# 0.515, 0.516 over the three layers: the first layer already has most of it, because two-stage selection
# starts the queries on the dense head's best boxes and each layer refines the boxes of the layer before rather
# than proposing anew. NMS changed AP by at most 0.001 at any layer (slightly down at the first two, equal at
# the last) and raised AP50 by about 0.005: a few objects are still predicted twice, but their duplicates score
# low. In the paper's Figure 4 NMS helps the first of DETR-R50's six layers clearly and lowers AP at the last,
# whose self-attention has learned to remove duplicates.
#
# **What each query slot predicts** (the paper's Figure 7): the centre of every box a query predicts over the
# validation images, one panel per query, green for small boxes, red for large horizontal ones, blue for large
# vertical ones. In the paper's DETR each slot is a learned query and specialises in a region and a size. In
# this model the queries are the encoder's best cells in rank order, so panel k shows what the k-th best
# proposal predicts: its position follows the objects of each image rather than a fixed region.

# %%
slots = slot_predictions(model, val_set, device, max_images=None if not SMOKE else 4)
fig = plot_slots(slots, n=min(20, slots["centers"].shape[0]))
plt.show()

# %% [markdown]
# **More objects than any training image had** (the paper's Figure 5: no COCO training image has more than 13
# giraffes, yet DETR finds 24 in a synthetic one; the limit is the number of queries). The main job's images
# hold at most 10 shapes; these hold 10 (the training maximum, for comparison) to 30, drawn at the training
# images' size and in the lower half of their shape sizes so that 30 fit. (The resolution matters: drawn at
# 160 px instead of 96, the same shapes are boxed at the wrong size and hardly any counts as found.)

# %%
crowd_size = config.data_kwargs.get("image_size", (160, 160))      # the resolution the model was trained at
crowd = crowd_test(model, transforms=make_transforms(config.preset, train=False), device=device,
                   **(CROWD or dict(counts=(10, 20, 25, 30), image_size=crowd_size)))
for n, r in crowd_summary(crowd).items():
    print(f"{n} shapes asked: {r['objects']:.1f} drawn, {r['found']:.1f} found ({r['queries']} queries)")
fig = plot_crowd(crowd, image=crowd[-1]["image"], detections=crowd[-1]["detections"],
                 train_max=config.data_kwargs.get("max_objects"), names=names)
plt.show()

# %% [markdown]
# In the same run the model found 5.8 of 10 shapes (score at least 0.5, IoU at least 0.5), and 4.2 to 6.0 of
# 20, 25 or 30: the count stops at what it finds at the training maximum, far below its 30 queries. (With
# the score threshold at 0.3 it found about 8 of 10 and 10 to 12 of 20 or 30, three images each.) The paper's
# DETR, trained on COCO with 100 queries, found all 24 giraffes. This model saw 6 classes of shapes, never
# more than 10 per image, for minutes, and it has learned how many objects an image holds along with what
# they look like. The paper's test asks whether a DETR finds more objects than it was trained on: this one
# does not.

# %%
if COCO_ANALYSES and not SMOKE:      # Colab: the official DETR-R50 on COCO val2017 (1 GB download, 159 MB weights)
    coco_val = detr_nb.data.build_dataset("coco2017", "val", "official")
    official = detr_nb.build_model("detr_r50", num_classes=91)
    detr_nb.load_pretrained(official, "detr_r50")
    official = official.to(device).eval()
    fig = plot_layer_ap(layer_ap(official, coco_val, device, max_images=500), title="DETR-R50 on 500 COCO images")
    plt.show()
    fig = plot_slots(slot_predictions(official, coco_val, device, max_images=500), n=20)
    plt.show()
    del official

# %% [markdown]
# **Next:** notebook 09 compares training approaches on a real dataset in Colab.
#
# ## Exercises
#
# Predict first, then check with a cell (`E.evaluate`, `draw_predictions`).
#
# 1. Keep only each image's 10 best-scoring detections before COCO evaluation. Which of AP, AP50, AR10
#    and AR100 can change, and in which direction?
# 2. Raise the drawing threshold from 0.5 to 0.9. Does the COCO AP change?
# 3. An encoder attention map of one feature cell sums to 1 over the image. Does a decoder query's
#    cross-attention map have to sum to 1 too? What about a query that predicts "no object"?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. All four can only drop or stay: fewer detections, no new true positive. AR10 too, because pycocotools
#    applies maxDets per image *and per category*: an image's 10 best detections overall may leave out
#    detections of a class that were among that class's 10 best (on an image of two classes with 10 objects
#    each, AR10 falls from up to 1.0 to at most 0.5). AP and AP50 usually drop a little: low-scoring true
#    positives add recall at the end of the precision-recall curve, and COCO keeps every detection it is given.
# 2. No: COCO AP ranks all detections by score, with no threshold; the threshold only decides what is drawn.
# 3. Yes: it is a softmax over the feature cells (padding excluded), so every query's map sums to 1,
#    confident or not. A "no object" query's map is usually diffuse, but it still sums to 1.
#
# </details>
