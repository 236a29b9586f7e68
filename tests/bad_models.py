"""Test-only model factories that misbehave in one way each (``--model tests.bad_models:NAME``)."""

from __future__ import annotations

import torch
from torch import nn

from tests.cam_reference import TinyCNN


def float64() -> nn.Module:
    return TinyCNN().double()


def float16() -> nn.Module:
    return TinyCNN().half()


class Detached(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).detach()


class NoGrad(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return super().forward(x)


class IntegerOutput(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).argsort(dim=1)


class SharedReLU(nn.Module):
    """Two convolutions that share one ReLU module (as efficientnet-lite-pytorch's ``_swish``)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))


class OwnReLUs(SharedReLU):
    """``SharedReLU`` with one ReLU module per call: the reference for ``relu@0`` / ``relu@last``."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__(classes)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean(dim=(2, 3)))
