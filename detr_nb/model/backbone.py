"""ResNet backbones with torchvision's state-dict names, and DETR's backbone wrapper. Notebook 01.

``ResNet`` builds ResNet-18/34 (BasicBlock) and ResNet-50/101 (Bottleneck) from our layers,
without the classifier (``fc``), stopping at ``return_layer``. Its state-dict keys are
torchvision's, so ImageNet weights load unchanged.

``Joiner`` is what DETR calls ``model.backbone``: ``Sequential(Backbone, position_embedding)``,
so the checkpoint keys read ``backbone.0.body.layer1.0.conv1.weight``.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..nn import layers

ARCHS = {  # name -> (block, blocks per stage)
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
NORMS = ("frozen_bn", "bn", "gn")
RETURN_LAYERS = {"layer2": 8, "layer3": 16, "layer4": 32}  # -> output stride (without dilation)
# torchvision weights enum names; IMAGENET1K_V1 is what the official DETR used for R50.
TORCHVISION_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                       "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}


def make_norm(kind: str, impl: str = "torch") -> Callable[[int], nn.Module]:
    """Norm-layer factory: "frozen_bn" (official), "bn" (trainable), "gn" (32 groups or fewer)."""
    if kind == "frozen_bn":
        return lambda c: layers.FrozenBatchNorm2d(c, impl=impl)
    if kind == "bn":
        return lambda c: layers.BatchNorm2d(c, impl=impl)
    if kind == "gn":
        return lambda c: layers.GroupNorm(_gn_groups(c), c, impl=impl)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def _gn_groups(c: int) -> int:
    g = 32
    while c % g:
        g //= 2
    return g


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> layers.Conv2d:
    return layers.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> layers.Conv2d:
    return layers.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1, norm=None):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride, dilation)
        self.bn1 = norm(planes)
        self.relu = layers.ReLU()
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, "ResNet v1.5" as torchvision), 1x1 expand x4 (ResNet-50/101)."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1, norm=None):
        super().__init__()
        mid = planes
        self.conv1 = conv1x1(cin, mid)
        self.bn1 = norm(mid)
        self.conv2 = conv3x3(mid, mid, stride, dilation)
        self.bn2 = norm(mid)
        self.conv3 = conv1x1(mid, planes * self.expansion)
        self.bn3 = norm(planes * self.expansion)
        self.relu = layers.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))     # (B, mid, H, W)
        out = self.relu(self.bn2(self.conv2(out)))   # (B, mid, H/s, W/s)
        out = self.bn3(self.conv3(out))              # (B, 4*planes, H/s, W/s)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk up to ``return_layer`` (no avgpool/fc), torchvision state-dict names.

    Args:
        arch: "resnet18" | "resnet34" | "resnet50" | "resnet101".
        norm: "frozen_bn" (official DETR) | "bn" | "gn".
        dilation: DC5, replace the stride of the last stage by dilation (output stride 16).
        return_layer: "layer2" | "layer3" | "layer4"; later stages are not built.
        width: channel multiplier (1.0 = torchvision; other values cannot load ImageNet weights).
    """

    def __init__(self, arch: str = "resnet50", norm: str = "frozen_bn", dilation: bool = False,
                 return_layer: str = "layer4", width: float = 1.0, impl: str = "torch"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown backbone {arch!r}; known: {sorted(ARCHS)}")
        if return_layer not in RETURN_LAYERS:
            raise ValueError(f"return_layer must be one of {sorted(RETURN_LAYERS)}, got {return_layer!r}")
        kind, depths = ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.return_layer = arch, return_layer
        n_stages = int(return_layer[-1])
        norm_layer = make_norm(norm)
        base = max(int(round(64 * width)), 8)
        if norm == "gn" and base % 8:
            raise ValueError("width must give channel counts divisible by 8 for GroupNorm")

        self.conv1 = layers.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base)
        self.relu = layers.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes, self.dilation = base, 1
        for i in range(n_stages):
            stride = 1 if i == 0 else 2
            dilate = dilation and i == 3   # DC5: dilation only on the last stage (layer4)
            layer = self._make_layer(block, base * 2 ** i, depths[i], stride, dilate, norm_layer)
            setattr(self, f"layer{i + 1}", layer)
        self.num_channels = self.inplanes
        self.stride = RETURN_LAYERS[return_layer] // (2 if dilation and n_stages == 4 else 1)
        self._init_weights()
        layers.set_impl(self, impl)

    def _make_layer(self, block, planes, blocks, stride, dilate, norm_layer) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:  # keep resolution, grow the receptive field instead
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        # As torchvision: the first block of a dilated stage still uses the previous dilation.
        blocks_ = [block(self.inplanes, planes, stride, downsample, previous_dilation, norm_layer)]
        self.inplanes = planes * block.expansion
        blocks_ += [block(self.inplanes, planes, 1, None, self.dilation, norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    def _init_weights(self) -> None:
        """torchvision's init: kaiming-normal (fan_out) convs, norm weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) -> features (B, num_channels, H/stride, W/stride)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))   # (B, base, H/4, W/4)
        for i in range(1, int(self.return_layer[-1]) + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def load_torchvision_state_dict(self, state_dict: dict) -> None:
        """Load a torchvision ResNet state dict (fc and stages beyond return_layer dropped), strictly."""
        n = int(self.return_layer[-1])
        drop = ("fc.",) + tuple(f"layer{i}." for i in range(n + 1, 5))
        sd = {k: v for k, v in state_dict.items() if not k.startswith(drop)}
        self.load_state_dict(sd, strict=True)


def load_imagenet_weights(body: ResNet, progress: bool = True) -> None:
    """Load torchvision's IMAGENET1K_V1 weights into ``body`` via the torchvision weights API.

    The file is cached under torch.hub's dir ($TORCH_HOME/hub/checkpoints); downloaded only if missing.
    """
    import torchvision.models as tvm

    weights = getattr(tvm, TORCHVISION_WEIGHTS[body.arch]).IMAGENET1K_V1
    body.load_torchvision_state_dict(weights.get_state_dict(progress=progress))


class Backbone(nn.Module):
    """DETR's ``Backbone``: the ResNet ``body`` plus DETR's freezing rule. Notebook 01.

    Official freezing: parameters of conv1/bn1/layer1 never train (``frozen_stages=1``). (The official
    ``train_backbone=False``, lr_backbone = 0, is the optimizer's rule here: engine.build.param_groups.)
    """

    def __init__(self, arch="resnet50", *, norm="frozen_bn", dilation=False, return_layer="layer4",
                 width=1.0, frozen_stages=1, pretrained=False, impl="torch"):
        super().__init__()
        self.body = ResNet(arch, norm, dilation, return_layer, width, impl)
        if pretrained:
            if norm == "gn" or width != 1.0:
                raise ValueError("pretrained_backbone needs norm 'frozen_bn' or 'bn' and width 1.0 "
                                 f"(got norm={norm!r}, width={width})")
            load_imagenet_weights(self.body)
        self.num_channels = self.body.num_channels
        self.stride = self.body.stride
        frozen = ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, frozen_stages + 1))
        for name, p in self.body.named_parameters():
            if frozen_stages > 0 and name.startswith(frozen):
                p.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)


class Joiner(nn.Sequential):
    """``Sequential(backbone, position_embedding)``: features, their padding mask and positions."""

    def __init__(self, backbone: Backbone, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.stride = backbone.stride

    def forward(self, images: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """images (B, 3, H, W), mask (B, H, W) True = padding ->
        features (B, C, h, w), mask (B, h, w), pos (B, D, h, w)."""
        feat = self[0](images)
        # Nearest interpolation: a feature pixel is padding if the image pixel it samples is.
        m = F.interpolate(mask[None].float(), size=feat.shape[-2:]).to(torch.bool)[0]   # (B, h, w)
        pos = self[1](m).to(feat.dtype)
        return feat, m, pos
