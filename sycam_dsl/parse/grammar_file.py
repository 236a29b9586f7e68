"""Reading a SyGuS-like grammar file (docs/language.md#grammar-files) into a checked ``Grammar``.

Accepted top-level commands: one ``synth-cam`` (or ``synth-fun``), ``set-option`` for the
constant pools (``:real-constants (0.5 1.0)``, ``:int-constants (1 5)``), and ``set-logic`` /
``check-synth``, which are ignored. Every mistake raises ``GrammarError`` as ``file:line:col``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

from ..errors import GrammarError
from ..lang.ast import Node, const, hole, var
from ..lang.operators import OPERATORS
from ..lang.reader import SAtom, SExpr, SList, read
from ..lang.sexpr import build
from ..lang.terminals import TERMINALS
from ..lang.types import Type, parse_type
from .grammar import DEFAULT_INT_CONSTANTS, DEFAULT_REAL_CONSTANTS, Grammar, NonTerminal, Production

_IGNORED = {"set-logic", "check-synth"}
#: Int literals parameterize topk and pow; larger values would only overflow.
_MAX_INT = 2 ** 31 - 1
_SYNTH = {"synth-cam", "synth-fun"}


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def err(self, msg: str, at: SExpr) -> GrammarError:
        return GrammarError(msg, at.line, at.column, self.source)

    def symbol(self, sx: SExpr, what: str) -> str:
        if not isinstance(sx, SAtom) or sx.is_number:
            raise self.err(f"expected {what}", sx)
        return sx.text

    def slist(self, sx: SExpr, what: str) -> SList:
        if not isinstance(sx, SList):
            raise self.err(f"expected {what}", sx)
        return sx

    def type(self, sx: SExpr, allowed: Sequence[Type]) -> Type:
        names = " or ".join(str(t) for t in allowed)
        if not isinstance(sx, SAtom) or sx.is_number:
            raise self.err(f"expected a type ({names})", sx)
        t = parse_type(sx.text)
        if t is None:
            raise self.err(f"unknown type {sx.text!r} (expected {names})", sx)
        if t not in allowed:
            raise self.err(f"type {t} is not allowed here (expected {names})", sx)
        return t


def load_grammar(path: str | Path, real_constants: Sequence[float] | None = None,
                 int_constants: Sequence[int] | None = None) -> Grammar:
    """Read and check the grammar file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise GrammarError(f"cannot read grammar file: {e}", source=str(p)) from None
    return parse_grammar(text, str(p), real_constants, int_constants)


def parse_grammar(text: str, source: str = "<string>", real_constants: Sequence[float] | None = None,
                  int_constants: Sequence[int] | None = None) -> Grammar:
    """Parse and check grammar text; explicit constant pools override the file's ``set-option``."""
    ctx = _Ctx(source)
    pools: dict[Type, tuple] = {Type.REAL: DEFAULT_REAL_CONSTANTS, Type.INT: DEFAULT_INT_CONSTANTS}
    synth: SList | None = None
    for item in read(text, source):
        cmd = ctx.slist(item, "a command in parentheses, such as (synth-cam ...)")
        if not cmd.items:
            raise ctx.err("empty command '()'", cmd)
        name = ctx.symbol(cmd.items[0], "a command name")
        if name in _SYNTH:
            if synth is not None:
                raise ctx.err(f"a second {name}: a grammar file declares one function", cmd)
            synth = cmd
        elif name == "set-option":
            _set_option(ctx, cmd, pools)
        elif name not in _IGNORED:
            raise ctx.err(f"unknown command {name!r} (expected synth-cam, synth-fun, set-option, "
                          "set-logic or check-synth)", cmd.items[0])
    if synth is None:
        raise GrammarError("no synth-cam declaration found", 1, 1, source)
    if real_constants is not None:
        reals = tuple(float(c) for c in real_constants)
        if not all(math.isfinite(c) for c in reals):
            raise GrammarError(f"real constants must be finite numbers, got {list(real_constants)}", source=source)
        pools[Type.REAL] = reals
    if int_constants is not None:
        ints = tuple(int(c) for c in int_constants)
        if not all(1 <= c <= _MAX_INT for c in ints):
            raise GrammarError(f"Int constants must be integers from 1 to {_MAX_INT}, got {list(int_constants)}",
                               source=source)
        pools[Type.INT] = ints
    return _synth(ctx, synth, pools)


def _set_option(ctx: _Ctx, cmd: SList, pools: dict[Type, tuple]) -> None:
    if len(cmd.items) != 3:
        raise ctx.err("set-option takes a keyword and a value, e.g. (set-option :real-constants (0.5 1.0))", cmd)
    key = ctx.symbol(cmd.items[1], "an option keyword")
    kinds = {":real-constants": Type.REAL, ":int-constants": Type.INT}
    if key not in kinds:
        raise ctx.err(f"unknown option {key!r} (known: {' '.join(kinds)})", cmd.items[1])
    values = ctx.slist(cmd.items[2], "a list of numbers")
    nums = []
    for v in values.items:
        if not isinstance(v, SAtom) or not v.is_number:
            raise ctx.err("expected a number", v)
        if kinds[key] == Type.INT and (not isinstance(v.value, int) or not 1 <= v.value <= _MAX_INT):
            raise ctx.err(f"Int constants must be integers from 1 to {_MAX_INT}", v)
        nums.append(float(v.value) if kinds[key] == Type.REAL else v.value)
    pools[kinds[key]] = tuple(nums)


def _named_entry(ctx: _Ctx, item: SExpr, length: int, what: str, shape: str, seen: Mapping[str, object],
                 again: str) -> tuple[SList, str]:
    """A declaration or rule ``(NAME ...)`` of ``length`` items and its non-terminal name, which must
    not be in ``seen`` (else "non-terminal NAME <again>")."""
    entry = ctx.slist(item, what)
    if len(entry.items) != length:
        raise ctx.err(shape, entry)
    nt = ctx.symbol(entry.items[0], "a non-terminal name")
    if nt in seen:
        raise ctx.err(f"non-terminal {nt!r} {again}", entry.items[0])
    return entry, nt


def _synth(ctx: _Ctx, cmd: SList, pools: dict[Type, tuple]) -> Grammar:
    items = cmd.items
    if len(items) not in (5, 6):
        assert isinstance(items[0], SAtom)  # parse_grammar read the command name with ctx.symbol
        raise ctx.err(f"{items[0].text} expects: name, (inputs), output type, [(non-terminal "
                      f"declarations),] (rules); got {len(items) - 1} parts", cmd)
    name = ctx.symbol(items[1], "the function name")
    inputs = _inputs(ctx, ctx.slist(items[2], "a list of typed inputs such as ((grads Vec))"))
    output = ctx.type(items[3], (Type.VEC, Type.MAP))
    declared: dict[str, tuple[Type, SExpr]] | None = None
    if len(items) == 6:
        declared = {}
        for item in ctx.slist(items[4], "a list of non-terminal declarations such as ((E Vec))").items:
            d, nt = _named_entry(ctx, item, 2, "a non-terminal declaration such as (E Vec)",
                                 "a non-terminal declaration is (NAME TYPE)", declared, "is declared twice")
            declared[nt] = (ctx.type(d.items[1], tuple(Type)), d)
    rules = ctx.slist(items[-1], "a list of rules such as ((E Vec (grads (+ E E))))")
    if not rules.items:
        raise ctx.err("the grammar has no rules", rules)

    heads: dict[str, tuple[Type, SList]] = {}
    for item in rules.items:
        r, nt = _named_entry(ctx, item, 3, "a rule such as (E Vec (productions ...))",
                             "a rule is (NAME TYPE (PRODUCTIONS ...))", heads, "has two rules")
        if nt in inputs or nt in OPERATORS:
            raise ctx.err(f"non-terminal {nt!r} clashes with an input or operator of the same name", r.items[0])
        t = ctx.type(r.items[1], tuple(Type))
        if declared is not None:
            if nt not in declared:
                raise ctx.err(f"non-terminal {nt!r} has a rule but is not declared", r.items[0])
            if declared[nt][0] != t:
                raise ctx.err(f"non-terminal {nt!r} is declared {declared[nt][0]} but its rule says {t}",
                              r.items[1])
        heads[nt] = (t, r)
    if declared is not None:
        for nt, (_, declaration) in declared.items():
            if nt not in heads:
                raise ctx.err(f"non-terminal {nt!r} is declared but has no rule", declaration)

    nts: dict[str, NonTerminal] = {}
    # SyGuS: the start symbol is the first declared non-terminal when there are declarations.
    order = list(declared) if declared is not None else list(heads)
    for nt in order:
        t, r = heads[nt]
        prods = _productions(ctx, nt, t, ctx.slist(r.items[2], "a list of productions"), inputs, heads, pools)
        nts[nt] = NonTerminal(nt, t, prods, r.line, r.column)
    start = next(iter(nts.values()))
    if start.type != output:
        raise ctx.err(f"the start non-terminal {start.name!r} has type {start.type} but the function "
                      f"returns {output}", heads[start.name][1].items[1])
    _check_reachable(ctx, nts, heads)
    _check_productive(ctx, nts, heads)
    return Grammar(name, inputs, output, nts, ctx.source)


def _inputs(ctx: _Ctx, params: SList) -> dict[str, Type]:
    inputs: dict[str, Type] = {}
    for p in params.items:
        p = ctx.slist(p, "a typed input such as (grads Vec)")
        if len(p.items) != 2:
            raise ctx.err("an input is (NAME TYPE)", p)
        name = ctx.symbol(p.items[0], "an input name")
        if name not in TERMINALS:
            raise ctx.err(f"unknown terminal {name!r} (known: {' '.join(TERMINALS)})", p.items[0])
        t = ctx.type(p.items[1], (Type.VEC, Type.MAP))
        if t != TERMINALS[name][0]:
            raise ctx.err(f"terminal {name!r} has type {TERMINALS[name][0]}, not {t}", p.items[1])
        if name in inputs:
            raise ctx.err(f"input {name!r} is listed twice", p.items[0])
        inputs[name] = t
    return inputs


def _productions(ctx: _Ctx, nt: str, t: Type, body: SList, inputs: dict[str, Type],
                 heads: dict[str, tuple[Type, SList]], pools: dict[Type, tuple]) -> tuple[Production, ...]:
    def resolve(atom: SAtom) -> Node:
        if atom.text in inputs:
            return var(atom.text, inputs[atom.text])
        if atom.text in heads:
            return hole(atom.text, heads[atom.text][0])
        if atom.text in TERMINALS:
            raise ctx.err(f"terminal {atom.text!r} is not an input of this function: add "
                          f"({atom.text} {TERMINALS[atom.text][0]}) to its inputs", atom)
        raise ctx.err(f"unknown terminal or non-terminal {atom.text!r} (inputs: {' '.join(inputs) or 'none'}; "
                      f"non-terminals: {' '.join(heads)})", atom)

    out: list[Production] = []
    seen: set[Node] = set()
    for sx in body.items:
        for tmpl in _expand(ctx, sx, t, inputs, pools, resolve):
            if tmpl.type != t and not (t == Type.REAL and tmpl.type == Type.INT):
                raise ctx.err(f"production of type {tmpl.type} in non-terminal {nt!r} of type {t}", sx)
            if t == Type.REAL and tmpl.type == Type.INT:
                tmpl = const(float(tmpl.head)) if tmpl.kind == "const" else tmpl
            # A literal's head is its number.
            if t == Type.INT and not (tmpl.kind == "const" and 1 <= cast(float, tmpl.head) <= _MAX_INT):
                raise ctx.err(f"an Int non-terminal's productions must be integers from 1 to {_MAX_INT} "
                              "(they parameterize topk and pow)", sx)
            if tmpl not in seen:
                seen.add(tmpl)
                out.append(Production(tmpl, sx.line, sx.column))
    if not out:
        raise ctx.err(f"non-terminal {nt!r} has no productions", body)
    return tuple(out)


def _expand(ctx: _Ctx, sx: SExpr, t: Type, inputs: dict[str, Type], pools: dict[Type, tuple],
            resolve) -> list[Node]:
    """``(Constant T)`` and ``(Variable T)`` stand for several productions; anything else for one."""
    if isinstance(sx, SList) and sx.items and isinstance(sx.items[0], SAtom) \
            and sx.items[0].text in ("Constant", "Variable"):
        kind = sx.items[0].text
        if len(sx.items) != 2:
            raise ctx.err(f"({kind} TYPE) takes one type", sx)
        if kind == "Constant":
            ct = ctx.type(sx.items[1], (Type.REAL, Type.INT))
            if not pools[ct]:
                raise ctx.err(f"the {ct} constant pool is empty", sx)
            return [const(v) for v in pools[ct]]
        vt = ctx.type(sx.items[1], (Type.VEC, Type.MAP))
        found = [var(n, it) for n, it in inputs.items() if it == vt]
        if not found:
            raise ctx.err(f"(Variable {vt}) matches no input of type {vt}", sx)
        return found
    return [build(sx, resolve, ctx.source)]


def _check_reachable(ctx: _Ctx, nts: dict[str, NonTerminal], heads: dict[str, tuple[Type, SList]]) -> None:
    start = next(iter(nts))
    reached, todo = {start}, [start]
    while todo:
        for p in nts[todo.pop()].productions:
            for h in p.holes:
                if h.head not in reached:
                    name = cast(str, h.head)  # a hole's head is its non-terminal's name
                    reached.add(name)
                    todo.append(name)
    for nt in nts:
        if nt not in reached:
            raise ctx.err(f"non-terminal {nt!r} is unreachable from the start symbol {start!r}",
                          heads[nt][1].items[0])


def _check_productive(ctx: _Ctx, nts: dict[str, NonTerminal], heads: dict[str, tuple[Type, SList]]) -> None:
    productive: set[str] = set()
    changed = True
    while changed:
        changed = False
        for nt in nts.values():
            if nt.name not in productive and any(all(h.head in productive for h in p.holes)
                                                 for p in nt.productions):
                productive.add(nt.name)
                changed = True
    for nt in nts.values():
        if nt.name not in productive:
            raise ctx.err(f"non-terminal {nt.name!r} derives no finite term: every production needs a "
                          "non-terminal that never bottoms out", heads[nt.name][1].items[0])
