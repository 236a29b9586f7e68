"""Data-randomization sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", the
second test): compare each method's heatmaps under the model and under the same architecture
trained on permuted labels (``sycam-dsl train-bundled --permute-labels SEED``).

The randomized model learned nothing that ties images to labels, so a method whose heatmaps barely
change explains the image, not what the model learned. A low similarity is necessary, not
sufficient: it does not show faithfulness.

Choices, as in the parameter test (``cam.sanity``): the classes the *original* model predicts are
explained under both models (the randomized model's own predictions are near-arbitrary); the same
statistics (mean Spearman and SSIM of the upsampled, min-max normalized heatmaps) and the same flag
(the subject's mean Spearman above ``REFERENCE``'s by more than ``SPEARMAN_MARGIN``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..lang.ast import Node
from ..models.devices import resolve_device
from ..models.loaded import LoadedModel
from ..models.runtime import RuntimeSpec
from ..util.modes import eval_mode
from .compute import DEFAULT_CHUNK_SIZE
from .reshape import Reshape
from .sanity import (
    SanityError,
    Similarity,
    check_sanity_size,
    method_heatmaps,
    similarity_rows,
    spearman,
    ssim,
    table_lines,
)


def _module(model: nn.Module | LoadedModel) -> nn.Module:
    return model.module if isinstance(model, LoadedModel) else model


@torch.no_grad()
def agreement(other: nn.Module, images: torch.Tensor, classes: torch.Tensor, device: torch.device) -> float:
    """The fraction of ``images`` on which ``other`` predicts ``classes`` ``[N]`` (the first model's, which
    its heatmaps already computed)."""
    with eval_mode(other):
        predicted = other(images.to(device)).argmax(1)
    return float((predicted.cpu() == classes.cpu()).float().mean())


def compare_models(model: nn.Module | LoadedModel, other: nn.Module | LoadedModel, layer: str | None,
                   images: torch.Tensor, methods: dict[str, Node], device: str | torch.device = "cpu",
                   chunk_size: int | str = DEFAULT_CHUNK_SIZE, progress: bool = False,
                   runtime: RuntimeSpec | None = None,
                   reshape: Reshape = "auto") -> tuple[dict[str, Similarity], torch.Tensor, str]:
    """Per method, the similarities of its heatmaps on ``images`` ``[N, 3, H, W]`` under ``model``
    and ``other`` (same layer, the classes ``model`` predicts); also those targets ``[N]`` and the
    layer's name. Comparing a model with itself gives Spearman and SSIM 1 (constant maps aside)."""
    if not methods:
        raise SanityError("no methods to check")
    if isinstance(model, LoadedModel) and layer is None:
        layer = model.target_layer
    check_sanity_size(tuple(images.shape[-2:]))
    dev = resolve_device(device)
    names = sorted({t for node in methods.values() for t in node.terminals()})
    before, targets, name = method_heatmaps(methods, _module(model), layer, images, None, names, dev, chunk_size,
                                            progress, runtime, reshape)
    after, _, _ = method_heatmaps(methods, _module(other), layer, images, targets, names, dev, chunk_size,
                                  progress, runtime, reshape)
    sims = {n: Similarity(spearman(before[n], after[n]), ssim(before[n], after[n])) for n in methods}
    return sims, targets, name


def data_randomization_check(model: nn.Module | LoadedModel, randomized: nn.Module | LoadedModel,
                             layer: str | None, images: torch.Tensor, methods: dict[str, Node],
                             expressions: dict[str, str], subject: str, source: str = "",
                             device: str | torch.device = "cpu", chunk_size: int | str = DEFAULT_CHUNK_SIZE,
                             progress: bool = False, runtime: RuntimeSpec | None = None,
                             reshape: Reshape = "auto") -> dict:
    """``compare_models`` of ``model`` and ``randomized`` (named ``source``) as plain data for
    ``--json``, shaped like ``cam.sanity.check_result``'s, with ``agreement``: the fraction of the
    images on which the two models predict the same class."""
    sims, targets, name = compare_models(model, randomized, layer, images, methods, device, chunk_size, progress,
                                         runtime, reshape)
    dev = resolve_device(device)
    agree = agreement(_module(randomized), images, targets, dev)
    return {"subject": subject, "layer": name, "images": int(images.shape[0]), "randomized_model": source,
            "agreement": agree, "targets": targets.tolist(), **similarity_rows(sims, expressions, subject)}


def data_check_lines(check: dict) -> list[str]:
    """``data_randomization_check``'s figures as a table: a heading, then a line per method."""
    return [f"data randomization: model trained on permuted labels {check['randomized_model']}, "
            f"{check['images']} images, layer {check['layer']}, predictions agree on "
            f"{check['agreement']:.0%}", *table_lines(check["methods"])]
