"""DDP on 2 CPU processes (gloo, torchrun): the first step's loss equals one process on the same global batch, and
so do the weights after it."""
import json
import socket
import subprocess
import sys

import pytest
import torch

from detr_nb import checkpoint as ck
from detr_nb.data import ensure_synthetic
from detr_nb.trainer import Trainer
from engine_utils import SYN, TINY, cli_env, tiny_config

# Two objects per 64x64 image: every process sees as many boxes as the other, so even the
# cross-entropy (a weighted mean per process) averages to the single-process value.
DDP_SYN = {**SYN, "min_objects": 2, "max_objects": 2}
# The paper's frozen BatchNorm (here the identity, without ImageNet weights): a trained BatchNorm normalises with
# each process's own batch, two images here against four in one process, so the losses would differ by design.
FROZEN = {**TINY, "backbone_norm": "frozen_bn"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_processes_match_one_process(tmp_path, one_thread):
    root = tmp_path / "data"
    ensure_synthetic(str(root), **DDP_SYN)
    cfg = tiny_config(tmp_path / "single", root, data_kwargs=DDP_SYN, batch_size=4, max_steps=1, preset="none",
                      model_overrides=FROZEN, pretrained_backbone=False)
    single = Trainer(cfg)
    counts = [len(single.train_set[i][1]["labels"]) for i in range(len(single.train_set))]
    assert len(set(counts)) == 1, counts
    single.fit()
    single.close()
    ref = [r for r in single.history if r["kind"] == "step"][0]

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "detr_nb", "train", "--data-root", str(root),
           "--data-kwargs", json.dumps(DDP_SYN), "--model-overrides", json.dumps(cfg.model_overrides),
           "--preset", "none", "--batch-size", "2", "--max-steps", "1", "--time-budget", "none", "--lr", str(cfg.lr),
           "--seed", str(cfg.seed), "--device", "cpu", "--log-every", "1", "--no-progress", "--no-eval-at-end",
           "--out", str(out),
           # the same model and (pinned, official) loss and schedule as tiny_config, not the main job's defaults
           "--model", cfg.model, "--weight-dict", json.dumps(cfg.weight_dict), "--schedule", cfg.schedule,
           "--warmup-steps", str(cfg.warmup_steps), "--no-pretrained-backbone"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es), batch 2x1" in proc.stdout, proc.stdout
    lines = [json.loads(l) for l in open(out / "metrics.jsonl")]
    first = [r for r in lines if r["kind"] == "step"][0]
    for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_bbox_0"):
        assert first[key] == pytest.approx(ref[key], rel=1e-4), key
    # the weights after one DDP step equal the single-process ones
    saved = ck.load_checkpoint(out / "checkpoints" / "last.pth")
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2          # every process's RNG states
    for k, v in single.model.state_dict().items():
        assert torch.allclose(saved["model"][k], v, atol=1e-5, rtol=1e-4), k
