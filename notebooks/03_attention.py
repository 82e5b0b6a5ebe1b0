# %% [markdown]
# # 03 · Attention: scaled dot products, heads and masks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/03_attention.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 5.5 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about a minute, an estimate: the install; attention over 24 tokens
# takes milliseconds on any device.
# Full mode on 2 CPU cores: 7 s, measured (`bench/notebook_times.py --key-figures`, machine speed 186 ms per
# main-job step, `bench/train_step.py --speed`).
#
# **Key figure** of a full run (section 4; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): what each head of a readable toy attention looks at.
#
# ![what each head of a readable toy attention looks at](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/03_attention.png)

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
# Everything here is small; smoke mode only shortens the toy sequence of the widget.
NUM_TOKENS = 12 if SMOKE else 24

# %% [markdown]
# Every layer of DETR's transformer is built around one operation, attention. This notebook derives it
# from the formula, checks each step against PyTorch, and then looks at what the heads of a multi-head
# attention do:
#
# 1. scaled dot-product attention by hand (and why the $\sqrt{d}$);
# 2. multi-head attention with packed projections, the way `nn.MultiheadAttention` (and DETR's
#    checkpoint) stores them;
# 3. key-padding masks, which keep padded pixels out of every softmax;
# 4. a widget to explore the weights of each head on a toy input;
# 5. the rest of a transformer layer: LayerNorm, residuals, dropout, and the post-norm block DETR uses.
#
# You write five pieces yourself ("Your turn"): the head split and merge, attention with a padding mask,
# LayerNorm and the whole encoder layer; a check compares each with the package's.

# %%
import inspect
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import detr_nb
from detr_nb.models import attention, layers
from detr_nb.teach import checks
from detr_nb.teach.attention import (attention_with_weights, plot_attention_heads, plot_attention_query,
                                     positional_toy_attention, to_torch_mha)

torch.manual_seed(0)
print("torch", torch.__version__, "| detr_nb", detr_nb.__version__, "| smoke:", SMOKE)

# %% [markdown]
# ## 1. Scaled dot-product attention
#
# Queries $Q \in \mathbb{R}^{L_q \times d}$ ask, keys $K \in \mathbb{R}^{L_k \times d}$ answer, values
# $V \in \mathbb{R}^{L_k \times d_v}$ are what gets averaged:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}}\right) V,
# \qquad \mathrm{softmax}(s)_j = \frac{e^{s_j}}{\sum_{j'} e^{s_{j'}}} \ \text{(per row)} .$$
#
# Row $i$ of the weight matrix $A = \mathrm{softmax}(QK^\top/\sqrt d) \in \mathbb{R}^{L_q \times L_k}$ is a
# probability distribution over the keys; output $i$ is the $A$-weighted average of the values. Step by
# step, with the package's scratch `softmax`:

# %%
Lq, Lk, d, dv = 4, 6, 8, 3
Q, K, V = torch.randn(Lq, d), torch.randn(Lk, d), torch.randn(Lk, dv)

scores = Q @ K.T / math.sqrt(d)                    # (Lq, Lk): one score per query-key pair
A = layers.softmax(scores, dim=-1)                 # (Lq, Lk): rows sum to 1
out = A @ V                                        # (Lq, dv): weighted average of the values
print("scores", tuple(scores.shape), "| weights", tuple(A.shape), "| output", tuple(out.shape))
print("row sums of A:", A.sum(-1))

pkg = attention.attention(Q, K, V, impl="scratch")
ref = F.scaled_dot_product_attention(Q[None], K[None], V[None])[0]
print(f"max |by hand - attention.attention|        = {(out - pkg).abs().max().item():.2e}")
print(f"max |by hand - F.scaled_dot_product_attention| = {(out - ref).abs().max().item():.2e}")

# %% [markdown]
# The package's softmax subtracts each row's maximum before exponentiating. Mathematically nothing
# changes ($e^{s_j - m} / \sum e^{s_{j'} - m}$ is the same fraction), numerically it keeps $e^{s}$ from
# overflowing. It also returns zeros, not NaN, for a row whose keys are *all* masked (every score
# $-\infty$) - more on masks in section 3.

# %%
print(inspect.getsource(layers.softmax))
big = torch.tensor([1000.0, 999.0, 990.0])
print("naive exp/sum:", torch.exp(big) / torch.exp(big).sum(), "| layers.softmax:", layers.softmax(big))
print("all keys masked -> F.softmax:", F.softmax(torch.full((3,), -math.inf), -1),
      "| layers.softmax:", layers.softmax(torch.full((3,), -math.inf)))

# %% [markdown]
# **Why divide by $\sqrt d$?** If the entries of $q$ and $k$ are independent with variance 1, then
# $q^\top k$ is a sum of $d$ such products: variance $d$. For $d = 32$ (DETR's head size) scores spread
# over $\pm 10$ or so, and the softmax puts most of the weight on a single key, where its gradient
# vanishes (the printout: average largest weight among 16 keys).
# Dividing by $\sqrt d$ brings the variance back to 1:

# %%
for dim in (4, 32, 256):
    q, k = torch.randn(2000, dim), torch.randn(2000, 16, dim)
    s = (k @ q[:, :, None])[..., 0]                                   # (2000, 16) scores
    print(f"d={dim:4d}: std of q.k = {s.std().item():6.2f} -> max weight {F.softmax(s, -1).max(-1).values.mean().item():.2f}"
          f" | scaled std = {(s / math.sqrt(dim)).std().item():.2f} -> max weight "
          f"{F.softmax(s / math.sqrt(dim), -1).max(-1).values.mean().item():.2f}")

# %% [markdown]
# ## 2. Multi-head attention with packed projections
#
# One attention compares tokens in one way. Multi-head attention runs $h$ of them in parallel, each on its
# own learned projection of size $d = C / h$ (DETR: $C = 256$, $h = 8$, $d = 32$), and mixes the results:
#
# $$\mathrm{MultiHead}(Q, K, V) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h)\, W^O, \qquad
# \mathrm{head}_i = \mathrm{Attention}(Q W_i^Q, K W_i^K, V W_i^V).$$
#
# PyTorch (and DETR's checkpoint) store the three input projections *packed*: `in_proj_weight` of shape
# $(3C, C)$ is $[W^Q; W^K; W^V]$ stacked, `in_proj_bias` $(3C,)$, then `out_proj` is a $C \times C$ linear
# layer. The heads are not separate matrices: head $i$ is rows $[i d, (i+1) d)$ of each projection. Here is
# the whole computation by hand, shapes on the right, with `detr_nb.models.attention.MultiheadAttention`'s weights.

# %% [markdown]
# ### Your turn: split the channels into heads, and merge them back
#
# Before the by-hand computation below, write the two reshapes it needs. `my_split_heads` turns $(B, L, C)$
# into $(B, h, L, d)$ so that head $i$ holds channels $[i d, (i+1) d)$ of every token; `my_merge_heads` undoes
# it, $(B, h, L, d) \to (B, L, h d)$, the heads side by side. The check compares both with
# `detr_nb.models.attention.split_heads` / `merge_heads`. (A reshape alone gives the right shape and the wrong
# numbers: it is the classic mistake, and the check names it.)

# %%
def my_split_heads(x, num_heads):
    """(B, L, C) -> (B, h, L, C // h)."""
    raise NotImplementedError("your turn: write my_split_heads")


def my_merge_heads(x):
    """(B, h, L, d) -> (B, L, h * d)."""
    raise NotImplementedError("your turn: write my_merge_heads")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def split_heads_solution(x, num_heads):
    B, L, C = x.shape
    return x.reshape(B, L, num_heads, C // num_heads).transpose(1, 2)       # (B, h, L, d)


def merge_heads_solution(x):
    B, h, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, h * d)                            # (B, L, C)


if SMOKE:
    my_split_heads, my_merge_heads = split_heads_solution, merge_heads_solution

# %%
checks.check_heads(my_split_heads, my_merge_heads)

# %% [markdown]
# The whole multi-head computation by hand, with these reshapes. The package's module returns only its output;
# `attention_with_weights` also records its weights, with a forward hook that recomputes
# $\mathrm{softmax}(QK^\top/\sqrt d)$ from the module's own projections (`detr_nb.teach.attention.record_attention`),
# and `to_torch_mha` copies the same weights into PyTorch's `nn.MultiheadAttention`, which returns its weights
# when asked:

# %%
B, L, C, h = 2, 5, 16, 4
mha = attention.MultiheadAttention(C, h, impl="scratch").eval()
with torch.no_grad():
    mha.in_proj_bias.normal_()                                   # non-zero biases make the check stricter
x = torch.randn(B, L, C)                                         # (B, L, C) tokens (self-attention: q = k = v = x)

with torch.no_grad():
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)                  # each (C, C)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)                    # each (C,)
    q = (x @ w_q.T + b_q).reshape(B, L, h, C // h).transpose(1, 2)   # (B, h, L, d)
    k = (x @ w_k.T + b_k).reshape(B, L, h, C // h).transpose(1, 2)   # (B, h, L, d)
    v = (x @ w_v.T + b_v).reshape(B, L, h, C // h).transpose(1, 2)   # (B, h, L, d)
    weights = layers.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // h))   # (B, h, L, L)
    heads = weights @ v                                          # (B, h, L, d)
    concat = heads.transpose(1, 2).reshape(B, L, C)              # (B, L, C): heads side by side
    by_hand = concat @ mha.out_proj.weight.T + mha.out_proj.bias # (B, L, C)

out_pkg, w_pkg = attention_with_weights(mha, x, x, x)          # package output + recorded weights
torch_mha = to_torch_mha(mha)                                  # nn.MultiheadAttention, same state dict
out_ref, w_ref = torch_mha(x, x, x, average_attn_weights=False)
print("state-dict keys:", list(mha.state_dict()))
print(f"max |by hand - package|            = {(by_hand - out_pkg).abs().max().item():.2e}")
print(f"max |package - nn.MultiheadAttention| = {(out_pkg - out_ref).abs().max().item():.2e}")
print(f"max |weights: package - torch|        = {(w_pkg - w_ref).abs().max().item():.2e}  (shape {tuple(w_pkg.shape)})")

# %% [markdown]
# `impl="torch"` replaces the scratch matmuls and softmax by `F.linear` and
# `F.scaled_dot_product_attention` (PyTorch's fused kernel). Same parameters, so we can switch in place
# and compare outputs **and gradients** (training mode, dropout 0):

# %%
mha.train()
x_req = x.clone().requires_grad_(True)
results = {}
for impl in ("scratch", "torch"):
    layers.set_impl(mha, impl)
    mha.zero_grad()
    x_req.grad = None
    y = mha(x_req, x_req, x_req)
    (y * torch.linspace(-1, 1, C)).sum().backward()
    results[impl] = (y.detach(), x_req.grad.clone(), mha.in_proj_weight.grad.clone())
for name, a, b in zip(("output", "d/dx", "d/d in_proj_weight"), results["scratch"], results["torch"]):
    print(f"{name:20s} max |scratch - torch| = {(a - b).abs().max().item():.2e}")
_ = layers.set_impl(mha.eval(), "scratch")

# %% [markdown]
# ## 3. Key-padding masks
#
# A batch holds images of different sizes, padded to the largest. The padded pixels must not receive
# attention: the mask adds $-\infty$ to their scores, so after the softmax their weight is exactly 0,
#
# $$A = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt d} + M\right), \qquad
# M_{ij} = \begin{cases} -\infty & \text{key } j \text{ is padding} \\ 0 & \text{otherwise.}\end{cases}$$
#
# `key_padding_mask` is $(B, L_k)$, **True = padding**, the same convention as `nn.MultiheadAttention` and as
# DETR's image masks. Sequence 1 below has 3 real tokens and 2 padded ones:

# %%
kpm = torch.tensor([[False] * 5, [False, False, False, True, True]])       # (B, L)
out_m, w_m = attention_with_weights(mha, x, x, x, key_padding_mask=kpm)
out_r, w_r = torch_mha(x, x, x, key_padding_mask=kpm, average_attn_weights=False)
torch.set_printoptions(precision=3, sci_mode=False)
print("head 0 weights of sequence 1 (columns 3, 4 = padded keys):\n", w_m[1, 0])
print(f"max |package - nn.MultiheadAttention| with mask: out {(out_m - out_r).abs().max().item():.2e}, "
      f"weights {(w_m - w_r).abs().max().item():.2e}")

# The real tokens of sequence 1 get exactly what they get without the padding at all:
alone, _ = attention_with_weights(mha, x[1:, :3], x[1:, :3], x[1:, :3])
print(f"real tokens, padded batch vs alone: max diff {(out_m[1, :3] - alone[0]).abs().max().item():.2e}")

# %% [markdown]
# ### Your turn: scaled dot-product attention with a key-padding mask
#
# Write `my_attention` for tensors that already have their heads: $(B, h, L, d)$. Scores, then the mask as
# $-\infty$ on padded keys *before* the softmax, then the weighted average of the values. A query whose keys
# are all padding must get 0: `F.softmax` gives NaN on a row of $-\infty$, section 1's `layers.softmax` gives 0.
# The check compares values and gradients (w.r.t. q, k and v) with `detr_nb.models.attention.attention`,
# one batch element fully padded among the cases.

# %%
def my_attention(q, k, v, key_padding_mask=None):
    """q (B, h, Lq, d), k (B, h, Lk, d), v (B, h, Lk, dv), key_padding_mask (B, Lk) True = padding or None
    -> (B, h, Lq, dv)."""
    raise NotImplementedError("your turn: write my_attention")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def attention_solution(q, k, v, key_padding_mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])                # (B, h, Lq, Lk)
    if key_padding_mask is not None:                                         # (B, Lk) -> (B, 1, 1, Lk)
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    weights = layers.softmax(scores, dim=-1)                                 # rows of -inf give 0, not NaN
    return weights @ v                                                       # (B, h, Lq, dv)


if SMOKE:
    my_attention = attention_solution

# %%
checks.check_attention(my_attention)

# %% [markdown]
# The outputs at padded *query* positions (rows 3, 4 of sequence 1) are computed but meaningless; later
# layers mask them as keys again and the loss never looks at them. In DETR's encoder the mask comes from
# the feature-level padding mask flattened to $(B, hw)$; the decoder's cross-attention uses the same mask
# for the image keys. PyTorch's `nn.MultiheadAttention` also takes an `attn_mask` $(L_q, L_k)$ (True = blocked),
# a mask per query-key pair; DETR does not need one (extensions such as Group DETR do, to keep groups of
# queries apart: notebook 10), so `detr_nb`'s attention has only the padding mask.
#
# ## 4. What the heads look at: a readable toy
#
# Random weights make random-looking heads. `positional_toy_attention` builds a multi-head attention
# whose heads can be read: the tokens are 1-D sine position codes (notebook 02's formula, with temperature
# $T = 100$ instead of DETR's 10000, so that 32 channels span frequencies a toy of a few dozen tokens can show),
# $W^Q = W^K = \sqrt{s}\,I$ and
# $W^V = W^O = I$. Each head then sees one band of frequencies (channels $[i d, (i+1) d)$), and since
# $\sin a \sin b + \cos a \cos b = \cos(a - b)$ its score between tokens $a$ and $b$ is
# $s \sum_{j \in \text{head}} \cos\big((a - b)\,\omega_j\big) / \sqrt d$: the high-frequency head attends sharply
# to close neighbours, the lowest-frequency head almost uniformly. Different heads, different ranges - the
# reason to have several.

# %% tags=["key-figure"]
toy, tokens = positional_toy_attention(num_tokens=NUM_TOKENS, embed_dim=32, num_heads=4, sharpness=3.0)
_, toy_w = attention_with_weights(toy, tokens, tokens, tokens)           # (1, 4, N, N)
print("tokens", tuple(tokens.shape), "| weights", tuple(toy_w.shape))
fig = plot_attention_heads(toy_w, titles=[f"head {i}: channels {8 * i}-{8 * i + 7}" for i in range(4)])
plt.show()

# %% [markdown]
# Explore one head and one query; `padded keys` masks the last keys as padding (their weight drops to 0
# and the remaining weights of the row grow so that it still sums to 1). In Colab move the controls;
# the next cell calls the widget's function directly.

# %%
import ipywidgets as widgets


def show_head(head=0, query=NUM_TOKENS // 2, padded_keys=0):
    kpm = torch.zeros(1, NUM_TOKENS, dtype=torch.bool)
    if padded_keys:
        kpm[0, NUM_TOKENS - padded_keys:] = True
    _, w = attention_with_weights(toy, tokens, tokens, tokens, key_padding_mask=kpm)
    plot_attention_query(w, head=head, query=query)
    plt.show()
    return w


def draw_head(head=0, query=NUM_TOKENS // 2, padded_keys=0):   # the widget's callback: draws, returns nothing
    show_head(head, query, padded_keys)


widgets.interact(draw_head,
                 head=widgets.Dropdown(options=[0, 1, 2, 3], value=0, description="head"),
                 query=widgets.IntSlider(value=NUM_TOKENS // 2, min=0, max=NUM_TOKENS - 1, description="query",
                                         continuous_update=False),
                 padded_keys=widgets.IntSlider(value=0, min=0, max=NUM_TOKENS - 1, description="padded keys",
                                               continuous_update=False));

# %%
w = show_head(head=1, query=3, padded_keys=4)
print("row sums:", w[0, 1].sum(-1)[:4], "| weight on the 4 padded keys:", w[0, :, :, -4:].abs().max().item())
assert torch.allclose(w.sum(-1), torch.ones(1, 4, NUM_TOKENS)) and w[0, :, :, -4:].abs().max() == 0

# %% [markdown]
# ## 5. The rest of a transformer layer: LayerNorm, residuals, dropout
#
# Attention is one of two sub-layers; a DETR encoder layer is
#
# $$x' = \mathrm{LN}_1\bigl(x + \mathrm{Dropout}(\mathrm{MHA}(q = k = x + \mathrm{pos},\ v = x))\bigr), \qquad
# y = \mathrm{LN}_2\bigl(x' + \mathrm{Dropout}(W_2\, \mathrm{ReLU}(W_1 x'))\bigr).$$
#
# * **Residual** ($x + \dots$): each sub-layer adds a correction to its input instead of replacing it. The
#   identity path carries the gradient straight down through all six layers, so a deep stack trains.
# * **LayerNorm** normalises every token's $C$ channels to mean 0 and variance 1 (the biased variance,
#   over the last axis only, independently per token), then applies a learned scale $\gamma$ and shift
#   $\beta$: $\mathrm{LN}(x) = \gamma \odot (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta$. Unlike batch norm
#   it does not depend on the batch, so it is the same in training and at inference.
# * **Dropout** ($p = 0.1$ in DETR) zeroes each activation with probability $p$ in training and scales the
#   survivors by $1 / (1 - p)$, so the expected value is unchanged; in eval mode it is the identity.
# * **Post-norm**: DETR, like the original Transformer, normalises *after* each residual sum. Pre-norm
#   ($x + \mathrm{MHA}(\mathrm{LN}(x))$) trains more easily at depth; the official code has it as an option,
#   off, and so does `detr_nb` (`normalize_before`).
# * The positions go into the queries and keys only: the values, and so the residual stream, carry content.
#
# LayerNorm and dropout, on numbers:

# %%
tokens = torch.randn(2, 3, 8) * 4 + 2                                   # (B, L, C), far from mean 0, var 1
ln = layers.LayerNorm(8, impl="scratch")
normed = ln(tokens)
print("per-token mean before", tokens.mean(-1)[0].round(decimals=2).tolist(),
      "after", normed.mean(-1)[0].abs().max().item() < 1e-6)
print("per-token std (biased) after:", normed.std(-1, unbiased=False)[0].round(decimals=3).tolist())
drop = layers.Dropout(0.5, impl="scratch").train()
ones = torch.ones(10_000)
kept = drop(ones)
print(f"dropout p=0.5 in training: {(kept == 0).float().mean().item():.3f} zeroed, survivors = {kept.max().item()}, "
      f"mean {kept.mean().item():.3f}; in eval: {torch.equal(drop.eval()(ones), ones)}")

# %% [markdown]
# ### Your turn: LayerNorm
#
# Write `my_layer_norm` over the last axis (any number of leading axes). The check compares values and
# gradients with `detr_nb.models.layers.layer_norm`.

# %%
def my_layer_norm(x, weight, bias, eps=1e-5):
    """x (..., C), weight (C,), bias (C,) -> (..., C)."""
    raise NotImplementedError("your turn: write my_layer_norm")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def layer_norm_solution(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)                                          # (..., 1)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)                           # biased: divide by C
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


if SMOKE:
    my_layer_norm = layer_norm_solution

# %%
checks.check_layer_norm(my_layer_norm)

# %% [markdown]
# ### Your turn: the post-norm encoder layer
#
# Now the whole layer, the formula above, written with the parts of a real
# `detr_nb.models.transformer.TransformerEncoderLayer`: `layer.self_attn` (a `MultiheadAttention`, called as
# `layer.self_attn(q, k, v, key_padding_mask=...)`), `layer.norm1`, `layer.linear1`, `layer.activation`,
# `layer.linear2`, `layer.norm2`. The check puts the layer in eval mode, so leave dropout out, and compares
# with the layer's own `forward`, gradients w.r.t. `src` and `pos` included.

# %%
def my_post_norm_block(layer, src, pos, key_padding_mask):
    """src, pos (B, S, C), key_padding_mask (B, S) True = padding -> (B, S, C)."""
    raise NotImplementedError("your turn: write my_post_norm_block")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def post_norm_block_solution(layer, src, pos, key_padding_mask):
    q = k = src + pos                                                        # positions: queries and keys only
    x = layer.norm1(src + layer.self_attn(q, k, src, key_padding_mask=key_padding_mask))   # (B, S, C)
    ffn = layer.linear2(layer.activation(layer.linear1(x)))                  # (B, S, C)
    return layer.norm2(x + ffn)


if SMOKE:
    my_post_norm_block = post_norm_block_solution

# %%
checks.check_post_norm_block(my_post_norm_block)

# %% [markdown]
# **Next:** notebook 04 stacks these attentions into DETR's encoder and decoder, adds the object queries
# and the prediction heads, and runs the whole model (41.3M parameters) on an image.
#
# ## Exercises
#
# Predict first, then check with a cell.
#
# 1. Drop the $1/\sqrt{d}$ scaling from the scores of section 1 (d = 64) with random q and k of unit
#    variance. How does the largest attention weight of a row change, and what happens to the gradient of
#    the softmax?
# 2. Mask *every* key of one query (`key_padding_mask` all True for that image). What do `layers.softmax`
#    and `attention.MultiheadAttention` return for it, and why not NaN?
# 3. `nn.MultiheadAttention(256, 8)` has how many parameters? Which part of them would change if it had 1
#    head instead of 8?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. Unscaled scores have standard deviation $\sqrt{64} = 8$ instead of 1, so the softmax saturates: the
#    largest weight of a row goes towards 1 and the others towards 0, and the softmax's gradient (which is
#    $p_i(\delta_{ij} - p_j)$) vanishes almost everywhere: attention stops learning.
# 2. `layers.softmax` of a row of $-\infty$ is defined here as zeros (not NaN), and the attention of a query
#    with no key gives a zero vector in both implementations before the output projection (so the module
#    returns `out_proj`'s bias): one fully padded image cannot poison the batch with NaN.
# 3. $4 \cdot 256^2 + 4 \cdot 256 = 263{,}168$ (the packed q, k, v projections, the output projection and
#    their biases). None of them: the number of heads only splits the 256 channels into groups of 32;
#    the weights are the same size.
#
# </details>
