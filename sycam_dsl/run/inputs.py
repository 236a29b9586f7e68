"""What ``synthesize`` is given, in the forms a run works with: the model as a ``LoadedModel``, the
images as the search's ``Data``, a metric by name, the budget as a ``Budget``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cam.images import ImageSet, load_images
from ..errors import SycamError
from ..metrics import get_metric
from ..metrics.registry import Metric
from ..models import LoadedModel, Normalization, load_model
from ..synthesis.config import DEFAULT_SECONDS, Budget
from ..synthesis.problem import Data


def resolve_metric(metric: str | Metric, options: dict[str, Any] | None) -> Metric:
    """``metric`` (a name or a ``Metric``) with ``options`` bound."""
    m = get_metric(metric) if isinstance(metric, str) else metric
    return m.with_options(**options) if options else m


def as_budget(budget: Budget | float | int | None) -> Budget:
    """A ``Budget``; a number is seconds; None is the default (``DEFAULT_SECONDS``, 10 minutes)."""
    if budget is None:
        return Budget(seconds=DEFAULT_SECONDS)
    if isinstance(budget, Budget):
        return budget
    return Budget(seconds=float(budget))


def loaded_model(model: LoadedModel | nn.Module | str, weights: str | None, device: str) -> LoadedModel:
    """``model`` as a ``LoadedModel``: a name for ``load_model`` (with ``weights``), a ``LoadedModel``
    as it is, or an ``nn.Module`` moved to ``device`` (taking images as given, its default layer)."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model, weights, device)
    if isinstance(model, nn.Module):
        from ..models.layers import default_layer
        return LoadedModel(model.to(device).eval(), type(model).__name__, default_layer(model),
                           Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), source="module")
    raise SycamError(f"model must be a name, a LoadedModel or an nn.Module, got {type(model).__name__}")


def load_data(images: ImageSet | torch.Tensor | str | Path, masks: torch.Tensor | str | Path | None,
              labels: torch.Tensor | None, model: LoadedModel, size: int | None) -> Data:
    """``images`` (a folder, an ``ImageSet`` or a tensor ``[N, 3, H, W]``) with ``masks`` ``[N, H, W]``
    (or a folder) and ``labels`` ``[N]`` as the search's ``Data``, a folder read at ``size`` (None: the
    model's input size); shapes that do not match are one ``SycamError`` line."""
    if isinstance(images, (str, Path)):
        mask_dir = masks if isinstance(masks, (str, Path)) else None
        images = load_images(images, size=size or model.input_size, normalize=model.normalize, masks=mask_dir)
    if isinstance(images, ImageSet):
        data = Data(images.images, images.files, images.labels, images.masks, images.classes, str(images.root))
    elif isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise SycamError(f"images must be a tensor [N, 3, H, W], got shape {list(images.shape)}")
        data = Data(images, [f"image {i}" for i in range(images.shape[0])])
    else:
        raise SycamError(f"images must be a folder, an ImageSet or a tensor [N, 3, H, W], got {type(images).__name__}")
    if isinstance(masks, torch.Tensor):
        data.masks = masks.bool()
    if labels is not None:
        data.labels = torch.as_tensor(labels).long()
    n, hw = data.images.shape[0], tuple(data.images.shape[-2:])
    if data.masks is not None and tuple(data.masks.shape) != (n, *hw):
        raise SycamError(f"masks must be [N, H, W] = {[n, *hw]}, one per image, got {list(data.masks.shape)}")
    if data.labels is not None and tuple(data.labels.shape) != (n,):
        raise SycamError(f"labels must be [N] = [{n}], got {list(data.labels.shape)}")
    return data
