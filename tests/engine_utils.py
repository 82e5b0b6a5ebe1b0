"""Shared tiny settings for the runner's tests (train, CLI, DDP): a ~50k-parameter DETR on 64 px images."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A synthetic set small enough to draw in a second: 64x64 images with 1-2 shapes.
SYN = dict(num_train=12, num_val=4, image_size=(64, 64), min_objects=1, max_objects=2, workers=1, progress=False)
# detr_tiny shrunk further: 1/8-width ResNet-18 to layer2 (stride 8), hidden 32, 1+2 layers, 8 queries.
TINY = dict(backbone_width=0.125, return_layer="layer2", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2,
            dim_feedforward=64, num_queries=8)
# The paper's loss weights, which are its matching costs too (the main job weights the class term 2).
PAPER_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def tiny_config(out, data_root, **overrides):
    """The tiny paper DETR (``detr_tiny`` with :data:`TINY`) on :data:`SYN`, on the CPU, the official loss weights
    (which are the matching costs too) and a step schedule without warm-up: the main job's recipe (``aided``)
    for everything else."""
    from detr_nb.config import TrainConfig

    base = dict(dataset="synthetic", data_root=None if data_root is None else str(data_root), data_kwargs=dict(SYN),
                preset="cpu", model="detr_tiny", model_overrides=dict(TINY), time_budget_s=None, epochs=3,
                batch_size=4, lr=1e-3, log_every=1, progress=False, workers=0, out=str(out), eval_at_end=False,
                device="cpu", seed=0, weight_dict=dict(PAPER_WEIGHTS), schedule="step", warmup_steps=0)
    base.update(overrides)
    return TrainConfig(**base)


def cli_env():
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(args, cwd, timeout=600, env=None, check=True):
    """``python -m detr_nb <args>`` (or any argv starting with "python"/"torchrun"/"bash") as a subprocess."""
    import subprocess
    argv = [str(a) for a in args]
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run"] + argv[1:]
    elif argv[0] not in ("bash",):
        argv = [sys.executable, "-m", "detr_nb"] + argv
    proc = subprocess.run(argv, cwd=cwd, env={**cli_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def write_coco_folder(root, sizes, boxes, split="train", categories=("thing",), fmt="PNG"):
    """A COCO-format folder ``root/{split}/*.png`` + ``root/annotations/instances_{split}.json``.

    ``sizes``: (w, h) per image; ``boxes``: per image a list of (x, y, w, h, category_id). Each box is painted
    as a white rectangle on a dark, slightly noisy background, so a model can find it."""
    import json
    import numpy as np
    from PIL import Image
    from pathlib import Path

    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(len(sizes))
    images, anns = [], []
    for i, ((w, h), bxs) in enumerate(zip(sizes, boxes)):
        pixels = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
        for x, y, bw, bh, _ in bxs:
            pixels[int(y):int(y + bh), int(x):int(x + bw)] = 230
        name = f"{i:04d}.{fmt.lower()}"
        Image.fromarray(pixels).save(root / split / name, fmt)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for x, y, bw, bh, c in bxs:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(categories)]
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return root
