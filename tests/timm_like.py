"""Small stand-ins for the layers of timm (pytorch-image-models), which cannot be installed here.

`BatchNormAct2d` and `ConvNormAct` copy the structure of `timm.layers.norm_act.BatchNormAct2d` and
`timm.layers.conv_bn_act.ConvNormAct` (same attribute names, same forward: the body of
`nn.BatchNorm2d.forward` through `F.batch_norm`, then `drop`, then `act`), and `Attention` that of
`timm.models.vision_transformer.Attention` (one qkv Linear, split into `num_heads` by a reshape):
a technique that handles these handles the timm nets built from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm + activation in one module, a BatchNorm2d subclass so that plain BN weights load."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, apply_act: bool = True, act_layer: type = nn.ReLU,
                 inplace: bool = True, drop_layer: type | None = None) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = act_layer(**(dict(inplace=True) if inplace else {})) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                exponential_average_factor = 1.0 / float(self.num_batches_tracked)
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(x,
                         self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, bn_training, exponential_average_factor, self.eps)
        x = self.drop(x)
        x = self.act(x)
        return x


class ConvNormAct(nn.Module):
    """conv, bn (a BatchNormAct2d), aa (anti-aliasing, Identity unless asked for)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act_layer: type = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = BatchNormAct2d(out_channels, act_layer=act_layer)
        self.aa = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.bn(x)
        x = self.aa(x)
        return x


class BatchStatsNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d subclass whose forward normalises with each batch's own statistics, also in eval:
    nothing stored to fold into a conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class RegNetLike(nn.Module):
    """A RegNetX-shaped net: one dense 3x3 stem, then bottlenecks of 1x1 and grouped 3x3 convolutions
    (what separable leaves alone), BatchNormAct2d after every conv, a residual add, and a classifier."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, width: int = 16, group_width: int = 4) -> None:
        super().__init__()
        self.stem = ConvNormAct(in_chans, width, 3, stride=2)
        self.conv1 = ConvNormAct(width, width, 1)
        self.conv2 = ConvNormAct(width, width, 3, groups=width // group_width)
        self.conv3 = ConvNormAct(width, width, 1, act_layer=nn.Identity)
        self.act = nn.ReLU()
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.act(self.conv3(self.conv2(self.conv1(x))) + x)
        return self.head(x.mean((2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention as timm's ViT writes it: qkv in one Linear, heads by reshape."""

    def __init__(self, dim: int, num_heads: int = 2, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mha: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True) if mha else Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + (self.attn(h, h, h, need_weights=False)[0] if isinstance(self.attn, nn.MultiheadAttention)
                 else self.attn(h))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding (a strided conv), a class token, two transformer blocks, a linear head."""

    def __init__(self, img_size: int = 28, patch: int = 7, in_chans: int = 1, dim: int = 16, num_heads: int = 2,
                 num_classes: int = 10, mha: bool = False) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(Block(dim, num_heads, mha), Block(dim, num_heads, mha))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class EfficientNetLike(nn.Module):
    """timm's EfficientNet/MobileNetV3 layout: `conv_stem` then `bn1` as siblings, a depthwise-separable
    block whose BatchNormAct2d layers carry a Dropout `drop`, and one without activation (`apply_act`)."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(in_chans, width, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(width, act_layer=nn.SiLU)
        self.conv_dw = nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False)
        self.bn2 = BatchNormAct2d(width, act_layer=nn.Hardswish, drop_layer=nn.Dropout)
        self.conv_pw = nn.Conv2d(width, 2 * width, 1, bias=False)
        self.bn3 = BatchNormAct2d(2 * width, apply_act=False)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = self.bn3(self.conv_pw(self.bn2(self.conv_dw(x))))
        return self.classifier(x.mean((2, 3)))
