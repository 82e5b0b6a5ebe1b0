"""Our ResNet against torchvision's; freezing; DC5; ImageNet weights through the torchvision API (offline)."""
import pytest
import torch
import torch.nn as nn
import torchvision

from detr_nb.models import layers
from detr_nb.models.backbone import Backbone, Joiner, ResNet
from detr_nb.models.position_encoding import PositionEmbeddingSine


def _tv_resnet(arch, dilation=False):
    torch.manual_seed(0)
    kw = {"replace_stride_with_dilation": [False, False, True]} if dilation else {}
    m = getattr(torchvision.models, arch)(weights=None, **kw)
    for mod in m.modules():   # non-trivial statistics, so that a wrong BN would show
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.1)
    return m.eval()


def _tv_features(m, x, upto):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    for i in range(1, upto + 1):
        x = getattr(m, f"layer{i}")(x)
    return x


@pytest.mark.parametrize("arch,norm,dilation,return_layer", [
    ("resnet18", "frozen_bn", False, "layer4"),
    ("resnet34", "bn", False, "layer3"),
    ("resnet50", "frozen_bn", True, "layer4"),
])
def test_resnet_matches_torchvision(arch, norm, dilation, return_layer):
    tv = _tv_resnet(arch, dilation)
    ours = ResNet(arch, norm=norm, dilation=dilation, return_layer=return_layer).eval()
    later = ("fc.",) + tuple(f"layer{i}." for i in range(int(return_layer[-1]) + 1, 5))
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith(later)})   # strict
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        exp = _tv_features(tv, x, int(return_layer[-1]))
        out = ours(x)
        assert out.shape == exp.shape and out.shape[1] == ours.num_channels
        assert out.shape[-1] == 96 // ours.stride
        torch.testing.assert_close(out, exp, rtol=1e-4, atol=1e-4)
        if arch == "resnet18":   # the scratch path too
            torch.testing.assert_close(layers.set_impl(ours, "scratch")(x), exp, rtol=1e-4, atol=1e-4)


def test_state_dict_names_are_torchvision_minus_fc():
    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None)
        ours, ours_bn = ResNet("resnet50"), ResNet("resnet50", norm="bn")
    expected = {k for k in tv.state_dict() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(ours.state_dict()) == expected
    expected_bn = {k for k in tv.state_dict() if not k.startswith("fc.")}
    assert set(ours_bn.state_dict()) == expected_bn


def test_official_freezing_and_dc5():
    with torch.device("meta"):   # structure only: no memory, no init cost
        b = Backbone(ResNet("resnet50"))
        b_dc5 = Backbone(ResNet("resnet50", dilation=True))
    trainable = {n.split(".")[0] for n, p in b.body.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[0] for n, p in b.body.named_parameters() if not p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"} and frozen == {"conv1", "layer1"}
    assert all(p.requires_grad for p in Backbone(ResNet("resnet18", norm="bn"), frozen_stages=0).parameters())
    assert b_dc5.stride == 16 and b.stride == 32
    assert b_dc5.body.layer4[1].conv2.dilation == (2, 2) and b_dc5.body.layer4[0].conv2.stride == (1, 1)
    assert sum(p.numel() for p in b_dc5.parameters()) == sum(p.numel() for p in b.parameters())


def test_imagenet_weights_via_torchvision_weights_api(tmp_path, monkeypatch):
    """load_imagenet_weights goes through torchvision's ResNet18_Weights.IMAGENET1K_V1; we pre-fill the
    torch.hub cache with a file of the right name, so nothing is downloaded."""
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    tv = _tv_resnet("resnet18")
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save(tv.state_dict(), ckpt_dir / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    body = ResNet("resnet18", return_layer="layer3")
    body.load_imagenet_weights()    # the stages past layer3 and fc are left out
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(body.eval()(x), _tv_features(tv, x, 3), rtol=1e-4, atol=1e-4)


def test_sine_position_encoding_official_formula():
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, :, 2:] = True  # image 1 is 2 columns wide
    pos = PositionEmbeddingSine(8)(mask)   # (B, 16, h, w)
    assert pos.shape == (2, 16, 3, 4)
    # channel 8 (first x channel) = sin(x * 2pi / w_valid) with x = 1..w_valid (cumulative count)
    w_valid = torch.tensor([4.0, 2.0])
    for b in range(2):
        xs = torch.arange(1, 5.0).clamp(max=w_valid[b]) / (w_valid[b] + 1e-6) * 2 * torch.pi
        torch.testing.assert_close(pos[b, 8, 0], torch.sin(xs))
        # odd channel 9: cos with the same frequency (floor(9/2) = 4 -> T^(2*4/8)... index pairs)
        torch.testing.assert_close(pos[b, 9, 0], torch.cos(xs))
        # channel 2 (y, pair 1): sin(y / 10000^(2/8))
        ys = torch.arange(1, 4.0) / (3 + 1e-6) * 2 * torch.pi
        torch.testing.assert_close(pos[b, 2, :, 0], torch.sin(ys / 10000 ** (2 / 8)))
    # the valid part of a padded image equals the unpadded image's encoding
    small = PositionEmbeddingSine(8)(torch.zeros(1, 3, 2, dtype=torch.bool))
    torch.testing.assert_close(pos[1:, :, :, :2], small)


def test_joiner_mask_nearest_downsampling():
    j = Joiner(Backbone(ResNet("resnet18", norm="bn", return_layer="layer2", width=0.25), frozen_stages=0),
               PositionEmbeddingSine(8))
    img = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, :, 40:] = True
    feat, m, pos = j(img, mask)
    assert feat.shape[-2:] == (8, 8) and m.shape == (1, 8, 8) and pos.shape == (1, 16, 8, 8)
    assert m[0, 0].tolist() == [False] * 5 + [True] * 3   # nearest: feature col j samples pixel 8j
