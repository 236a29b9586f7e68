"""The explainer file's target (``deploy.explainer``; docs/cam-engine.md#targets): the scores of
``models.targets``' kinds as a TorchScript module, so that the file computes what the engine does
for the target the method was searched with. A Python callable cannot go into the file."""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from ..models.errors import TargetError
from ..models.targets import ClassesTarget, OutputTarget, SegmentationTarget, Target

#: ``TargetScore.kind``: one class logit per image (the default), a sum of outputs, a segmentation class.
CLASS, OUTPUTS, SEGMENTATION = 0, 1, 2


class TargetScore(nn.Module):
    """Scores of the outputs ``[B, ...]`` of rows whose images (or classes, for the class kind) are ``t``
    ``[B]``: ``raw`` (the gradients, ``cic``'s ``mlogits``, ``abl``) and ``metric`` (``cic``)."""

    def __init__(self, kind: int = CLASS, indices: list[int] | None = None, name: str = "class") -> None:
        super().__init__()
        self.kind, self.name = kind, name
        self.indices = torch.tensor(indices or [], dtype=torch.long)

    def prepare(self, logits: Tensor) -> Tensor:
        """Per-image state of the unperturbed outputs: a segmentation class's masks ``[N, H, W]``, else empty."""
        if self.kind == 2:  # SEGMENTATION (TorchScript reads no module constants)
            return (logits.argmax(dim=1) == int(self.indices[0])).to(logits.dtype)
        return logits.new_zeros([0])

    def raw(self, out: Tensor, t: Tensor, state: Tensor) -> Tensor:
        if self.kind == 0:  # CLASS
            return out.gather(1, t[:, None])[:, 0]
        if self.kind == 1:  # OUTPUTS
            return out.index_select(1, self.indices.to(out.device)).sum(dim=1)
        return (out[:, int(self.indices[0])] * state.index_select(0, t)).sum(dim=(1, 2))

    def metric(self, out: Tensor, t: Tensor, state: Tensor) -> Tensor:
        if self.kind == 0:
            return torch.softmax(out, dim=1).gather(1, t[:, None])[:, 0]
        return self.raw(out, t, state)


def target_score(target: Target | None) -> TargetScore:
    """The explainer's ``TargetScore`` of ``target`` (None: the class); ``TargetError`` for a callable."""
    if target is None or target.is_class:
        return TargetScore()
    if isinstance(target, ClassesTarget):
        return TargetScore(OUTPUTS, list(target.classes), target.name)
    if isinstance(target, OutputTarget):
        return TargetScore(OUTPUTS, [target.index], target.name)
    if isinstance(target, SegmentationTarget):
        return TargetScore(SEGMENTATION, [target.category], target.name)
    raise TargetError(f"target {target.name} is a Python callable, which an explainer file cannot hold; export "
                      f"for a class, classes:, output: or segmentation: target (--target)")


def tensor_output(tail: fx.GraphModule) -> fx.GraphModule:
    """``tail`` returning its dict output's ``'out'`` (torchvision's segmentation models), in place."""
    out = next(n for n in tail.graph.nodes if n.op == "output")
    value = out.args[0]
    if isinstance(value, dict) and "out" in value:
        out.args = (value["out"],)
        tail.graph.lint()
        tail.recompile()
    return tail
