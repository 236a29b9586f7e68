"""What a search scores candidates on: the terminals, activations and metric inputs of N images.

A ``Problem`` is plain data built once (terminals are the expensive part, and kept in the terminal store) from
the ``Data`` (images, labels, masks) it was computed on; ``subset`` gives the problem of some of the
images (a level block, or one class's images).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch

from ..evaluate import Terminals
from ..metrics.registry import MetricInputs
from ..util.digests import update_digest


@dataclass
class Data:
    """Images ready for the model: ``images`` ``[N, 3, H, W]`` normalized, optional ``labels`` ``[N]``,
    ``masks`` ``[N, H, W]`` bool, ``files`` names for reports, ``classes`` label names."""

    images: torch.Tensor
    files: list[str]
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    classes: list[str] | None = None
    source: str = "<tensor>"


@dataclass(frozen=True)
class Problem:
    """``terminals`` of ``N`` images (``[N, K]`` / ``[N, K, h, w]``), their activations ``acts``
    ``[N, K, h, w]``, and ``inputs`` (images ``[N, 3, H, W]``, targets ``[N]``, masks, model) for
    the metrics. ``classes`` ``[N]`` (labels when known, else the targets) stratify the subsets;
    ``index`` ``[N]`` maps each image back to the full image set. ``terminal_key`` names where the
    terminals come from (model, layer, names: ``build_problem`` sets it), so that the digest need
    not read terminals that are computed on demand; None: the digest hashes their values.
    ``terminal_batch_sizes``: the rows per forward pass the terminals were computed with
    (``TerminalInfo.batch_sizes``), for the record."""

    terminals: Terminals
    acts: torch.Tensor
    inputs: MetricInputs
    classes: torch.Tensor
    index: torch.Tensor
    terminal_key: str | None = None
    terminal_batch_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.acts.shape[0])

    @property
    def targets(self) -> torch.Tensor:
        """The class each image is explained for, ``[N]``."""
        return self.inputs.targets

    def subset(self, index: torch.Tensor) -> Problem:
        """The problem of the images at ``index`` (``[n]`` long, positions in this problem)."""
        index = index.detach().cpu().long()
        return replace(self, terminals=self.terminals.subset(index),
                       acts=self.acts.index_select(0, index.to(self.acts.device)),
                       inputs=self.inputs.subset(index), classes=self.classes[index], index=self.index[index])

    def digest(self) -> str:
        """A hash of every tensor the scores depend on (a checkpoint belongs to one problem)."""
        h = hashlib.sha256()
        if self.terminal_key is not None:  # the values follow from it and the images
            h.update(f"terminals {self.terminal_key} {','.join(sorted(self.terminals))}".encode())
        else:
            for name in sorted(self.terminals):
                h.update(name.encode())
                update_digest(h, self.terminals[name])
        for t in (self.acts, self.inputs.images, self.inputs.targets, self.index):
            update_digest(h, t)
        if self.inputs.masks is not None:
            update_digest(h, self.inputs.masks)
        return h.hexdigest()[:32]
