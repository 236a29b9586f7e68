"""Reading a target layer's activations, and running the rest of the model from given activations.

``LayerAccess.forward(x)`` gives the layer's activations ``A`` ``[n, K, h, w]`` (a leaf that requires
grad when grad mode is on, so ``dz/dA`` is one ``torch.autograd.grad`` away) and the logits
``[n, C]``; a layer with token or channels-last output is read through its reshape (``cam.reshape``:
the layers after it get the leaf written back into the output's layout). ``tail_runner`` gives the
logits from (ablated) activations:

- ``fx``: the model split by ``torch.fx`` into ``head`` (input -> layer output) and ``tail`` (layer
  output -> logits), so ablations run only the layers after the target layer; values computed before
  the layer that the tail also reads (skip connections) are carried along per image;
- ``hook``: the fallback, a forward hook that replaces the layer's output (reruns the layers before it);
- ``script``: a TorchScript module's ``forward_head`` (timm's ``forward_features`` / ``forward_head``
  layout), since TorchScript modules run no Python hooks.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import fx, nn

from ..models.errors import LayerError
from ..models.layers import call_name, kind, resolve_layer, split_call
from ..models.targets import model_output
from ..util.text import first_line
from .reshape import Reshape, TokenMap, check_reshape, token_map

log = logging.getLogger(__name__)


class SplitError(LayerError):
    """The model cannot be split at the layer with ``torch.fx``."""


@contextmanager
def forward_hook(module: nn.Module, fn: Callable) -> Iterator[None]:
    """``fn`` as a forward hook on ``module`` for the ``with`` block; removed on any exit."""
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


def _logits(out: object, where: str) -> torch.Tensor:
    """The model's output tensor (a dict's ``'out'``): logits ``[N, C]``, or ``[N, C, ...]`` for targets
    of other kinds (``models.targets``; each checks its own shape)."""
    out = model_output(out)
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        what = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise LayerError(f"{where} must return logits [N, C], got {what}; wrap the model so that forward "
                         f"returns the class logits")
    return out


class LayerAccess:
    """Activations of one layer of ``model`` plus the logits, in one forward pass."""

    name: str
    model: nn.Module
    #: The reshape of the layer's output last read (None: the output is ``[n, K, h, w]`` as it is).
    tokens: TokenMap | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[n, 3, H, W]`` -> (``A`` ``[n, K, h, w]``, logits ``[n, C]``)."""
        raise NotImplementedError

    def tail(self, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The logits from the layer's activations ``acts`` (``x``: the images, for an access that needs them)."""
        raise NotImplementedError


class HookAccess(LayerAccess):
    """A forward hook on the layer; the hook gives downstream layers a copy of the output, so an
    in-place op after the layer cannot change ``A`` (nor break autograd on the leaf).

    A layer named ``PATH@N`` (``split_call``) is call ``N`` of a module that runs more than once per
    forward pass (a shared activation module, say): only that call's output is read or replaced. A
    negative ``N`` counts from the end, so the number of calls is counted once, by a forward pass
    of one image without grad, the first time it is needed. ``reshape`` (``cam.reshape``) reads a
    token or channels-last output as ``[n, K, h, w]``."""

    def __init__(self, model: nn.Module, name: str, layer: nn.Module, reshape: Reshape = "auto") -> None:
        self.model, self.name, self.layer = model, name, layer
        self.path, self.call = split_call(name)
        self.reshape = check_reshape(reshape)
        self._calls: int | None = None  # calls per forward pass, once counted
        self._split: LayerSplit | str | None = None  # the fx split, or why there is none, once tried
        self._maps: dict[tuple[int, ...], TokenMap | None] = {}  # the reshape per output shape (per image)

    def token_map(self, module: nn.Module, out: object) -> TokenMap | None:
        """The reshape of the layer's output ``out`` (resolved once per shape), kept as ``tokens``."""
        if not isinstance(out, torch.Tensor):
            return None
        shape = tuple(out.shape[1:])
        if shape not in self._maps:
            self._maps[shape] = token_map(self.reshape, self.name, module, out)
        self.tokens = self._maps[shape]
        return self.tokens

    def fx_split(self) -> LayerSplit:
        """``split_model`` of the model at the layer, traced once per access (an access lives for one
        computation, so a model changed later gets a fresh one); ``SplitError`` when it cannot be split."""
        if self._split is None:
            try:
                self._split = split_model(self.model, self.name)
            except SplitError as e:
                self._split = str(e)
        if isinstance(self._split, str):
            raise SplitError(self._split)
        return self._split

    def _count_calls(self, x: torch.Tensor) -> int:
        count = 0

        def tick(module: nn.Module, inputs: object, out: object) -> None:
            nonlocal count
            count += 1

        with torch.no_grad(), forward_hook(self.layer, tick):
            self.model(x[:1])
        return count

    def _index(self, x: torch.Tensor) -> int | None:
        """The 0-based call to read, None for "the only call"."""
        if self.call is None or self.call >= 0:
            return self.call
        if self._calls is None:
            self._calls = self._count_calls(x)
        return self._calls + self.call

    def _check_calls(self, seen: int, index: int | None) -> None:
        if seen == 0:
            raise LayerError(f"layer {self.name!r} did not run during the forward pass; choose a layer that "
                             f"the model's forward calls")
        if index is not None and not 0 <= index < seen:
            raise LayerError(f"layer {self.name!r}: {self.path!r} runs {seen} time(s) per forward pass, so "
                             f"{call_name(self.path, self.call)!r} does not exist; use {self.path}@0 .. "
                             f"{self.path}@{seen - 1} or {self.path}@last")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        grad = torch.is_grad_enabled()
        index = self._index(x)
        seen = 0

        def capture(module: nn.Module, inputs: object, out: object) -> torch.Tensor | None:
            nonlocal seen
            seen += 1
            if index is None and seen > 1:
                raise LayerError(f"layer {self.name!r} ({kind(module)}) runs more than once per forward pass "
                                 f"(a shared module); read one call with {self.path}@last or {self.path}@N "
                                 f"(0-based), or choose a layer that runs once, e.g. its parent block")
            if index is not None and seen - 1 != index:
                return None
            tokens = self.token_map(module, out)
            if tokens is None and (not isinstance(out, torch.Tensor) or out.dim() != 4):
                what = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
                raise LayerError(f"layer {self.name!r} ({kind(module)}) outputs {what}, not activations "
                                 f"[N, K, h, w]; choose a convolutional layer")
            assert isinstance(out, torch.Tensor)
            raw = out.detach()
            leaf = (raw.clone() if tokens is None else tokens.maps(raw)).requires_grad_(grad)
            captured.append(leaf)
            if not grad:
                return None
            return leaf.clone() if tokens is None else tokens.layout(leaf, raw)

        with forward_hook(self.layer, capture):
            logits = _logits(self.model(x), "the model")
        self._check_calls(seen, index)
        if self.call is not None and self.call < 0 and seen != self._calls:
            raise LayerError(f"layer {self.name!r}: {self.path!r} ran {seen} times here but {self._calls} times on "
                             f"another batch; name the call from the start ({self.path}@N) instead")
        return captured[0], logits

    def tail(self, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The logits with the layer's output replaced by ``acts`` ``[B, K, h, w]`` (``x`` ``[B, 3, H, W]``
        is run through the layers before it again)."""
        assert x is not None  # the hook reruns the whole model, so it needs the images
        index = self._index(x)
        seen = 0

        def replace(module: nn.Module, inputs: object, out: object) -> torch.Tensor | None:
            nonlocal seen
            seen += 1
            if index is not None and seen - 1 != index:
                return None
            tokens = self.token_map(module, out)
            want = getattr(out, "shape", []) if tokens is None else (acts.shape[0], *tokens.shape)
            if not isinstance(out, torch.Tensor) or tuple(want) != tuple(acts.shape):
                raise LayerError(f"layer {self.name!r} gave shape {list(want)} where the "
                                 f"replacement activations have {list(acts.shape)}")
            return acts if tokens is None else tokens.layout(acts, out)

        with forward_hook(self.layer, replace):
            logits = _logits(self.model(x), "the model")
        self._check_calls(seen, index)
        return logits


class ScriptAccess(LayerAccess):
    """A TorchScript module with ``forward_features(x) -> A`` and ``forward_head(A) -> logits``."""

    model: torch.jit.ScriptModule  # its methods are attributes that nn.Module's typing cannot see

    def __init__(self, model: torch.jit.ScriptModule) -> None:
        self.model, self.name = model, "forward_features"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts = self.model.forward_features(x)
        if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
            raise LayerError("forward_features of the TorchScript module must return activations [N, K, h, w]")
        leaf = acts.detach().clone().requires_grad_(torch.is_grad_enabled())
        return leaf, _logits(self.model.forward_head(leaf.clone()), "forward_head")

    def tail(self, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return _logits(self.model.forward_head(acts), "forward_head")


def layer_access(model: nn.Module, layer: str | None, reshape: Reshape = "auto") -> LayerAccess:
    """How to read ``layer`` (dotted path, None for the default) of ``model``, its output through
    ``reshape`` (``cam.reshape``; a TorchScript module's ``forward_features`` is read as it is)."""
    if isinstance(model, torch.jit.ScriptModule):
        if layer in (None, "forward_features") and hasattr(model, "forward_features") \
                and hasattr(model, "forward_head"):
            return ScriptAccess(model)
        raise LayerError(
            f"cannot read layer {layer or '(default)'!r} inside a TorchScript module: TorchScript runs no Python "
            f"hooks. Save a module whose forward is forward_head(forward_features(x)) (timm's layout; the target "
            f"layer is forward_features' output), or load the Python model with --model package.module:function")
    name, module = resolve_layer(model, layer)
    return HookAccess(model, name, module, reshape)


# ---------------------------------------------------------------------------------------------
# torch.fx split


class _LeafTracer(fx.Tracer):
    """Traces through everything but the target layer, which stays one ``call_module`` node."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.layer or super().is_leaf_module(m, qualname)


@dataclass
class LayerSplit:
    """``model(x) == tail(head(x))``. When the layers after the target layer also read values computed
    before it (``carried``: skip connections around the layer, or the input itself), ``head`` returns
    ``(A, *carried)`` and ``tail`` takes ``(A, *carried)``; every carried value must be a per-image
    tensor ``[n, ...]`` so that it can follow its image into the ablation rows."""

    layer: str
    head: fx.GraphModule
    tail: fx.GraphModule
    carried: tuple[str, ...]

    @property
    def needs_input(self) -> bool:
        """Whether ``head`` passes the input itself on to ``tail``."""
        return bool(self.carried) and self.carried[-1] == "<input>"

    def run_head(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` ``[n, 3, H, W]`` -> (``A`` ``[n, K, h, w]``, carried values ``[n, ...]``)."""
        out = self.head(x)
        if not self.carried:
            return out, []
        acts, *rest = out
        for name, v in zip(self.carried, rest):
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != x.shape[0]:
                what = f"shape {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
                raise SplitError(f"the layers after {self.layer!r} read {name!r} ({what}), computed before it, "
                                 f"which is not a per-image tensor [n, ...]")
        return acts, rest

    def carried_of(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The carried values of images ``x`` ``[n, 3, H, W]``. When the input is all the tail reads from
        before the layer (EfficientNet's batch size, say), that is ``x`` itself, and the head, a forward
        pass up to the layer, does not run."""
        if self.carried == ("<input>",):
            return [x]
        return self.run_head(x)[1] if self.carried else []

    def run_tail(self, acts: torch.Tensor, carried: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, C]`` from activations ``[B, K, h, w]`` and the rows' carried values."""
        return _logits(self.tail(acts, *carried), "the model")


def _closure(node: fx.Node, step: Callable[[fx.Node], Iterable[fx.Node]]) -> set[fx.Node]:
    """``node`` and every node reached from it by ``step`` (its inputs: ancestors; its users: descendants)."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(step(n))
    return seen


def _head_checks(nodes: list[fx.Node], head: set[fx.Node], layer_node: fx.Node) -> set[fx.Node]:
    """Nodes computed from ``head``'s values only whose results the tail never reads (checks such as
    torchvision ViT's ``torch._assert`` on the input size): they run in the head, so that the tail
    does not carry what they read (a ``torch.Size`` is no per-image tensor)."""
    feeds_tail = _closure(layer_node, lambda n: n.users)
    for n in reversed(nodes):  # users come after their inputs
        if n not in feeds_tail and any(u in feeds_tail for u in n.users):
            feeds_tail.add(n)
    moved: set[fx.Node] = set()
    for n in nodes:
        if n in head or n in feeds_tail or n.op in ("placeholder", "output"):
            continue
        if all(i in head or i in moved for i in n.all_input_nodes):
            moved.add(n)
    return moved


class _FirstInput(nn.Module):
    """``model`` called with its first argument only, its other parameters left at their defaults
    (timm's ``forward(x, attn_mask=None, is_causal=False)``), so that its trace has one input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _one_input(model: nn.Module) -> tuple[nn.Module, str]:
    """(what to trace, the prefix of its module paths): ``model`` itself, or ``_FirstInput(model)`` when
    its ``forward`` takes more parameters than the input, each with a default."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C++ forward: traced as it is
        return model, ""
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if len(positional) > 1 and all(p.default is not p.empty for p in positional[1:]):
        return _FirstInput(model), "model."
    return model, ""


def split_model(model: nn.Module, layer: str) -> LayerSplit:
    """Split ``model`` at the module ``layer`` with ``torch.fx`` into ``head`` (input -> layer output,
    plus carried values) and ``tail`` (layer output -> logits). ``SplitError`` when the model cannot be
    traced, takes more than one input, or calls the layer other than once (``PATH@N``: other than
    at least ``N + 1`` times, or ``-N`` times when negative; the split is at that call)."""
    path, call = split_call(layer)
    traced, prefix = _one_input(model)
    tracer = _LeafTracer(prefix + path)
    try:
        graph = tracer.trace(traced)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, ... on dynamic code
        first = first_line(e)
        raise SplitError(f"torch.fx cannot trace {kind(model)}: {first}") from None
    root = fx.GraphModule(tracer.root, graph)
    nodes = list(graph.nodes)
    hits = [n for n in nodes if n.op == "call_module" and n.target == prefix + path]
    if (len(hits) != 1) if call is None else not -len(hits) <= call < len(hits):
        why = "is not called as a module" if not hits else f"is called {len(hits)} times"
        raise SplitError(f"layer {path!r} {why} in the traced graph")
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise SplitError(f"forward takes {len(placeholders)} inputs; the split handles one")
    layer_node, x_node = hits[0 if call is None else call], placeholders[0]
    head_nodes = _closure(layer_node, lambda n: n.all_input_nodes)
    head_nodes |= _head_checks(nodes, head_nodes, layer_node)

    # Values from before the layer that the tail reads: parameters are copied into the tail, the
    # rest (skip connections, the input) are carried, the input last.
    carried: list[fx.Node] = []
    for n in nodes:
        if n in head_nodes:
            continue
        for inp in n.all_input_nodes:
            if inp in head_nodes and inp is not layer_node and inp.op != "get_attr" and inp not in carried:
                carried.append(inp)
    if x_node in carried:
        carried.remove(x_node)
        carried.append(x_node)

    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if n in head_nodes:
            env[n] = head.node_copy(n, lambda a: env[a])
    head.output((env[layer_node], *(env[c] for c in carried)) if carried else env[layer_node])

    tail = fx.Graph()
    tenv: dict[fx.Node, fx.Node] = {layer_node: tail.placeholder("acts")}
    for c in carried:
        tenv[c] = tail.placeholder(f"carried_{c.name}")

    def arg(a: fx.Node) -> fx.Node:
        if a not in tenv and a.op == "get_attr":
            tenv[a] = tail.node_copy(a, lambda b: tenv[b])
        return tenv[a]

    for n in nodes:
        if n.op == "output":
            tail.output(fx.node.map_arg(n.args[0], arg))
        elif n not in head_nodes and n.op != "placeholder":
            tenv[n] = tail.node_copy(n, arg)
    names = tuple("<input>" if c is x_node else c.name for c in carried)
    return LayerSplit(layer, fx.GraphModule(root, head), fx.GraphModule(root, tail), names)


class TailRunner:
    """Logits from (ablated) activations, by ``method``: ``fx``, ``hook`` or ``script``.

    ``carry(x)`` gives what each image's rows need besides their activations (once per image group:
    with a reshape and the fx split, the layer's output last, to write the maps back into);
    ``runner(acts, carried_rows)`` the logits ``[B, C]``."""

    def __init__(self, method: str, access: LayerAccess, split: LayerSplit | None = None,
                 tail: Callable[..., torch.Tensor] | None = None) -> None:
        self.method, self.access, self.split, self.tail = method, access, split, tail

    def with_tail(self, tail: Callable[..., torch.Tensor]) -> TailRunner:
        """This runner with the split's tail run by ``tail(acts, *carried)`` (the tail converted for an
        inference runtime, say)."""
        return TailRunner(self.method, self.access, self.split, tail)

    def carry(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.split is not None and self.access.tokens is not None:
            out, rest = self.split.run_head(x)
            return [*rest, out]
        if self.split is not None:
            return self.split.carried_of(x)
        if isinstance(self.access, HookAccess):
            return [x]  # the hook reruns the whole model from the input
        return []

    def example(self, x: torch.Tensor, acts: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The split tail's inputs for images ``x`` (the layer's output as it is, then the carried values).
        ``acts``: the layer's maps of ``x`` ``[n, K, h, w]`` when known; unless the layer's output is
        tokens (a layout the maps do not hold), they spare the head's forward pass."""
        assert self.split is not None
        if acts is not None and self.access.tokens is None:
            return [acts, *self.split.carried_of(x)]
        out, rest = self.split.run_head(x)
        return [out, *rest]

    def __call__(self, acts: torch.Tensor, carried: list[torch.Tensor]) -> torch.Tensor:
        if self.split is None:
            return self.access.tail(acts, carried[0] if carried else None)
        if self.access.tokens is not None:  # the maps back into the layer's layout
            acts, carried = self.access.tokens.layout(acts, carried[-1]), carried[:-1]
        if self.tail is not None:
            return _logits(self.tail(acts, *carried), "the model")
        return self.split.run_tail(acts, carried)


def tail_runner(access: LayerAccess, method: str = "auto") -> TailRunner:
    """The fastest way to rerun the model from ``access``'s layer: ``auto`` tries the fx split and
    falls back to the hook (with a log line); ``fx`` or ``hook`` force one."""
    if method not in ("auto", "fx", "hook"):
        raise LayerError(f"unknown ablation method {method!r}; use auto, fx or hook")
    if isinstance(access, ScriptAccess):
        return TailRunner("script", access)
    assert isinstance(access, HookAccess)
    if method in ("auto", "fx"):
        try:
            return TailRunner("fx", access, access.fx_split())
        except SplitError as e:
            if method == "fx":
                raise
            fallback_warning(access, str(e))
    return TailRunner("hook", access)


#: model -> the layers whose fallback warning was given: one line per model and layer, not one per chunk
#: or on-demand call (each reruns the split; a reason with a measured difference varies between them)
_WARNED: WeakKeyDictionary[nn.Module, set[str]] = WeakKeyDictionary()


def fallback_warning(access: LayerAccess, reason: str) -> None:
    given = _WARNED.setdefault(access.model, set())
    if access.name in given:
        return
    given.add(access.name)
    log.warning("abl: %s; falling back to a forward hook that reruns the layers before %r for every "
                "ablated channel (slower)", reason, access.name)
