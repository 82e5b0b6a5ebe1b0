"""Speed options (detr_nb.engine.speed, bench/train_step.py) leave the math unchanged. Speed itself is not tested."""
import torch

from detr_nb.configs import build_model
from detr_nb.setpred.criterion import SetCriterion
from detr_nb.engine.speed import EagerFallback, adamw_flags, loader_kwargs, make_adamw, maybe_compile


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
    return build_model("detr_tiny", num_classes=5, impl="torch").eval(), SetCriterion(5)


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
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_compile_fallback_gives_eager_loss(monkeypatch):
    images, mask, targets = _batch()
    model, crit = _model()
    ref = crit(model(images, mask), targets)["loss"]

    def broken(*a, **k):
        raise RuntimeError("no compiler here")
    messages = []
    net = EagerFallback(model, broken, log=messages.append)
    loss = crit(net(images, mask), targets)["loss"]
    assert not net.is_compiled and "torch.compile failed" in messages[0]
    torch.testing.assert_close(loss, ref)
    assert net.train() is net and model.training and net.state_dict().keys() == model.state_dict().keys()
    assert maybe_compile(model, enabled=False) is model

    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("unsupported")))
    net = maybe_compile(model, log=messages.append)
    assert not net.is_compiled and "unavailable" in messages[-1]
    torch.testing.assert_close(crit(net(images, mask), targets)["loss"], ref)


def test_compiled_model_same_loss():
    """A real torch.compile (dynamo tracing, 'eager' backend: no C++ compiler needed) matches eager."""
    images, mask, targets = _batch()
    model, crit = _model()
    ref = crit(model(images, mask), targets)["loss"]
    net = maybe_compile(model, backend="eager")
    loss = crit(net(images, mask), targets)["loss"]
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_adamw_fused_matches_foreach():
    assert adamw_flags("cuda") == {"fused": True}
    assert adamw_flags("cpu", "foreach") == {"foreach": True} and adamw_flags("cpu", "for") == {"foreach": False}
    torch.manual_seed(0)
    a = [torch.randn(7, 5, requires_grad=True), torch.randn(3, requires_grad=True)]
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_a = make_adamw(a, "cpu", "auto", lr=1e-2, weight_decay=1e-4)
    opt_b = make_adamw(b, "cpu", "foreach", lr=1e-2, weight_decay=1e-4)
    for step in range(3):
        for ps, opt in ((a, opt_a), (b, opt_b)):
            sum((p * (step + 1)).sin().sum() for p in ps).backward()
            opt.step()
            opt.zero_grad()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_loader_kwargs():
    assert loader_kwargs("cpu", 0) == {"num_workers": 0, "pin_memory": False}
    kw = loader_kwargs("cuda", 2)
    assert kw["pin_memory"] and kw["persistent_workers"] and kw["num_workers"] == 2
