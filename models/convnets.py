"""The reference ConvNets, each with its provenance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import register_model as register


# Two dropouts on 1,437 images: it needs more, smaller steps than lenet to pass 97%.
@register("convnet", epochs=40, batch_size=32)
class ConvNet(nn.Module):
    """The ConvNet of the PyTorch MNIST example (pytorch/examples, mnist/main.py, 2017-2019 form).

    conv 1->10 k5, max-pool, ReLU; conv 10->20 k5, Dropout2d, max-pool, ReLU; fc 320->50, ReLU,
    dropout; fc 50->10; log-softmax. About 21.8k parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


@register("lenet")
class LeNet(nn.Module):
    """LeNet as in Caffe's MNIST tutorial (examples/mnist/lenet.prototxt), with ReLU.

    conv 1->20 k5, max-pool; conv 20->50 k5, max-pool; fc 800->500, ReLU; fc 500->10.
    About 431k parameters; the fully connected layers hold most of them, the convs most of the FLOPs.
    """

    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.bn1 = nn.BatchNorm2d(20) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.bn2 = nn.BatchNorm2d(50) if batch_norm else nn.Identity()
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


@register("lenet_bn")
def lenet_bn() -> nn.Module:
    """LeNet with BatchNorm after each convolution, so conv-BN fusion has something to fold."""
    return LeNet(batch_norm=True)


@register("gap_convnet", epochs=20)
class GapConvNet(nn.Module):
    """A two-conv net with global average pooling (the usual "simple CNN" of tutorials, fixed).

    conv 1->32 k3 p1, ReLU; conv 32->64 k3 p1, ReLU; global average pool; fc 64->10.
    The well-known form flattens the 64x28x28 map with `view(-1, 64)`, which silently turns a batch
    of N into N*784 rows; pooling to 1x1 first is the fix.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class BasicBlock(nn.Module):
    """The ResNet basic block (He et al. 2016): two 3x3 conv-BN, identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register("resnet8", input_shape=(3, 32, 32))
class ResNet8(nn.Module):
    """ResNet-8 for 3x32x32 input: the CIFAR ResNet of He et al. (2016, sec. 4.2) with n=1.

    conv 3->16, then one basic block at 16, 32 and 64 channels (stride 1, 2, 2), global average
    pool, fc 64->10. About 78k parameters and 12 MFLOPs a sample: enough work that GPU, parallel
    and compile techniques show their real behaviour.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
