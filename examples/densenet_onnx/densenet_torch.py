"""DenseNet-121 in plain PyTorch (no torchvision), layer for layer the graph make_model.py builds in ONNX.

``from_onnx`` copies the ONNX file's convolution weights in, so both formats compute the same function.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def bn_relu(channels: int) -> nn.Sequential:
    # Fresh BatchNorm in eval mode is the ONNX graph's scale 1, shift 0, mean 0, var 1, epsilon 1e-5.
    return nn.Sequential(nn.BatchNorm2d(channels, eps=1e-5), nn.ReLU())


class DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            bn_relu(channels),
            nn.Conv2d(channels, 4 * growth, 1, bias=False),
            bn_relu(4 * growth),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


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
                layers += [bn_relu(channels), nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                channels //= 2
        layers += [bn_relu(channels), nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 1000, 1, bias=True)]
        self.features = nn.Sequential(*layers)

    def forward(self, data_0: torch.Tensor) -> torch.Tensor:
        return self.features(data_0)


def from_onnx(model: DenseNet, conv_weights: list[np.ndarray]) -> DenseNet:
    """Load the ONNX graph's convolution weights, in the order both build them; biases stay zero."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(conv_weights):
        raise ValueError(f"{len(convs)} convolutions in torch, {len(conv_weights)} in ONNX")
    with torch.no_grad():
        for conv, weight in zip(convs, conv_weights, strict=True):
            conv.weight.copy_(torch.tensor(weight))
            if conv.bias is not None:
                conv.bias.zero_()
    return model.eval()
