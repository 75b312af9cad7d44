"""Model factories for `check --model` in tests/test_diagnostics.py (imported by name: this
folder is on sys.path while the tests run). One tiny module per situation."""

from __future__ import annotations

import torch
from torch import nn

from sample_modules import SmallCNN


class ScaledCNN(SmallCNN):
    """SmallCNN that gained a persistent buffer (and a non-persistent one, never saved)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("label_scale", torch.ones(4))
        self.register_buffer("cache", torch.zeros(3), persistent=False)


def small_cnn() -> nn.Module:
    return SmallCNN()


def gained_buffer() -> nn.Module:
    return ScaledCNN()


def wider_head() -> nn.Module:
    m = SmallCNN()
    m.head = nn.Linear(8, 10)
    return m


def lost_norm() -> nn.Module:
    """SmallCNN whose InstanceNorm no longer tracks statistics: its buffers are gone."""
    m = SmallCNN()
    m.norm2 = nn.InstanceNorm2d(8, affine=True, track_running_stats=False)
    return m


def broken() -> nn.Module:
    raise RuntimeError("factory failed on purpose")


class INNet(nn.Module):
    """InstanceNorm that tracks statistics (and never counts batches) beside a GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        self.ln = nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.norm(self.conv(x)))


class Wrapper(nn.Module):
    """What DistributedDataParallel looks like to a state dict: the model under `module.`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def wrapped() -> nn.Module:
    return Wrapper(SmallCNN())
