"""The gradient pass (``lang.terminals.GRADIENT``): one forward pass per image batch, and a backward
pass when a terminal that needs it is asked for, gives the activations ``A``, the logits, the targets
and the gradient terminals ``grads``, ``pgrads`` and ``G``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..lang.terminals import needs_backward
from ..models.batching import AUTO, BatchSize, auto_batch_size
from ..models.errors import LayerError
from ..models.targets import Target
from ..util.modes import eval_mode
from ..util.progress import progress as progress_bar
from .errors import TerminalError
from .layer_split import LayerAccess


def recorded_gradients(names: Sequence[str]) -> set[str]:
    """The gradient terminals a gradient pass for ``names`` records: ``grads`` and ``pgrads`` whenever it
    runs backward (they cost nothing more), ``G`` (``[K, h, w]`` per image) only when asked for."""
    return ({"grads", "pgrads"} | ({"G"} & set(names))) if needs_backward(names) else set()


def gradient_chunk(access: LayerAccess, x: torch.Tensor, names: Sequence[str]) -> int:
    """``auto_batch_size`` of the gradient pass (a forward and, for gradient terminals, a backward pass
    in float32) of ``access``'s model on images ``x`` ``[N, 3, H, W]``: at most ``N``; the model in eval
    mode (``prepare_model``'s)."""
    need_grad = needs_backward(names)

    def run(batch: torch.Tensor) -> None:
        with torch.set_grad_enabled(need_grad):
            acts, logits = access.forward(batch)
            if need_grad:
                torch.autograd.grad(logits.flatten(1)[:, 0].sum(), acts, allow_unused=True)

    with eval_mode(access.model):
        return auto_batch_size(run, x[:1], x.device, cap=x.shape[0], module=access.model, backward=need_grad,
                               what="terminals: gradients")


def _target_score(logits: torch.Tensor, targets: torch.Tensor | None, target: Target | None,
                  start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the summed score the gradients are of, each image's target ``[B]``) of ``logits`` ``[B, ...]`` of
    the images from ``start``: the class logits ``z_c`` (``targets`` ``[N]`` of all images, None: the
    predicted classes), or ``target``'s raw scores (its state from these outputs; the targets then 0)."""
    if target is not None:
        bound, ids = target.select(range(start, start + logits.shape[0])).bind(logits.detach())
        return bound.raw(logits, ids).sum(), torch.zeros_like(ids)
    n_classes = logits.shape[1]
    t = logits.argmax(dim=1) if targets is None else targets[start:start + logits.shape[0]]
    # every image's target is checked with the first batch: one wait for the device, not one a batch
    if targets is not None and start == 0 and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
        bad = int(((targets < 0) | (targets >= n_classes)).nonzero()[0])
        raise TerminalError(f"target class {int(targets[bad])} of image {bad} is out of range: the "
                            f"model has {n_classes} classes")
    return logits.gather(1, t[:, None]).sum(), t


def gradient_pass(access: LayerAccess, x: torch.Tensor, targets: torch.Tensor | None, names: list[str],
                  chunk: BatchSize, show: bool, sizes: dict[str, int] | None = None,
                  target: Target | None = None) -> dict[str, torch.Tensor]:
    """``A``, logits, targets and the gradient terminals, ``chunk`` images per forward + backward
    (``"auto"``: ``auto_batch_size`` of that pass, always in float32; recorded in ``sizes``); the
    gradients are of ``target``'s raw score (``models.targets``; None: the class logit of ``targets``)."""
    need_grad = needs_backward(names)
    if chunk == AUTO:
        chunk = gradient_chunk(access, x, names)
    assert isinstance(chunk, int)
    if sizes is not None:
        sizes["gradients"] = chunk
    parts: dict[str, list[torch.Tensor]] = {}
    bar = progress_bar(x.shape[0], "terminals: gradients", show)
    try:
        for s in range(0, x.shape[0], chunk):
            with torch.set_grad_enabled(need_grad):
                acts, logits = access.forward(x[s:s + chunk])
                z, t = _target_score(logits, targets, target, s)
                out = {"A": acts.detach(), "logits": logits.detach(), "targets": t}
                if need_grad:
                    (g,) = torch.autograd.grad(z, acts, allow_unused=True)
                    if g is None:
                        raise LayerError(f"the logits do not depend on layer {access.name!r}; choose a layer "
                                         f"on the path to the output")
                    out["grads"], out["pgrads"] = g.mean(dim=(2, 3)), torch.relu(g).mean(dim=(2, 3))
                    if "G" in names:  # [N, K, h, w] kept only when asked for
                        out["G"] = g
            for key, v in out.items():
                parts.setdefault(key, []).append(v)
            bar.update(acts.shape[0])
    finally:
        bar.close()
    return {k: torch.cat(v) for k, v in parts.items()}

