"""A classifier ready for CAM, and the input normalizations of the models sycam-dsl loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalization ``(x - mean) / std`` of ``[..., 3, H, W]`` images in ``[0, 1]``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (3, 1, 1)
        return (torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape),
                torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Back to ``[0, 1]`` pixel values."""
        mean, std = self._stats(x)
        return x * std + mean


#: torchvision's ImageNet statistics.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: EfficientNet-Lite's inception-style statistics: (255 x - 127) / 128, chosen upstream for quantization.
EFFICIENTNET_LITE = Normalization((127 / 255,) * 3, (128 / 255,) * 3)


@dataclass
class LoadedModel:
    """A classifier ready for CAM: ``module`` (eval mode, on its device) maps ``[N, 3, H, W]``
    normalized images to logits ``[N, C]``."""

    module: nn.Module
    name: str
    target_layer: str | None
    normalize: Normalization = IMAGENET
    input_size: int = 224
    source: str = "torchvision"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        for t in self.module.parameters():
            return t.device
        return torch.device("cpu")
