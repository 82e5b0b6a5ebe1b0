# %% [markdown]
# # 11 · Fine-tune the pretrained DETR on a real dataset, try it on your photo, take it home
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/detr-nb/detr_nb/blob/main/notebooks/11_fine_tuning.ipynb)
#
# **Cost.** Smoke mode (`DETR_NB_SMOKE=1`): 8.1 s on 2 CPU cores (`bench/notebook_times.py`).
# Full mode on a Colab T4: about 15 minutes (estimate: 40 epochs of the balloon
# set's 61 images are 600 steps of batch 4 at DETR's 480-800 px scales; the paper's 28 images/s for DETR-R50
# inference on a V100 puts a training step, about three forward passes' work, near 0.1 s per image, and a T4
# in fp16 runs DETR about as fast as a V100 in fp32: ~4 minutes of steps, ~10 with the data loading of
# Colab's two CPU cores; plus the downloads (38 MB of images, the 159 MB checkpoint), the evaluation and the
# ONNX export, a minute or two each).
#
# **Key figure:** the fine-tuned detector's boxes on validation photos, which needs the official weights and
# the balloons. It waits for a run where they can be downloaded (docs/figures/README.md says how to make it).
#
# Notebooks 01-10 built DETR and trained small ones. Training a DETR-R50 from scratch takes 300-500 epochs
# of COCO on 16 GPUs; nobody does that for their own data. What everyone does is **fine-tune**: start from
# the released COCO weights, replace the class head for the new classes, and train briefly with small
# learning rates (the `finetune` recipe, `detr_nb/config.py`, after the official maintainers and
# the Hugging Face tutorials: lr 1e-4, backbone 1e-5, weight decay 1e-4, gradient clip 0.1, the paper's loss).
#
# 1. the data: the balloon dataset (61 training, 13 validation photos, one class), downloaded and checked;
# 2. the pretrained model as it is (it knows COCO's 80 classes, not "balloon");
# 3. fine-tuning, then its COCO AP and its boxes on the validation photos;
# 4. **your own photo**: upload one, or give a URL;
# 5. **take it home**: the checkpoint, the `predict` command, an ONNX file that runs without PyTorch
#    (onnxruntime), checked against the PyTorch model box for box, the weights as safetensors, and a Hugging
#    Face folder, downloaded to your computer.
#
# Smoke mode (the tests, offline, on a CPU) uses self-made images and a small randomly initialised DETR.

# %%
# Setup: in Colab, install detr_nb and its export extra from GitHub (torch is already there and is left alone).
import sys
if "google.colab" in sys.modules:
    import subprocess
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "detr_nb[export] @ git+https://github.com/detr-nb/detr_nb@main"],
                         capture_output=True, text=True)
    if pip.returncode:
        lines = [line.strip() for line in pip.stderr.splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith(("fatal:", "ERROR:"))), lines[-1] if lines else "")
        raise SystemExit(f"cannot install detr_nb from https://github.com/detr-nb/detr_nb: {why} (a fork sets its own URL as "
                         "REPO_URL in detr_nb/__init__.py)")

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("DETR_NB_SMOKE") == "1"
DATASET = "balloon"          # or "pennfudan" (pedestrians), or a folder in COCO format
EPOCHS = 1 if SMOKE else 40
CPU_S_PER_IMAGE = 3.8    # one DETR-R50 training step, batch 1 at 800 x 1066, on 2 CPU cores (bench/train_step.py)
RUN_NAME = f"finetune-{DATASET}"
# Keep the run on Google Drive (asks for permission once). Off: it stays in /content, and a recycled
# runtime takes it with it (training starts again; the data and weights are downloaded again).
USE_DRIVE = False
THRESHOLD = 0.7              # boxes drawn from this score up (COCO AP uses every box)
PHOTO_URL = ""               # an image URL to try the detector on (or use the upload widget below)

# %%
import json

import matplotlib.pyplot as plt
import torch
from IPython.display import display

import detr_nb
from detr_nb import TrainConfig, Trainer
from detr_nb.config import build_postprocess, resolve_device
from detr_nb.data import build_dataset, make_transforms
from detr_nb.evaluate import category_names, sample_predictions
from detr_nb.export import OnnxDetector, export_hf, export_onnx, export_safetensors, hf_equivalent, hf_parity, parity
from detr_nb.figures import draw_boxes, draw_predictions
from detr_nb.predict import detect, open_input
from detr_nb.pretrained import COCO_CLASSES
from detr_nb.teach.data_viz import show_samples
from detr_nb.teach.images import sample_image
from detr_nb.teach.paths import checkpoint_root, workdir
from detr_nb.teach.training import LiveLossPlot, show_tensorboard
from detr_nb.teach.uploads import colab_download, colab_upload, first_photo, uploaded_files

if SMOKE:
    torch.set_num_threads(1)
device = resolve_device("auto")
print("detr_nb", detr_nb.__version__, "| torch", torch.__version__, "| device", device)

# %% [markdown]
# ## 1. The data
#
# `build_dataset("balloon", split)` downloads the archive once (into `/content/detr_nb_cache` in Colab),
# checks it, converts its polygon annotations to COCO boxes, and checks every image against its
# annotations (sizes, EXIF orientation, boxes) before anything trains. Category ids start at 1 ("balloon");
# the model's class head gets `max id + 1` = 2 classes plus "no object". Smoke mode draws a small
# synthetic set instead (no internet in the tests).

# %%
if SMOKE:
    data = dict(num_train=8, num_val=4, image_size=(64, 64), min_objects=1, max_objects=2)
    source = dict(dataset="synthetic", data_root=str(workdir("data") / "synthetic-11"), data_kwargs=data,
                  preset="none")
else:
    source = dict(dataset=DATASET, preset="official")
train_set = build_dataset(source["dataset"], "train", source["preset"], root=source.get("data_root"),
                          **source.get("data_kwargs", {}))
val_set = build_dataset(source["dataset"], "val", source["preset"], root=source.get("data_root"),
                        **source.get("data_kwargs", {}))
print(train_set)
print(val_set)
fig = show_samples(train_set, n=4, raw=True)
plt.show()

# %% [markdown]
# ## 2. The pretrained DETR as it is
#
# The released DETR-R50 was trained on COCO: it knows persons, kites and sports balls, not balloons.
# Before fine-tuning, this is what it sees in a validation photo (COCO's names; smoke mode: random weights,
# so nothing sensible).

# %%
coco_model = detr_nb.build_model("detr_tiny" if SMOKE else "detr_r50", num_classes=91)
if not SMOKE:
    detr_nb.load_pretrained(coco_model, "detr_r50")       # downloads once (159 MB), sha256-checked
coco_model.to(device).eval()
photo, _ = val_set.get_raw(0)                              # an upright PIL image, as the dataset reads it
val_tf = make_transforms(source["preset"], train=False)
found = detect(coco_model, photo, val_tf, device)          # every query, in the photo's own pixels
found = {k: v[found["scores"] >= THRESHOLD] for k, v in found.items()}
fig, ax = plt.subplots(figsize=(6, 5))
draw_boxes(ax, photo, found["boxes"], found["labels"].tolist(), found["scores"].tolist(), names=COCO_CLASSES)
ax.set_title(f"COCO's DETR: {len(found['scores'])} boxes >= {THRESHOLD}", fontsize=9)
ax.set_axis_off()
plt.show()
del coco_model

# %% [markdown]
# ## 3. Fine-tuning
#
# `TrainConfig(recipe="finetune", ...)` starts from the released checkpoint: every tensor loads strictly
# except the class head (`class_embed`, 92 outputs for COCO, 3 here), which keeps its fresh initialisation
# (a warning says so). The ResNet's stem and `layer1` stay frozen as in the paper, the backbone trains at
# lr 1e-5 and the transformer at 1e-4; the augmentation is the paper's (flips, multi-scale resizes, random
# crops). A fixed `RUN_NAME` means running the cell again resumes the run from its last checkpoint.

# %%
runs = checkpoint_root(mount_drive=USE_DRIVE)
smoke = dict(model="detr_tiny", pretrained=None, pretrained_backbone=False, max_steps=2, batch_size=2,
             model_overrides=dict(backbone_width=0.125, return_layer="layer2", hidden_dim=32, nheads=2,
                                  enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=8)) if SMOKE else {}
config = TrainConfig(recipe="finetune", **source, epochs=EPOCHS, out=str(runs / RUN_NAME), log_every=1 if SMOKE else 5,
                     workers=0 if SMOKE else 2, **smoke)
print(json.dumps({k: v for k, v in config.to_dict().items() if k in (
    "recipe", "model", "pretrained", "dataset", "epochs", "batch_size", "lr", "lr_backbone", "weight_decay",
    "clip_max_norm", "weight_dict", "preset", "amp", "out")}, indent=1))

# %%
if device.type != "cuda" and not SMOKE:    # 40 epochs of DETR-R50 on a CPU: say what that costs before it starts
    steps = EPOCHS * len(train_set)        # one photo per image-step, at DETR's 480-800 px
    print(f"No GPU: {EPOCHS} epochs of DETR-R50 are about {steps} training images at 480-800 px; a 2-core CPU "
          f"takes about {CPU_S_PER_IMAGE:.1f} s per image (measured at 800 x 1066), so about "
          f"{steps * CPU_S_PER_IMAGE / 3600:.1f} hours, against about 15 minutes on a T4. Runtime -> Change "
          f"runtime type -> T4 GPU, or set EPOCHS lower (the checkpoints keep what is trained).")

# %%
live = LiveLossPlot(every=1 if SMOKE else 30)
trainer = Trainer(config, callbacks=[live])
reason = trainer.fit()
print(f"stopped by {reason!r} after {trainer.step} steps ({trainer.time_s():.0f} s); checkpoint {trainer.last_good}")

# %% [markdown]
# The run's TensorBoard (`%load_ext tensorboard`, then `%tensorboard --logdir <run folder>`): each loss term,
# the learning rates, the AP after each epoch and the predictions figure.

# %%
show_tensorboard(trainer.out, start=not SMOKE)   # the smoke run (tests) starts no server

# %% [markdown]
# ## 4. How good is it
#
# COCO AP on the validation photos, every box counted (no threshold), then the boxes with score ≥
# `THRESHOLD` drawn (solid) over the ground truth (dashed). How many balloons 40 epochs find has not been
# measured here (this project's machines cannot download the released weights): run it and see; small or
# overlapping balloons should be the hard cases.

# %% tags=["key-figure"]
stats = trainer.evaluate(verbose=True)
model = trainer.model.eval()
samples = sample_predictions(model, val_set, range(min(4, len(val_set))), device, trainer.autocast)
fig = draw_predictions(samples, threshold=THRESHOLD, names=category_names(val_set))
display(fig)

# %% [markdown]
# ## 5. Your own photo
#
# Upload a photo (or set `PHOTO_URL` in the parameters). In Colab the next cell opens Colab's file picker
# (Colab's upload *widget* delivers files of 1 MB or more empty, most phone photos among them); in a local
# Jupyter it shows an upload widget, a URL box and a **Detect** button. Photos from a phone are read upright
# (their EXIF orientation is applied), as in training. Without one, the
# cell after the widget uses the bundled sample photo (matplotlib's portrait of Grace Hopper, shipped with
# matplotlib: a person and no balloon, so a balloon detector should find nothing there, and a Penn-Fudan one
# should find her) and a validation photo the model never trained on.

# %%
import ipywidgets as widgets

names = {int(k): v for k, v in train_set.categories.items()}


def show_detections(image, title):
    found = detect(model, image, val_tf, device)
    found = {k: v[found["scores"] >= THRESHOLD] for k, v in found.items()}
    fig, ax = plt.subplots(figsize=(6, 5))
    draw_boxes(ax, image, found["boxes"], found["labels"].tolist(), found["scores"].tolist(), names=names)
    ax.set_title(f"{title}: {len(found['scores'])} boxes >= {THRESHOLD}", fontsize=9)
    ax.set_axis_off()
    plt.show()
    return found


def detect_upload(files):
    photo = first_photo(files)            # None, after one line, when nothing usable arrived
    if photo is not None:
        show_detections(photo[1], photo[0])


if "google.colab" in sys.modules and not PHOTO_URL:
    detect_upload(colab_upload())         # Colab's file picker: any size
elif not SMOKE:
    upload = widgets.FileUpload(accept="image/*", multiple=False, description="photo")
    url = widgets.Text(value=PHOTO_URL, placeholder="https://...", description="or URL")
    button = widgets.Button(description="Detect")
    shown = widgets.Output()

    def on_detect(_):
        with shown:
            shown.clear_output(wait=True)
            if url.value and not uploaded_files(upload):
                show_detections(open_input(url.value), url.value)
            else:
                detect_upload(uploaded_files(upload))

    button.on_click(on_detect)
    display(widgets.VBox([upload, url, button, shown]))

# %%
# Without the widget (what the tests run): PHOTO_URL if set, else the bundled photo and a validation photo.
if PHOTO_URL:
    mine = show_detections(open_input(PHOTO_URL), PHOTO_URL)
else:
    mine = show_detections(sample_image(), "the bundled sample photo")
    show_detections(val_set.get_raw(len(val_set) - 1)[0], "a validation photo")

# %% [markdown]
# ## 6. Take it home
#
# **The checkpoint** (`last.pth` in the run folder) holds the weights, the class names and the whole
# configuration: `python -m detr_nb predict photo.jpg my_folder/ --run <run folder>` rebuilds the model from
# it and writes annotated images and a JSON of boxes, on any machine with `detr_nb`.
#
# **ONNX**, for a machine without PyTorch: the model exported with dynamic image height and width (any
# photo size), only the last decoder layer's outputs, runnable with onnxruntime (and from C++, C#, Java,
# JavaScript...). `python -m detr_nb export --run <run folder> -o model.onnx` does the same. We run both
# models on the same photo and compare their outputs and boxes.

# %%
print("checkpoint:", trainer.last_good)
print(f"python -m detr_nb predict your_photo.jpg --run {trainer.out}")

model = model.cpu().eval()
onnx_path = export_onnx(model, trainer.out / "model.onnx")
print("exported", onnx_path, f"({onnx_path.stat().st_size / 2**20:.1f} MB)")
onnx_model = OnnxDetector(onnx_path)
image, _ = val_set[0]                                               # (3, H, W), the model's input
for key, delta in parity(model, onnx_model, image[None]).items():
    print(f"{key}: max |PyTorch - onnxruntime| = {delta:.2e}")
with torch.no_grad():
    ours = model(image[None])
theirs = onnx_model(image[None])
postprocess = build_postprocess(model)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for ax, (name, out) in zip(axes, (("PyTorch", ours), ("onnxruntime", theirs))):
    res = postprocess({k: out[k].float() for k in ("pred_logits", "pred_boxes")}, torch.tensor([image.shape[-2:]]))[0]
    res = {k: v[res["scores"] >= THRESHOLD] for k, v in res.items()}
    draw_boxes(ax, image, res["boxes"], res["labels"].tolist(), res["scores"].tolist(), names=names)
    ax.set_title(f"{name}: {len(res['scores'])} boxes", fontsize=9)
    ax.set_axis_off()
plt.show()

# %% [markdown]
# **safetensors**, for PyTorch without the training state: the weights alone, and a `config.json` with the
# model's configuration, its class names and the dataset's category ids (the README shows the five lines that
# load them with `detr_nb.build_model`). **Hugging Face**: a folder that `transformers`'
# `DetrForObjectDetection.from_pretrained` and `pipeline("object-detection")` load, for the models of the
# official layout, such as this fine-tuned DETR-R50 (smoke mode's tiny model has none, and says so); the
# export checks its outputs against ours on padded images. On the command line: `python -m detr_nb export
# --run <run folder> --format safetensors` (or `--format hf`). Then the files come to your computer (Colab's
# download; the Hugging Face folder as a .zip).

# %%
train_base = train_set.dataset if isinstance(train_set, torch.utils.data.Subset) else train_set
weights = export_safetensors(model, trainer.out / "model.safetensors", train_base.categories, train_base.category_ids)
print("weights:", weights, "+", weights.with_name("config.json"))
take_home = [onnx_path, weights, weights.with_name("config.json")]
why_not = hf_equivalent(model)
if why_not:
    print("no Hugging Face export:", why_not)
else:
    hf_dir = export_hf(model, trainer.out / "hf_model", train_base.categories, config.preset)
    delta = hf_parity(model, hf_dir)
    print(f"Hugging Face folder {hf_dir}: max |delta| logits {delta['pred_logits']:.1e}, boxes {delta['pred_boxes']:.1e}")
    take_home.append(hf_dir)
colab_download(*take_home)
trainer.close()

# %% [markdown]
# **Share it on the Hugging Face Hub** (a free account and a token with write access; not run here):
#
# ```python
# from huggingface_hub import notebook_login
# from transformers import DetrForObjectDetection, DetrImageProcessor
# notebook_login()
# DetrForObjectDetection.from_pretrained(hf_dir).push_to_hub("your-name/balloon-detr")
# DetrImageProcessor.from_pretrained(hf_dir).push_to_hub("your-name/balloon-detr")
# ```
#
# Anyone can then run `pipeline("object-detection", model="your-name/balloon-detr")`.

# %% [markdown]
# **Summary.** Fine-tuning is the paper's model with a new class head and small learning rates; a few
# minutes on a T4 turn COCO's DETR into a balloon detector. The checkpoint rebuilds the model anywhere
# `detr_nb` is installed, the ONNX file runs without PyTorch, with the same outputs to ~1e-5, and the Hugging
# Face folder runs in `transformers`.
#
# ## Exercises
#
# Predict first, then check (a new `RUN_NAME` for each).
#
# 1. Fine-tune with `lr_backbone=0` (a frozen backbone). Faster or slower per step, and better or worse AP?
# 2. Train the same recipe without the released weights (`pretrained=None, pretrained_backbone=True`, an
#    ImageNet backbone only) for the same 40 epochs. What AP do you expect, and why?
# 3. Lower `THRESHOLD` to 0.3 on your photo. What appears, and does the COCO AP of section 4 change?

# %% [markdown]
# <details><summary>Answers</summary>
#
# 1. Faster per step (no backbone gradients: the backward pass skips most of the ResNet) and usually a
#    little worse AP: the backbone's features adapt less to the new photos. On 61 images the difference is
#    small; with more data it grows.
# 2. Near zero: the transformer and the queries start from scratch, and DETR's from-scratch training needs
#    hundreds of epochs of a large dataset (notebook 10), not 40 epochs of 61 photos. Fine-tuning works
#    because the released weights already know how to find objects; only the class head is new.
# 3. More boxes, mostly duplicates and background with low scores. The COCO AP does not change: it uses
#    every box, ranked by score, whatever the drawing threshold.
#
# </details>
