# %% [markdown]
# # 02 · Positional encoding: telling the transformer where a pixel is
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/02_positional_encoding.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 5.5 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about a minute, an estimate: the install; the largest computation
# (256-d encodings of a 25 x 34 grid and their pairwise similarities) takes milliseconds on any device.
# Full mode on 2 CPU cores: 9 s, measured (`bench/notebook_times.py --key-figures`, machine speed 186 ms per
# main-job step, `bench/train_step.py --speed`).
#
# **Key figure** of a full run (section 4; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): one pixel's 256-number position code and its similarity to every other pixel.
#
# ![one pixel's 256-number position code and its similarity to every other pixel](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/02_positional_encoding.png)

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
# The feature grid of an 800 x 1066 image at stride 32 is 25 x 34; smoke mode uses a smaller one.
GRID_H, GRID_W = (12, 16) if SMOKE else (25, 34)

# %% [markdown]
# Notebook 01 ended with a grid of feature vectors $(C, h, w)$. DETR flattens it into a sequence of
# $hw$ tokens for the transformer. Attention compares tokens by content only, so after flattening
# nothing says *where* a token came from. This notebook:
#
# 1. shows that attention really ignores order (permute the tokens, the outputs permute with them);
# 2. builds the 1-D sine encoding of "Attention is all you need", then DETR's 2-D version;
# 3. shows what padding does to DETR's *normalised* coordinates;
# 4. lets you pick a pixel and see its 256-d code and how similar it is to every other pixel's.

# %%
import inspect
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import detr_nb
from detr_nb.models.attention import MultiheadAttention
from detr_nb.models.backbone import Joiner
from detr_nb.models.position_encoding import PositionEmbeddingSine, pixel_coordinates, sine_embed
from detr_nb.teach import checks, positions

torch.manual_seed(0)
print("detr_nb", detr_nb.__version__, "| smoke:", SMOKE, "| grid", (GRID_H, GRID_W))

# %% [markdown]
# ## 1. Attention does not know the order of its inputs
#
# Self-attention computes $\mathrm{softmax}(QK^\top/\sqrt{d})V$ with $Q, K, V$ linear in the tokens $X$.
# Permuting the rows of $X$ by a permutation matrix $P$ permutes $Q, K, V$ the same way, and
# $\mathrm{softmax}(PQK^\top P^\top)PV = P\,\mathrm{softmax}(QK^\top)V$: the output is permuted too, nothing
# else changes (*permutation equivariance*). A feature grid shuffled pixel by pixel would give the same
# answers, shuffled. Check it with the package's multi-head attention (notebook 03 builds it):

# %%
mha = MultiheadAttention(embed_dim=16, num_heads=4).eval()
tokens = torch.randn(1, 10, 16)                    # (B, L, C): 10 "pixels"
perm = torch.randperm(10)
with torch.no_grad():
    out = mha(tokens, tokens, tokens)
    out_perm = mha(tokens[:, perm], tokens[:, perm], tokens[:, perm])
print("attention(permuted tokens) == permuted attention(tokens):",
      torch.allclose(out_perm, out[:, perm], atol=1e-6))

# %% [markdown]
# The fix: add to every token a vector that depends on its position. DETR adds it to the queries and
# keys of every attention layer (never to the values), so position steers *where* a token looks.
#
# ## 2. The 1-D sine encoding
#
# For a position $p$ and $d$ channels (DETR: $d = 128$ per axis), with temperature $T = 10000$:
#
# $$\mathrm{PE}(p)_{2j} = \sin\!\left(\frac{p}{T^{2j/d}}\right), \qquad
#   \mathrm{PE}(p)_{2j+1} = \cos\!\left(\frac{p}{T^{2j/d}}\right), \qquad j = 0, \dots, d/2 - 1 .$$
#
# Each (sin, cos) pair is a clock hand turning at angular frequency $\omega_j = T^{-2j/d}$, from 1 rad per
# unit of $p$ (fast) down to $T^{-(d-2)/d}$ (slow; $T^{-126/128}$ for DETR's $d = 128$ channels per
# coordinate, just above $1/T$). DETR's coordinates are *normalised*: they run over
# $(0, 2\pi]$ across the image (section 3). The package function:

# %%
print(inspect.getsource(sine_embed))

# %% [markdown]
# Encode 100 positions in $(0, 2\pi]$ with 128 channels. Left: the whole code, one row per position.
# Right: a few channels as curves. Only the first few pairs turn fast enough to change much across
# the image; most channels are almost constant (sin ~ 0, cos ~ 1): they would matter for longer
# coordinate ranges.

# %%
p = torch.linspace(0, 2 * math.pi, 100)[1:]                   # (99,) normalised positions
enc = sine_embed(p, num_feats=128)                          # (99, 128)
print("positions", tuple(p.shape), "-> encoding", tuple(enc.shape))

fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
im = axes[0].imshow(enc.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                    extent=(0, 128, float(p[-1]), float(p[0])))
axes[0].set_xlabel("channel")
axes[0].set_ylabel("position p")
axes[0].set_title("PE(p): sin on even, cos on odd channels")
fig.colorbar(im, ax=axes[0])
for ch in (0, 1, 6, 7, 20, 21):
    axes[1].plot(p.numpy(), enc[:, ch].numpy(), label=f"ch {ch}" + (" (sin)" if ch % 2 == 0 else " (cos)"))
axes[1].set_xlabel("position p")
axes[1].legend(fontsize=7, ncol=3)
axes[1].set_title("a few channels")
plt.tight_layout()
plt.show()

omega = 10000.0 ** (-2 * torch.arange(64) / 128)               # the 64 frequencies
print("pairs turning more than half a turn across the image (omega * 2pi > pi):",
      int((omega * 2 * math.pi > math.pi).sum()), "of 64")

# %% [markdown]
# Why sines? Because of $\sin a \sin b + \cos a \cos b = \cos(a - b)$, the dot product of two codes
# depends only on the offset:
#
# $$\mathrm{PE}(a)^\top \mathrm{PE}(b) = \sum_{j} \cos\big((a - b)\,\omega_j\big),$$
#
# largest ($= d/2$) at $a = b$ and falling with $|a - b|$. A query that carries $\mathrm{PE}(a)$ therefore
# scores nearby keys higher, whatever $a$ is. (That holds for the codes themselves. In DETR the code is
# added to the features *before* the projections: the score is $(W_q(x_a + \mathrm{PE}(a)))^\top
# W_k(x_b + \mathrm{PE}(b))$, whose position-position term $\mathrm{PE}(a)^\top W_q^\top W_k \mathrm{PE}(b)$
# mixes the channels, plus content-position cross terms: it is not a function of $a - b$ alone, and the
# network learns how much of the offset structure to keep.) Check the identity and plot the dot product
# against the offset:

# %%
a, b = torch.tensor([1.0]), torch.tensor([2.5])
lhs = (sine_embed(a, 128) * sine_embed(b, 128)).sum()
rhs = torch.cos((a - b) * omega).sum()
print(f"PE(a).PE(b) = {lhs.item():.5f}   sum_j cos((a-b) w_j) = {rhs.item():.5f}")

ref = enc[49]                                                  # position ~ pi
plt.figure(figsize=(6, 2.8))
plt.plot((p - p[49]).numpy(), (enc @ ref).numpy())
plt.xlabel("offset a - b")
plt.ylabel("PE(a) . PE(b)")
plt.title("dot product of two 1-D codes depends on the offset only")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. DETR's 2-D encoding, and what padding does to it
#
# An image position has two coordinates. DETR encodes $y$ and $x$ separately with $128$ channels each
# and concatenates them: $\mathrm{pos}(y, x) = [\mathrm{PE}(y); \mathrm{PE}(x)] \in \mathbb{R}^{256}$, as wide as the
# transformer's tokens, so it can be added to them. `PositionEmbeddingSine` takes the padding mask
# $(B, h, w)$ (True = padding) and returns $(B, 256, h, w)$:

# %%
print(inspect.getsource(PositionEmbeddingSine.forward))

# %% [markdown]
# The coordinates are *counts of real pixels*: $y$ is the cumulative sum of `~mask` down each column,
# $x$ along each row, so the first pixel is 1, the next 2, ... Normalisation divides by the count at the
# last row/column and multiplies by $2\pi$:
#
# $$\hat x = \frac{\mathrm{cumsum}_x(\lnot m)}{\mathrm{cumsum}_x(\lnot m)_{\text{last}} + 10^{-6}} \cdot 2\pi .$$
#
# Batches pad images on the bottom and right to a common size. Two images below: A fills the
# $6 \times 10$ grid, B is $4 \times 6$ and padded. `pixel_coordinates` returns the
# coordinates the encoding uses (the same computation as the package); rebuilding the 256-d code from
# them with the 1-D function must give `PositionEmbeddingSine`'s output exactly.

# %%
mask = torch.zeros(2, 6, 10, dtype=torch.bool)                 # (B, h, w), True = padding
mask[1, 4:, :] = True                                           # image B: 4 rows ...
mask[1, :, 6:] = True                                           # ... and 6 columns of real pixels
pos = PositionEmbeddingSine(num_pos_feats=128)(mask)            # (B, 256, h, w)
y_hat, x_hat = pixel_coordinates(mask)                         # (B, h, w) each
rebuilt = torch.cat([sine_embed(y_hat, 128), sine_embed(x_hat, 128)], dim=-1).permute(0, 3, 1, 2)
print("pos", tuple(pos.shape), "| rebuilt from 1-D codes == PositionEmbeddingSine:", torch.allclose(rebuilt, pos))
torch.set_printoptions(precision=2)
print("x_hat, first row of A:", x_hat[0, 0])
print("x_hat, first row of B:", x_hat[1, 0])

# %% [markdown]
# Image B's $\hat x$ reaches $2\pi$ at **its own** right edge (column 5), not at the padded one: the
# normalisation divides by the number of real pixels in the row (padding adds nothing to the cumulative
# sum, so the padded cells just repeat the last value - they are masked out of attention anyway).
# A coordinate therefore means "fraction of this image", whatever it was batched with. The naive
# alternative, dividing by the padded width, would place B's right edge at $2\pi \cdot 6/10$ and give the
# same pixel a different code in every batch. Plotted:

# %%
cols = torch.arange(1, 11)
fig, ax = plt.subplots(figsize=(6.5, 3))
ax.plot(cols, x_hat[0, 0], "o-", label="A (no padding)")
ax.plot(cols, x_hat[1, 0], "s-", label="B, DETR: divide by B's own width")
ax.plot(cols, (~mask[1, 0]).float().cumsum(0) / 10 * 2 * math.pi, "x--", label="B, naive: divide by padded width")
ax.axvspan(6.5, 10.5, color="grey", alpha=0.2, label="B's padding")
ax.set_xlabel("column")
ax.set_ylabel("normalised x")
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# Padding does not change the code of B's real pixels: same as encoding B alone, unpadded.
pos_b_alone = PositionEmbeddingSine(128)(torch.zeros(1, 4, 6, dtype=torch.bool))
print("B's real pixels, padded batch vs alone:", torch.allclose(pos[1, :, :4, :6], pos_b_alone[0]))

# %% [markdown]
# ### Your turn: the 2-D sine encoding with a padding mask
#
# Write DETR's 2-D encoding yourself, from the mask alone: the normalised coordinates $\hat y, \hat x$ of
# this section, then section 2's frequencies, $\hat y / T^{2\lfloor i/2 \rfloor / F}$ for $i = 0 \dots F-1$, with
# sine on the even channels and cosine on the odd ones, interleaved; the $y$ half first. The check runs it
# against `PositionEmbeddingSine(F, T, normalize=True)` on masks with and without padding (one image's right
# half padded among them) and names the likely mistake.

# %%
def my_sine_encoding(mask, num_pos_feats=128, temperature=10000):
    """mask (B, H, W) bool, True = padding -> (B, 2 * num_pos_feats, H, W)."""
    # 1. y, x: cumulative sums of ~mask down the columns and along the rows    (B, H, W) each
    # 2. divide by the last value (+ 1e-6) and multiply by 2 pi
    # 3. divide by temperature ** (2 * (i // 2) / num_pos_feats), sin on even i, cos on odd i
    raise NotImplementedError("your turn: write my_sine_encoding")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def sine_encoding_solution(mask, num_pos_feats=128, temperature=10000):
    real = (~mask).float()                                                   # (B, H, W)
    y = real.cumsum(1)                                                       # rows of real pixels so far
    x = real.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi                              # each image's own height -> 2 pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    i = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_pos_feats)   # (F,)

    def encode(c):                                                           # (B, H, W) -> (B, H, W, F)
        a = c[..., None] / dim_t
        return torch.stack((a[..., 0::2].sin(), a[..., 1::2].cos()), dim=4).flatten(3)   # interleaved

    return torch.cat((encode(y), encode(x)), dim=3).permute(0, 3, 1, 2)      # (B, 2F, H, W)


if SMOKE:
    my_sine_encoding = sine_encoding_solution

# %%
checks.check_sine_encoding(my_sine_encoding)

# %% [markdown]
# Where does the feature-level mask come from? The data pipeline gives an *image* mask $(B, H, W)$;
# the backbone's `Joiner` shrinks it to the feature grid by nearest-neighbour interpolation (a cell is
# padding when the image pixel it samples, its top-left one, is) and computes the positions from it.
# Below, 36 of 96 pixel columns are padding; at stride 32 the cells sample columns 0, 32 and 64, so
# only the last feature column is marked (a cell that is partly image counts as image when its
# sampled pixel is real):

# %%
print(inspect.getsource(Joiner.forward))
img_mask = torch.zeros(1, 64, 96, dtype=torch.bool)
img_mask[:, :, 60:] = True                                      # 36 padded pixel columns
feat_mask = F.interpolate(img_mask[None].float(), size=(2, 3)).to(torch.bool)[0]   # stride 32
print("image mask", tuple(img_mask.shape), "-> feature mask", tuple(feat_mask.shape), "\n", feat_mask[0])

# %% [markdown]
# Channels of the 2-D code on the grid of a typical image (`GRID_H x GRID_W`): channel $c < 128$
# depends on $y$ only (horizontal stripes), channel $128 + c$ on $x$ only (vertical stripes);
# low channel numbers oscillate fastest.

# %%
grid_pos = PositionEmbeddingSine(128)(torch.zeros(1, GRID_H, GRID_W, dtype=torch.bool))   # (1, 256, h, w)
show = [0, 1, 4, 5, 128, 129, 132, 133]
fig, axes = plt.subplots(1, len(show), figsize=(2 * len(show), 2))
for ax, c in zip(axes, show):
    ax.imshow(grid_pos[0, c].numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(f"ch {c} ({'y' if c < 128 else 'x'})", fontsize=8)
    ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Pick a pixel: its code and its similarity to every other pixel
#
# `positions.plot_pixel_encoding` draws the 256 numbers of pixel $(y, x)$ (the $y$ half, then the $x$
# half) and the cosine similarity
# $\frac{\mathrm{pos}(y,x)^\top \mathrm{pos}(y',x')}{\lVert\cdot\rVert\,\lVert\cdot\rVert}$ to every pixel $(y', x')$.
# The map peaks (= 1) at the chosen pixel and falls off with distance, separately along $y$ and $x$
# (it is a sum of a $y$ term and an $x$ term). The similarity never gets very low: most channels
# hardly vary across the image (section 2), so the useful contrast is in the shape of the map.
# Move the sliders (in Colab); the cell after the widget calls the same function once directly.

# %%
import ipywidgets as widgets


def show_pixel(y=GRID_H // 2, x=GRID_W // 3):
    positions.plot_pixel_encoding(grid_pos, y, x)
    plt.show()


widgets.interact(show_pixel,
                 y=widgets.IntSlider(value=GRID_H // 2, min=0, max=GRID_H - 1, description="y", continuous_update=False),
                 x=widgets.IntSlider(value=GRID_W // 3, min=0, max=GRID_W - 1, description="x", continuous_update=False));

# %% tags=["key-figure"]
# The widget's function, called directly (this is what runs without a browser), plus the checks.
show_pixel(2, GRID_W - 3)
sim = positions.position_similarity(grid_pos, 2, GRID_W - 3)
peak = divmod(int(sim.argmax()), GRID_W)
print("similarity map", tuple(sim.shape), "| peak at", peak, f"value {sim.max().item():.3f}",
      f"| min {sim.min().item():.3f}")
assert peak == (2, GRID_W - 3)

# %% [markdown]
# The official DETR also offers a *learned* encoding (two tables of 50 row and 50
# column vectors, trained with the model). The fixed sine encoding is better: in the paper's Table 3, sine
# encodings passed at every attention layer reach 40.6 AP against 39.6 for learned ones (the other
# settings equal), and it needs no parameters and works for any image size: `detr_nb` keeps only the sine one.
#
# **Next:** notebook 03 builds the attention that consumes these codes: scaled dot products, heads,
# and masks.
#
# ## Exercises
#
# Predict first, then run a cell to check.
#
# 1. With `normalize=False`, what are the largest y and x coordinates of a 20 x 30 feature map without
#    padding, and what do the slowest channels (the last pair) of the encoding look like over it?
# 2. Pad the right third of an image (the mask True there). Does the encoding of a pixel in the unpadded
#    part change compared with the same image without padding? Why is that what DETR wants?
# 3. `sine_embed(torch.arange(50.0), num_feats=128)`: which channel pair changes fastest from one
#    position to the next, and how many positions does one period of channel pair 10 span?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. y runs 1..20 and x 1..30 (counts of unpadded pixels). The last pair has frequency $1/T^{126/128}$,
#    about $1.2 \cdot 10^{-4}$: over 30 positions its angle moves by 0.004 rad, so sin stays ~0 and cos ~1:
#    nearly constant. Normalising to $(0, 2\pi]$ makes such slow channels flatter still (every position is at
#    most $2\pi$); that is not why DETR does it. It does it so that a position means the same thing in images
#    of any size and under any padding: the right edge of the unpadded image is always $2\pi$.
# 2. No: x counts unpadded pixels only and is divided by the count of unpadded pixels in the row, so the
#    unpadded part spans $(0, 2\pi]$ exactly as the image alone does, and each of its pixels gets the same code.
#    That is what DETR wants: an image's encoding does not depend on how much padding its batch needed.
# 3. Pair 0 (frequency 1, period $2\pi \approx 6.3$ positions). Pair 10 has frequency
#    $10000^{-20/128} \approx 0.237$: one period spans $2\pi / 0.237 \approx 26.5$ positions.
#
# </details>
