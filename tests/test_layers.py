"""Every scratch layer against PyTorch: forward values and gradients (float64), masks included."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from detr_nb.models import attention, layers


@pytest.fixture(autouse=True)
def float64():
    """float64 for tight comparisons, restored afterwards (other test files share the process)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _both(module, *inputs, train=False, seed=0):
    """Run module with impl torch and scratch on cloned inputs; return (outs, input grads, param grads)."""
    res = []
    for impl in ("torch", "scratch"):
        m = copy.deepcopy(module)
        layers.set_impl(m, impl)
        m.train(train)
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) if torch.is_tensor(x) else x for x in inputs]
        torch.manual_seed(seed)
        out = m(*xs)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        (out * g).sum().backward()
        res.append((out.detach(), [x.grad for x in xs if torch.is_tensor(x) and x.is_floating_point()],
                    {n: p.grad for n, p in m.named_parameters()}))
    (o1, gx1, gp1), (o2, gx2, gp2) = res
    torch.testing.assert_close(o2, o1)
    for a, b in zip(gx2, gx1):
        torch.testing.assert_close(a, b)
    assert gp1.keys() == gp2.keys()
    for k in gp1:
        torch.testing.assert_close(gp2[k], gp1[k], msg=k)
    return o1


def test_linear():
    m = layers.Linear(7, 5)
    x = torch.randn(2, 3, 7)
    out = _both(m, x)
    ref = nn.Linear(7, 5)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(out, ref(x).detach())


@pytest.mark.parametrize("k,stride,pad,dil,bias", [(3, 1, 1, 1, True), (7, 2, 3, 1, False), (3, 2, 1, 1, False),
                                                   (3, 1, 2, 2, False), (1, 1, 0, 1, True), (1, 2, 0, 1, False)])
def test_conv2d(k, stride, pad, dil, bias):
    m = layers.Conv2d(3, 4, k, stride=stride, padding=pad, dilation=dil, bias=bias)
    ref = nn.Conv2d(3, 4, k, stride=stride, padding=pad, dilation=dil, bias=bias)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 11, 9)
    out = _both(m, x)
    torch.testing.assert_close(out, ref(x).detach())   # and the state dict is nn.Conv2d's


def test_frozen_batch_norm():
    m = layers.FrozenBatchNorm2d(4)
    m.weight.uniform_(0.5, 2)
    m.bias.normal_()
    m.running_mean.normal_()
    m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 5, 6)
    out = _both(m, x)
    ref = nn.BatchNorm2d(4).eval()
    ref.load_state_dict(m.state_dict(), strict=False)
    torch.testing.assert_close(out, ref(x).detach())
    assert [n for n, _ in m.named_parameters()] == []   # all buffers: nothing trains
    # torchvision BN state dicts carry num_batches_tracked: dropped on load, strict load still works
    m2 = layers.FrozenBatchNorm2d(4)
    m2.load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(m2.running_var, m.running_var)


def test_batch_norm_train_and_eval():
    m = layers.BatchNorm2d(4)
    m.weight.data.uniform_(0.5, 2)
    x = torch.randn(3, 4, 5, 5) * 3 + 1
    _both(m, x, train=True)
    ms, mt = copy.deepcopy(m), copy.deepcopy(m)
    layers.set_impl(ms, "scratch")
    ms.train()(x)
    mt.train()(x)
    torch.testing.assert_close(ms.running_mean, mt.running_mean)
    torch.testing.assert_close(ms.running_var, mt.running_var)
    _both(mt, x, train=False)


def test_relu_including_zero():
    x = torch.tensor([[-1.0, 0.0, 2.0, -0.0, 3.5]])
    _both(layers.ReLU(), x)


def test_softmax_and_masked_rows():
    x = torch.randn(3, 6) * 10
    torch.testing.assert_close(layers.softmax(x), F.softmax(x, -1))
    big = torch.tensor([[1000.0, 999.0, -1000.0]])   # overflow without max-subtraction
    torch.testing.assert_close(layers.softmax(big), F.softmax(big, -1))
    ninf = torch.tensor([[float("-inf")] * 3, [0.0, float("-inf"), 0.0]])
    s = layers.softmax(ninf)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, torch.tensor([[0.0, 0, 0], [0.5, 0, 0.5]]))


def test_layer_norm():
    m = layers.LayerNorm(8)
    m.weight.data.normal_()
    m.bias.data.normal_()
    _both(m, torch.randn(2, 3, 8) * 4 + 2)


def test_dropout_statistics_and_eval_identity():
    x = torch.ones(200, 500)
    for impl in ("scratch", "torch"):
        d = layers.Dropout(0.3, impl=impl).train()
        y = d(x)
        assert abs((y == 0).double().mean().item() - 0.3) < 0.01
        torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
        assert torch.equal(d.eval()(x), x)


def _mha_pair(C=16, h=4):
    ours = attention.MultiheadAttention(C, h)
    ref = nn.MultiheadAttention(C, h, batch_first=True)
    ref.load_state_dict(ours.state_dict(), strict=True)   # same names and shapes
    return ours, ref


@pytest.mark.parametrize("impl", ["scratch", "torch"])
def test_mha_matches_nn_multiheadattention_with_masks(impl):
    torch.manual_seed(0)
    ours, ref = _mha_pair()
    layers.set_impl(ours, impl)
    B, Lq, Lk, C = 2, 5, 7, 16
    q, k, v = torch.randn(B, Lq, C), torch.randn(B, Lk, C), torch.randn(B, Lk, C)
    kpm = torch.zeros(B, Lk, dtype=torch.bool)
    kpm[0, -3:] = True
    bias = torch.randn(B, 4, Lq, Lk)          # a float attn_mask: ours (B, h, Lq, Lk), PyTorch's (B*h, Lq, Lk)
    for kw in ({}, {"key_padding_mask": kpm}, {"attn_mask": bias}, {"key_padding_mask": kpm, "attn_mask": bias}):
        qs = [t.clone().requires_grad_() for t in (q, k, v)]
        qr = [t.clone().requires_grad_() for t in (q, k, v)]
        out = ours(*qs, **kw)
        theirs = {**kw, "attn_mask": bias.flatten(0, 1)} if "attn_mask" in kw else kw
        exp = ref(*qr, need_weights=False, **theirs)[0]
        torch.testing.assert_close(out, exp)
        out.square().sum().backward()
        exp.square().sum().backward()
        for a, b in zip(qs, qr):
            torch.testing.assert_close(a.grad, b.grad)
        for (n, p), (_, pr) in zip(ours.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p.grad, pr.grad, msg=n)
            p.grad = pr.grad = None


def test_mha_scratch_vs_torch_fully_masked_rows_no_nan():
    ours, _ = _mha_pair()
    B, Lq, Lk, C = 2, 4, 6, 16
    kpm = torch.zeros(B, Lk, dtype=torch.bool)
    kpm[1] = True  # image 1 is all padding
    out = _both(ours, torch.randn(B, Lq, C), torch.randn(B, Lk, C), torch.randn(B, Lk, C), kpm)
    assert torch.isfinite(out).all()
    # a query with no visible key gets zero attention output, i.e. just out_proj's bias
    torch.testing.assert_close(out[1], ours.out_proj.bias.detach().expand(Lq, C))


def test_attention_dropout_only_in_training():
    ours, _ = _mha_pair()
    ours.dropout = 0.5
    x = torch.randn(1, 5, 16)
    for impl in ("scratch", "torch"):
        layers.set_impl(ours, impl)
        a, b = ours.eval()(x, x, x), ours.eval()(x, x, x)
        assert torch.equal(a, b)
        assert not torch.allclose(ours.train()(x, x, x), a)


def test_set_impl_and_bad_impl():
    m = nn.Sequential(layers.Linear(3, 3), layers.ReLU(), layers.LayerNorm(3))
    layers.set_impl(m, "scratch")
    assert all(x.impl == "scratch" for x in m)
    with pytest.raises(ValueError, match="impl"):
        layers.set_impl(m, "numpy")


def test_softmax_gradient_with_a_single_visible_key():
    """A row with one finite entry has sum exactly 1: the NaN guard must not cut its gradient."""
    x = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[False, True, True, True], [True, False, True, False], [False] * 4])
    g = torch.randn(3, 4)
    a = torch.autograd.grad((layers.softmax(x.masked_fill(mask, float("-inf"))) * g).sum(), x)[0]
    b = torch.autograd.grad((F.softmax(x.masked_fill(mask, float("-inf")), -1) * g).sum(), x)[0]
    torch.testing.assert_close(a, b)
