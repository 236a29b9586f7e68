"""The operator table: one entry per operator gives its signature, its implementation and its
sympy translation. Adding an operator is adding one ``Operator`` to ``OPERATORS``.

Implementations are TorchScript source templates (``{0}``, ``{1}`` are the operands). The same
template is compiled once into a Python function for the enumerator and pasted into the generated
TorchScript by the backend, so the two cannot disagree. Templates call helpers written in
``HELPERS_SRC`` as methods of ``self`` (the generated TorchScript module, or a Python stand-in).

Semantics (docs/language.md#operators), per image (reductions never cross images):

* ``+ - *``: element-wise; a Vec broadcasts over a Map's ``h, w``; constants broadcast everywhere.
* ``/``: protected: a divisor with ``|b| < 1e-8`` is replaced by ``1e-8`` with the sign of ``b``
  (0 counts as positive), so ``x / 0 = x * 1e8`` and nothing is ever NaN or Inf by division.
* ``sqrt e`` is ``sqrt(|e|)``; ``sq e`` is ``e * e``; ``(pow e n)`` for an integer ``n >= 1``.
* ``(topk v k)``: keeps the ``k`` largest entries of each image's Vec (over channels), zero elsewhere.
* ``gap``: Map -> Vec, mean over ``h, w``; ``gsum``: Map -> Vec, sum over ``h, w`` (GradCAM++'s
  ``sum_ij A_k``, which depends on the layer's size).
* ``norm``: ``e / max|e|`` over each image's channels (and positions for a Map), protected as ``/``.
* ``softmax``: softmax of each image's Vec over its channels (grad-cam's ScoreCAM normalization).
* ``bcast``: Vec -> Map, the same weight at every position (so a Map grammar can hold Vec weights,
  such as XGradCAM's). Its value is ``[..., N, K, 1, 1]``, broadcastable to the Map's ``h, w``.

A Map's value is defined up to broadcasting over positions: ``[..., 1, 1]`` and its copy at every
position are the same value, and every operator but ``gsum`` gives the same result on both.
Hence the one rule of ``gsum``: **its operand must vary over positions**, that is, reach a Map
terminal (``A``, ``G``) through Map-typed nodes only (``ast.varies_over_positions``). A
position-free Map, built from ``bcast``, Vec terminals and constants (``(gsum (bcast grads))``,
``(gsum (bcast (gap A)))``), would sum to the layer's size times its value, so it is not a term of
the language: the parser and grammar files reject it and the enumerator never derives it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sympy

from .types import Type, broadcast

EPS = 1e-8

HELPERS_SRC = '''
def _protect(self, b: Tensor) -> Tensor:
    # sign(b) * max(|b|, 1e-8), where -0.0 counts as positive zero; a comparison, not copysign(.., b + 0.0),
    # because TorchScript's peephole pass folds b + 0.0 into b (torch 2.14), which flips the sign of -0.0
    m = b.abs().clamp_min(1e-8)
    return torch.where(b < 0, -m, m)

def _pdiv(self, a: Tensor, b: Tensor) -> Tensor:
    return a / self._protect(b)

def _topk(self, v: Tensor, k: int) -> Tensor:
    k = min(k, v.shape[-1])
    vals, idx = torch.topk(v, k, dim=-1)
    return torch.zeros_like(v).scatter(-1, idx, vals)

def _norm_vec(self, v: Tensor) -> Tensor:
    return v / self._protect(v.abs().amax(dim=-1, keepdim=True))

def _norm_map(self, m: Tensor) -> Tensor:
    return m / self._protect(m.abs().amax(dim=[-3, -2, -1], keepdim=True))
'''

# Operators that are not plain arithmetic are sympy *uninterpreted* functions: no rewrite rule is
# known for them, so canonicalization identifies two applications only when their arguments agree.
# Each ``Operator.sympy`` builds them through its first argument ``f(name, *args)``, so a caller can
# choose how an application is represented (see ``canonicalize``).
_FUNCTIONS: dict[str, sympy.FunctionClass] = {}


def uninterpreted(name: str, *args: sympy.Expr) -> sympy.Expr:
    """The plain sympy application ``name(*args)`` of an uninterpreted function."""
    fn = _FUNCTIONS.get(name)
    if fn is None:
        fn = _FUNCTIONS[name] = sympy.Function(name)
    return fn(*args)

_ANY = (Type.INT, Type.REAL, Type.VEC, Type.MAP)
_TENSORS = (Type.VEC, Type.MAP)


def _elementwise(*args: Type) -> Type | None:
    return broadcast(*args) if all(a in _ANY for a in args) else None


def _same_nonint(a: Type) -> Type | None:
    return Type.REAL if a.is_scalar else a


@dataclass(frozen=True)
class Operator:
    """One operator of the language.

    ``result`` maps operand types to the result type, or ``None`` when they do not fit;
    ``expects`` says in words what it accepts (for error messages). ``int_params`` are operand
    positions that take an ``Int`` literal (a Python ``int`` at run time). ``elementwise``
    operands of lower rank are lifted to the result's rank before the template runs.
    """

    name: str
    arity: int
    result: Callable[..., Type | None]
    expects: str
    ts: str | Mapping[Type, str]
    sympy: Callable[..., sympy.Expr]
    int_params: tuple[int, ...] = ()
    elementwise: bool = False
    commutative: bool = False
    doc: str = ""

    def template(self, result: Type) -> str:
        return self.ts if isinstance(self.ts, str) else self.ts[result]


def _topk_type(v: Type, k: Type) -> Type | None:
    return Type.VEC if v == Type.VEC and k == Type.INT else None


def _pow_type(e: Type, n: Type) -> Type | None:
    return _same_nonint(e) if n == Type.INT else None


def _norm_type(e: Type) -> Type | None:
    return e if e in _TENSORS else None


def _gap_type(e: Type) -> Type | None:
    return Type.VEC if e == Type.MAP else None


def _vec_type(e: Type) -> Type | None:
    return Type.VEC if e == Type.VEC else None


def _bcast_type(e: Type) -> Type | None:
    return Type.MAP if e == Type.VEC else None


OPERATORS: dict[str, Operator] = {op.name: op for op in [
    Operator("+", 2, _elementwise, "two operands of any type", "{0} + {1}",
             lambda f, a, b: a + b, elementwise=True, commutative=True, doc="sum"),
    Operator("-", 2, _elementwise, "two operands of any type", "{0} - {1}",
             lambda f, a, b: a - b, elementwise=True, doc="difference"),
    Operator("*", 2, _elementwise, "two operands of any type", "{0} * {1}",
             lambda f, a, b: a * b, elementwise=True, commutative=True, doc="product"),
    Operator("/", 2, _elementwise, "two operands of any type", "self._pdiv({0}, {1})",
             lambda f, a, b: a * f("inv", b), elementwise=True, doc="protected division"),
    Operator("neg", 1, _same_nonint, "one operand", "torch.neg({0})",
             lambda f, a: -a, elementwise=True, doc="negation"),
    Operator("relu", 1, _same_nonint, "one operand", "torch.relu({0})",
             lambda f, a: f("relu", a), elementwise=True, doc="max(e, 0)"),
    Operator("abs", 1, _same_nonint, "one operand", "torch.abs({0})",
             lambda f, a: f("abs", a), elementwise=True, doc="|e|"),
    Operator("sq", 1, _same_nonint, "one operand", "{0} * {0}",
             lambda f, a: a ** 2, elementwise=True, doc="e * e"),
    Operator("sqrt", 1, _same_nonint, "one operand", "torch.sqrt(torch.abs({0}))",
             lambda f, a: f("sqrt", a), elementwise=True, doc="sqrt(|e|)"),
    Operator("pow", 2, _pow_type, "an operand and a positive Int literal", "torch.pow({0}, {1})",
             lambda f, a, n: a ** n, int_params=(1,), doc="e ** n, n a positive integer"),
    Operator("topk", 2, _topk_type, "a Vec and a positive Int literal", "self._topk({0}, {1})",
             lambda f, v, k: f("topk", v, k), int_params=(1,), doc="keep the k largest channels"),
    Operator("gap", 1, _gap_type, "a Map", "{0}.mean(dim=[-2, -1])",
             lambda f, m: f("gap", m), doc="mean over h, w (Map -> Vec)"),
    Operator("gsum", 1, _gap_type, "a Map", "{0}.sum(dim=[-2, -1])",
             lambda f, m: f("gsum", m), doc="sum over h, w (Map -> Vec)"),
    Operator("norm", 1, _norm_type, "a Vec or a Map",
             {Type.VEC: "self._norm_vec({0})", Type.MAP: "self._norm_map({0})"},
             lambda f, e: f("norm", e), doc="e / max|e| per image, protected"),
    Operator("softmax", 1, _vec_type, "a Vec", "torch.softmax({0}, dim=-1)",
             lambda f, v: f("softmax", v), doc="softmax over each image's channels"),
    # Broadcasting commutes with every operator, so bcast is the identity for canonicalization.
    Operator("bcast", 1, _bcast_type, "a Vec", "{0}.unsqueeze(-1).unsqueeze(-1)",
             lambda f, v: v, doc="Vec -> Map, constant over h, w"),
]}


def lift_source(src: str, frm: Type, to: Type) -> str:
    """Source that broadcasts a value of type ``frm`` to the rank of ``to`` (Vec or Real -> Map)."""
    if to == Type.MAP and frm != Type.MAP:
        return f"{src}.unsqueeze(-1).unsqueeze(-1)"
    return src


def _python_helpers() -> object:
    """Python stand-in for ``self`` in templates: the helpers of HELPERS_SRC as bound methods."""
    import torch
    ns: dict = {"torch": torch, "Tensor": torch.Tensor}
    exec(HELPERS_SRC, ns)
    methods = {k: v for k, v in ns.items() if k.startswith("_") and callable(v) and k != "__builtins__"}
    return type("Helpers", (), methods)()


_SELF: object | None = None
_COMPILED: dict[tuple[str, Type, tuple[Type, ...]], Callable] = {}


def python_impl(op: Operator, result: Type, arg_types: tuple[Type, ...]) -> Callable:
    """The operator's template as a Python function of its operands, lifting included.

    Int parameters are passed as Python ints; every other operand is a tensor whose trailing
    dimensions follow its type (see ``types``)."""
    global _SELF
    key = (op.name, result, arg_types)
    fn = _COMPILED.get(key)
    if fn is None:
        import torch
        if _SELF is None:
            _SELF = _python_helpers()
        names = [f"a{i}" for i in range(op.arity)]
        operands = [n if i in op.int_params or not op.elementwise else lift_source(n, t, result)
                    for i, (n, t) in enumerate(zip(names, arg_types))]
        body = op.template(result).format(*operands)
        fn = eval(f"lambda {', '.join(names)}: {body}", {"torch": torch, "self": _SELF})
        _COMPILED[key] = fn
    return fn
