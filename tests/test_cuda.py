"""The engine on CUDA (part 1 of bench/gpu_check.py; every test is skipped on a machine without a GPU).

The T4 policy (fp16 autocast + GradScaler, then fused AdamW) and bf16 through the trainer's own step, the matcher
and the losses in fp32 under autocast, channels_last against the contiguous layout, a killed CUDA run resumed to
the weights of one that never stopped, and the CLI's fp16 run through to eval.json. The CPU versions:
tests/test_gpu_landmines.py, tests/test_precision.py, tests/test_resume_kill.py, tests/test_speed_options.py.
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace, set before its first call (the resume test's processes
# inherit it)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from detr_nb import checkpoint as ck  # noqa: E402
from detr_nb.config import WEIGHTS, build_criterion, build_model  # noqa: E402
from detr_nb.evaluate import STAT_NAMES  # noqa: E402
from detr_nb.models import matcher as matcher_module  # noqa: E402
from detr_nb.trainer import Trainer  # noqa: E402
from engine_utils import SYN, TINY, cli_env, run_cli, tiny_config, write_coco_folder  # noqa: E402
from test_resume_kill import _kill_when, _metrics  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _first_conv(module):
    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def _fit(tr, steps):
    """Train ``steps`` optimizer steps; the parameters before, the dtypes the class head produced."""
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    dtypes = set()
    hook = tr.model.class_embed.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    assert tr.fit() == "max_steps" and tr.step == steps
    hook.remove()
    tr.close()
    return before, dtypes


def _moved_and_finite(tr, before):
    params = dict(tr.model.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params.values())   # fp32 master weights
    assert any(not torch.equal(params[k], before[k]) for k in before), "no optimizer step changed a weight"
    rows = [r for r in tr.history if r["kind"] == "step"]
    assert rows and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_fp16_step_with_grad_scaler_and_fused_adamw(tmp_path, data_root):
    """The T4 policy: fp16 autocast, GradScaler, fused AdamW, the backbone in channels_last."""
    tr = Trainer(tiny_config(tmp_path / "run", data_root, device="cuda", amp="fp16", max_steps=6))
    assert tr.dtype == torch.float16 and tr.scaler.is_enabled()
    assert tr.fused and all(g["fused"] for g in tr.optimizer.param_groups)
    assert _first_conv(tr.model.backbone).weight.is_contiguous(memory_format=torch.channels_last)
    before, dtypes = _fit(tr, 6)
    assert dtypes == {torch.float16}                        # the forward pass ran in half precision
    _moved_and_finite(tr, before)
    assert 0 < tr.scaler.get_scale() <= 2.0 ** 16           # from its initial 2**16, halved at each overflow
    assert tr.state.skipped_steps < 6


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0),
                    reason="bf16 needs compute capability 8.0")
def test_bf16_step(tmp_path, data_root):
    tr = Trainer(tiny_config(tmp_path / "run", data_root, device="cuda", amp="bf16", max_steps=3))
    assert tr.dtype == torch.bfloat16 and not tr.scaler.is_enabled()
    before, dtypes = _fit(tr, 3)
    assert dtypes == {torch.bfloat16}
    _moved_and_finite(tr, before)


def _cuda_batch(seed=0, b=2, h=64, w=80):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, h, w, generator=g).cuda()
    mask = torch.zeros(b, h, w, dtype=torch.bool).cuda()
    mask[1, :, 60:] = True                                  # one padded image
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.3]])}]
    return images, mask, [{k: v.cuda() for k, v in t.items()} for t in targets]


def _tiny_model():
    torch.manual_seed(0)
    model = build_model("detr_tiny", num_classes=5, **TINY).cuda().eval()
    return model, build_criterion(model, WEIGHTS).cuda()


def _upcast(x):
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _upcast(v) for k, v in x.items()}
    return [_upcast(v) for v in x] if isinstance(x, (list, tuple)) else x


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cuda")
    except TypeError:                                       # torch < 2.4: no device argument (CUDA's state)
        return torch.is_autocast_enabled()


def test_matcher_and_losses_stay_fp32_under_autocast(monkeypatch):
    """Under fp16 autocast (even with the loss inside it, as a notebook may call it) the costs the solver gets are
    float32, and matching and losses equal the fp32 computation on the same (upcast) predictions."""
    seen = []
    real = matcher_module.linear_sum_assignment

    def spy(cost):
        seen.append((_autocast_on(), cost.dtype))
        return real(cost)
    monkeypatch.setattr(matcher_module, "linear_sum_assignment", spy)
    model, crit = _tiny_model()
    images, mask, targets = _cuda_batch()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        out = model(images, mask)
        indices = crit.matcher(out, targets)
        losses = crit(out, targets)
    assert out["pred_logits"].dtype == torch.float16
    assert seen and all(dtype == torch.float32 for _, dtype in seen), seen
    assert all(v.dtype == torch.float32 for v in losses.values())
    ref_out = _upcast(out)                                  # the same values, float32, autocast off
    ref_indices = crit.matcher(ref_out, targets)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(indices, ref_indices))
    ref = crit(ref_out, targets)
    for k, v in ref.items():   # equal up to the order of index_add's atomic float adds on CUDA
        torch.testing.assert_close(losses[k], v, rtol=1e-6, atol=1e-6, msg=k)


def test_channels_last_gives_the_contiguous_loss():
    images, mask, targets = _cuda_batch()
    model, crit = _tiny_model()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False   # fp32 proper: a tight tolerance
    try:
        results = []
        for layout in (torch.contiguous_format, torch.channels_last):
            model.zero_grad(set_to_none=True)
            model.backbone.to(memory_format=layout)
            loss = crit(model(images.contiguous(memory_format=layout), mask), targets)["loss"]
            loss.backward()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):   # and the T4 policy's forward
                half = crit(model(images.contiguous(memory_format=layout), mask), targets)["loss"]
            results.append((loss.detach(), half, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    (loss_a, half_a, grads_a), (loss_b, half_b, grads_b) = results
    assert _first_conv(model.backbone).weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(half_b, half_a, rtol=2e-2, atol=1e-3)
    for g_b, g_a in zip(grads_b, grads_a):
        torch.testing.assert_close(g_b, g_a, rtol=1e-3, atol=1e-5)


def _two_size_folder(root, n):
    """A COCO folder whose images have two sizes (padded batches), one or two boxes each."""
    sizes = [(64, 64) if i % 2 else (64, 48) for i in range(n)]
    boxes = [[(8, 8, 20, 16, 1)] + ([(30, 20, 16, 20, 1)] if i % 3 == 0 else []) for i in range(n)]
    for split in ("train", "val"):
        write_coco_folder(root, sizes if split == "train" else sizes[:4], boxes, split=split)
    return root


# Each run in its own process with deterministic kernels (index_add, scatter and the convolutions' backward
# otherwise sum in a varying order on CUDA); ops without a deterministic kernel warn, and the test names them.
DETERMINISTIC = ("import sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
                 "from detr_nb.cli import main; sys.exit(main(sys.argv[1:]))")


def _resume_args(out, data, steps):
    return ["train", "--dataset", str(data), "--model-overrides", json.dumps({**TINY, "dropout": 0.1}),
            "--batch-size", "4", "--time-budget", "none", "--max-steps", str(steps), "--epochs", "100000",
            "--device", "cuda", "--amp", "fp16", "--out", str(out), "--no-progress", "--log-every", "1",
            "--no-eval-at-end"]


def _deterministic(args, cwd, wait=True):
    proc = subprocess.Popen([sys.executable, "-c", DETERMINISTIC, *args], cwd=cwd, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if wait:
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output[-3000:]
        return output
    return proc


def test_a_killed_cuda_run_resumes_to_the_weights_of_one_that_never_stopped(tmp_path):
    """fp16 + GradScaler with dropout (CUDA's RNG state is in the checkpoint), killed mid-run after a checkpoint."""
    data, steps = _two_size_folder(tmp_path / "coco", 24), 120      # 6 steps per epoch, a checkpoint at each end
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    logs = _deterministic(_resume_args(whole, data, steps), tmp_path)
    proc = _deterministic(_resume_args(killed, data, steps), tmp_path, wait=False)

    def past_a_checkpoint():
        try:
            saved = ck.load_checkpoint(killed / "checkpoints" / "last.pth")["step"]
        except ck.CheckpointError:
            return False
        return any(r["step"] > saved + 1 for r in _metrics(killed))   # steps done after it are lost
    _kill_when(proc, past_a_checkpoint)
    logs += proc.stdout.read()
    resumed_from = ck.load_checkpoint(killed / "checkpoints" / "last.pth")["step"]
    assert 0 < resumed_from < steps
    logs += _deterministic(_resume_args(killed, data, steps), tmp_path)
    a = ck.load_checkpoint(whole / "checkpoints" / "last.pth")
    b = ck.load_checkpoint(killed / "checkpoints" / "last.pth")
    assert a["step"] == b["step"] == steps and b["config"]["amp"] == "fp16" and b["scaler"]["scale"] > 0
    assert [r["step"] for r in _metrics(killed)] == list(range(1, steps + 1))
    unmet = sorted(set(re.findall(r"(\S+) does not have a deterministic implementation", logs)))
    for k, v in a["model"].items():
        if not unmet:
            assert torch.equal(v, b["model"][k]), k
        else:
            torch.testing.assert_close(b["model"][k], v, rtol=1e-3, atol=1e-4,
                                       msg=f"{k} (ops without a deterministic CUDA kernel: {unmet})")
    assert a["scaler"] == b["scaler"] or unmet


def test_cli_train_in_fp16_writes_eval_json(tmp_path, data_root):
    out = tmp_path / "run"
    proc = run_cli(["train", "--data-root", data_root, "--data-kwargs", json.dumps(SYN), "--model-overrides",
                    json.dumps(TINY), "--batch-size", "4", "--time-budget", "none", "--max-steps", "6",
                    "--device", "cuda", "--amp", "fp16", "--out", out, "--no-progress", "--log-every", "1"],
                   cwd=tmp_path)
    assert "device cuda, torch.float16 + GradScaler" in proc.stdout, proc.stdout
    ev = json.loads((out / "eval.json").read_text())
    assert set(STAT_NAMES) <= set(ev) and all(0 <= ev[k] <= 1 or ev[k] == -1 for k in STAT_NAMES)
    assert f"AP {ev['AP']:.4f}" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "max_steps" and summary["step"] == 6
    total_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
    assert all(0 < r["mem_mb"] < total_mb for r in _metrics(out))    # CUDA's allocator, not the host's memory
