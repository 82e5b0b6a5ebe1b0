# %% [markdown]
# # 05 · Matching and the set loss
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/05_matching_and_loss.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 7.1 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about a minute, an estimate: the install; the largest computation (section 9,
# 500 steps of the paper's DETR on one batch of four 96 px images) is most of the CPU time below.
# Full mode on 2 CPU cores: 40 s, measured (`bench/notebook_times.py --key-figures`, machine speed 186 ms per
# main-job step, `bench/train_step.py --speed`; alone on the machine; 73 s while other work ran).
#
# **Key figure** of a full run (section 9; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): the paper's DETR overfits one batch: the set loss falls and the boxes move onto the
# objects.
#
# ![the paper's DETR overfits one batch: the set loss falls and the boxes move onto the objects](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/05_matching_and_loss.png)
#
# DETR outputs a fixed-size **set** of Q predictions (class + box) per image, in no particular order.
# The image holds N ≤ Q objects, also in no order. Before any loss can be computed we must decide
# *which prediction answers for which object*. DETR's answer (Carion et al. 2020, §3.1):
#
# 1. score every (prediction, object) pair with a **matching cost** built from the class probability,
#    an L1 box distance and the generalized IoU;
# 2. pick the one-to-one assignment with the lowest total cost (the **Hungarian algorithm**);
# 3. compute the loss on that assignment; every unmatched prediction must say "no object".
#
# This notebook builds that up from boxes: box formats → IoU and GIoU → the three cost matrices →
# the assignment → the set loss, and ends with a widget where you drag a predicted box and watch the
# assignment change. Everything that runs is `detr_nb`'s code (`models.box_ops`, `models.matcher`,
# `models.detr`, `teach.matching`); the cells re-derive the formulas by hand only to check them.

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
# Smoke mode (the tests) only shortens the sweeps and the overfitting; every cell still runs.
SWEEP_POINTS = 21 if SMOKE else 201
OVERFIT_IMAGES = 2 if SMOKE else 4         # section 9: one batch of synthetic images ...
OVERFIT_STEPS = 20 if SMOKE else 500       # ... learned by heart in this many AdamW steps (about a minute on a CPU)

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

import detr_nb
from detr_nb import box_ops
from detr_nb.config import WEIGHTS
from detr_nb.models import HungarianMatcher, PostProcess, SetCriterion
from detr_nb.teach import checks, matching
from detr_nb.teach.matching import explain_matching, plot_cost_terms, plot_matching, plot_matching_graph
from detr_nb.teach.paths import workdir

torch.set_printoptions(precision=3, sci_mode=False)
print("detr_nb", detr_nb.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. Two ways to write a box
#
# DETR's box head ends in a sigmoid and predicts **normalised centre format** `(cx, cy, w, h)`, each in
# [0, 1] as a fraction of the image width or height. Overlaps are easier in **corner format**
# `(x0, y0, x1, y1)`:
#
# $$x_0 = c_x - \tfrac{w}{2},\quad y_0 = c_y - \tfrac{h}{2},\quad x_1 = c_x + \tfrac{w}{2},\quad y_1 = c_y + \tfrac{h}{2}.$$
#
# Both functions map a tensor of shape `(..., 4)` to `(..., 4)`, so they work on one box, on `(Q, 4)`
# predictions or on `(B, Q, 4)` batches alike.

# %%
print(inspect.getsource(box_ops.box_cxcywh_to_xyxy))

box = torch.tensor([0.50, 0.40, 0.30, 0.20])          # (4,) cx, cy, w, h
corners = box_ops.box_cxcywh_to_xyxy(box)             # (4,) x0, y0, x1, y1
print("cxcywh", box, "-> xyxy", corners)
assert torch.allclose(corners, torch.tensor([0.35, 0.30, 0.65, 0.50]))
assert torch.allclose(box_ops.box_xyxy_to_cxcywh(corners), box)  # the round trip is exact

# In pixels: multiply x by the image width and y by its height.
H, W = 256, 320
print("pixels (x0, y0, x1, y1):", (corners * torch.tensor([W, H, W, H])).tolist())

# %% [markdown]
# ## 2. IoU and generalized IoU
#
# For boxes $A$ and $B$, $\mathrm{IoU} = |A\cap B| / |A \cup B|$. It is 1 for identical boxes and 0 as
# soon as they stop overlapping, **however far apart they are**: a loss built on IoU alone gives no
# signal to a prediction that misses its object.
#
# Generalized IoU (Rezatofighi et al. 2019) subtracts the fraction of the smallest enclosing box $C$
# that is empty:
#
# $$\mathrm{GIoU}(A, B) = \mathrm{IoU}(A, B) - \frac{|C \setminus (A\cup B)|}{|C|} \in [-1, 1].$$
#
# `box_ops.generalized_box_iou(boxes1 (N,4), boxes2 (M,4))` returns the `(N, M)` matrix of all pairs
# (corner format). Let's check one pair by hand first.

# %%
a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])   # (1, 4) xyxy, area 4
b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])   # (1, 4) xyxy, area 4, overlap 1x1
iou, union = box_ops.box_iou(a, b)          # (1, 1), (1, 1)
giou = box_ops.generalized_box_iou(a, b)    # (1, 1)
# By hand: intersection 1, union 4 + 4 - 1 = 7, enclosing box 3 x 3 = 9.
print(f"IoU  {iou.item():.4f}  (hand: 1/7 = {1 / 7:.4f})")
print(f"GIoU {giou.item():.4f}  (hand: 1/7 - (9 - 7)/9 = {1 / 7 - 2 / 9:.4f})")
assert abs(iou.item() - 1 / 7) < 1e-6 and abs(giou.item() - (1 / 7 - 2 / 9)) < 1e-6

# %% [markdown]
# Now slide a copy of a box to the right and watch both numbers, and their derivative with respect
# to the moving box's centre `cx` (autograd). `matching.iou_giou_sweep` does the sliding. Where the
# boxes separate, IoU and its gradient are flat zero; GIoU keeps decreasing, so `1 - GIoU` keeps
# pulling the prediction back. That is why DETR's box loss uses $1-\mathrm{GIoU}$ next to L1 (the paper's
# ablation: 4.8 AP lower on COCO when the GIoU term is dropped).

# %%
sweep = matching.iou_giou_sweep([0.3, 0.5, 0.2, 0.2], np.linspace(-0.6, 0.6, SWEEP_POINTS))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].plot(sweep["shift"], sweep["iou"], label="IoU")
axes[0].plot(sweep["shift"], sweep["giou"], label="GIoU")
axes[0].set_xlabel("horizontal shift of the second box")
axes[0].set_title("overlap measures")
axes[1].plot(sweep["shift"], sweep["d_iou"], label="d IoU / d cx")
axes[1].plot(sweep["shift"], sweep["d_giou"], label="d GIoU / d cx")
axes[1].set_xlabel("horizontal shift of the second box")
axes[1].set_title("gradient w.r.t. the moving box's cx")
for ax in axes:
    ax.axvspan(-0.6, -0.2, color="0.9")
    ax.axvspan(0.2, 0.6, color="0.9")
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle("grey: the boxes no longer overlap", fontsize=9)
plt.show()
far = sweep["shift"].abs() > 0.2 + 1e-9
assert (sweep["d_iou"][far] == 0).all() and (sweep["d_giou"][far] != 0).all()

# %% [markdown]
# ### Your turn: generalized IoU of every pair
#
# Write `my_giou` for corner boxes: the `(N, M)` matrix of GIoU between every box of `boxes1` and every box
# of `boxes2`, by broadcasting `(N, 1, 2)` against `(1, M, 2)`. You need the intersection (clamped at 0 when
# the boxes do not overlap), the union $|A| + |B| - |A \cap B|$ and the smallest enclosing box. The check
# compares values and gradients with `box_ops.generalized_box_iou` on overlapping, disjoint, identical and
# nested boxes, zero-area boxes and an empty set of targets.

# %%
def my_giou(boxes1, boxes2):
    """boxes1 (N, 4), boxes2 (M, 4) as (x0, y0, x1, y1) -> (N, M)."""
    raise NotImplementedError("your turn: write my_giou")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def giou_solution(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])       # (N,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])       # (M,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])              # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)                     # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    enclosing = (torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
                 - torch.min(boxes1[:, None, :2], boxes2[None, :, :2])).prod(-1)  # (N, M) area of C
    return inter / union - (enclosing - union) / enclosing


if SMOKE:
    my_giou = giou_solution

# %%
checks.check_giou(my_giou)

# %% [markdown]
# ## 3. A toy image: 3 objects, 5 predictions
#
# `matching.toy_scene()` is a hand-made example with `num_classes = 3` (ids 0..2, 1 = cat, 2 = dog) plus
# the "no object" class ∅ as the last index (3), exactly like the model's `class_embed` output.
#
# | tensor | shape | meaning |
# |---|---|---|
# | `pred_logits` | (Q=5, C+1=4) | class scores of each query |
# | `pred_boxes` | (5, 4) | normalised cx, cy, w, h |
# | `tgt_labels` | (N=3,) | class id of each object |
# | `tgt_boxes` | (3, 4) | normalised cx, cy, w, h |

# %%
scene = matching.toy_scene()
for k in ("pred_logits", "pred_boxes", "tgt_labels", "tgt_boxes"):
    print(f"{k:12s} {tuple(scene[k].shape)}")
print("\nclass probabilities per query (columns: 0, cat, dog, no-object):")
print(scene["pred_logits"].softmax(-1))

# %% [markdown]
# ## 4. The three matching costs as matrices
#
# For prediction $\hat y_q = (\hat p_q, \hat b_q)$ and object $y_n = (c_n, b_n)$ the paper's pair cost is
#
# $$\mathcal{L}_{\rm match}(y_n, \hat y_q) = -\mathbb{1}_{\{c_n\neq\varnothing\}}\,\hat p_q(c_n)
#   + \mathbb{1}_{\{c_n\neq\varnothing\}}\,\mathcal{L}_{\rm box}(b_n, \hat b_q),\qquad
#   \mathcal{L}_{\rm box} = \lambda_{L1}\lVert b_n - \hat b_q\rVert_1 + \lambda_{\rm iou}\bigl(-\mathrm{GIoU}(b_n, \hat b_q)\bigr)$$
#
# with $\lambda_{\rm class} = 1$, $\lambda_{L1} = 5$, $\lambda_{\rm iou} = 2$. (Using $-\mathrm{GIoU}$ instead of
# $1-\mathrm{GIoU}$ only shifts every entry by a constant, which does not change the best assignment.)
# Note the class term is the **probability**, not its log: it stays bounded, commensurate with the box terms.
#
# The matcher (`HungarianMatcher`) builds this cost for every query of a batch against every object of the
# batch and solves it per image. `matching.cost_terms` reads it for one image, term by term, each a `(Q, N)`
# matrix: the matcher's own class term (`HungarianMatcher.class_cost`), the L1 distance and $-\mathrm{GIoU}$
# from `box_ops`, weighted by the matcher's weights; `explain_matching` adds the matcher's assignment.

# %% [markdown]
# ### Your turn: the matching cost of Eq. 1
#
# Write the total cost matrix of one image with the weights 1, 5 and 2: the class term from the softmax
# probabilities, the L1 distance of the `(cx, cy, w, h)` boxes, and $-\mathrm{GIoU}$ of the corner boxes
# (`box_ops.box_cxcywh_to_xyxy` and `box_ops.generalized_box_iou`, or your `my_giou`). The check compares
# it with the cost `HungarianMatcher()` minimises (`matching.cost_terms`), an image without objects (a `(Q, 0)`
# matrix) among the cases.

# %%
def my_matching_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes):
    """pred_logits (Q, C+1), pred_boxes (Q, 4) cxcywh, tgt_labels (N,), tgt_boxes (N, 4) cxcywh -> (Q, N)."""
    raise NotImplementedError("your turn: write my_matching_cost")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def matching_cost_solution(pred_logits, pred_boxes, tgt_labels, tgt_boxes):
    prob = pred_logits.softmax(-1)                                               # (Q, C+1)
    cost_class = -prob[:, tgt_labels]                                            # (Q, N): the probability, not its log
    cost_l1 = (pred_boxes[:, None, :] - tgt_boxes[None, :, :]).abs().sum(-1)     # (Q, N)
    cost_giou = -box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(pred_boxes),
                                             box_ops.box_cxcywh_to_xyxy(tgt_boxes))   # (Q, N)
    return 1 * cost_class + 5 * cost_l1 + 2 * cost_giou


if SMOKE:
    my_matching_cost = matching_cost_solution

# %%
checks.check_matching_cost(my_matching_cost)

# %% [markdown]
# The matcher computes the three terms for all the images of a batch at once (the L1 term with `torch.cdist`),
# weights and sums them, then cuts the matrix per image and solves each part:

# %%
print(inspect.getsource(HungarianMatcher.forward))

# %%
e = explain_matching(scene["pred_logits"], scene["pred_boxes"], scene["tgt_labels"], scene["tgt_boxes"])
print("total cost C, shape", tuple(e["total"].shape), "(queries x targets)\n", e["total"])

# Re-derive the total from the formula and compare with the package.
prob = scene["pred_logits"].softmax(-1)                                         # (Q, C+1)
cost_class = -prob[:, scene["tgt_labels"]]                                      # (Q, N)
cost_l1 = (scene["pred_boxes"][:, None, :] - scene["tgt_boxes"][None]).abs().sum(-1)   # (Q, N)
cost_giou = -box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(scene["pred_boxes"]),
                                         box_ops.box_cxcywh_to_xyxy(scene["tgt_boxes"]))  # (Q, N)
by_hand = 1 * cost_class + 5 * cost_l1 + 2 * cost_giou
assert torch.allclose(by_hand, e["total"], atol=1e-6)
print("formula == package")

fig = plot_cost_terms(e)
fig.suptitle("weighted cost terms (rows: queries, columns: targets); red = chosen pairs", fontsize=10)
plt.show()

# %% [markdown]
# Read the first column (target 0, a cat). Query 1's box is *closer* (smaller L1, better GIoU), but query 1
# believes "dog" ($\hat p = 0.10$ for cat) while query 0 believes "cat" ($\hat p = 0.76$). With weights 1/5/2
# the class term tips the balance: query 0 gets the cat.

# %% [markdown]
# ## 5. The Hungarian assignment
#
# The matching $\hat\sigma$ is the permutation of queries with the lowest total cost:
#
# $$\hat\sigma = \arg\min_{\sigma\in\mathfrak{S}_Q} \sum_{n=1}^{N} \mathcal{L}_{\rm match}(y_n, \hat y_{\sigma(n)}).$$
#
# With Q = 5 and N = 3 there are only $5\cdot4\cdot3 = 60$ candidates, so we can try them all
# (`matching.brute_force_assignment`) and check the Hungarian solver against it
# (`scipy.optimize.linear_sum_assignment`, $O(Q^3)$). With DETR's 100 queries and 20 objects brute
# force would need about $10^{39}$ tries.

# %%
rows, cols = linear_sum_assignment(e["total"].numpy())
bf_rows, bf_cols, bf_cost = matching.brute_force_assignment(e["total"])
print("Hungarian  :", list(zip(rows.tolist(), cols.tolist())), f"cost {e['matched_cost']:.4f}")
print("brute force:", list(zip(bf_rows.tolist(), bf_cols.tolist())), f"cost {bf_cost:.4f}")
assert rows.tolist() == bf_rows.tolist() and cols.tolist() == bf_cols.tolist()

# The batched HungarianMatcher (what training uses) finds the same pairs.
outputs = {"pred_logits": scene["pred_logits"][None], "pred_boxes": scene["pred_boxes"][None]}  # (B=1, Q, .)
targets = [{"labels": scene["tgt_labels"], "boxes": scene["tgt_boxes"]}]
(pred_idx, tgt_idx), = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)(outputs, targets)
print("HungarianMatcher:", pred_idx.tolist(), tgt_idx.tolist())
assert pred_idx.tolist() == rows.tolist() and tgt_idx.tolist() == cols.tolist()

for pair in e["pairs"]:
    print(f"query {pair['query']} -> target {pair['target']}: class {pair['class']:+.2f}  "
          f"L1 {pair['bbox']:+.2f}  GIoU {pair['giou']:+.2f}  = {pair['total']:+.2f}")

# %%
fig, ax = plt.subplots(figsize=(5, 5))
plot_matching(scene["pred_boxes"], scene["tgt_boxes"], e["pred_idx"], e["tgt_idx"], scene["tgt_labels"],
              image_size=scene["image_size"], ax=ax, names=scene["names"])
plt.show()

# %% [markdown]
# Solid boxes are targets, dashed ones the matched predictions (same colour, joined by a line), dotted
# grey ones the unmatched queries. Queries 1 and 4 are unmatched: the loss will ask them for ∅.
#
# The same assignment as a bipartite graph: every query on the left can take every object on the right, each
# edge weighs its cost (darker = cheaper); the Hungarian algorithm keeps the N edges, no two sharing a node,
# of least total weight (bold), and the queries left without an edge answer ∅.

# %%
fig = plot_matching_graph(e["total"], e["pred_idx"], e["tgt_idx"], labels=[scene["names"][int(l)] for l in scene["tgt_labels"]])
plt.show()

# %% [markdown]
# ## 6. The set loss
#
# Given $\hat\sigma$, the loss over all Q queries ($y$ padded with ∅ up to Q) is
#
# $$\mathcal{L}_{\rm Hungarian}(y, \hat y) = \sum_{i=1}^{Q}\Bigl[-\log \hat p_{\hat\sigma(i)}(c_i)
#   + \mathbb{1}_{\{c_i\neq\varnothing\}}\,\mathcal{L}_{\rm box}(b_i, \hat b_{\hat\sigma(i)})\Bigr].$$
#
# In the code (`models.detr.SetCriterion`), as in the official implementation:
# * `loss_ce`: cross-entropy over **all** queries; the ∅ class weighs `eos_coef = 0.1` (most queries are ∅),
#   and the mean is weighted: $\sum_i w_{c_i}\,(-\log\hat p_i(c_i)) / \sum_i w_{c_i}$;
# * `loss_bbox`: $\sum \lVert b - \hat b\rVert_1$ over matched pairs / `num_boxes`;
# * `loss_giou`: $\sum (1-\mathrm{GIoU})$ over matched pairs / `num_boxes`;
# * `loss` = 1·`loss_ce` + 5·`loss_bbox` + 2·`loss_giou`.
#
# ### Your turn: the set loss
#
# Write the three terms for a batch, given the matcher's `indices` (one `(query indices, object indices)` pair per
# image): every query gets a target class, its object's or "no object" (the last index, `num_classes`) when it is
# unmatched; the cross-entropy weighs "no object" `eos_coef` (`F.cross_entropy(..., weight=...)`, which divides
# by the sum of the weights); L1 on the `(cx, cy, w, h)` boxes and $1-\mathrm{GIoU}$ of the matched pairs, each
# summed and divided by `num_boxes`, the number of objects in the batch (at least 1). The check compares values
# and gradients with `SetCriterion` on the same matching, an image without objects and a batch without any among
# the cases.

# %%
def my_set_loss(pred_logits, pred_boxes, targets, indices, eos_coef=0.1):
    """pred_logits (B, Q, C+1), pred_boxes (B, Q, 4) cxcywh, targets [{"labels" (N_i,), "boxes" (N_i, 4)}],
    indices [(query indices, object indices)] per image -> (loss_ce, loss_bbox, loss_giou)."""
    raise NotImplementedError("your turn: write my_set_loss")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def set_loss_solution(pred_logits, pred_boxes, targets, indices, eos_coef=0.1):
    B, Q, C1 = pred_logits.shape
    target_classes = torch.full((B, Q), C1 - 1)                                   # (B, Q): "no object"...
    for b, ((queries, objects), t) in enumerate(zip(indices, targets)):
        target_classes[b, queries] = t["labels"][objects]                         # ...except the matched queries
    weight = torch.ones(C1)
    weight[-1] = eos_coef
    loss_ce = F.cross_entropy(pred_logits.transpose(1, 2), target_classes, weight=weight)   # (B, C+1, Q) input
    src = torch.cat([pred_boxes[b, queries] for b, (queries, _) in enumerate(indices)])     # (M, 4) matched
    tgt = torch.cat([t["boxes"][objects] for t, (_, objects) in zip(targets, indices)])      # (M, 4) their objects
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    giou = torch.diag(box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(src), box_ops.box_cxcywh_to_xyxy(tgt)))
    return loss_ce, (src - tgt).abs().sum() / num_boxes, (1 - giou).sum() / num_boxes


if SMOKE:
    my_set_loss = set_loss_solution

# %%
checks.check_set_loss(my_set_loss)

# %% [markdown]
# The criterion on the toy scene, then each term recomputed by hand from the matching:

# %%
criterion = SetCriterion(scene["num_classes"], HungarianMatcher(), WEIGHTS, eos_coef=0.1)   # WEIGHTS: ce 1, L1 5, GIoU 2
losses = criterion(outputs, targets)
for k in ("loss_ce", "loss_bbox", "loss_giou", "loss", "class_error", "cardinality_error"):
    print(f"{k:18s} {losses[k].item():.4f}")

Q, C1 = scene["pred_logits"].shape
target_classes = torch.full((Q,), scene["num_classes"])        # (Q,) everyone is "no object"...
target_classes[pred_idx] = scene["tgt_labels"][tgt_idx]         # ...except the matched queries
weight = torch.ones(C1)
weight[-1] = 0.1
ce = F.cross_entropy(scene["pred_logits"], target_classes, weight=weight)
src, tgt = scene["pred_boxes"][pred_idx], scene["tgt_boxes"][tgt_idx]          # (N, 4) each
l1 = (src - tgt).abs().sum() / len(tgt)
giou_loss = (1 - torch.diag(box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(src),
                                                        box_ops.box_cxcywh_to_xyxy(tgt)))).sum() / len(tgt)
print("\nby hand: ce", round(ce.item(), 4), " l1", round(l1.item(), 4), " giou", round(giou_loss.item(), 4))
for mine, key in ((ce, "loss_ce"), (l1, "loss_bbox"), (giou_loss, "loss_giou")):
    assert torch.allclose(mine, losses[key], atol=1e-5), key

# %% [markdown]
# **Auxiliary losses.** DETR applies the same loss after every decoder layer (each layer's output goes
# through the shared heads); the matching is redone per layer. The model returns the earlier layers in
# `outputs["aux_outputs"]` and the criterion adds keys suffixed `_0, _1, ...`. Here we fake one extra
# layer with slightly perturbed predictions:

# %%
aux = {"pred_logits": outputs["pred_logits"] + 0.3 * torch.randn(1, Q, C1, generator=torch.Generator().manual_seed(0)),
       "pred_boxes": outputs["pred_boxes"]}
with_aux = criterion({**outputs, "aux_outputs": [aux]}, targets)
print(sorted(k for k in with_aux if k.startswith("loss")))
assert torch.allclose(with_aux["loss"], losses["loss"] + 1 * with_aux["loss_ce_0"] + 5 * with_aux["loss_bbox_0"]
                      + 2 * with_aux["loss_giou_0"])

# %% [markdown]
# ## 7. Why duplicates are punished
#
# A detector trained with a per-prediction loss ("compare each prediction with its nearest object")
# happily predicts the same object many times, and needs non-maximum suppression afterwards. DETR's
# one-to-one matching changes the incentive: only **one** query can own an object; every other query
# is trained towards ∅.
#
# `matching.duplicate_penalty` builds a prediction set with a perfect copy of every target plus **one
# duplicate** of the cat (box shifted by 0.02), whose probability $p$ for "cat" we sweep (the rest goes
# to ∅). The exact copy wins the match, so the duplicate's class target is ∅ and its loss term
# $-0.1\log(1-p)$ explodes as $p\to1$. The nearest-object loss rewards the same duplicate for being sure.

# %%
confidences = np.linspace(0.01, 0.999, SWEEP_POINTS)
dup = matching.duplicate_penalty(confidences)
fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.plot(dup["confidence"], dup["set_ce"], label="DETR set loss (loss_ce)")
ax.plot(dup["confidence"], dup["naive_ce"], label="nearest-object loss")
ax.set_yscale("log")
ax.set_xlabel("duplicate's probability for 'cat'")
ax.set_ylabel("classification loss")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
print("duplicate ever matched:", bool(dup["duplicate_matched"].any()))
assert not dup["duplicate_matched"].any()
assert np.all(np.diff(dup["set_ce"]) > 0) and np.all(np.diff(dup["naive_ce"]) < 0)

# %% [markdown]
# That is the reason DETR needs no NMS: suppression of duplicates is learned, by the decoder's
# self-attention between queries, because the loss asks for it.
#
# ## 8. Drag a prediction
#
# Pick a query and move its box with the sliders (cx, cy, w, h, normalised). The left panel re-draws
# the assignment, the four heatmaps the weighted cost terms; red squares are the chosen pairs. Try:
# * drag query 4 (background) onto the cat at (0.25, 0.30, 0.30, 0.30): does it steal the match? (its
#   class belief is ∅, so the class term barely helps it; the box terms have to do all the work);
# * shrink query 0 until the dog query 1 takes the cat;
# * move query 3 away from the bottom object and see who has to cover it.
#
# The widget calls `matching.matching_view`, which moves the box and calls `explain_matching`; the next
# cell but one calls the same function once without widgets (that is what the tests run).

# %%
import ipywidgets as widgets
from IPython.display import display


def show(query, cx, cy, w, h):
    e, fig = matching.matching_view(scene, query, cx, cy, w, h)
    plt.show()
    for pair in e["pairs"]:
        print(f"query {pair['query']} -> target {pair['target']} ({scene['names'][int(scene['tgt_labels'][pair['target']])]}): "
              f"cost {pair['total']:+.2f}")


start = scene["pred_boxes"][4].tolist()
sliders = {name: widgets.FloatSlider(value=v, min=0.02, max=0.98, step=0.01, description=name,
                                     continuous_update=False)
           for name, v in zip(("cx", "cy", "w", "h"), start)}
query_picker = widgets.Dropdown(options=list(range(Q)), value=4, description="query")
view = widgets.Output()
moving = [False]     # True while a pick moves the four sliders: they must not redraw four times


def redraw(change=None):
    if moving[0]:
        return
    with view:
        view.clear_output(wait=True)
        show(query_picker.value, *(s.value for s in sliders.values()))


def pick(change):
    """Selecting another query puts the sliders on that query's current box, then draws once."""
    moving[0] = True
    for name, v in zip(("cx", "cy", "w", "h"), scene["pred_boxes"][change["new"]].tolist()):
        sliders[name].value = v
    moving[0] = False
    redraw()


query_picker.observe(pick, names="value")
for slider in sliders.values():
    slider.observe(redraw, names="value")
display(widgets.VBox([query_picker, *sliders.values(), view]))
redraw()

# %%
# The same function without a browser: query 4 dragged exactly onto the cat.
e_drag, fig = matching.matching_view(scene, 4, 0.25, 0.30, 0.30, 0.30)
plt.show()
print("pairs:", list(zip(e_drag["pred_idx"].tolist(), e_drag["tgt_idx"].tolist())),
      "| cost of query 4 -> cat", round(float(e_drag["total"][4, 0]), 3))
# A perfect box is worth 5 * 0 + 2 * (-1) = -2 on its own: more than query 0's -1.79, class belief included.
assert (4, 0) in list(zip(e_drag["pred_idx"].tolist(), e_drag["tgt_idx"].tolist()))

# %% [markdown]
# ## 9. The paper's DETR learns one batch
#
# So far: one image and hand-made predictions. Now the whole pipeline of notebooks 01-05: the paper's DETR
# (`build_model("detr_tiny")`: no aid, a half-width ResNet-18, 2 encoder and 2 decoder layers, 25 object
# queries), the matcher and the set loss of this notebook, AdamW with the paper's gradient clip, trained on
# **one batch** of synthetic images. Overfit one batch first is the oldest check of a new network: if the
# matching, the loss or the gradients were wrong, the loss would not fall and the boxes would not move onto
# the objects. Below, the same images before training, half-way and at the end: dashed, the objects; solid,
# the query each object is matched to at that step, joined to it; faint, the queries matched to ∅.
#
# What it does **not** prove: that the model can detect. It has learned these few images by heart, and on a
# new image it would fail. Generalising takes thousands of images and either hundreds of epochs (the paper)
# or the convergence aids: notebook 07 trains with them, notebook 10 shows why the paper's DETR is slow. The
# training loop, a dozen lines around one training step:

# %%
from detr_nb.data import build_dataset, collate_fn
from detr_nb.teach.overfit import overfit_one_batch, plot_overfit

print(inspect.getsource(overfit_one_batch).split('"""')[-1])    # the loop without its docstring

# %% [markdown]
# ### Your turn: the training step
#
# Write the step `step_fn` above: the set loss of the model's outputs (`criterion(model(images, mask), targets)`,
# a dict whose `"loss"` is the weighted total), clear the old gradients (`optimizer.zero_grad()`: `backward`
# *adds* to `.grad`), backpropagate the loss, clip the gradient norm to `max_norm` (the paper's 0.1,
# `torch.nn.utils.clip_grad_norm_`), take the optimizer step, and return the dict. The check runs your step and
# `overfit.train_step` for 3 steps from the same weights and compares the losses and every parameter, then lets
# your step overfit one batch of a small DETR: the loss must fall and every object's matched box reach it.

# %%
def my_train_step(model, criterion, optimizer, images, mask, targets, max_norm=0.1):
    """images (B, 3, H, W), mask (B, H, W), targets [{"labels", "boxes"}] -> the criterion's dict of loss terms."""
    raise NotImplementedError("your turn: write my_train_step")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def train_step_solution(model, criterion, optimizer, images, mask, targets, max_norm=0.1):
    terms = criterion(model(images, mask), targets)              # loss_ce, loss_bbox, loss_giou, loss ...
    optimizer.zero_grad()                                        # else backward adds to the last step's gradients
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return terms


if SMOKE:
    my_train_step = train_step_solution

# %%
checks.check_train_step(my_train_step)

# %% [markdown]
# The run below uses the package's `overfit.train_step`, the same step as yours once the check passes:

# %% tags=["key-figure"]
size = (64, 64) if SMOKE else (96, 96)
few = dict(num_train=OVERFIT_IMAGES, num_val=1, image_size=size, min_objects=1, max_objects=4, progress=False)
shapes = build_dataset("synthetic", "train", "none", root=str(workdir("data") / "synthetic-05"), **few)
images, mask, batch_targets = collate_fn([shapes[i] for i in range(OVERFIT_IMAGES)])
torch.manual_seed(0)
detr = detr_nb.build_model("detr_tiny", num_classes=shapes.num_classes)
result = overfit_one_batch(detr, images, mask, batch_targets, steps=OVERFIT_STEPS, lr=1e-3,
                           snapshots=(0, OVERFIT_STEPS // 2))
first, last = result["losses"][0], result["losses"][-1]
print(f"{OVERFIT_STEPS} steps: loss {first['loss']:.2f} -> {last['loss']:.3f}, "
      f"1 - GIoU {first['loss_giou']:.2f} -> {last['loss_giou']:.3f}")
fig = plot_overfit(result, images, batch_targets, names=shapes.categories)
plt.show()

# %% [markdown]
# ## 10. From predictions to detections
#
# At inference there is no matching: `PostProcess` takes the softmax, drops the ∅ column, keeps the best
# class per query with its probability as the score, and scales boxes to absolute corner coordinates of
# each image's original size `(h, w)`. All Q queries are returned; a score threshold is the user's choice.
# Query 4, which is almost surely ∅, still reports its best real class, with a score of 0.05.

# %%
dets, = PostProcess()(outputs, torch.tensor([scene["image_size"]]))
for q in range(Q):
    print(f"query {q}: label {int(dets['labels'][q])}  score {dets['scores'][q]:.2f}  box (px) "
          f"{[round(v) for v in dets['boxes'][q].tolist()]}")

# %% [markdown]
# **Summary.** Matching cost = $-\hat p(c) + 5\,L_1 + 2\,(-\mathrm{GIoU})$ per pair, the Hungarian
# algorithm picks the cheapest one-to-one assignment, and the loss is cross-entropy for every query (∅ for
# the unmatched, weighted 0.1) plus L1 and $1-\mathrm{GIoU}$ for the matched ones; with them the paper's DETR
# learns one batch by heart. Notebook 06 prepares the data these targets come from; notebook 07 trains with
# this loss on thousands of images.
#
# ## Exercises
#
# Predict first, then check with a cell (`explain_matching`, `SetCriterion`).
#
# 1. Give two queries exactly the same box and class probabilities as the cat. Which one is matched, and
#    what does the loss then ask of the other one?
# 2. Build the criterion with `eos_coef=1.0` instead of 0.1 and compute the loss of the same outputs. Which
#    term changes, in which direction, and what would a model trained that way tend to do?
# 3. The matching cost uses $-\hat p(c)$ but the loss uses $-\log \hat p(c)$. Set a query's cat probability
#    to 0.001: compare the two numbers with the box terms of the same pair. Why does the paper keep the
#    probability in the matching?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. One of them (the solver breaks the tie; with equal costs `linear_sum_assignment` takes the first
#    optimal assignment it finds). The other is unmatched, so its target is ∅: the cross-entropy pushes it
#    to "no object". That is how the set loss removes duplicates without non-maximum suppression.
# 2. Only `loss_ce` (the matching and the box losses do not see `eos_coef`), and here it goes **up**, from
#    0.394 to 0.652 (and `loss` from 2.208 to 2.466): the weighted mean moves towards the unmatched queries'
#    own cross-entropy, and in this scene they are less sure of ∅ than the matched queries are of their
#    classes. (With unmatched queries already confident of ∅, it would go down: the direction depends on the
#    outputs; what does not is that ∅ now weighs 10x more.) Most queries are unmatched, so the loss becomes
#    dominated by "say nothing": a model trained that way predicts ∅ more readily and finds fewer objects
#    (lower recall). 0.1 balances the many unmatched queries against the few matched ones.
# 3. $-\hat p = -0.001$ barely differs from an impossible class (0), while $-\log \hat p = 6.9$ would
#    outweigh the box terms ($5 L_1$ is at most 20 and usually below 2). With probabilities the class term
#    stays on the scale of the box terms, so matching follows both; the paper (sec. 3.1) reports that this
#    worked better empirically.
#
# </details>
