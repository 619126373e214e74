"""ImageNet-shaped reference networks written with torchvision's module structure and parameter names.

torchvision cannot be imported beside the CPU torch build used here, so the two definitions are
re-written from torchvision/models/resnet.py and torchvision/models/mobilenetv2.py: same module
tree, same state-dict keys, same weight initialisation, so a state dict saved from torchvision's
`resnet18()` / `mobilenet_v2()` loads with `--weights` and gives the same outputs.

Both are fully convolutional up to a global average pool, so smaller inputs (e.g. 3x64x64 with
`--input-shape`) run too, with proportionally fewer FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.api import register_model as register

IMAGENET_INPUT = (3, 224, 224)
IMAGENET_CLASSES = 1000
SMALL_INPUT = (3, 64, 64)   # for fast runs (`--input-shape resnet18=3x64x64`) and the tests


# --- ResNet-18 ----------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 conv + BN `downsample`) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), torchvision layout."""

    def __init__(self, layers: list[int], num_classes: int = IMAGENET_CLASSES) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)
        for m in self.modules():   # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride=stride,
                                                 bias=False),
                                       nn.BatchNorm2d(planes * BasicBlock.expansion))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("resnet18", input_shape=IMAGENET_INPUT, num_classes=IMAGENET_CLASSES, small_input_shape=SMALL_INPUT,
          student="mobilenet_v2_050")
def resnet18() -> nn.Module:
    """ResNet-18 (He et al. 2016) as torchvision.models.resnet18: 11.7M parameters, 1.82 GFLOP (multiply-adds) at 224x224."""
    return ResNet([2, 2, 2, 2])


# --- MobileNetV2 --------------------------------------------------------------------------------

def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor`, never down by more than 10% (torchvision's helper)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + ReLU6, as torchvision.ops.misc.Conv2dNormActivation builds it."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(out_planes), nn.ReLU6(inplace=True))
        self.out_channels = out_planes


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; a residual add when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers += [Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018),
    torchvision layout and initialisation; `width_mult` scales every layer's channels as torchvision's
    does (rounded to multiples of 8; the last layer never below 1280)."""

    # t (expansion), c (channels), n (repeats), s (first stride)
    SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]

    def __init__(self, num_classes: int = IMAGENET_CLASSES, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        input_channel, last_channel = _make_divisible(32 * width_mult), _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTING:
            output_channel = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))
        for m in self.modules():   # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


@register("mobilenet_v2", input_shape=IMAGENET_INPUT, num_classes=IMAGENET_CLASSES, small_input_shape=SMALL_INPUT,
          student="mobilenet_v2_050")
def mobilenet_v2() -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018) as torchvision.models.mobilenet_v2: 3.5M parameters, 0.30 GFLOP (multiply-adds) at 224x224."""
    return MobileNetV2()


@register("mobilenet_v2_050", input_shape=IMAGENET_INPUT, num_classes=IMAGENET_CLASSES, small_input_shape=SMALL_INPUT)
def mobilenet_v2_050() -> nn.Module:
    """MobileNetV2 at width 0.5, as torchvision.models.mobilenet_v2(width_mult=0.5): 2.0M parameters
    (1.3M of them the 1280x1000 classifier), 0.10 GFLOP (multiply-adds) at 224x224. The default
    distillation student of resnet18 and mobilenet_v2."""
    return MobileNetV2(width_mult=0.5)
