"""Test-only reference code: terminals computed directly with autograd and hooks, independent of
``sycam_dsl.cam.compute``, plus small models for the metric and baseline tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sycam_dsl.evaluate import Terminals


class TinyCNN(nn.Module):
    """``[N, 3, 32, 32]`` -> logits ``[N, classes]``; ``features`` gives ``[N, 16, 8, 8]`` (after a
    ReLU), ``features[4]`` ``[N, 16, 16, 16]``. ``logit_scale`` multiplies the logits (and so the
    gradients), to test formulas in regimes where small constants such as grad-cam's eps do not dominate."""

    def __init__(self, classes: int = 5, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.logit_scale = logit_scale
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.fc(self.features(x).mean(dim=(2, 3)))


def _capture(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, classes]`` and the layer's output ``[N, K, h, w]`` (in the graph)."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    try:
        logits = model(images)
    finally:
        handle.remove()
    return logits, store["A"]


@torch.no_grad()
def _target_scores(model: nn.Module, x: torch.Tensor, c: int, softmax: bool, batch: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, x.shape[0], batch):
        z = model(x[i:i + batch])
        out.append((torch.softmax(z, dim=1) if softmax else z)[:, c])
    return torch.cat(out)


def channel_masks(acts: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """ScoreCAM masks ``minmax(upsample(A_k))``: ``[K, h, w]`` -> ``[K, H, W]``."""
    up = F.interpolate(acts[None], size=size, mode="bilinear", align_corners=align_corners)[0]
    lo = up.flatten(1).amin(1)[:, None, None]
    hi = up.flatten(1).amax(1)[:, None, None]
    return (up - lo) / (hi - lo + 1e-8)


ALL = ("grads", "pgrads", "cic", "abl", "acts", "G", "A")


def reference_terminals(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                        targets: torch.Tensor | None = None,
                        names: tuple[str, ...] = ALL) -> tuple[Terminals, torch.Tensor, torch.Tensor]:
    """The terminals ``names`` (docs/language.md#terminals) for ``images`` ``[N, 3, H, W]``: (Terminals, acts ``[N, K, h, w]``,
    targets; the predicted classes unless given)."""
    model.eval()
    logits, acts = _capture(model, layer, images)
    if targets is None:
        targets = logits.argmax(1)
    z = logits.gather(1, targets[:, None]).squeeze(1)
    (G,) = torch.autograd.grad(z.sum(), acts)
    acts, z = acts.detach(), z.detach()
    n, k = acts.shape[:2]
    size = tuple(images.shape[-2:])
    cic = torch.zeros(n, k)
    abl = torch.zeros(n, k)
    for i in range(n if {"cic", "abl"} & set(names) else 0):
        c = int(targets[i])
        masked = images[i][None] * channel_masks(acts[i], size, align_corners=False)[:, None]
        base = _target_scores(model, torch.zeros_like(images[i:i + 1]), c, True)
        if "cic" in names:
            cic[i] = _target_scores(model, masked, c, True) - base
        if "abl" in names:
            abl[i] = (z[i] - ablated_logits(model, layer, images[i], c)) / z[i]
    values = {"grads": G.mean(dim=(2, 3)), "pgrads": G.relu().mean(dim=(2, 3)), "cic": cic, "abl": abl,
              "acts": acts.mean(dim=(2, 3)), "G": G, "A": acts}
    return Terminals({n: values[n] for n in names}), acts, targets


@torch.no_grad()
def ablated_logits(model: nn.Module, layer: nn.Module, image: torch.Tensor, c: int, batch: int = 64) -> torch.Tensor:
    """``z_c^(k)`` for each channel ``k`` of ``layer`` set to zero: ``[K]``."""
    k = _capture(model, layer, image[None])[1].shape[1]
    first = [0]

    def zero_channel(module, inputs, output):
        out = output.clone()
        rows = torch.arange(out.shape[0])
        out[rows, rows + first[0]] = 0   # copy j of this batch loses channel first + j
        return out

    handle = layer.register_forward_hook(zero_channel)
    try:
        out = []
        for first[0] in range(0, k, batch):
            copies = image[None].expand(min(batch, k - first[0]), -1, -1, -1)
            out.append(model(copies)[:, c])
        return torch.cat(out)
    finally:
        handle.remove()


# ----- test only: the terminal grad-cam's ScoreCAM needs and sycam-dsl does not have -------------
@torch.no_grad()
def gradcam_scorecam_weights(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                             targets: torch.Tensor) -> torch.Tensor:
    """grad-cam's ScoreCAM weights: ``softmax_k z_c(x * M_k)`` over channels, with masks upsampled
    by ``UpsamplingBilinear2d`` (``align_corners=True``). Not a terminal of docs/language.md#terminals: ``cic`` is
    ``y_c(x * M_k) - y_c(0)`` (softmax over classes, baseline subtracted). ``[N, K]``."""
    _, acts = _capture(model, layer, images)
    size = tuple(images.shape[-2:])
    out = []
    for i in range(images.shape[0]):
        masked = images[i][None] * channel_masks(acts[i], size, align_corners=True)[:, None]
        out.append(torch.softmax(_target_scores(model, masked, int(targets[i]), False), dim=0))
    return torch.stack(out)
