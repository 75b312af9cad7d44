"""Tiny real torch.nn modules behind the bundled samples, one per edge case."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv + BatchNorm + InstanceNorm (with running stats) + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.norm2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class BufferZoo(nn.Module):
    """Every kind of module state: persistent, non-persistent, int and bool buffers, a frozen
    parameter, and a buffer literally named `weight` in a child."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))
        self.frozen = nn.Parameter(torch.full((4,), 0.5), requires_grad=False)
        self.register_buffer("ema", torch.zeros(4))
        self.register_buffer("cache", torch.arange(4.0), persistent=False)
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False, True, True]))
        self.child = WeightBuffer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.child(self.proj(x) * self.scale + self.frozen) * self.mask


class WeightBuffer(nn.Module):
    """A buffer named `weight` next to a parameter named `gain`."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(4))
        self.register_buffer("weight", torch.linspace(0, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain + self.weight
