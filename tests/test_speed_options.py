"""What the trainer does for speed leaves the math unchanged: the backbone in channels_last (on CUDA), fused AdamW
(on CUDA, and on the CPU from torch 2.4), ``--compile``. Speed itself is not tested (bench/train_step.py)."""
import pytest
import torch

from detr_nb.config import WEIGHTS, build_criterion, build_model
from detr_nb.trainer import FUSED_ADAMW_ON_CPU
from engine_utils import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed=0, b=2, h=64, w=80):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, h, w, generator=g)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[1, :, 60:] = True   # one padded image: the key-padding path runs too
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.3]])}]
    return images, mask, targets


def _model():
    torch.manual_seed(0)
    model = build_model("detr_tiny", num_classes=5, impl="torch", **TINY).eval()
    return model, build_criterion(model, WEIGHTS)


def test_channels_last_same_loss_and_grads():
    images, mask, targets = _batch()
    model, crit = _model()
    ref = crit(model(images, mask), targets)["loss"]
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    model.backbone.to(memory_format=torch.channels_last)
    loss = crit(model(images.contiguous(memory_format=torch.channels_last), mask), targets)["loss"]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_compiled_model_same_loss():
    """A real torch.compile (dynamo tracing, 'eager' backend: no C++ compiler needed) matches eager."""
    images, mask, targets = _batch()
    model, crit = _model()
    ref = crit(model(images, mask), targets)["loss"]
    torch._dynamo.reset()
    loss = crit(torch.compile(model, backend="eager")(images, mask), targets)["loss"]
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_the_trainers_fused_adamw_matches_foreach(tmp_path, data_root):
    from detr_nb.trainer import Trainer
    from engine_utils import tiny_config

    tr = Trainer(tiny_config(tmp_path / "run", data_root, weight_decay=1e-2))
    tr.close()
    assert tr.fused == FUSED_ADAMW_ON_CPU and all(g["fused"] == (tr.fused or None) for g in tr.optimizer.param_groups)
    torch.manual_seed(0)
    a = [torch.randn(7, 5, requires_grad=True), torch.randn(3, requires_grad=True)]
    b = [p.detach().clone().requires_grad_() for p in a]
    kw = dict(lr=tr.cfg.lr, weight_decay=tr.cfg.weight_decay)
    opt_a = torch.optim.AdamW(a, fused=tr.fused or None, **kw)
    opt_b = torch.optim.AdamW(b, foreach=True, **kw)
    for step in range(3):
        for ps, opt in ((a, opt_a), (b, opt_b)):
            sum((p * (step + 1)).sin().sum() for p in ps).backward()
            opt.step()
            opt.zero_grad()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
