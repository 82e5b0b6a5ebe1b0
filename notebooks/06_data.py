# %% [markdown]
# # 06 · Data: datasets, transforms that move boxes, batches with masks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/06_data.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 7.0 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about 2 minutes, an estimate: the install, drawing 1,200 synthetic
# images (19 s on one busy CPU core, measured with `ensure_synthetic`), and the Penn-Fudan download (about 53 MB, 51 MiB).
# Full mode on 2 CPU cores: 14 s, measured (`bench/notebook_times.py --key-figures`, machine speed 186 ms per
# main-job step, `bench/train_step.py --speed`; without the Penn-Fudan download, which only Colab does).
#
# **Key figure** of a full run (section 3; made on a CPU by `bench/notebook_times.py`,
# docs/figures/README.md): each augmentation moves the boxes with the pixels.
#
# ![each augmentation moves the boxes with the pixels](https://raw.githubusercontent.com/detr-nb/detr_nb/main/docs/figures/06_data.png)
#
# Notebook 05 took the targets as given: per image a dict with `labels (N,)` and `boxes (N, 4)` in
# normalised `(cx, cy, w, h)`. This notebook shows where they come from and what the model receives:
#
# 1. a **synthetic** dataset of coloured shapes that `detr_nb` writes on first use (it trains on a CPU);
# 2. a **real** one, Penn-Fudan pedestrians, downloaded and converted to COCO format (in Colab);
# 3. **transforms** that move the boxes together with the pixels (flip, resize, crop) and finally turn
#    absolute corner boxes into normalised centre boxes;
# 4. **batching**: images of different sizes are padded to a common size and a boolean mask says which
#    pixels are padding, all the way down to the feature map the transformer reads.
#
# The data contract (`docs/ARCHITECTURE.md`): a batch is `(images (B,3,H,W) float32 normalised,
# mask (B,H,W) bool True on padding, targets: list of B dicts)`.

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
NUM_TRAIN = 48 if SMOKE else 1000   # synthetic training images to generate
NUM_VAL = 16 if SMOKE else 200
# The real dataset is downloaded in Colab only (about 50 MB), never in smoke mode; set True to force it.
USE_REAL = ("google.colab" in sys.modules) and not SMOKE
REAL_DATASET = "pennfudan"          # or "balloon"

# %%
import inspect
import random

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.data import DataLoader

import detr_nb
from detr_nb.data import (SYNTHETIC_CLASSES, Compose, RandomHorizontalFlip, RandomResize, RandomSizeCrop, build_dataset,
                          collate_fn, hflip, make_transforms, render_sample, synthetic_params)
from detr_nb.teach import checks
from detr_nb.teach.data_viz import (augment, augmentations, dataset_stats, plot_augmentations, plot_dataset_stats,
                                    show_batch, show_samples)
from detr_nb.teach.paths import workdir

if SMOKE:
    torch.set_num_threads(1)   # the test machine shares 2 cores between processes: one thread each avoids contention
print("detr_nb", detr_nb.__version__, "| files go to", workdir())

# %% [markdown]
# ## 1. The synthetic dataset
#
# Each image holds 0-10 shapes of 6 classes (circle, square, triangle, star, cross, ring) on a textured
# background with distractor lines and pixel noise. Sizes span a decade, shapes overlap (a new shape may hide
# at most 30 % of an earlier one), and a shape's **colour is independent of its class**, so the model has
# to learn shape, not colour. Everything is deterministic in the seed.
#
# First, how one sample is made: `render_sample` draws the shapes and returns each object's visible-pixel
# mask; the box is the tight extent of that mask. (That is also how COCO boxes relate to COCO masks.)

# %%
params = synthetic_params()
sample = render_sample(params, seed=0, split="train", index=3)
print("image", sample["image"].shape, "| labels", sample["labels"].tolist(), "| boxes (x0, y0, x1, y1):")
print(np.asarray(sample["boxes"]))

k = int(np.argmax([m.sum() for m in sample["masks"]]))           # the largest object
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
axes[0].imshow(sample["image"])
axes[0].set_title("rendered image")
axes[1].imshow(sample["masks"][k], cmap="gray")
x0, y0, x1, y1 = np.asarray(sample["boxes"])[k]
axes[1].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red"))
axes[1].set_title(f"visible mask of object {k} ({SYNTHETIC_CLASSES[sample['labels'][k] - 1]}) and its box")
for ax in axes:
    ax.set_axis_off()
plt.show()
ys, xs = np.nonzero(sample["masks"][k])
assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)   # tight on the mask

# %% [markdown]
# `build_dataset("synthetic", split, root=...)` writes PNGs + COCO JSON under `root` on first use (a
# progress bar shows the rendering; later calls only verify the files' hashes) and returns a
# `CocoDetection`. With `preset="none"` the only transforms are `ToTensor` + `Normalize`.

# %%
root = str(workdir("synthetic"))
train_raw = build_dataset("synthetic", "train", preset="none", root=root, num_train=NUM_TRAIN, num_val=NUM_VAL)
val_raw = build_dataset("synthetic", "val", preset="none", root=root, num_train=NUM_TRAIN, num_val=NUM_VAL)
print(train_raw)
print(val_raw)
print("categories:", train_raw.categories)
print("num_classes = max id + 1 =", train_raw.num_classes, "(id 0 unused, like COCO; the model adds 'no object')")

fig = show_samples(train_raw, n=8, ncols=4, raw=True)
plt.show()

# %% [markdown]
# Statistics straight from the annotation file (no image decoded): objects per image, object size
# relative to the image, box shapes and class balance. Two numbers matter for DETR: the maximum
# number of objects per image must stay below the number of queries (the `detr_tiny` model used on this
# data has 25, the official model 100), and small objects are the hard ones for a stride-32 feature map.

# %%
stats = dataset_stats(train_raw)
print(f"{stats['num_images']} images, {stats['num_objects']} objects, "
      f"max {stats['objects_per_image'].max()} per image; median relative size "
      f"{np.median(stats['box_rel_size']):.2f}")
fig = plot_dataset_stats(stats, title="synthetic shapes (train)")
plt.show()

# %% [markdown]
# ## 2. A real dataset: Penn-Fudan pedestrians
#
# 170 street photographs with 345 labelled pedestrians (the dataset's own count), each with a segmentation mask. `build_dataset("pennfudan")`
# downloads the archive once (resumable; its sha256 is recorded on first use and checked afterwards),
# converts the masks to COCO boxes, and keeps the last 50 images for validation. In Colab the files go to
# `/content/detr_nb_cache` (local disk, fast; copy to Drive yourself if you want to keep them).
# This cell is skipped outside Colab and in smoke mode (no network there).

# %%
if USE_REAL:
    real_train = build_dataset(REAL_DATASET, "train", preset="none")
    print(real_train)
    fig = show_samples(real_train, n=8, ncols=4, raw=True)
    plt.show()
    fig = plot_dataset_stats(dataset_stats(real_train), title=f"{REAL_DATASET} (train)")
    plt.show()
else:
    real_train = None
    print(f"skipped: {REAL_DATASET} is downloaded in Colab only (USE_REAL={USE_REAL}, SMOKE={SMOKE})")

# %% [markdown]
# ## 3. Transforms move boxes with the pixels
#
# Each transform is a function `(image, target) -> (image, target)`. Until the last step the image is a
# PIL image and `target["boxes"]` holds **absolute** corners `(x0, y0, x1, y1)` in pixels, which makes
# each geometric rule one line:
#
# * horizontal flip of an image of width $W$: $(x_0, x_1) \to (W - x_1,\; W - x_0)$;
# * resize by $(s_x, s_y)$: every coordinate is scaled, $x \to s_x x$, $y \to s_y y$;
# * crop of the region starting at $(l, t)$ with size $(w, h)$: subtract $(l, t)$, clip to $[0,w]\times[0,h]$,
#   and drop boxes that lost all their area (with their labels).
#
# The flip, your turn first.

# %% [markdown]
# ### Your turn: the horizontal flip
#
# Write the flip for an image tensor $(3, H, W)$ and its boxes in absolute corners: mirror the pixels
# left-right and apply the rule above to the boxes (the labels do not change). The check compares with
# `detr_nb.data.transforms.hflip`, boxes that touch the image's edges and an image without boxes included.

# %%
def my_hflip(image, boxes):
    """image (3, H, W), boxes (N, 4) absolute (x0, y0, x1, y1) -> (flipped image, flipped boxes)."""
    raise NotImplementedError("your turn: write my_hflip")

# %% tags=["solution"] cellView="form" jupyter={"source_hidden": true}
#@title Solution: open it after you tried
def hflip_solution(image, boxes):
    W = image.shape[-1]
    x0, y0, x1, y1 = boxes.unbind(-1)                                        # (N,) each
    return image.flip(-1), torch.stack([W - x1, y0, W - x0, y1], dim=-1)     # the new left edge is the old right


if SMOKE:
    my_hflip = hflip_solution

# %%
checks.check_hflip(my_hflip)

# %% [markdown]
# The package's flip works on a PIL image or a tensor and moves the boxes with the pixels (the target's
# other fields, labels and areas, do not change under a flip):

# %%
print(inspect.getsource(hflip))

# %% [markdown]
# `augmentations` applies each transform to the same raw sample (seeded, so it is
# reproducible) and draws the boxes it returns. If the boxes were not moved correctly you would see them
# drift off their shapes.

# %% tags=["key-figure"]
demo_transforms = {
    "flip": RandomHorizontalFlip(p=1.0),
    "resize (short side 224)": RandomResize([224]),
    "crop 64..110 px": RandomSizeCrop(64, 110),
    "flip + crop + resize": Compose([RandomHorizontalFlip(p=1.0), RandomSizeCrop(64, 110), RandomResize([224])]),
}
fig = plot_augmentations(augmentations(train_raw, 0, demo_transforms, seed=1), names=train_raw.categories)
plt.show()

# Check the flip rule on numbers.
image, target = train_raw.get_raw(0)
flipped_image, flipped = augment(train_raw, 0, RandomHorizontalFlip(p=1.0))
W = image.size[0]
expected = torch.stack([W - target["boxes"][:, 2], target["boxes"][:, 1], W - target["boxes"][:, 0],
                        target["boxes"][:, 3]], dim=1)
assert torch.allclose(flipped["boxes"], expected)
print("flip rule holds for", len(expected), "boxes")

# %% [markdown]
# **Try it.** Pick a transform and a seed; every seed is a different random draw (crop position and size,
# resize scale). The functions behind the widget are `augmentations` and `plot_augmentations`.

# %%
import ipywidgets as widgets


def show_augmentation(transform="crop 64..110 px", seed=0, index=0):
    plt.close("all")
    plot_augmentations(augmentations(train_raw, index, {transform: demo_transforms[transform]}, seed=seed),
                       names=train_raw.categories)
    plt.show()


widgets.interact(show_augmentation,
                 transform=widgets.Dropdown(options=list(demo_transforms), value="crop 64..110 px"),
                 seed=widgets.IntSlider(value=0, min=0, max=20, continuous_update=False),
                 index=widgets.IntSlider(value=0, min=0, max=len(train_raw) - 1, continuous_update=False));

# %%
show_augmentation("flip + crop + resize", seed=3, index=1)   # the same function, called without a browser

# %% [markdown]
# ### The presets, and the last step: `Normalize`
#
# `make_transforms(preset, train)` builds the whole pipeline:
#
# * `"official"`: DETR's recipe: flip; then either a random resize of the shortest side to 480..800
#   (longest ≤ 1333), or (p = 0.5) resize to 400/500/600, random crop 384..600, then the random resize.
#   Validation: shortest side 800.
# * `"t4"`: the same recipe with shortest side 480..640 (longest ≤ 1000), to fit a 16 GB T4.
# * `"cpu"`: flip only, and shrink images larger than 512 px; the synthetic images pass at their own size.
#
# Every pipeline ends with `ToTensor` and `Normalize`: ImageNet mean/std on the pixels, and the boxes
# become **normalised** $(c_x, c_y, w, h) = \bigl(\tfrac{x_0+x_1}{2W}, \tfrac{y_0+y_1}{2H}, \tfrac{x_1-x_0}{W}, \tfrac{y_1-y_0}{H}\bigr)$
# with $(W, H)$ the size **after** the transforms, which `target["size"]` records as `(h, w)`.

# %%
pipeline = make_transforms("t4", train=True)
print("t4 train pipeline:", " -> ".join(type(t).__name__ for t in pipeline.transforms))

train_t4 = build_dataset("synthetic", "train", preset="t4", root=root, num_train=NUM_TRAIN, num_val=NUM_VAL)
random.seed(0)
img, tgt = train_t4[0]
print("image", tuple(img.shape), img.dtype, "| size (h, w)", tgt["size"].tolist(),
      "| orig_size", tgt["orig_size"].tolist())
print("boxes (cx, cy, w, h), normalised:\n", tgt["boxes"][:4])
assert tgt["boxes"].min() >= 0 and tgt["boxes"].max() <= 1 and tuple(img.shape[-2:]) == tuple(tgt["size"].tolist())
random.seed(0)
fig = show_samples(train_t4, n=4, ncols=4)   # boxes mapped back to pixels of the transformed image
plt.show()

# %% [markdown]
# ## 4. Batching: padding and the mask
#
# Images in a batch have different sizes, but a tensor needs one. `collate_fn` pads every image at the
# bottom and right to the largest height and width in the batch (zeros) and returns a mask, **True on
# padding**. Boxes stay normalised to each image's own unpadded size, so padding never moves them.

# %%
loader = DataLoader(train_t4 if not SMOKE else train_raw, batch_size=4, shuffle=False, collate_fn=collate_fn)
random.seed(0)
images, mask, targets = next(iter(loader))
print("images", tuple(images.shape), images.dtype, "| mask", tuple(mask.shape), mask.dtype)
for i, t in enumerate(targets):
    h, w = t["size"].tolist()
    print(f"image {i}: size {(h, w)}, {len(t['boxes'])} objects, padding pixels {int(mask[i].sum())}")
    assert not mask[i, :h, :w].any() and mask[i].sum() == mask.shape[1] * mask.shape[2] - h * w
fig = show_batch(images, mask, targets, names=train_raw.categories)
plt.show()

# %% [markdown]
# The mask travels with the image. The backbone downsamples the image by its stride (16 for `detr_tiny`,
# 32 for DETR-R50); the mask is downsampled to the feature map with **nearest** interpolation (a feature
# pixel is padding if the image pixel it samples is), then it becomes the transformer's
# `key_padding_mask`, so attention never reads padding, and the sine position encoding counts only the
# real pixels. Here is that feature-level mask, computed by the model's own backbone:

# %%
model = detr_nb.build_model("detr_tiny", num_classes=train_raw.num_classes).eval()
with torch.no_grad():
    features, feature_mask, pos = model.backbone(images, mask)   # (B, C, h, w), (B, h, w), (B, D, h, w)
print("features", tuple(features.shape), "| feature mask", tuple(feature_mask.shape),
      "| position encoding", tuple(pos.shape), "| stride", model.backbone.stride)
fig, axes = plt.subplots(2, len(targets), figsize=(3 * len(targets), 5.2), squeeze=False)
for i in range(len(targets)):
    axes[0, i].imshow(mask[i], cmap="gray_r", vmin=0, vmax=1)
    axes[0, i].set_title(f"image mask {tuple(mask[i].shape)}", fontsize=8)
    axes[1, i].imshow(feature_mask[i], cmap="gray_r", vmin=0, vmax=1)
    axes[1, i].set_title(f"feature mask {tuple(feature_mask[i].shape)}", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("black = padding (True)", fontsize=9)
plt.show()

# %% [markdown]
# Note what happens to thin padding: a strip narrower than the stride can vanish from the feature mask,
# because nearest interpolation reads one image pixel per feature cell. Those feature cells then mix a few
# padded pixels into their receptive field; it is a small, inherent leak of DETR's design, and one reason
# why a model trained on single unpadded images loses some AP when evaluated with padding.
#
# **Summary.** A dataset yields `(image, target)` with normalised centre boxes; transforms move boxes with
# pixels in absolute corner form and normalise at the end; `collate_fn` pads and masks; the backbone carries
# the mask down to the feature map. Notebook 07 feeds these batches to the model and the loss of notebook 05.
#
# ## Exercises
#
# Predict first, then check with a cell.
#
# 1. Apply `hflip` twice to an image and its target. What do you get back, exactly?
# 2. `RandomSizeCrop` cuts an object in half, and misses another one completely. What happens to each
#    one's `boxes`, `labels` and `area`?
# 3. `collate_fn` on two images of 64x80 and 96x48 (H x W): what are the shapes of `images` and `mask`,
#    and where is the mask True?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. The same image and the same boxes: a flip maps $x \mapsto w - x$, and twice is the identity (up to
#    float rounding of the box coordinates).
# 2. The cut one stays, its box clipped to the crop (and its area becomes the visible box's area); the
#    missed one is removed from every per-object field together (`boxes`, `labels`, `area`, `iscrowd`), so
#    the fields stay aligned.
# 3. `images (2, 3, 96, 80)` (the largest height and width) and `mask (2, 96, 80)`: True on the padding,
#    i.e. rows 64-95 of the first image and columns 48-79 of the second.
#
# </details>
