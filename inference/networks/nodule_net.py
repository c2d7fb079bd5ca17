"""A compact 3-D encoder-decoder that maps a CT patch to per-voxel nodule logits.

Built for CPU inference: the first convolution already has stride 2 (nothing but the final
transposed convolution runs at full resolution), three stride-2 stages, additive skip connections
(no concatenation, so the decoder stays thin) and a 2x2x2 transposed-convolution head that returns
full-resolution logits. Fully convolutional: any spatial size divisible by ``NoduleNet.stride`` works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvBnAct(nn.Sequential):
    """3x3x3 convolution, batch norm, leaky ReLU."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm3d(cout),
            nn.LeakyReLU(0.1, inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with an identity shortcut."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(channels, channels, dilation=dilation)
        self.conv2 = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm3d(channels)
        )
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.conv1(x)))


class UpAdd(nn.Module):
    """Transposed-conv x2 upsampling, add the skip, normalise, activate, refine."""

    def __init__(self, cin: int, cout: int, *, refine: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cout, 2, stride=2, bias=False)
        self.norm = nn.BatchNorm3d(cout)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.refine: nn.Module = ConvBnAct(cout, cout) if refine else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.refine(self.act(self.norm(self.up(x) + skip)))


class NoduleNet(nn.Module):
    """Input ``(N, 1, D, H, W)`` in [0, 1]; output ``(N, 1, D, H, W)`` nodule logits."""

    stride = 8

    def __init__(self, features: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if len(features) != 3:
            raise ValueError("features needs three channel counts (1/2, 1/4, 1/8 resolution)")
        f1, f2, f3 = (int(f) for f in features)
        self.features = (f1, f2, f3)
        self.stem = nn.Sequential(ConvBnAct(1, f1, stride=2), ResidualBlock(f1))
        self.enc2 = nn.Sequential(ConvBnAct(f1, f2, stride=2), ResidualBlock(f2))
        self.enc3 = nn.Sequential(ConvBnAct(f2, f3, stride=2), ResidualBlock(f3, dilation=2))
        self.dec2 = UpAdd(f3, f2, refine=True)
        self.dec1 = UpAdd(f2, f1, refine=True)
        self.head = nn.ConvTranspose3d(f1, 1, 2, stride=2)
        # Start from a low nodule prior so the first steps are not swamped by background.
        assert self.head.bias is not None
        nn.init.constant_(self.head.bias, -4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.stem(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(e3, e2)
        d1 = self.dec1(d2, e1)
        return self.head(d1)


def build_network(features: Sequence[int]) -> NoduleNet:
    """The network for a configuration's ``model.features``."""
    return NoduleNet(features)
