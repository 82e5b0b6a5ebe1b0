"""Images/s of DETR's training step, next to the backbone-only limit and HF DETR, from ONE run.

The GPU run (issue 9; one command, about 4-6 minutes on an H100/H200, compile included):

    python bench/train_step.py --device cuda --precision auto fp16 --compile both --profile

It prints, per precision (auto = bf16 from compute capability 8.0, fp16 + GradScaler below: the T4
policy, which fp16 reproduces on an H100):
  * detr_nb images/s for the full training step: forward, Hungarian matching of all 6 decoder layers,
    all losses with aux, backward, grad-norm clip, AdamW step (batch 8 at 800x1088 by default on a GPU);
  * the backbone-only limit at the same setting: the ResNet-50 body with DETR's freezing (frozen BN,
    conv1/layer1 frozen), forward + backward + AdamW, and the ratio detr_nb / backbone;
  * HF transformers' DetrForObjectDetection (ResNet-50, same trainable parameters) when ``transformers``
    is importable, else a line saying it was skipped; the ratio detr_nb / HF;
  * with ``--compile both`` the same rows with ``torch.compile`` (eager fallback if it fails);
  * the AMP loss check: eval-mode loss of the same model and batch under each precision vs fp32;
  * inference images/s at batch 1 and 8 (800x1200 on a GPU), model + postprocess;
  * with ``--profile``: a torch.profiler table (top ops by self time) of one step, the time per
    phase (forward / matcher / losses / backward / optimizer), and the host reads of tensor values
    (.item/.cpu/bool(tensor)...: each a device sync on CUDA) in one step, by caller.

On the CPU the defaults are small (detr_r50 at 256x320, batch 2; inference at 256x384) so that the run
takes 1-2 minutes; ``--threads 1`` on a shared machine. Random images and targets (1..--max-boxes
boxes per image), no data loading; the step is the trainer's own, ``Trainer.train_step``.

    python bench/train_step.py --threads 1                  # CPU
    python bench/train_step.py --threads 1 --profile        # CPU, with the profile of one step
    python bench/train_step.py --speed                      # this machine's speed, to quote beside timings

``--speed`` times the main job's step (``detr_tiny_aided`` at the main job's batch, 96 x 96, the trainer's train
step, 2 threads) and prints one line, ``machine speed: N ms per main-job step``: the figure the documents quote beside
every timing, since these shared machines differ by 2x.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.profiler import record_function  # noqa: E402

from detr_nb.config import TrainConfig, amp_dtype, build_criterion, build_model, build_postprocess  # noqa: E402
from detr_nb.config import RECIPES, resolve_device  # noqa: E402
from detr_nb.errors import UserError  # noqa: E402
from detr_nb.trainer import Trainer  # noqa: E402

NUM_CLASSES = 91
TARGETS = {"images_per_s": 250.0, "of_backbone": 0.75, "of_hf": 3.8}   # issue 9, H100/H200, batch 8 800x1088
PAPER_FPS = 28.0   # the paper's DETR-R50 inference speed (V100, batch 1), the inference rows' reference
# Issue 9's measured anchor for HF DETR-R50 (H200, torch 2.11, batch 8 at 800x1088, fp32; bf16 was 56.7).
# Used only to print a labelled reference ratio when transformers cannot be imported on a GPU machine.
HF_ANCHOR_H200_FP32 = 65.2


@dataclass
class Precision:
    """A precision policy of a row: its name, the autocast dtype (None: fp32) and whether fp16 needs a scaler."""

    name: str
    device: torch.device
    dtype: object = None

    @classmethod
    def of(cls, device, amp):
        dtype = amp_dtype(device, amp)
        return cls({None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype], device, dtype)

    use_scaler = property(lambda self: self.dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device.type, self.dtype) if self.dtype else contextlib.nullcontext()

    def make_scaler(self):
        return torch.amp.GradScaler(self.device.type, enabled=self.use_scaler)


def adamw(params, device, lr):
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, fused=True if device.type == "cuda" else None)


def maybe_compile(module, enabled):
    return torch.compile(module) if enabled else module


# ---------------------------------------------------------------------------------------- inputs
def random_batch(batch, h, w, device, seed=0, max_boxes=8, channels_last=False):
    """Random normalised images, an all-False padding mask, and 1..max_boxes random boxes per image."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, h, w, generator=gen).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    mask = torch.zeros(batch, h, w, dtype=torch.bool, device=device)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, max_boxes + 1, (1,), generator=gen))
        cxcy = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, NUM_CLASSES, (n,), generator=gen).to(device),
                        "boxes": torch.cat([cxcy, wh], 1).to(device)})
    return images, mask, targets


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, steps, warmup, device, batch):
    """Run ``warmup`` then ``steps`` calls of ``step``; images/s and the last returned value (one sync)."""
    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        out = step()
    value = float(out.detach()) if torch.is_tensor(out) else out
    sync(device)
    return batch * steps / (time.perf_counter() - t), value


# ---------------------------------------------------------------------------------------- detr_nb
def build_detr(args, device, channels_last, seed=0):
    """The model and the official criterion, for the AMP loss check and inference."""
    torch.manual_seed(seed)
    model = build_model(args.model, num_classes=NUM_CLASSES, impl=args.impl).to(device)
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    return model, build_criterion(model).to(device)


def coco_ids_folder(root: Path) -> Path:
    """Two tiny images whose annotation file lists COCO's category ids 1-90: a Trainer on it keeps the ids as
    class labels and builds the official 91-way head (the batches it trains on in this script are the random ones)."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(root / split / f"{i}.png")
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": [{"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(2)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 90, "bbox": [8, 8, 30, 30]}
                            for i in range(2)],
            "categories": [{"id": c, "name": f"class {c}"} for c in range(1, 91)]}))
    return root


def train_step_fn(args, prec, images, mask, targets, compile_mode, device, channels_last, work: Path):
    """The trainer's own step, ``Trainer.train_step`` (forward, criterion, backward, clip, AdamW, schedule), on
    the given batch; returns a closure that runs one step and returns its loss (NaN: a skipped fp16 step)."""
    torch.manual_seed(0)
    cfg = TrainConfig(recipe="aided" if args.speed else "paper", dataset=str(coco_ids_folder(work / "coco")),
                      preset="none", model=args.model, impl=args.impl, amp=prec.name, compile=compile_mode,
                      device=str(device), batch_size=1, pretrained_backbone=False,
                      out=str(work / f"run-{prec.name}-{compile_mode}"), resume=False, progress=False,
                      eval_at_end=False)
    trainer = Trainer(cfg)
    matcher = trainer.criterion.matcher
    match = matcher.forward

    def labelled_match(*a, **k):  # a profiler label around the matcher, without touching the library
        with record_function("matcher"):
            return match(*a, **k)
    matcher.forward = labelled_match

    def step():
        with record_function("step"):
            return trainer.train_step([(images, mask, targets)])["loss"]
    step.trainer = trainer
    return step


def backbone_step_fn(model, prec, images, compile_mode, device):
    """ResNet body with DETR's freezing (as built in the model): forward + backward + AdamW."""
    body = model.backbone[0]   # detr_nb.models.backbone.Backbone: frozen BN, conv1/layer1 frozen
    params = [p for p in body.parameters() if p.requires_grad]
    opt = adamw(params, device, lr=1e-5)
    scaler = prec.make_scaler()
    net = maybe_compile(body, compile_mode)
    body.train()

    def step():
        with prec.autocast():
            feat = net(images)
        loss = feat.float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


# ---------------------------------------------------------------------------------------- HF peer
def hf_step_fn(prec, images, mask, targets, device, channels_last):
    """HF transformers' DETR-R50 (its ResNet, stages 2-4 trainable: 41,302,368 trainable parameters)."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    torch.manual_seed(0)
    cfg = DetrConfig(backbone_config=ResNetConfig(out_features=["stage4"]), num_labels=NUM_CLASSES,
                     auxiliary_loss=True)
    model = DetrForObjectDetection(cfg).to(device)
    for name, p in model.model.backbone.named_parameters():   # DETR's freezing: conv1/layer1 frozen
        p.requires_grad_(any(f"stages.{i}." in name for i in (1, 2, 3)))
    if channels_last:
        model.model.backbone.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, device, lr=1e-4)
    scaler = prec.make_scaler()
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    pixel_mask = (~mask).long()
    model.train()

    def step():
        with prec.autocast():
            out = model(pixel_values=images, pixel_mask=pixel_mask, labels=labels)
        scaler.scale(out.loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return out.loss
    return step, sum(p.numel() for p in params)


# ---------------------------------------------------------------------------------------- checks
def loss_check(args, device, channels_last, precs, size, batch):
    """Eval-mode (no dropout) loss of one model on one batch under each precision, vs fp32."""
    model, crit = build_detr(args, device, channels_last)
    model.eval()
    images, mask, targets = random_batch(batch, *size, device, max_boxes=args.max_boxes,
                                         channels_last=channels_last)
    losses = {}
    with torch.no_grad():
        for prec in [Precision.of(device, "fp32")] + precs:
            with prec.autocast():
                out = model(images, mask)
            losses[prec.name] = float(crit(out, targets)["loss"])
    ref = losses["fp32"]
    shown = ", ".join(f"{k} {v:.4f} (rel. diff {abs(v - ref) / abs(ref):.1e})" for k, v in losses.items()
                      if k != "fp32")
    print(f"AMP loss check (eval mode, same weights and batch): fp32 {ref:.4f}" + (f"; {shown}" if shown else ""),
          flush=True)


def inference(args, device, prec, channels_last, batch, size, compile_mode):
    model, _ = build_detr(args, device, channels_last)
    model.eval()
    net, postprocess = maybe_compile(model, compile_mode), build_postprocess(model)
    images, mask, _ = random_batch(batch, *size, device, channels_last=channels_last)
    sizes = torch.tensor([list(size)] * batch, device=device)

    def step():
        with torch.inference_mode(), prec.autocast():
            return postprocess(net(images, mask), sizes)[0]["scores"].float().sum()
    steps = args.infer_steps or (max(10, 80 // batch) if device.type == "cuda" else 3)
    return timed(step, steps, args.warmup, device, batch)[0]


def profile_step(step, device, rows):
    """One step under torch.profiler: top ops by self time and the time of each labelled phase."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        step()
        sync(device)
    wall = time.perf_counter() - t
    events = prof.key_averages()
    key = "self_cpu_time_total"
    if device.type == "cuda":   # torch >= 2.4 names it device time; older versions cuda time
        key = next((k for k in ("self_device_time_total", "self_cuda_time_total") if hasattr(events[0], k)), key)
    print(f"\nprofile of one step ({wall * 1e3:.1f} ms wall under the profiler), top {rows} ops by {key}:")
    print(events.table(sort_by=key, row_limit=rows))
    phases = {e.key: e for e in events if e.key in
              ("forward", "criterion", "matcher", "backward", "optimizer")}
    print("phases (host time = time the Python thread spends in the phase; device time = kernels in it):")
    for name in ("forward", "criterion", "matcher", "backward", "optimizer"):
        if name in phases:
            e = phases[name]
            dev = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) if device.type == "cuda" else 0
            print(f"  {name:10s} host {e.cpu_time_total / 1e3:8.1f} ms" +
                  (f"   device {dev / 1e3:8.1f} ms" if device.type == "cuda" else "") +
                  ("   (inside criterion)" if name == "matcher" else ""))


def count_host_reads(step):
    """Calls that read a tensor's value on the host during one step (each is a device sync on CUDA),
    by caller; the CPU stand-in for ``torch.cuda.set_sync_debug_mode``."""
    import collections
    import traceback

    counts = collections.Counter()
    names = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(name, fn):
        def inner(self, *a, **k):
            stack = traceback.extract_stack()[:-1]   # the first caller outside torch itself
            frame = next((f for f in reversed(stack) if os.sep + "torch" + os.sep not in f.filename), stack[-1])
            counts[f"{name} at {os.path.relpath(frame.filename)}:{frame.lineno}"] += 1
            return fn(self, *a, **k)
        return inner
    for n, fn in saved.items():
        setattr(torch.Tensor, n, wrap(n, fn))
    try:
        step()
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)
    total = sum(counts.values())
    print(f"host reads of tensor values in one step: {total}" + ("" if total else " (none)"))
    for where, n in counts.most_common():
        print(f"  {n:4d} x {where}")


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--model", default="detr_r50", help="detr_r50 | detr_tiny | any detr_nb config")
    p.add_argument("--impl", default="torch", choices=["torch", "scratch"])
    p.add_argument("--precision", nargs="+", default=None,
                   help="fp32 | auto (bf16 from cc 8.0, fp16+GradScaler below) | fp16 | bf16; several = several rows "
                        "(default: auto on CUDA, fp32 on the CPU)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="backbone + images in channels_last (auto: on for CUDA)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile the model; both = eager and compiled rows")
    p.add_argument("--batch", type=int, default=None, help="default 8 on CUDA, 2 on the CPU")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="default 800 1088 on CUDA, 256 320 on the CPU")
    p.add_argument("--max-boxes", type=int, default=8, help="targets per image: uniform in 1..max-boxes")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 3 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5 on CUDA, 1 on the CPU)")
    p.add_argument("--infer-batches", type=int, nargs="*", default=[1, 8], help="inference batch sizes ('' = none)")
    p.add_argument("--infer-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="default 800 1200 on CUDA, 256 384 on the CPU")
    p.add_argument("--infer-steps", type=int, default=None)
    p.add_argument("--no-backbone", action="store_true", help="skip the backbone-only row")
    p.add_argument("--no-hf", action="store_true", help="skip HF DETR even when transformers is installed")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of one detr_nb step")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--speed", action="store_true",
                   help="only the main job's step time on this machine (detr_tiny_aided, its batch, 96 px, 2 threads)")
    args = p.parse_args(argv)
    if args.speed:
        args.model, args.size, args.threads = "detr_tiny_aided", (96, 96), args.threads or 2
        args.batch = RECIPES["aided"]["batch_size"]
        args.steps, args.warmup = args.steps or 20, args.warmup if args.warmup is not None else 3
        args.no_backbone, args.no_hf, args.infer_batches, args.max_boxes = True, True, [], 10
    try:
        device = resolve_device(args.device)
    except UserError as e:                 # e.g. --device cuda on a machine without a GPU: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run(args, device, Path(tmp))
    return 0


def run(args, device: torch.device, work: Path):
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True          # fixed input sizes here
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = args.batch or (8 if gpu else 2)
    size = tuple(args.size or ((800, 1088) if gpu else (256, 320)))
    infer_size = tuple(args.infer_size or ((800, 1200) if gpu else (256, 384)))
    steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and gpu)
    precs = [Precision.of(device, a) for a in (args.precision or (["auto"] if gpu else ["fp32"]))]
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]

    where = (f"{torch.cuda.get_device_name(device)} (cc {'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
             if gpu else f"CPU, {torch.get_num_threads()} torch thread(s), load average "
                         f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"device: {where}; torch {torch.__version__}")
    print(f"setting: {args.model} impl={args.impl}, batch {batch} at {size[0]}x{size[1]}, 1..{args.max_boxes} boxes/image, "
          f"channels_last={'on' if channels_last else 'off'}, {steps} timed steps after "
          f"{args.warmup} warm-up", flush=True)

    try:
        import transformers  # noqa: F401
        hf_ok = not args.no_hf
        hf_note = "" if hf_ok else "skipped (--no-hf)"
    except ImportError:
        hf_ok, hf_note = False, "skipped (transformers is not importable)"

    rows = []
    for compiled in compile_modes:   # eager first: a long compile cannot swallow its figures
        if compiled:
            print("\n-- torch.compile (the warm-up includes compiling) --", flush=True)
        for prec in precs:
            tag = f"{prec.name}{' +scaler' if prec.use_scaler else ''}{' compiled' if compiled else ''}"
            images, mask, targets = random_batch(batch, *size, device, max_boxes=args.max_boxes,
                                                 channels_last=channels_last)
            step = train_step_fn(args, prec, images, mask, targets, compiled, device, channels_last, work)
            ips, loss = timed(step, steps, args.warmup, device, batch)
            print(f"[{tag}] detr_nb train step:    {ips:8.2f} images/s   (loss {loss:.3f})", flush=True)
            if args.speed:
                print(f"machine speed: {1000 * batch / ips:.0f} ms per main-job step ({args.model}, batch {batch} at "
                      f"{size[0]}x{size[1]}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f})")
            row = {"tag": tag, "detr": ips}
            if args.profile and not compiled and prec is precs[0]:
                profile_step(step, device, args.profile_rows)
                count_host_reads(step)
            step.trainer.close()
            del step
            if not args.no_backbone:
                model, _ = build_detr(args, device, channels_last)
                bstep = backbone_step_fn(model, prec, images, compiled, device)
                row["backbone"], _ = timed(bstep, steps, args.warmup, device, batch)
                del bstep, model
                print(f"[{tag}] backbone-only limit:   {row['backbone']:8.2f} images/s   "
                      f"-> detr_nb / backbone = {ips / row['backbone']:.2f} (target >= {TARGETS['of_backbone']})",
                      flush=True)
            if hf_ok and not compiled:
                try:
                    hstep, n_train = hf_step_fn(prec, images, mask, targets, device, channels_last)
                    row["hf"], hloss = timed(hstep, steps, args.warmup, device, batch)
                    del hstep
                    print(f"[{tag}] HF DETR train step:    {row['hf']:8.2f} images/s   (loss {hloss:.3f}, "
                          f"{n_train:,} trainable) -> detr_nb / HF = {ips / row['hf']:.2f}x "
                          f"(target >= {TARGETS['of_hf']}x)", flush=True)
                except Exception as e:  # noqa: BLE001 - a transformers version we do not know
                    print(f"[{tag}] HF DETR: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            elif not compiled:
                print(f"[{tag}] HF DETR: {hf_note}")
            rows.append(row)
            if gpu:
                torch.cuda.empty_cache()

        amp = [q for q in precs if q.dtype is not None]
        if amp and not compiled:
            loss_check(args, device, channels_last, amp, size, min(batch, 2))
        for b in args.infer_batches:
            ips = inference(args, device, precs[0], channels_last, b, infer_size, compiled)
            print(f"[{precs[0].name}{' compiled' if compiled else ''}] inference batch {b} at "
                  f"{infer_size[0]}x{infer_size[1]}: {ips:8.2f} images/s (paper: {PAPER_FPS:.0f} FPS on a V100, batch 1)",
                  flush=True)
        summary(rows, gpu, batch, size)


def summary(rows, gpu, batch, size):
    print("\nsummary (this run):")
    for r in rows:
        parts = [f"detr_nb {r['detr']:.1f} img/s"]
        if "backbone" in r:
            parts.append(f"{r['detr'] / r['backbone']:.0%} of backbone-only ({r['backbone']:.1f})")
        if "hf" in r:
            parts.append(f"{r['detr'] / r['hf']:.2f}x HF ({r['hf']:.1f})")
        print(f"  {r['tag']:18s} " + ", ".join(parts))
    if gpu and batch == 8 and tuple(size) == (800, 1088):
        best = max(rows, key=lambda r: r["detr"])
        if not any("hf" in r for r in rows):
            print(f"  HF not measured here; against issue 9's HF anchor ({HF_ANCHOR_H200_FP32} img/s, H200 fp32, not "
                  f"this run): best detr_nb = {best['detr'] / HF_ANCHOR_H200_FP32:.2f}x (target >= {TARGETS['of_hf']}x)")
        print(f"  issue 9 target: >= {TARGETS['images_per_s']:.0f} img/s -> best {best['detr']:.1f} "
              f"({'met' if best['detr'] >= TARGETS['images_per_s'] else 'NOT met'}, {best['tag']})")
    elif not gpu:
        print("  (CPU figures: the issue's targets are for an H100/H200 at batch 8, 800x1088)")


if __name__ == "__main__":
    sys.exit(main())
