# %% [markdown]
# # 04 · The DETR model: encoder, decoder, object queries, heads
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/04_detr_model.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 6.0 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about 3 minutes, an estimate: the install, the 159 MB DETR-R50
# checkpoint, and a few forward passes at 800 px (86 GFLOPs per image, the paper's Table 1: a fraction of a
# second each on a T4).
# Full mode on 2 CPU cores: 37 s, measured (`bench/notebook_times.py --key-figures`, machine speed 186 ms per
# main-job step, `bench/train_step.py --speed`; `LOAD_OFFICIAL = False`: no checkpoint download).
#
# **Key figure** of a full run (section 1; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): the paper's Figure 2, drawn from the model with the real shapes of an 800 px image.
#
# ![the paper's Figure 2, drawn from the model with the real shapes of an 800 px image](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/04_detr_model.png)

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
# Smoke mode (CPU tests): a small image, random weights (no download).
# Full mode (Colab): the validation size of the paper (shorter side 800) and the official checkpoint.
IMAGE_SHORT_SIDE = 96 if SMOKE else 800
SWITCH_SIZE = (32, 32) if SMOKE else (320, 320)        # input of the scratch-vs-torch comparison
LOAD_OFFICIAL = not SMOKE
THRESHOLD = 0.7

# %% [markdown]
# Notebooks 01-03 built the parts: a ResNet that turns an image into a grid of features, sine codes that
# say where each cell is, and attention. DETR puts them together:
#
# $$\text{image} \xrightarrow{\text{ResNet-50}} (2048, h, w) \xrightarrow{\text{1x1 conv}} (256, h, w)
# \xrightarrow{\text{flatten}} (hw, 256) \xrightarrow{\text{encoder}} \text{memory}
# \xrightarrow[\text{100 object queries}]{\text{decoder}} (100, 256) \xrightarrow{\text{heads}}
# 100 \times (\text{class}, \text{box}).$$
#
# Each of the 100 outputs is one candidate object: a distribution over 91 class ids plus "no object" (COCO
# has 80 categories, but their ids run up to 90: `num_classes` is the largest id + 1, and the unused ids
# simply never occur as targets),
# and a box. There are no anchors and no non-maximum suppression; notebook 05 shows how training makes the
# queries divide the objects among themselves. Here we:
#
# 1. run the forward pass step by step, shapes spelled out, and check it against `model(images)`;
# 2. read the encoder and decoder layers next to their equations;
# 3. count the parameters (the paper's 41.3M) and see what DETR's weight sharing saves;
# 4. switch every layer between the scratch math and PyTorch's fused ops: same outputs;
# 5. load the official checkpoint (Colab) and draw its detections.

# %%
import inspect

import matplotlib.pyplot as plt
import torch

import detr_nb
from detr_nb.figures import draw_boxes
from detr_nb.models.transformer import TransformerDecoderLayer, TransformerEncoderLayer
from detr_nb.pretrained import COCO_CLASSES
from detr_nb.teach import architecture, checks, images, params

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("torch", torch.__version__, "| detr_nb", detr_nb.__version__, "| smoke:", SMOKE, "| device:", device)

# %% [markdown]
# ## 1. Build the model and follow one image through it
#
# `build_model("detr_r50", num_classes=91)` is the official configuration: ResNet-50, hidden size 256,
# 8 heads, 6 encoder and 6 decoder layers, feed-forward 2048, 100 queries. COCO's category ids run up to
# 90, so `num_classes = 91` (max id + 1) and the class head has 92 outputs, the last one meaning
# "no object".

# %%
model = detr_nb.build_model("detr_r50", num_classes=91).to(device).eval()
print(model.config)

image = images.image_to_tensor(images.sample_image(), short_side=IMAGE_SHORT_SIDE).to(device)   # (3, H, W)
images = image[None]                                              # (B=1, 3, H, W)
mask = torch.zeros(1, *image.shape[-2:], dtype=torch.bool, device=device)   # (B, H, W), True = padding
print("images", tuple(images.shape), "| mask", tuple(mask.shape))

# %% [markdown]
# The same steps as `DETR.forward`, one line each. `model.backbone` is the ResNet joined with the
# position encoding (notebooks 01 and 02); `input_proj` is a 1x1 convolution $2048 \to 256$; the transformer
# flattens the grid into $hw$ tokens; the decoder returns the output of **all 6 layers** (each through the
# final LayerNorm), and the heads run on each of them; `model.outputs` puts the last layer's on top and the
# earlier ones in `aux_outputs`.

# %%
with torch.no_grad():
    feat, fmask, pos = model.backbone(images, mask)       # (B, 2048, h, w), (B, h, w), (B, 256, h, w)
    src = model.input_proj(feat)                          # (B, 256, h, w)
    queries = model.query_embed.weight                    # (100, 256): learned object queries
    hs, memory = model.transformer(src, fmask, queries, pos)   # hs (6, B, 100, 256), memory (B, 256, h, w)
    logits, boxes = model.class_embed(hs), model.bbox_embed(hs).sigmoid()   # (6, B, 100, 92), (6, B, 100, 4)
    out = model.outputs(logits, boxes)                    # dict of the last layer + aux_outputs
    ref = model(images, mask)

for name, t in [("backbone features", feat), ("feature mask", fmask), ("positions", pos),
                ("input_proj", src), ("object queries", queries), ("decoder outputs hs", hs),
                ("encoder memory", memory), ("pred_logits", out["pred_logits"]), ("pred_boxes", out["pred_boxes"])]:
    print(f"{name:20s} {tuple(t.shape)}")
print("aux_outputs:", len(out["aux_outputs"]), "earlier decoder layers, each",
      {k: tuple(v.shape) for k, v in out["aux_outputs"][0].items()})
print("step by step == model(images):", torch.equal(out["pred_logits"], ref["pred_logits"])
      and torch.equal(out["pred_boxes"], ref["pred_boxes"]))

# %% [markdown]
# The paper's Figure 2, drawn from this model: `architecture.tensor_shapes` runs it once on an image of
# this size and records the shape of every tensor on the path, and `architecture.plot_detr_architecture` writes
# them on the arrows. Change `IMAGE_SHORT_SIDE` and the shapes follow (the grid is the image / 32).

# %% tags=["key-figure"]
fig = architecture.plot_detr_architecture(architecture.tensor_shapes(model, tuple(image.shape[-2:])))
plt.show()

# %% [markdown]
# ## 2. Encoder and decoder layers
#
# **Encoder layer** (post-norm, as the official model). The tokens $x \in \mathbb{R}^{hw \times 256}$ attend to
# each other; the position code $p$ is added to queries and keys, **not** to the values, so it decides where
# to look but is not mixed into what is read:
#
# $$x' = \mathrm{LN}\big(x + \mathrm{MHA}(x + p,\ x + p,\ x)\big), \qquad
# x'' = \mathrm{LN}\big(x' + \mathrm{FFN}(x')\big), \qquad \mathrm{FFN}(z) = W_2\,\mathrm{ReLU}(W_1 z + b_1) + b_2 .$$
#
# ($W_1$: $256 \to 2048$, $W_2$: $2048 \to 256$; dropout 0.1 after the attention, inside and after the FFN.)

# %%
print(inspect.getsource(TransformerEncoderLayer.forward))

# %% [markdown]
# **Decoder layer.** The decoder's input $t$ starts at **zero**; the learned object queries $q$ (one 256-vector
# per query, `query_embed`) enter like positions, added to queries and keys. Three sub-layers:
# self-attention among the 100 queries (they see each other: this is how two queries learn not to predict
# the same object), cross-attention from the queries to the encoder memory $m$ (with the image positions
# $p$ on the keys), and an FFN:
#
# $$t' = \mathrm{LN}\big(t + \mathrm{MHA}(t + q,\ t + q,\ t)\big), \quad
# t'' = \mathrm{LN}\big(t' + \mathrm{MHA}(t' + q,\ m + p,\ m)\big), \quad
# t''' = \mathrm{LN}\big(t'' + \mathrm{FFN}(t'')\big).$$
#
# ### Your turn: the post-norm decoder layer
#
# Write these three equations with the layer's own submodules: `layer.self_attn`, `layer.multihead_attn`
# (the cross-attention), `layer.norm1`, `layer.norm2`, `layer.norm3` and the FFN `layer.linear1`,
# `layer.activation`, `layer.linear2`; leave the dropouts out (the check runs the layer in eval mode, where they do
# nothing). Our attention, `layer.self_attn(q, k, v, key_padding_mask=None)`, returns the output `(B, L, C)`
# alone, not PyTorch's `(output, weights)` pair, so no `[0]` after it. The check compares values and gradients
# with `TransformerDecoderLayer`'s own forward (same weights), padded pixels in the memory among the cases.

# %%
def my_decoder_layer(layer, tgt, memory, pos, query_pos, memory_key_padding_mask):
    """tgt, query_pos (B, Q, C); memory, pos (B, S, C); memory_key_padding_mask (B, S) True = padding -> (B, Q, C)."""
    raise NotImplementedError("your turn: write my_decoder_layer")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def decoder_layer_solution(layer, tgt, memory, pos, query_pos, memory_key_padding_mask):
    q = k = tgt + query_pos                                                  # (B, Q, C): the queries see each other
    tgt = layer.norm1(tgt + layer.self_attn(q, k, tgt))
    read = layer.multihead_attn(tgt + query_pos, memory + pos, memory,       # (B, Q, C): the queries read the image
                                key_padding_mask=memory_key_padding_mask)
    tgt = layer.norm2(tgt + read)
    return layer.norm3(tgt + layer.linear2(layer.activation(layer.linear1(tgt))))


if SMOKE:
    my_decoder_layer = decoder_layer_solution

# %%
checks.check_decoder_layer(my_decoder_layer)

# %% [markdown]
# The package's layer, dropouts and the pre-norm option included:

# %%
print(inspect.getsource(TransformerDecoderLayer.forward))

# %% [markdown]
# **Heads**, shared by all queries and all decoder layers: a linear layer to $92$ class logits and a
# 3-layer MLP to 4 box numbers, squashed by a sigmoid into normalised $(c_x, c_y, w, h) \in [0, 1]$:
#
# $$\hat p = \mathrm{softmax}(W_c\, t + b_c) \in \Delta^{91}, \qquad
# \hat b = \sigma\big(\mathrm{MLP}_{256 \to 256 \to 256 \to 4}(t)\big).$$
#
# With random weights every query predicts roughly the same thing; the Hungarian matching and set loss of
# notebook 05 are what make them specialise.

# %%
print(model.class_embed, "\n", model.bbox_embed)
probs = out["pred_logits"].softmax(-1)                    # (B, 100, 92)
print("class probabilities", tuple(probs.shape), "| rows sum to 1:", torch.allclose(probs.sum(-1), torch.ones(1, 100, device=device)))
print("boxes in [0, 1]:", bool(((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()))

# %% [markdown]
# ## 3. 41.3 million parameters, and why not far more
#
# `params.parameter_table` counts parameters per component, trainable and frozen. The official numbers:
# **41,524,768 parameters, 41,302,368 trainable** (the paper's "41.3M"); the 222,400 frozen ones are the
# ResNet stem and `layer1`, and the frozen batch-norm statistics are 106,240 buffer elements besides. The
# state dict has 458 tensors with exactly the names of the released checkpoint.

# %%
rows = params.parameter_table(model)
print(params.format_parameter_table(rows))
total = next(r for r in rows if r.component == "total")
assert (total.total, total.trainable) == (41_524_768, 41_302_368)
print("\nstate-dict tensors:", len(model.state_dict()))
fig = params.plot_parameter_table(rows, title="detr_r50, num_classes=91")
plt.show()

# %% [markdown]
# The transformer (17.4M) is as large as it is because of its twelve 256 -> 2048 -> 256 feed-forward
# networks and its attention projections, yet it is small for what it does, because **everything is shared**:
# one 1x1 convolution projects every pixel, one FFN per layer serves every token, one pair of heads serves
# every query at every decoder layer. A naive from-scratch design that gives each position, query or layer
# its own weights grows with the image and the number of queries. `params.naive_parameter_counts`
# compares, for the feature grid of an 800 x 1066 image (25 x 34 cells):

# %%
for r in params.naive_parameter_counts(model, feature_hw=(25, 34)):
    print(f"{r['part']:18s} DETR {r['detr']:>12,}   naive {r['naive']:>18,}   ({r['naive_design']})")

# %% [markdown]
# A fully-connected input layer alone would need hundreds of billions of weights (and a fixed image size);
# separate heads for every query and decoder layer would need 94M weights instead of 156k, and would break
# the symmetry that lets any query predict any object. Sharing is also what makes the model size independent of the image size.
#
# ## 4. Scratch math or fused PyTorch ops: same model
#
# Every layer of `detr_nb` has two code paths (notebooks 01 and 03): `impl="scratch"` (convolution as
# im2col + matmul, softmax and layer norm written out, attention by hand) and `impl="torch"`
# (`F.conv2d`, `F.scaled_dot_product_attention`, ...). The parameters are the same tensors, so
# `detr_nb.set_impl` switches the whole model in place. The outputs agree to float32 rounding:

# %%
x_small = torch.randn(1, 3, *SWITCH_SIZE, device=device)
outs = {}
for impl in ("scratch", "torch"):
    detr_nb.set_impl(model, impl)
    with torch.no_grad():
        outs[impl] = model(x_small)
for key in ("pred_logits", "pred_boxes"):
    print(f"{key}: max |scratch - torch| = {(outs['scratch'][key] - outs['torch'][key]).abs().max().item():.2e}")
torch.testing.assert_close(outs["scratch"]["pred_logits"], outs["torch"]["pred_logits"], rtol=1e-3, atol=1e-3)
_ = detr_nb.set_impl(model, "torch")

# %% [markdown]
# ## 5. The official checkpoint and its detections
#
# `detr_nb.load_pretrained(model, "detr_r50")` downloads the released weights (once, into torch.hub's cache),
# verifies the file's sha256 prefix and loads them **strictly**: every one of the 458 names and shapes must
# match, which is the real test that this from-scratch model *is* DETR. `PostProcess` turns the outputs into
# scores, labels and pixel boxes (softmax, drop "no object", best class per query); we draw the queries whose
# score exceeds `THRESHOLD`, named with COCO's categories (`detr_nb.pretrained.COCO_CLASSES`).
#
# In smoke mode, or with `LOAD_OFFICIAL = False` where nothing can be downloaded, the model keeps its random
# weights and we draw its 5 best-scoring queries: meaningless boxes, shown only to exercise the code. This
# figure needs the official weights.

# %%
if LOAD_OFFICIAL:
    detr_nb.load_pretrained(model, "detr_r50")
    model.eval()
    with torch.no_grad():
        detections_out = model(images)
    print("official DETR-R50 weights loaded (COCO val AP 42.0)")
else:
    detections_out = out                  # the random model's output on the same image (section 1)
    print("LOAD_OFFICIAL is off (smoke mode, or no download): random weights - the boxes below are meaningless")

sizes = torch.tensor([image.shape[-2:]], device=device)          # (B, 2): boxes in the pixels the model saw
found = detr_nb.PostProcess()(detections_out, sizes)[0]         # every query: scores (100,), labels, boxes
keep = found["scores"] > THRESHOLD if LOAD_OFFICIAL else found["scores"].argsort(descending=True)[:5]
kept = {k: v[keep].cpu() for k, v in found.items()}
fig, ax = plt.subplots(figsize=(6, 6 * image.shape[-2] / image.shape[-1]))
draw_boxes(ax, image.cpu(), kept["boxes"], kept["labels"].tolist(), kept["scores"].tolist(), names=COCO_CLASSES)
ax.set_title(f"{len(kept['scores'])} detections ({f'score > {THRESHOLD}' if LOAD_OFFICIAL else 'top 5'})", fontsize=9)
plt.show()
for s, l, b in zip(kept["scores"].tolist(), kept["labels"].tolist(), kept["boxes"].tolist()):
    print(f"{COCO_CLASSES.get(l, l)!s:12s} score {s:.2f}  box (x0, y0, x1, y1) = {[round(v) for v in b]}")

# %% [markdown]
# With the official weights, the portrait gives a confident `person` (and usually her `tie`); the other
# ~98 queries say "no object". Notebook 08 looks inside this model: which pixels each encoder position
# attends to, and where each object query looks.
#
# **Next:** notebook 05 - the Hungarian matching and the set loss that train these 100 queries.
#
# ## Exercises
#
# Predict first, then check with a cell.
#
# 1. `build_model("detr_r50", num_classes=91, num_queries=50)`: how many parameters fewer than the
#    official model, and which tensor loses them? Could it still load the released checkpoint strictly?
# 2. `build_model("detr_r50", num_classes=91, pre_norm=True)`: which state-dict keys does it have that the
#    official checkpoint lacks?
# 3. Run the model on an image twice as wide (same height). Which output shapes change, and by how much
#    does the encoder's self-attention cost grow?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. $50 \times 256 = 12{,}800$ fewer, all in `query_embed.weight` (50 instead of 100 rows). No: that
#    tensor's shape differs from the checkpoint's, so a strict load fails (`load_pretrained` only tolerates
#    a different class head).
# 2. `transformer.encoder.norm.weight` and `.bias`: in pre-norm mode the encoder ends with a LayerNorm; the
#    post-norm official model has none (the decoder's final norm exists in both).
# 3. None of the outputs: `pred_logits (1, 100, 92)` and `pred_boxes (1, 100, 4)` have one row per query,
#    whatever the image. The encoder sees twice as many feature cells, and self-attention compares every cell
#    with every other: about 4x the cost.
#
# </details>
