"""The bundled classifier: a small CNN for the synthetic shapes, with weights shipped in the package.

``features`` is four conv3x3-BN-ReLU blocks (16, 32, 64, 64 channels), max-pooled after the first
three, so a ``[N, 3, 64, 64]`` input gives ``[N, 64, 8, 8]`` at ``TARGET_LAYER`` (the last ReLU);
then global average pooling and a linear head to ``len(CLASSES)`` logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..util.digests import file_sha256
from .devices import resolve_device
from .errors import ModelError
from .loaded import LoadedModel, Normalization
from .weights import apply_state_dict, read_state_dict

#: Class names of the synthetic shapes (``sycam_dsl.bundled``), sorted so that the class-folder order of
#: ``load_images`` gives the same labels.
CLASSES = ("circle", "cross", "square", "triangle")

#: Module path of the CAM target layer: the last block's ReLU, output ``[N, 64, 8, 8]``.
TARGET_LAYER = "features.14"
#: Inputs are ``[0, 1]`` pixels mapped to ``[-1, 1]``.
NORMALIZATION = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
INPUT_SIZE = 64
#: The packaged state dict, written by ``sycam-dsl train-bundled``.
WEIGHTS_PATH = Path(__file__).resolve().parent / "small_cnn.pt"
_WIDTHS = (16, 32, 64, 64)


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    # No in-place ReLU: the target layer's output must survive for hooks and gradients.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    """``[N, 3, 64, 64]`` normalized images to ``[N, num_classes]`` logits."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate(_WIDTHS):
            layers += _block(c_in, c_out)
            if i < len(_WIDTHS) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def load_bundled_model(device: str | torch.device = "cpu", weights: str | Path | None = None) -> LoadedModel:
    """The bundled SmallCNN in eval mode on ``device``, from ``weights`` (default: the packaged file)."""
    dev = resolve_device(device)
    if isinstance(weights, str) and weights.strip().startswith("random:"):
        raise ModelError("--weights random:SEED does not apply to the bundled model; pass a state-dict file, or "
                         "nothing for the packaged weights")
    path = Path(weights) if weights is not None else WEIGHTS_PATH
    if path.is_dir():
        raise ModelError(f"weights {str(path)!r} is a folder; give the bundled model's state-dict file itself")
    if not path.is_file():
        raise ModelError(f"the bundled model's weights file {str(path)!r} is missing; create it with "
                         f"`sycam-dsl train-bundled --out {str(path)}` (about 2 minutes on a CPU)")
    module = SmallCNN()
    apply_state_dict(module, read_state_dict(path), repr(str(path)))
    details = {"weights": str(path), "sha256": file_sha256(path), "classes": list(CLASSES)}
    return LoadedModel(module.to(dev).eval(), "bundled-small-cnn", TARGET_LAYER, NORMALIZATION, INPUT_SIZE,
                       "bundled", details)
