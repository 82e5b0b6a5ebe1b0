"""Shared tiny settings for the engine tests (train, CLI, DDP): a ~50k-parameter DETR on 64 px images."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A synthetic set small enough to draw in a second: 64x64 images with 1-2 shapes.
SYN = dict(num_train=12, num_val=4, image_size=(64, 64), min_objects=1, max_objects=2, workers=1, progress=False)
# detr_tiny shrunk further: 1/8-width ResNet-18 to layer2 (stride 8), hidden 32, 1+2 layers, 8 queries.
TINY = dict(backbone_width=0.125, return_layer="layer2", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2,
            dim_feedforward=64, num_queries=8)


def tiny_config(out, data_root, **overrides):
    from detr_nb.train import TrainConfig

    base = dict(dataset="synthetic", data_root=None if data_root is None else str(data_root), data_kwargs=dict(SYN), preset="cpu",
                model="detr_tiny", model_overrides=dict(TINY), time_budget_s=None, epochs=3, batch_size=4,
                lr=1e-3, log_every=1, progress=False, workers=0, out=str(out), eval_at_end=False,
                num_pictures=0, device="cpu", seed=0,
                # the engine tests pin the official loss and schedule (the main job's defaults are the aided ones)
                loss_type="ce", weight_dict=None, cost_class=1.0, schedule="step", warmup_steps=0)
    base.update(overrides)
    return TrainConfig(**base)


def cli_env():
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
