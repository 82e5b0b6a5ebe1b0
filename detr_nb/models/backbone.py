"""ResNet backbones with torchvision's state-dict names, and DETR's backbone wrapper. Notebook 01.

``ResNet`` builds ResNet-18/34 (BasicBlock) and ResNet-50/101 (Bottleneck) from our layers, without the
classifier, stopping at ``return_layer``. Its state-dict keys are torchvision's, so ImageNet weights load
unchanged. ``Joiner`` is what DETR calls ``model.backbone``: ``Sequential(Backbone, position_embedding)``, so
the checkpoint keys read ``backbone.0.body.layer1.0.conv1.weight``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor

from . import layers

ARCHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),   # block, blocks per stage
         "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3))}
NORMS = {"frozen_bn": layers.FrozenBatchNorm2d, "bn": layers.BatchNorm2d}   # official | trained from scratch
RETURN_LAYERS = {"layer2": 8, "layer3": 16, "layer4": 32}                    # -> output stride (no dilation)
IMAGENET_WEIGHTS = {"resnet18": tvm.ResNet18_Weights, "resnet34": tvm.ResNet34_Weights,
                    "resnet50": tvm.ResNet50_Weights, "resnet101": tvm.ResNet101_Weights}


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> layers.Conv2d:
    return layers.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


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
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, "ResNet v1.5" as torchvision), 1x1 expand x4 (ResNet-50/101)."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1, norm=None):
        super().__init__()
        self.conv1 = layers.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm(planes)
        self.conv3 = layers.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = layers.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))     # (B, planes, H, W)
        out = self.relu(self.bn2(self.conv2(out)))   # (B, planes, H/s, W/s)
        out = self.bn3(self.conv3(out))              # (B, 4*planes, H/s, W/s)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk up to ``return_layer`` (no avgpool/fc), torchvision state-dict names.

    ``arch`` one of :data:`ARCHS`; ``norm`` "frozen_bn" (official) | "bn"; ``dilation``: DC5, the last stage
    dilated instead of strided (output stride 16); ``width``: channel multiplier (1.0 = torchvision; other
    values cannot load ImageNet weights).
    """

    def __init__(self, arch: str = "resnet50", norm: str = "frozen_bn", dilation: bool = False,
                 return_layer: str = "layer4", width: float = 1.0):
        super().__init__()
        kind, depths = ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.n_stages = arch, int(return_layer[-1])
        norm_layer = NORMS[norm]
        base = max(int(round(64 * width)), 8)
        self.conv1 = layers.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base)
        self.relu = layers.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes, self.dilation = base, 1
        for i in range(self.n_stages):
            dilate = dilation and i == 3   # DC5: dilation only on the last stage (layer4)
            setattr(self, f"layer{i + 1}", self._make_layer(block, base * 2 ** i, depths[i], 1 if i == 0 else 2,
                                                            dilate, norm_layer))
        self.num_channels = self.inplanes
        self.stride = RETURN_LAYERS[return_layer] // (2 if dilation and self.n_stages == 4 else 1)
        for m in self.modules():   # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride, dilate, norm_layer) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:  # keep resolution, grow the receptive field instead
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(layers.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride,
                                                     bias=False), norm_layer(planes * block.expansion))
        # As torchvision: the first block of a dilated stage still uses the previous dilation.
        blocks_ = [block(self.inplanes, planes, stride, downsample, previous_dilation, norm_layer)]
        self.inplanes = planes * block.expansion
        blocks_ += [block(self.inplanes, planes, 1, None, self.dilation, norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) -> features (B, num_channels, H/stride, W/stride)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))   # (B, base, H/4, W/4)
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def load_imagenet_weights(self) -> None:
        """torchvision's IMAGENET1K_V1 weights (the ones DETR used), cached under torch.hub's folder; the
        classifier and the stages past ``return_layer`` are left out, the rest loads strictly."""
        state = IMAGENET_WEIGHTS[self.arch].IMAGENET1K_V1.get_state_dict(progress=True)
        unused = ("fc.",) + tuple(f"layer{i}." for i in range(self.n_stages + 1, 5))
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith(unused)})


class Backbone(nn.Module):
    """DETR's ``Backbone``: the ResNet ``body`` with the stem and the first ``frozen_stages`` stages frozen
    (official: conv1, bn1 and layer1 never train). Notebook 01."""

    def __init__(self, body: ResNet, frozen_stages: int = 1):
        super().__init__()
        self.body = body
        self.num_channels, self.stride = body.num_channels, body.stride
        frozen = ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, frozen_stages + 1))
        for name, p in body.named_parameters():
            if frozen_stages > 0 and name.startswith(frozen):
                p.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)


class Joiner(nn.Sequential):
    """``Sequential(backbone, position_embedding)``: features, their padding mask and positions."""

    def __init__(self, backbone: Backbone, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels, self.stride = backbone.num_channels, backbone.stride

    def forward(self, images: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """images (B, 3, H, W), mask (B, H, W) True = padding ->
        features (B, C, h, w), mask (B, h, w), pos (B, D, h, w)."""
        feat = self[0](images)
        # Nearest interpolation: a feature pixel is padding if the image pixel it samples is.
        m = F.interpolate(mask[None].float(), size=feat.shape[-2:]).to(torch.bool)[0]   # (B, h, w)
        return feat, m, self[1](m).to(feat.dtype)
