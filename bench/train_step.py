"""Images/s of one DETR training step (forward, matching, all losses with aux, backward, clip, AdamW).

Compares impl="scratch" vs impl="torch", fp32 vs AMP (AMP only on CUDA: fp16+GradScaler below compute
capability 8.0, bf16 from 8.0, as detr_nb.precision decides), for the tiny and the R50 configurations,
and prints the ratios from this one run. Random images and random targets (1-8 boxes per image); no data
loading. The step is the engine's own: detr_nb.train.Trainer.train_step's math, reproduced here without
the data pipeline.

    python bench/train_step.py                    # CPU: tiny at 128x160 batch 8, R50 at 256x256 batch 2
    python bench/train_step.py --r50-size 800 1088 --r50-batch 8 --steps 20     # on a GPU
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from detr_nb.configs import build_model  # noqa: E402
from detr_nb.criterion import SetCriterion  # noqa: E402
from detr_nb.precision import resolve_precision  # noqa: E402


def random_batch(batch, h, w, num_classes, device, gen):
    images = torch.randn(batch, 3, h, w, generator=gen).to(device)
    mask = torch.zeros(batch, h, w, dtype=torch.bool, device=device)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        cxcy = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, num_classes, (n,), generator=gen).to(device),
                        "boxes": torch.cat([cxcy, wh], 1).to(device)})
    return images, mask, targets


def measure(name, impl, amp, batch, size, steps, warmup, device, num_classes=91):
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, impl=impl).to(device)
    if device.type == "cuda":
        model.backbone.to(memory_format=torch.channels_last)
    crit = SetCriterion(num_classes).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4,
                            **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    prec = resolve_precision(device, amp)
    scaler = prec.make_scaler()
    gen = torch.Generator().manual_seed(0)
    images, mask, targets = random_batch(batch, *size, num_classes, device, gen)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        with prec.autocast():
            out = model(images, mask)
        loss = crit(out, targets)["loss"]
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    model.train()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss = float(loss.detach())  # one sync at the end
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return batch * steps / dt, loss, prec.name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tiny-size", type=int, nargs=2, default=[128, 160])
    p.add_argument("--tiny-batch", type=int, default=8)
    p.add_argument("--r50-size", type=int, nargs=2, default=None)
    p.add_argument("--r50-batch", type=int, default=None)
    p.add_argument("--configs", nargs="+", default=["detr_tiny", "detr_r50"])
    p.add_argument("--impls", nargs="+", default=["torch", "scratch"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    steps = args.steps or (20 if gpu else 3)
    r50_size = args.r50_size or ([800, 1088] if gpu else [256, 256])
    r50_batch = args.r50_batch or (8 if gpu else 2)
    amps = ["fp32", "auto"] if gpu else ["fp32"]
    where = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}, torch {torch.__version__}, {steps} timed steps after {args.warmup} warm-up")
    rows = {}
    for name in args.configs:
        size, batch = (args.tiny_size, args.tiny_batch) if name != "detr_r50" else (r50_size, r50_batch)
        for impl in args.impls:
            for amp in amps:
                ips, loss, prec = measure(name, impl, amp, batch, size, steps, args.warmup, device)
                rows[(name, impl, prec)] = ips
                print(f"{name:10s} {impl:8s} {prec:5s} batch {batch} at {size[0]}x{size[1]}: "
                      f"{ips:8.2f} images/s (loss {loss:.3f})", flush=True)
    print("ratios (same run):")
    for name in args.configs:
        precs = sorted({k[2] for k in rows if k[0] == name})
        for prec in precs:
            if (name, "torch", prec) in rows and (name, "scratch", prec) in rows:
                print(f"  {name} {prec}: torch / scratch = {rows[(name, 'torch', prec)] / rows[(name, 'scratch', prec)]:.2f}x")
        for impl in args.impls:
            amp_prec = [q for q in precs if q != "fp32"]
            if amp_prec and (name, impl, "fp32") in rows:
                print(f"  {name} {impl}: {amp_prec[0]} / fp32 = "
                      f"{rows[(name, impl, amp_prec[0])] / rows[(name, impl, 'fp32')]:.2f}x")


if __name__ == "__main__":
    main()
