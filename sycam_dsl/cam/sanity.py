"""Model-parameter randomization sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"; Quantus's MPRT): re-initialize the model's layers from the target layer to the output and
compare each method's heatmaps before and after.

A method whose heatmaps barely change when the learned parameters are destroyed explains the input
(edges, the activations' layout), not the model. The check shows *dependence on learned
parameters*; it does not show faithfulness (a method can change a lot and still be wrong), and a
low similarity is necessary, not sufficient, for a good explanation.

Choices:

- **Which modules**: every module (the root excepted) with parameters of its own that *starts* at or
  after the target layer in a forward pass of one image (forward pre-hooks record the call order,
  so it follows ``forward``, not the order modules were declared); a module that runs more than once
  counts if any call does. ``start`` names an earlier module to randomize from (the bundled model's
  target layer ``features.14`` is followed only by the linear head).
- **How**: on a deep copy, ``reset_parameters()`` where the module has it (seeded through the global
  RNG, which is restored afterwards), else each own parameter is replaced by seeded normal noise
  with the parameter's standard deviation. BatchNorm's ``reset_parameters`` also resets its running
  statistics (mean 0, variance 1), as Quantus does; nothing of it is kept.
- **Targets**: the classes the *original* model predicts (or those given) are explained by both.
- **Similarities** per image, on the heatmaps ``H`` ``[N, H, W]`` (upsampled and min-max normalized
  as everywhere, ``template.heatmaps``): Spearman's rank correlation (average ranks for ties; NaN
  when either map is constant) and SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5,
  ``C1 = 0.01^2``, ``C2 = 0.03^2`` for ``[0, 1]`` maps, mean over the valid region).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import evaluate
from ..lang.ast import Node
from ..models.devices import resolve_device
from ..models.layers import resolve_layer, split_call
from ..models.loaded import LoadedModel
from ..models.runtime import RuntimeSpec
from ..template.heatmaps import heatmaps
from ..util.modes import eval_mode
from .compute import DEFAULT_CHUNK_SIZE, compute_terminals
from .errors import TerminalError
from .reshape import Reshape

#: SSIM constants of Wang et al. 2004 for data range 1.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


class SanityError(TerminalError):
    """A randomization check that cannot run (a TorchScript model, maps smaller than the SSIM window)."""


# -- similarities -------------------------------------------------------------------------------------

def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row of ``x`` ``[N, D]``, ties sharing their average rank: ``[N, D]`` float64."""
    x = x.double()
    s = x.sort(dim=1).values
    # values strictly below and at most each value; tied values get the mean of positions less+1..leq
    less = torch.searchsorted(s, x, right=False)
    leq = torch.searchsorted(s, x, right=True)
    return (less + leq + 1).double() / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each pair of maps ``a``, ``b`` ``[N, ...]`` (flattened per
    image): ``[N]`` float64, NaN where either map is constant."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    den = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(dim=1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def _gaussian(window: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = torch.arange(window, dtype=dtype, device=device) - (window - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each pair of maps ``a``, ``b`` ``[N, H, W]``: ``[N]`` float64.

    Local statistics come from a separable Gaussian window (``window`` taps, ``sigma``) over the
    valid region only (no padding), as in Wang et al.'s reference code."""
    if a.shape != b.shape or a.dim() != 3:
        raise SanityError(f"ssim needs two [N, H, W] tensors of one shape, got {list(a.shape)} and {list(b.shape)}")
    if min(a.shape[-2:]) < window:
        raise SanityError(f"ssim needs maps of at least {window}x{window}, got {a.shape[-2]}x{a.shape[-1]}")
    x, y = a.double()[:, None], b.double()[:, None]
    g = _gaussian(window, sigma, x.dtype, x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


# -- randomization ------------------------------------------------------------------------------------

def _module_of(model: nn.Module | LoadedModel) -> nn.Module:
    module = model.module if isinstance(model, LoadedModel) else model
    if isinstance(module, torch.jit.ScriptModule):
        raise SanityError("the randomization check needs a Python model: TorchScript runs no hooks to find the "
                          "layers after the target layer")
    return module


def _call_order(module: nn.Module, image: torch.Tensor) -> dict[str, list[int]]:
    """Module name -> the positions of its calls among all module calls of one forward pass."""
    calls: dict[str, list[int]] = {}
    counter = [0]

    def record(name: str):
        def hook(_m: nn.Module, _inputs: object) -> None:
            calls.setdefault(name, []).append(counter[0])
            counter[0] += 1
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in module.named_modules() if n]
    try:
        with torch.no_grad(), eval_mode(module):
            module(image)
    finally:
        for h in handles:
            h.remove()
    return calls


def _position(module: nn.Module, calls: dict[str, list[int]], layer: str | None) -> int:
    """Where the call of ``layer`` (``PATH@N`` allowed) starts in the forward pass."""
    name, _ = resolve_layer(module, layer)
    path, call = split_call(name)
    seen = calls.get(path)
    if not seen:
        raise SanityError(f"layer {name!r} does not run in the model's forward pass")
    try:
        return seen[call if call is not None else 0]
    except IndexError:
        raise SanityError(f"layer {name!r}: the module runs {len(seen)} time(s) per forward pass") from None


def modules_after(model: nn.Module | LoadedModel, layer: str | None, image: torch.Tensor) -> list[str]:
    """Names of the modules with parameters of their own that run at or after ``layer`` (None: the
    model's default) in a forward pass of ``image`` ``[1, 3, H, W]``, in call order (first call)."""
    module = _module_of(model)
    if isinstance(model, LoadedModel) and layer is None:
        layer = model.target_layer
    calls = _call_order(module, image.to(_device_of(module)))
    at = _position(module, calls, layer)
    owners = {n for n, m in module.named_modules() if n and next(m.parameters(recurse=False), None) is not None}
    picked = [n for n in owners if n in calls and max(calls[n]) >= at]
    return sorted(picked, key=lambda n: calls[n][0])


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def randomized_copy(model: nn.Module | LoadedModel, names: Sequence[str], seed: int = 0) -> nn.Module:
    """A deep copy of the model with the modules ``names`` re-initialized (``reset_parameters()``,
    else normal noise with each parameter's standard deviation), reproducibly for ``seed`` on one
    device type; the caller's RNG state is left as it was."""
    copied = copy.deepcopy(_module_of(model))
    by_name = dict(copied.named_modules())
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SanityError(f"no module {unknown[0]!r} in the model")
    cuda = sorted({p.device.index or 0 for p in copied.parameters() if p.device.type == "cuda"})
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for n in names:
            m = by_name[n]
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            for p in m.parameters(recurse=False):
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * (std if std > 0 else 0.01)
                p.copy_(noise.to(device=p.device, dtype=p.dtype))
    return copied


# -- the check ----------------------------------------------------------------------------------------

@dataclass
class Similarity:
    """One method's per-image similarities ``[N]`` between original and randomized heatmaps."""

    spearman: torch.Tensor
    ssim: torch.Tensor

    @property
    def mean_spearman(self) -> float:
        """Mean over the images where it is defined (NaN if none)."""
        return float(self.spearman.nanmean())

    @property
    def mean_ssim(self) -> float:
        return float(self.ssim.mean())

    @property
    def undefined(self) -> int:
        """Images whose Spearman is undefined (a constant heatmap)."""
        return int(self.spearman.isnan().sum())


@dataclass
class SanityReport:
    """``methods``: name -> ``Similarity``; ``randomized``: the re-initialized modules, in call order;
    ``targets`` ``[N]``: the classes explained."""

    methods: dict[str, Similarity]
    randomized: list[str]
    targets: torch.Tensor
    layer: str = ""
    seed: int = 0
    heatmaps: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)


def method_heatmaps(methods: dict[str, Node], model: nn.Module, layer: str | None, images: torch.Tensor,
                     targets: torch.Tensor | None, names: list[str], device: str | torch.device, chunk_size: int | str,
                     progress: bool, runtime: RuntimeSpec | None,
                     reshape: Reshape = "auto") -> tuple[dict[str, torch.Tensor], torch.Tensor, str]:
    """name -> heatmaps ``[N, H, W]`` on the CPU, the targets ``[N]`` and the layer's name."""
    terms, info = compute_terminals(model, layer, images, targets, names, device=device, chunk_size=chunk_size,
                                    progress=progress, runtime=runtime, reshape=reshape)
    size = tuple(images.shape[-2:])
    out = {n: heatmaps(evaluate(node, terms), info.acts, node.type, size).cpu() for n, node in methods.items()}
    return out, info.targets.cpu(), info.layer


def check_sanity_size(size: tuple[int, ...]) -> None:
    """Refuse images ``size`` (H, W) smaller than the SSIM window the check compares heatmaps with."""
    if min(size) < SSIM_WINDOW:
        raise SanityError(f"the sanity check compares heatmaps with an {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window, but "
                          f"the images are {size[0]}x{size[1]}; use images of at least {SSIM_WINDOW} px")


def randomization_check(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                        targets: torch.Tensor | None, methods: dict[str, Node], seed: int = 0,
                        start: str | None = None, modules: Sequence[str] | None = None,
                        device: str | torch.device = "cpu", chunk_size: int | str = DEFAULT_CHUNK_SIZE,
                        progress: bool = False, keep_heatmaps: bool = False,
                        runtime: RuntimeSpec | None = None, reshape: Reshape = "auto") -> SanityReport:
    """Compare each method's heatmaps on ``images`` ``[N, 3, H, W]`` under the model and under a copy
    whose modules from ``start`` (default: the target ``layer``) to the output are re-initialized
    with ``seed``; ``modules`` names the modules to re-initialize instead (``[]``: none, a control
    whose similarities are 1). ``targets`` ``[N]`` or None (the original model's predictions) are
    explained under both models. Only the terminals the methods read are computed; ``runtime``: where
    their forward-only passes run (``cam.compute.compute_terminals``), for both models; ``reshape``: how
    the layer's output is read (``cam.reshape``)."""
    if not methods:
        raise SanityError("no methods to check")
    module = _module_of(model)
    if isinstance(model, LoadedModel) and layer is None:
        layer = model.target_layer
    check_sanity_size(tuple(images.shape[-2:]))  # before any terminal work
    dev = resolve_device(device)
    names = sorted({t for node in methods.values() for t in node.terminals()})
    if modules is None:
        with torch.no_grad():
            module.to(dev)
        modules = modules_after(module, start if start is not None else layer, images[:1])
    before, t, layer_name = method_heatmaps(methods, module, layer, images, targets, names, dev, chunk_size,
                                             progress, runtime, reshape)
    randomized = randomized_copy(module, modules, seed)
    after, _, _ = method_heatmaps(methods, randomized, layer, images, t, names, dev, chunk_size, progress, runtime,
                                   reshape)
    report = SanityReport({n: Similarity(spearman(before[n], after[n]), ssim(before[n], after[n]))
                           for n in methods}, list(modules), t, layer_name, seed)
    if keep_heatmaps:
        report.heatmaps = {n: (before[n], after[n]) for n in methods}
    return report


# -- the check of a result, as sanity and synth --sanity run it ----------------------------------------

#: The method every other is judged against: it passes Adebayo et al.'s check.
REFERENCE = "GradCAM"
#: A method is flagged when its mean Spearman exceeds the reference's by more than this. Both are
#: compared on the *same* randomized model, because the figures themselves move with the seed
#: (bundled model, 20 images, head randomized: GradCAM from -0.24 to 0.43 over seeds 0-4,
#: GradCAM++ 0.94-0.95). A heuristic threshold: rerun with other seeds before drawing conclusions.
SPEARMAN_MARGIN = 0.2
DEFAULT_SANITY_IMAGES = 20


def spread(total: int, n: int) -> torch.Tensor:
    """At most ``n`` positions ``[m]`` spread evenly over ``range(total)`` (first and last included)."""
    return torch.linspace(0, total - 1, min(n, total)).round().long().unique()


def check_result(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                 methods: dict[str, Node], expressions: dict[str, str], subject: str, seed: int = 0,
                 start: str | None = None, device: str | torch.device = "cpu",
                 chunk_size: int | str = DEFAULT_CHUNK_SIZE, progress: bool = False,
                 runtime: RuntimeSpec | None = None, reshape: Reshape = "auto") -> dict:
    """``randomization_check`` of ``methods`` (the result ``subject`` and the baselines) on ``images``
    ``[N, 3, H, W]``, as plain data for ``result.json`` and ``--json``: per method the mean Spearman
    and SSIM (per image too), and whether ``subject`` is flagged as markedly less sensitive than
    ``REFERENCE``. Raises ``SanityError`` when nothing runs at or after the layer (or ``start``)."""
    report = randomization_check(model, layer, images, None, methods, seed=seed, start=start, device=device,
                                 chunk_size=chunk_size, progress=progress, runtime=runtime, reshape=reshape)
    if not report.randomized:
        raise SanityError(f"no module with parameters runs at or after {start or report.layer!r}; nothing to "
                          f"randomize")
    return {"subject": subject, "layer": report.layer, "seed": seed, "images": int(images.shape[0]),
            "randomized": report.randomized, "targets": report.targets.tolist(),
            **similarity_rows(report.methods, expressions, subject)}


def similarity_rows(methods: dict[str, Similarity], expressions: dict[str, str], subject: str) -> dict:
    """The per-method figures as plain data, and whether ``subject`` is flagged: its mean Spearman
    exceeds ``REFERENCE``'s by more than ``SPEARMAN_MARGIN``."""
    # NaN (undefined) on either side compares False: not flagged
    ours = methods[subject].mean_spearman
    ref = methods[REFERENCE].mean_spearman if REFERENCE in methods else float("nan")
    return {"reference": REFERENCE, "spearman_margin": SPEARMAN_MARGIN, "flagged": bool(ours > ref + SPEARMAN_MARGIN),
            "methods": [{"name": n, "expression": expressions[n], "mean_spearman": _number(sim.mean_spearman),
                         "mean_ssim": sim.mean_ssim, "undefined": sim.undefined,
                         "spearman": [_number(v) for v in sim.spearman.tolist()], "ssim": sim.ssim.tolist()}
                        for n, sim in methods.items()]}


def _number(v: float) -> float | None:
    """None for NaN (an undefined Spearman), which JSON cannot hold."""
    return None if math.isnan(v) else v


def _fmt(v: float | None, width: int) -> str:
    return f"{v:{width}.3f}" if v is not None else f"{'n/a':>{width}}"


def check_lines(check: dict) -> list[str]:
    """``check_result``'s figures as a table: a heading, then a line per method."""
    return [f"model-parameter randomization: {len(check['randomized'])} module(s) re-initialized "
            f"({check['randomized'][0]} ... {check['randomized'][-1]}), seed {check['seed']}, {check['images']} "
            f"images, layer {check['layer']}", *table_lines(check["methods"])]


def table_lines(methods: list[dict]) -> list[str]:
    """A header and a line per method (``similarity_rows``'s ``methods``): mean Spearman, mean SSIM, expression."""
    width = max(len(m["name"]) for m in methods)
    return [f"{'method':<{width}}  {'Spearman':>8}  {'SSIM':>6}  expression",
            *(f"{m['name']:<{width}}  {_fmt(m['mean_spearman'], 8)}  {_fmt(m['mean_ssim'], 6)}  {m['expression']}"
              for m in methods)]


def check_warnings(check: dict, what: str = "the model's parameters") -> list[str]:
    """One line per method whose Spearman is undefined on some images, and one when the subject is
    flagged as markedly less sensitive to ``what`` (what the check randomized)."""
    lines = [f"{m['name']}: Spearman undefined on {m['undefined']} of {check['images']} images (a constant heatmap), "
             f"left out of its mean" for m in check["methods"] if m["undefined"]]
    if check["flagged"]:
        by = {m["name"]: m for m in check["methods"]}
        ours, ref = by[check["subject"]], by[check["reference"]]
        lines.append(f"{ours['expression']} is markedly less sensitive to {what} than "
                     f"{check['reference']} (Spearman {_fmt(ours['mean_spearman'], 0)} vs "
                     f"{_fmt(ref['mean_spearman'], 0)}, "
                     f"margin {check['spearman_margin']}): its heatmaps may follow the input more than the model")
    return lines
