"""Scratch vs torch: forward+backward time of each layer and of whole DETR models, on CPU.

    python bench/layers.py            # all rows, 10 repeats each (about a minute on 2 cores)
    python bench/layers.py --quick    # 4 repeats
    OMP_NUM_THREADS=1 python bench/layers.py --threads 1   # on a shared/oversubscribed machine

Runs alternate between the two impls (same weights, same inputs), so machine load hits both
alike; each figure is the median over repeats, after warm-up. On a machine whose cores are
shared with other jobs, several OpenMP threads per process spin against each other and every
figure gets several times slower: use one thread there.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detr_nb.models import attention, layers  # noqa: E402
from detr_nb.config import build_model  # noqa: E402


def _step(module, inputs, loss_fn):
    for p in module.parameters():
        p.grad = None
    xs = [x.detach().requires_grad_(x.is_floating_point()) if torch.is_tensor(x) else x for x in inputs]
    loss_fn(module(*xs)).backward()


def bench(name, module, inputs, loss_fn=lambda y: y.float().square().mean(), repeats=10, warmup=2, train=True):
    mods = {impl: layers.set_impl(copy.deepcopy(module), impl).train(train) for impl in ("torch", "scratch")}
    times = {"torch": [], "scratch": []}
    for i in range(warmup + repeats):
        for impl, m in mods.items():
            torch.manual_seed(i)
            t0 = time.perf_counter()
            _step(m, inputs, loss_fn)
            if i >= warmup:
                times[impl].append(time.perf_counter() - t0)
    t, s = (statistics.median(times[k]) * 1e3 for k in ("torch", "scratch"))
    print(f"{name:<44} {t:9.2f} {s:9.2f} {s / t:7.2f}", flush=True)
    return t, s


def detr_loss(out):
    outs = [out] + out.get("aux_outputs", [])
    return sum(o["pred_logits"].logsumexp(-1).mean() + o["pred_boxes"].mean() for o in outs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 repeats instead of 10")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per row (overrides --quick)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per row first")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = args.repeats or (4 if args.quick else 10)
    warm = args.warmup
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward+backward, median ms")
    print(f"{'layer / model':<44} {'torch':>9} {'scratch':>9} {'ratio':>7}")
    fbn = layers.FrozenBatchNorm2d(64)
    fbn.running_var.uniform_(0.5, 2)
    x4 = torch.randn(4, 64, 56, 56)
    rows = [
        ("Linear 256->2048, (2, 600, 256)", layers.Linear(256, 2048), [torch.randn(2, 600, 256)]),
        ("Conv2d 3x3 64->64, (4, 64, 56, 56)", layers.Conv2d(64, 64, 3, padding=1, bias=False), [x4]),
        ("Conv2d 7x7/2 3->64, (4, 3, 128, 128)", layers.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
         [torch.randn(4, 3, 128, 128)]),
        ("Conv2d 1x1 64->256, (4, 64, 56, 56)", layers.Conv2d(64, 256, 1, bias=False), [x4]),
        ("FrozenBatchNorm2d, (4, 64, 56, 56)", fbn, [x4]),
        ("BatchNorm2d (train), (4, 64, 56, 56)", layers.BatchNorm2d(64), [x4]),
        ("ReLU, (4, 64, 56, 56)", layers.ReLU(), [x4]),
        ("LayerNorm 256, (2, 600, 256)", layers.LayerNorm(256), [torch.randn(2, 600, 256)]),
        ("Dropout 0.1, (2, 600, 2048)", layers.Dropout(0.1), [torch.randn(2, 600, 2048)]),
        ("MHA 256/8 self, (2, 600, 256) + pad mask", attention.MultiheadAttention(256, 8, dropout=0.1),
         [torch.randn(2, 600, 256)] * 3 + [torch.rand(2, 600) < 0.2]),
    ]
    for name, m, inp in rows:
        bench(name, m, inp, repeats=r, warmup=warm)

    imgs = torch.randn(8, 3, 128, 128)
    mask = torch.zeros(8, 128, 128, dtype=torch.bool)
    mask[::2, :, 96:] = True
    tiny = build_model("detr_tiny", num_classes=20)
    t, s = bench("DETR detr_tiny, 8x3x128x128 (train step)", tiny, [imgs, mask], detr_loss, repeats=r, warmup=warm)
    print(f"  -> detr_tiny fwd+bwd throughput: torch {8 / t * 1e3:.0f} img/s, scratch {8 / s * 1e3:.0f} img/s")
    r50 = build_model("detr_r50", num_classes=91)
    bench("DETR detr_r50, 1x3x256x256 (train step)", r50, [torch.randn(1, 3, 256, 256)], detr_loss,
          repeats=max(1, min(r, max(2, r // 3))), warmup=min(warm, 1))


if __name__ == "__main__":
    main()
