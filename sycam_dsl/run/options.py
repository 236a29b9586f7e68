"""The option groups of a run that are not the search's own: how ``synthesize`` reads the images and
computes the terminals (``DataOptions``) and what it reports (``OutputOptions``); ``RunOptions``
holds them with the rest of what a run was asked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cam.compute import DEFAULT_CHUNK_SIZE
from ..cam.reshape import Reshape, check_reshape
from ..metrics.controls import parse_controls
from ..metrics.registry import Metric
from ..metrics.scoring import DEFAULT_BATCH_SIZE
from ..models.batching import check_batch_size
from ..models.precision import DEFAULT_PRECISION, check_precision
from ..models.runtime import DEFAULT_RUNTIME, check_runtime
from ..models.targets import Target, as_target
from ..synthesis.config import Budget, SearchOptions
from ..synthesis.distributed import ClusterOptions


@dataclass(frozen=True)
class DataOptions:
    """How ``synthesize`` reads the images and computes the terminals.

    ``masks`` ``[N, H, W]`` (or a folder) for ground-truth metrics; ``labels`` ``[N]`` stratify the
    subsets (default: the predicted classes); ``targets`` ``[N]`` the classes explained (default:
    the predicted ones), or what is explained and scored (``models.targets.as_target``: a ``Target``, a spec
    such as ``"classes:3,7"``, ``"output:0"`` or ``"segmentation:1"``, one callable from the output to
    ``[B]`` scores, or grad-cam's per-image targets); ``size`` the side images are resized to (default:
    the model's input size);
    ``batch_size`` images per forward pass of the metrics, ``chunk_size`` per terminal computation,
    either ``"auto"`` for the largest batch that fits on CUDA, a memory budget on the CPU (the metrics
    then run convolutional models on channels-last batches); ``precision``: fp32 (default), bf16 or
    fp16 forward passes of ``cic``, ``abl`` and the metrics (autocast; gradients stay float32);
    terminals are kept in the terminal store in ``cache_dir`` (bounded to ``cache_size`` bytes; None:
    ``$SYCAM_DSL_CACHE_SIZE`` or 2 GB; the precision is part of each entry's key) unless ``use_cache``
    is False. ``runtime``: where the forward-only passes run (``models.runtime``: ``auto``, the
    default, picks the fastest of torch, ONNX Runtime and OpenVINO that converts the model; ``torch``,
    ``onnxruntime``, ``openvino``); converted models are kept in ``cache_dir`` too. ``reshape``: how a
    target layer with token or channels-last output (vision transformers) is read as ``[N, C, h, w]``
    (``cam.reshape``: ``auto``, the default, which leaves convolutional layers as they are; ``none``;
    or a callable like pytorch-grad-cam's ``reshape_transform``)."""

    masks: torch.Tensor | str | Path | None = None
    labels: torch.Tensor | None = None
    targets: torch.Tensor | Target | Any = None
    size: int | None = None
    batch_size: int | str = DEFAULT_BATCH_SIZE
    chunk_size: int | str = DEFAULT_CHUNK_SIZE
    cache_dir: str | Path | None = None
    use_cache: bool = True
    cache_size: int | None = None
    precision: str = DEFAULT_PRECISION
    runtime: str = DEFAULT_RUNTIME
    reshape: Reshape = "auto"

    def __post_init__(self) -> None:
        # bad values are refused before any work (terminals can take minutes)
        check_batch_size(self.batch_size, "batch_size")
        check_batch_size(self.chunk_size, "chunk_size")
        check_precision(self.precision)
        check_runtime(self.runtime)
        check_reshape(self.reshape)
        object.__setattr__(self, "targets", as_target(self.targets))


@dataclass(frozen=True)
class OutputOptions:
    """What ``synthesize`` reports: ``report_metrics`` the metrics of the final tables (default: the
    search metric, which always comes first), ``report_images`` rows of the heatmap grid (0: none),
    ``progress`` bars and the search's status line on stderr, ``settings`` extra entries for
    ``result.json``'s ``settings``, ``sanity``: after the search, the model-parameter
    randomization check (``cam.sanity``) of the result and the baselines on the test split, and
    ``controls``: the control maps of the final tables (``metrics.controls``: ``"all"``, ``"none"``, a
    comma list or a sequence of names; docs/search.md#control-maps)."""

    report_metrics: Sequence[str | Metric] | None = None
    report_images: int = 4
    progress: bool = True
    settings: Mapping[str, Any] | None = None
    sanity: bool = False
    controls: str | Sequence[str] = "all"

    def __post_init__(self) -> None:
        parse_controls(self.controls)  # an unknown name is refused before any work

    @property
    def control_names(self) -> tuple[str, ...]:
        """The control maps asked for, in table order."""
        return parse_controls(self.controls)


@dataclass(frozen=True)
class RunOptions:
    """What ``synthesize`` was asked besides the model, the images, the metric and the grammar: the
    ``layer`` (None: the model's default), the ``budget`` as given (``inputs.as_budget``), one search
    or one ``per_class``, the output folder ``out`` (None: none) and whether to ``resume`` its
    checkpoint, the model's ``weights`` file, the ``device``, and the option groups."""

    layer: str | None
    budget: Budget | float | None
    per_class: bool
    out: Path | None
    resume: bool
    weights: str | None
    device: str
    data: DataOptions
    search: SearchOptions
    output: OutputOptions
    cluster: ClusterOptions
