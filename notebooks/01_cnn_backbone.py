# %% [markdown]
# # 01 · The CNN backbone: convolution, ResNet-50, feature maps
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/01_cnn_backbone.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 7.0 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about 3 minutes, an estimate: the install (about a minute), the released DETR-R50
# (159 MB) and torchvision's 98 MB ResNet-50 weights, one DETR-R50 forward pass at 800 px and a few ResNet-50
# ones at 480 px, each a few seconds at most.
# Full mode on 2 CPU cores: 13 s, measured (`bench/notebook_times.py --key-figures`, machine speed 186 ms per
# main-job step, `bench/train_step.py --speed`; `PRETRAINED = False`: no weights download, so the feature maps
# come from a random ResNet), before section 0, whose scoring of 300 images adds about 4 s.
#
# **Key figure** of a full run (section 1; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): convolution as im2col: the patch under one output pixel becomes one column of a
# matrix.
#
# ![convolution as im2col: the patch under one output pixel becomes one column of a matrix](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/01_cnn_backbone.png)
#
# **First minute.** Section 0 runs a working detector before anything is built: the main job's model, which
# the project trained and ships with the package (`detr_nb/teach/detector.pth`, 4 MB;
# the shipped detector's AP 0.516 / AP50 0.872 on the 300 synthetic validation images), and in Colab the
# released DETR-R50 on a photograph.

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
# Smoke mode (the tests, on a CPU): a small image and random weights instead of ImageNet's.
IMAGE_SHORT_SIDE = 160 if SMOKE else 480
CHANNELS_SHOWN = 4 if SMOKE else 6
PRETRAINED = not SMOKE
# Section 0's released DETR-R50 (a 159 MB download): in Colab only.
OFFICIAL = "google.colab" in sys.modules and not SMOKE

# %% [markdown]
# DETR starts like most detectors: a convolutional network turns the image $(3, H, W)$ into a
# coarse grid of feature vectors $(2048, H/32, W/32)$. The transformer that follows never sees a
# pixel, only these 2048-dimensional vectors. This notebook first shows where the series ends, then builds that
# grid from the bottom:
#
# 0. a trained DETR at work: its boxes, and where it looks for one object;
# 1. a convolution is a matrix product over image patches (*im2col*), checked against `F.conv2d`;
# 2. ResNet-50 stacks such convolutions into bottleneck blocks with shortcuts;
# 3. the feature maps of a real photograph after each stage;
# 4. where the backbone's 23.5M parameters sit and which of them DETR trains.
#
# Everything runs through the `detr_nb` package; `detr_nb.teach.paths.workdir()` is where notebooks write files.

# %%
import inspect

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display

import detr_nb
from detr_nb.checkpoint import load_checkpoint, model_from_checkpoint
from detr_nb.evaluate import category_names, evaluate, sample_predictions
from detr_nb.figures import draw_boxes, draw_predictions
from detr_nb.models import layers
from detr_nb.models.backbone import Backbone, Bottleneck, ResNet
from detr_nb.pretrained import COCO_CLASSES
from detr_nb.teach import checks, cnn, first_minute, images, params
from detr_nb.teach.attention import attention_maps, decoder_attention_figure, query_predictions
from detr_nb.teach.paths import workdir

torch.manual_seed(0)
WORK = workdir("01_cnn_backbone")
print("torch", torch.__version__, "| detr_nb", detr_nb.__version__, "| smoke:", SMOKE, "| files go to", WORK)

# %% [markdown]
# ## 0. A detector in the first minute
#
# Here is where the series ends: a DETR that finds objects. The project trained the main job's model
# (`detr_tiny_aided`, 1.3M parameters: `python -m detr_nb train`, the recipe notebooks 07 and 10 explain) on the
# synthetic shapes, and ships its weights with the package: `detr_nb/teach/detector.pth`, 4 MB.
# `load_checkpoint` reads the file (`torch.load(weights_only=True)`: plain data, no code from a pickle) and
# `model_from_checkpoint` rebuilds the model from the configuration stored in it: the two calls that reopen any
# run of this series. The file also records the AP it scored and where it was made.

# %%
shipped = load_checkpoint(first_minute.DETECTOR)
detector = model_from_checkpoint(shipped)                 # eval mode, on the CPU
print(f"{shipped['model_name']}: {sum(p.numel() for p in detector.parameters()):,} parameters, "
      f"classes {shipped['categories']}")
print("made", shipped["made"])
print("recorded: AP {AP:.3f} / AP50 {AP50:.3f}".format(**shipped["ap"]))

# %% [markdown]
# Its validation images are drawn here from the generator's seed (`first_minute.validation_set`: the same
# pixels on every machine). In full mode it is scored on all of them with COCO's AP (pycocotools, notebook 08),
# which gives back the number the file records. Then its predictions on four images: solid boxes score
# at least 0.5, dashed ones are the ground truth.

# %%
val_set = first_minute.validation_set(shipped, root=str(WORK / "synthetic-val"), num_val=4 if SMOKE else None)
if not SMOKE:                                              # 300 images: a few seconds
    stats = evaluate(detector, val_set, verbose=False)
    print(f"measured here: AP {stats['AP']:.3f} / AP50 {stats['AP50']:.3f} on {len(val_set)} validation images")
names = category_names(val_set)
samples = sample_predictions(detector, val_set, range(4))  # each: image (3, 96, 96), target, result
fig = draw_predictions(samples, threshold=0.5, names=names)
display(fig)

# %% [markdown]
# How does it find an object? Its decoder has `Q` object queries; each one *looks* at the image's feature grid
# through cross-attention (notebook 03 builds attention, 08 reads these maps) and predicts one box. Below, the
# query that scores highest on the first image: its attention map, averaged over the heads, over the image,
# with its box. The grid it looks at is what a CNN backbone makes of the pixels: the rest of this notebook.

# %%
shapes = samples[0]["image"]                               # (3, 96, 96), normalised
shapes_maps = attention_maps(detector, shapes[None])       # per decoder layer: (1, heads, Q, h*w)
best = int(query_predictions(shapes_maps)["scores"].argmax())   # the query most sure of an object
print("feature grid", shapes_maps["feature_size"], "| last decoder layer's cross-attention",
      tuple(shapes_maps["decoder"][-1].shape))
fig = decoder_attention_figure(shapes, shapes_maps, [best], names=names)
plt.show()

# %% [markdown]
# In Colab (`OFFICIAL`) the same two pictures for the released DETR-R50 (COCO, 42.0 AP; 159 MB downloaded once)
# on Grace Hopper's portrait: its confident boxes, and where its most confident query looks.

# %%
if OFFICIAL:
    official = detr_nb.build_model("detr_r50", num_classes=91)
    detr_nb.load_pretrained(official, "detr_r50")
    photo = images.image_to_tensor(images.sample_image(), short_side=800)     # (3, H, W), shorter side 800
    photo_maps = attention_maps(official, photo[None])     # the paper's softmax scores
    found = query_predictions(photo_maps)                  # per query: scores, labels (Q,), boxes (Q, 4)
    confident = (found["scores"] > 0.9).nonzero().flatten().tolist()
    fig, ax = plt.subplots(figsize=(5, 5 * photo.shape[-2] / photo.shape[-1]))
    draw_boxes(ax, photo, found["boxes"][confident], found["labels"][confident].tolist(),
               found["scores"][confident].tolist(), names=COCO_CLASSES)
    plt.show()
    fig = decoder_attention_figure(photo, photo_maps, [int(found["scores"].argmax())], names=COCO_CLASSES)
    plt.show()
    del official
else:
    print("the released DETR-R50 on a photograph: in Colab only (OFFICIAL, a 159 MB download); offline, the "
          "shipped detector above")

# %% [markdown]
# ## 1. Convolution as im2col + one matrix product
#
# A 2-D convolution with weights $W \in \mathbb{R}^{C_\text{out} \times C_\text{in} \times k_h \times k_w}$,
# stride $s$ and zero padding $p$ computes, for every output channel $o$ and output pixel $(i, j)$,
#
# $$y_{o,i,j} = b_o + \sum_{c=1}^{C_\text{in}} \sum_{u=0}^{k_h-1} \sum_{v=0}^{k_w-1} W_{o,c,u,v}\; x_{c,\; s i + u - p,\; s j + v - p},
# \qquad H_\text{out} = \left\lfloor \frac{H + 2p - k_h}{s} \right\rfloor + 1 .$$
#
# (What deep learning calls convolution is, strictly, *cross-correlation*: the kernel is not flipped. A true
# convolution would read $x_{c,\,si - u + p,\,sj - v + p}$; with learned kernels the two are the same
# family, and every framework computes the formula above.)
#
# The triple sum is a dot product between the flattened kernel and the flattened patch under
# $(i, j)$. *im2col* copies every patch into one column of a matrix
# $X_\text{col} \in \mathbb{R}^{(C_\text{in} k_h k_w) \times (H_\text{out} W_\text{out})}$; then all
# outputs come from one product $Y = W_\text{mat} X_\text{col}$ with
# $W_\text{mat} \in \mathbb{R}^{C_\text{out} \times C_\text{in} k_h k_w}$. Here is the loop version
# of im2col from `detr_nb.teach.cnn` (slow, to read):

# %%
print(inspect.getsource(cnn.im2col_loops))

# %% [markdown]
# The picture below follows one output pixel (red) for a 5x5 single-channel input, a 3x3 kernel and
# padding 1: its patch in the input becomes one column of the im2col matrix, and the kernel, read as
# a row, times that column is the output value.

# %% tags=["key-figure"]
x_small = torch.randint(0, 10, (5, 5)).float()
sobel_x = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])   # a horizontal-gradient kernel
fig = cnn.plot_im2col(x_small, sobel_x, out_yx=(1, 2), padding=1)
plt.show()

# %% [markdown]
# Now the real thing: several input and output channels, stride 2, padding 1, a batch of 2.
# `F.unfold` is PyTorch's im2col; our loops must give the same matrix, and the product must equal
# `F.conv2d`. `detr_nb.models.layers.conv2d` is the package's scratch convolution (the one the
# `impl="scratch"` backbone runs); it must agree too, values **and** gradients.

# %%
x = torch.randn(2, 3, 16, 16, requires_grad=True)                  # (B, C_in, H, W)
w = torch.randn(8, 3, 3, 3, requires_grad=True)                    # (C_out, C_in, k_h, k_w)
b = torch.randn(8, requires_grad=True)

cols = cnn.im2col_loops(x.detach(), 3, stride=2, padding=1)     # (B, C_in*3*3, H_out*W_out)
print("im2col:", tuple(cols.shape), "| same as F.unfold:",
      torch.equal(cols, F.unfold(x.detach(), 3, stride=2, padding=1)))
y_mat = (w.detach().reshape(8, -1) @ cols + b.detach()[:, None]).reshape(2, 8, 8, 8)   # (B, C_out, H_out, W_out)
y_ref = F.conv2d(x, w, b, stride=2, padding=1)
y_pkg = layers.conv2d(x, w, b, stride=2, padding=1)
print("output:", tuple(y_ref.shape))
print("max |matmul - F.conv2d|          =", f"{(y_mat - y_ref).abs().max().item():.2e}")
print("max |layers.conv2d - F.conv2d|   =", f"{(y_pkg - y_ref).abs().max().item():.2e}")

g = torch.randn_like(y_ref)
grads_ref = torch.autograd.grad(y_ref, (x, w, b), g)
grads_pkg = torch.autograd.grad(y_pkg, (x, w, b), g)
for name, a, r in zip(("x", "W", "b"), grads_pkg, grads_ref):
    torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    print(f"grad {name}: max diff {(a - r).abs().max().item():.2e}")

# %% [markdown]
# A 1x1 convolution has $k_h = k_w = 1$: the "patch" is one pixel, so it is a linear layer applied to
# every pixel's channel vector. DETR uses exactly that (`input_proj`, 2048 -> 256) between the
# backbone and the transformer, and ResNet's bottleneck blocks use it to shrink and re-expand channels.

# %% [markdown]
# ### Your turn: convolution as unfold + one matrix product
#
# Write `my_conv2d` with `F.unfold` (PyTorch's im2col, as above) and one matrix product, no loops over
# pixels. The check below runs it against `detr_nb.models.layers.conv2d` on several cases (stride 1 and 2,
# padding 0 and 1, a 1x1 kernel, no bias) and compares values and gradients. If it is wrong, the check names
# the case, the first differing element and the likely mistake. The solution is in the collapsed cell under
# the skeleton: try first.

# %%
def my_conv2d(x, weight, bias=None, stride=1, padding=0):
    """x (B, C_in, H, W), weight (C_out, C_in, k_h, k_w), bias (C_out,) or None -> (B, C_out, H_out, W_out)."""
    # 1. every patch as a column: F.unfold(x, (k_h, k_w), stride=stride, padding=padding)   (B, C_in*k_h*k_w, L)
    # 2. the kernel read as rows, times the columns                                          (B, C_out, L)
    # 3. the bias per output channel, then L back to (H_out, W_out) with the formula of section 1
    raise NotImplementedError("your turn: write my_conv2d")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def conv2d_solution(x, weight, bias=None, stride=1, padding=0):
    B, _, H, W = x.shape
    C_out, _, k_h, k_w = weight.shape
    cols = F.unfold(x, (k_h, k_w), stride=stride, padding=padding)          # (B, C_in*k_h*k_w, L)
    y = weight.reshape(C_out, -1) @ cols                                     # (B, C_out, L)
    if bias is not None:
        y = y + bias[:, None]                                                # one bias per output channel
    H_out = (H + 2 * padding - k_h) // stride + 1
    W_out = (W + 2 * padding - k_w) // stride + 1
    return y.reshape(B, C_out, H_out, W_out)                                # L runs row by row


if SMOKE:                    # the tests run the solution through the check
    my_conv2d = conv2d_solution

# %%
checks.check_conv2d(my_conv2d)

# %% [markdown]
# ## 2. Frozen batch norm is an affine map
#
# Batch norm normalises each channel with statistics $\mu_c, \sigma_c^2$ and rescales:
# $y = \gamma_c \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c$. The paper trains with 4
# images per GPU on 16 V100s (a batch of 64; the official code's default is 2 per GPU): a handful of
# images per GPU is far too few for batch statistics, so DETR *freezes* the ImageNet values: $\gamma, \beta,
# \mu, \sigma^2$ become constants (buffers, not parameters) and the layer collapses to
# $y = a_c x + d_c$ with $a_c = \gamma_c / \sqrt{\sigma_c^2 + \epsilon}$ and $d_c = \beta_c - \mu_c a_c$.

# %% [markdown]
# ### Your turn: frozen batch norm
#
# Write `my_frozen_batch_norm` from the two formulas above: compute $a_c$ and $d_c$ from the four buffers,
# then apply $y = a_c x + d_c$ to every pixel of channel $c$ (broadcast over $B$, $H$, $W$). The check compares
# it with `detr_nb.models.layers.frozen_batch_norm`, values and gradients.

# %%
def my_frozen_batch_norm(x, weight, bias, running_mean, running_var, eps=1e-5):
    """x (B, C, H, W); weight, bias, running_mean, running_var (C,) -> (B, C, H, W)."""
    raise NotImplementedError("your turn: write my_frozen_batch_norm")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def frozen_batch_norm_solution(x, weight, bias, running_mean, running_var, eps=1e-5):
    a = weight / torch.sqrt(running_var + eps)                               # (C,) scale
    d = bias - running_mean * a                                              # (C,) shift
    return x * a[None, :, None, None] + d[None, :, None, None]              # broadcast over B, H, W


if SMOKE:
    my_frozen_batch_norm = frozen_batch_norm_solution

# %%
checks.check_frozen_batch_norm(my_frozen_batch_norm)

# %% [markdown]
# The package's version, and the same numbers as PyTorch's `F.batch_norm` in eval mode:

# %%
print(inspect.getsource(layers.frozen_batch_norm))
C = 8
gamma, beta, mu, var = torch.rand(C) + 0.5, torch.randn(C), torch.randn(C), torch.rand(C) + 0.1
h = torch.randn(2, C, 5, 5)
ref = F.batch_norm(h, mu, var, gamma, beta, training=False, eps=1e-5)
print("max |frozen_batch_norm - F.batch_norm| =",
      f"{(layers.frozen_batch_norm(h, gamma, beta, mu, var) - ref).abs().max().item():.2e}")

# %% [markdown]
# ## 3. ResNet-50: stem, four stages of bottleneck blocks
#
# ResNet-50 = a *stem* (7x7 conv stride 2, batch norm, ReLU, 3x3 max-pool stride 2: $H/4$) and four
# stages `layer1..layer4` of 3, 4, 6, 3 **bottleneck blocks**. A block computes
#
# $$y = \mathrm{ReLU}\big(\mathcal{F}(x) + \mathrm{shortcut}(x)\big), \qquad
# \mathcal{F} = \underbrace{\text{1x1}}_{\text{reduce}} \to \underbrace{\text{3x3}}_{\text{stride}} \to \underbrace{\text{1x1}}_{\text{expand}\ \times 4},$$
#
# each convolution followed by (frozen) batch norm, ReLU between them. The shortcut is the identity,
# except in a stage's first block where the shape changes: there a 1x1 convolution (with the stride)
# matches channels and resolution. Stages 2-4 halve the resolution, so the output stride is
# $4 \cdot 2^3 = 32$. The forward of `detr_nb.models.backbone.Bottleneck`:

# %%
print(inspect.getsource(Bottleneck.forward))

# %% [markdown]
# `ResNet("resnet50")` builds the network with torchvision's parameter names (so ImageNet weights
# load unchanged) and stops at `layer4` (no pooling, no classifier); `Backbone(body)` applies DETR's freezing
# (stem and `layer1` never train). In Colab it loads torchvision's `IMAGENET1K_V1` weights
# (`load_imagenet_weights`), the ones the official DETR started from; in smoke mode it keeps its random
# initialisation.

# %%
body = ResNet("resnet50")                     # frozen batch norm, as DETR's
if PRETRAINED:
    body.load_imagenet_weights()
backbone = Backbone(body, frozen_stages=1).eval()
print("weights:", "ImageNet (torchvision IMAGENET1K_V1)" if PRETRAINED
      else "RANDOM init (smoke mode: no download) - the feature maps below are not meaningful")
print(body.layer2[0])

# %% [markdown]
# Does our ResNet compute what torchvision's does? Load the same weights into `torchvision.models.resnet50`
# and compare the `layer4` outputs on a random batch (torchvision's batch norm in eval mode uses its
# running statistics, i.e. the same affine map as our frozen one).

# %%
import torchvision

tv = torchvision.models.resnet50(weights=None).eval()
missing, unexpected = tv.load_state_dict(body.state_dict(), strict=False)
print("keys torchvision has and we don't:", missing)          # only the classifier (fc)
print("keys we have and torchvision doesn't:", unexpected)
tv_trunk = torch.nn.Sequential(*list(tv.children())[:-2])         # drop avgpool and fc
probe = torch.randn(1, 3, 64, 64)
with torch.no_grad():
    ours, theirs = body(probe), tv_trunk(probe)
print("layer4 output", tuple(ours.shape), "| max |ours - torchvision| =", f"{(ours - theirs).abs().max().item():.2e}")

# %% [markdown]
# ## 4. Feature maps of a real image, stage by stage
#
# Grace Hopper's portrait ships with matplotlib. We resize it (shorter side
# `IMAGE_SHORT_SIDE`), normalise it with ImageNet's mean and standard deviation, and keep the output
# of the stem and of every stage (`cnn.stage_features`). Watch the shapes: channels grow
# 64 -> 256 -> 512 -> 1024 -> 2048 while the grid shrinks by 4, 4, 8, 16, 32.

# %%
image = images.image_to_tensor(images.sample_image(), short_side=IMAGE_SHORT_SIDE)   # (3, H, W)
feats = cnn.stage_features(body, image[None])
print("image", tuple(image.shape))
for name, f in feats.items():
    print(f"{name:7s} {str(tuple(f.shape)):22s} stride {image.shape[-1] // f.shape[-1]}")

# %% [markdown]
# Each row shows the most active channels of one stage (`CHANNELS_SHOWN`, by mean activation). What the
# figure shows for certain is the resolution: the stem's and `layer1`'s maps keep nearly every detail of
# the photograph, while a `layer4` cell covers 32x32 pixels, so the whole portrait is a grid of a few
# dozen cells. What a channel responds to depends on the weights: with ImageNet's (full mode), compare the
# rows yourself - which stages follow edges and colours, and which light up on whole regions of the
# portrait? With random weights (smoke mode) no channel means anything yet. This coarse grid is what
# DETR's transformer reads.

# %%
fig = cnn.plot_feature_maps(feats, image=image, channels=CHANNELS_SHOWN)
fig.savefig(WORK / "feature_maps.png", dpi=80)
plt.show()
print("saved", WORK / "feature_maps.png")

# %% [markdown]
# ## 5. The backbone's parameters
#
# `params.parameter_table(body, depth=1)` counts parameters per top-level part of the ResNet and splits them
# into trainable and frozen (DETR freezes the stem and `layer1`); `params.format_parameter_table`
# prints it. The frozen batch-norm statistics are buffers: listed separately, never trained.
# Expect 23,454,912 parameters, 23,232,512 of them trainable - the first line of DETR's own table
# in notebook 04.

# %%
rows = params.parameter_table(body, depth=1)
print(params.format_parameter_table(rows))
total = rows[-2]
assert (total.total, total.trainable) == (23_454_912, 23_232_512)

# %% [markdown]
# Almost two thirds of the weights sit in `layer4` alone (three blocks with 2048-channel outputs): 14.94M
# parameters. Its 1x1 convolutions (each block's `conv1` and `conv3`, and the `downsample` shortcut) hold
# 7.86M of them, its three 3x3 convolutions 7.08M; but the 3x3s are the largest single tensors
# (512 x 512 x 3 x 3 = 2.36M each), and they cost the most per output pixel.

# %%
fig = params.plot_parameter_table(rows, title="ResNet-50 backbone (DETR freezing)")
plt.show()

# %% [markdown]
# **Next:** the grid of 2048-d vectors has lost where each vector came from once it is flattened
# into a sequence; notebook 02 adds that back with sine position encodings.
#
# ## Exercises
#
# Predict the answer before you run anything, then check it with a cell.
#
# 1. `cnn.im2col_loops` on a $(1, 3, 32, 32)$ input with a 3x3 kernel, stride 2, padding 1: what shape
#    does the patch matrix have, and how many multiply-adds does the convolution to 64 channels take?
# 2. Build `ResNet("resnet50", dilation=True)` (DETR-DC5). What are the stride and the feature-map size
#    of `layer4` for the portrait, and how many parameters does dilation add?
# 3. How many parameters would DETR train in the backbone if `frozen_stages=0` (nothing frozen), and
#    which share of the backbone is that?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. Output $16 \times 16$ positions, each a patch of $3 \cdot 3 \cdot 3 = 27$ values: the patch matrix is
#    $(1, 27, 256)$ (im2col's columns) and the product with the $(64, 27)$ weight matrix costs
#    $64 \cdot 27 \cdot 256 = 442{,}368$ multiply-adds.
# 2. Stride 16 instead of 32, so the map has twice the rows and columns (four times the cells) and the
#    encoder's attention over it costs about 16x more; dilation adds **no** parameters (the same 3x3
#    kernels are applied with holes).
# 3. Every parameter of the ResNet body: `sum(p.numel() for p in backbone.parameters())` with
#    `Backbone(body, frozen_stages=0)`, i.e. the frozen stem and `layer1` join the 23.2M trainable ones (23.5M, all of the
#    body's weights; the frozen BatchNorm statistics are buffers and never train).
#
# </details>
