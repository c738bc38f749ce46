"""DenseNet-121 in plain PyTorch (no torchvision), layer for layer the graph make_model.py builds in ONNX.

``from_onnx`` copies the ONNX file's convolution weights in, so both formats compute the same function.

Each batch norm, ReLU and the convolution after it form one module, ``BnReluConv``: TorchScript scripts and
loads a model module by module. With a module per layer (607 of them) scripting DenseNet-121 took 1.3-3 s and
every load 0.2-0.5 s on 2 busy cores; with 192 modules, a fifth to a quarter of that.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class BnReluConv(nn.Module):
    """Batch norm in eval mode, ReLU, then a convolution without bias, as the ONNX graph's ``bn_relu`` and ``conv``.

    The batch norm starts as the ONNX graph's: scale 1, shift 0, mean 0, variance 1, epsilon 1e-5.
    """

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(cin))
        self.shift = nn.Parameter(torch.zeros(cin))
        self.register_buffer("mean", torch.zeros(cin))
        self.register_buffer("var", torch.ones(cin))
        self.weight = nn.Parameter(torch.zeros(cout, cin, kernel, kernel))
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.batch_norm(x, self.mean, self.var, self.scale, self.shift, False, 0.0, 1e-5))
        return F.conv2d(x, self.weight, None, 1, self.padding)


class DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.bottleneck = BnReluConv(channels, 4 * growth, 1)
        self.conv = BnReluConv(4 * growth, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bottleneck(x))], dim=1)


class Transition(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = BnReluConv(channels, channels // 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2, 2)


def bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels, eps=1e-5), nn.ReLU())


class DenseNet(nn.Module):
    """data_0 FP32 [N,3,224,224] -> fc6_1 FP32 [N,1000,1,1], as the ONNX model zoo's DenseNet-121."""

    def __init__(self, blocks: tuple[int, ...], growth: int, features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, features, 7, stride=2, padding=3, bias=False),
            bn_relu(features),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        channels = features
        for i, count in enumerate(blocks):
            for _ in range(count):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if i < len(blocks) - 1:
                layers.append(Transition(channels))
                channels //= 2
        layers += [bn_relu(channels), nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 1000, 1, bias=True)]
        self.features = nn.Sequential(*layers)

    def forward(self, data_0: torch.Tensor) -> torch.Tensor:
        return self.features(data_0)


def from_onnx(model: DenseNet, conv_weights: list[np.ndarray]) -> DenseNet:
    """Load the ONNX graph's convolution weights, in the order both build them; biases stay zero."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, BnReluConv))]
    if len(convs) != len(conv_weights):
        raise ValueError(f"{len(convs)} convolutions in torch, {len(conv_weights)} in ONNX")
    with torch.no_grad():
        for conv, weight in zip(convs, conv_weights, strict=True):
            conv.weight.copy_(torch.tensor(weight))
            if isinstance(conv, nn.Conv2d) and conv.bias is not None:
                conv.bias.zero_()
    return model.eval()
