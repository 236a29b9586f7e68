"""The expression printer and parser (``sycam_dsl.lang.sexpr``): round trip and located errors."""

from __future__ import annotations

import itertools
import math
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sycam_dsl.errors import GrammarError
from sycam_dsl.lang.ast import CONST, Node, apply, const, to_sexpr, var, varies_over_positions
from sycam_dsl.lang.operators import OPERATORS
from sycam_dsl.lang.reader import FLOAT32_MAX, INT64_MAX, INT64_MIN
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import TERMINALS, terminal_types
from sycam_dsl.lang.types import Type

TERMS = terminal_types()

# --------------------------------------------------------------------------- random well-typed nodes

#: Literals are float32 (and int64) values: the extremes the reader accepts, and tiny ones it keeps exact.
SPECIAL_REALS = [0.1, 1e-20, -3.5, 3e38, -3e38, 0.0, 1.0, 2.5e-7, 5e-324, FLOAT32_MAX, -FLOAT32_MAX]

_LEAVES: dict[Type, st.SearchStrategy[Node]] = {
    Type.VEC: st.sampled_from([var(n, t) for n, (t, _) in TERMINALS.items() if t == Type.VEC]),
    Type.MAP: st.sampled_from([var(n, t) for n, (t, _) in TERMINALS.items() if t == Type.MAP]),
    Type.REAL: st.one_of(st.sampled_from(SPECIAL_REALS),
                         st.floats(min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX)).map(const),
    Type.INT: st.integers(min_value=INT64_MIN, max_value=INT64_MAX).map(const),
}
_POSITIVE_INT = st.one_of(st.sampled_from([1, 2, 5, 10]), st.integers(min_value=1, max_value=10**12)).map(const)

# result type -> [(operator, operand types)] for every operand-type combination the table accepts
_SIGNATURES: dict[Type, list[tuple]] = {t: [] for t in Type}
for _op in OPERATORS.values():
    for _args in itertools.product(list(Type), repeat=_op.arity):
        if any(_args[i] != Type.INT for i in _op.int_params):
            continue
        _r = _op.result(*_args)
        if _r is not None:
            _SIGNATURES[_r].append((_op, _args))


def test_every_operator_has_a_signature():
    covered = {op.name for sigs in _SIGNATURES.values() for op, _ in sigs}
    assert covered == set(OPERATORS)


@cache
def typed_nodes(t: Type, depth: int) -> st.SearchStrategy[Node]:
    """Well-typed nodes of type ``t`` at most ``depth`` operators deep."""
    if depth == 0 or not _SIGNATURES[t]:
        return _LEAVES[t]

    def operand(op, i, at):
        if i in op.int_params:
            return _POSITIVE_INT
        if op.name == "gsum":  # the language sums only Maps that vary over positions
            return typed_nodes(at, depth - 1).filter(varies_over_positions)
        return typed_nodes(at, depth - 1)

    branches = [st.tuples(*(operand(op, i, at) for i, at in enumerate(args)))
                  .map(lambda a, op=op, t=t: apply(op.name, a, t))
                for op, args in _SIGNATURES[t]]
    return st.one_of(_LEAVES[t], st.one_of(branches))


any_node = st.sampled_from(list(Type)).flatmap(lambda t: typed_nodes(t, 4))


@settings(max_examples=200, deadline=None)
@given(any_node)
def test_printer_parser_round_trip(t):
    text = to_sexpr(t)
    back = parse_expr(text, TERMS)
    assert back == t
    assert back.type == t.type
    assert to_sexpr(back) == text
    # literal values survive exactly, float vs int included
    for a, b in zip(t.walk(), back.walk()):
        if a.kind == CONST:
            assert type(a.head) is type(b.head) and (a.head == b.head or math.isnan(a.head))


@settings(max_examples=100, deadline=None)
@given(any_node, st.sampled_from([" ", "\n", "\t", "  ; comment\n"]))
def test_round_trip_ignores_layout(t, sep):
    text = to_sexpr(t).replace(" ", sep)
    assert parse_expr(sep + text + sep, TERMS) == t


@pytest.mark.parametrize("value, text", [
    (0.1, "0.1"), (1e-20, "1e-20"), (-3.5, "-3.5"), (3e38, "3e+38"), (3, "3"), (-7, "-7"), (2.0, "2.0"),
])
def test_literal_text(value, text):
    assert to_sexpr(const(value)) == text
    back = parse_expr(text, TERMS)
    assert back == const(value) and type(back.head) is type(value)


def test_printer_examples():
    e = parse_expr("(bcast  (/ (gap (* A G))\n (gap A)))", TERMS)
    assert to_sexpr(e) == "(bcast (/ (gap (* A G)) (gap A)))" and e.type == Type.MAP
    assert parse_expr("(topk grads 5)", TERMS).type == Type.VEC
    assert parse_expr("(+ 1 2)", TERMS).type == Type.REAL
    assert parse_expr("(* grads G)", TERMS).type == Type.MAP


def test_non_finite_literals_cannot_be_printed():
    with pytest.raises(ValueError):
        to_sexpr(const(math.inf))


# --------------------------------------------------------------------------- expression errors


def expr_error(text: str, source: str = "e.txt") -> GrammarError:
    with pytest.raises(GrammarError) as info:
        parse_expr(text, TERMS, source)
    return info.value


def test_two_expressions():
    e = expr_error("grads pgrads")
    assert str(e).startswith("e.txt:1:7: ") and "expected one expression, found more" in e.message
    e = expr_error("(relu grads)\n\n  (gap G)")
    assert str(e).startswith("e.txt:3:3: ")


def test_no_expression():
    for text in ("", "   \n", "; just a comment\n"):
        e = expr_error(text)
        assert str(e).startswith("e.txt:1:1: ") and "found none" in e.message


def test_default_source_name():
    with pytest.raises(GrammarError) as info:
        parse_expr("", TERMS)
    assert str(info.value).startswith("<expression>:1:1: ")


def test_unknown_terminal():
    e = expr_error("(relu\n  (+ grads foo))")
    assert str(e).startswith("e.txt:2:12: ")
    assert "unknown terminal 'foo'" in e.message and "grads" in e.message


def test_terminal_outside_the_given_set():
    with pytest.raises(GrammarError) as info:
        parse_expr("(+ grads cic)", {"grads": Type.VEC}, "e.txt")
    assert str(info.value).startswith("e.txt:1:10: unknown terminal 'cic' (known: grads)")


def test_expression_errors_are_located():
    cases = [
        ("(exp grads)", "1:2", "unknown operator 'exp'"),
        ("(relu grads cic)", "1:2", "'relu' takes 1 operand, got 2"),
        ("(gap grads)", "1:2", "'gap' expects a Map"),
        ("(topk grads 0)", "1:13", "positive Int"),
        ("(topk grads 1.5)", "1:13", "must be an Int"),
        ("(relu ())", "1:7", "empty list"),
        ("((relu) grads)", "1:2", "expected an operator name"),
        ("(3 grads)", "1:2", "expected an operator name"),
        ("(relu grads))", "1:13", "unexpected ')'"),
        ("\n(relu (abs grads)", "2:1", "never closed"),
        ("(relu 1x)", "1:7", "unexpected character '1'"),
    ]
    for text, where, msg in cases:
        e = expr_error(text)
        assert str(e).startswith(f"e.txt:{where}: "), (text, str(e))
        assert msg in e.message, (text, str(e))


def test_overflowing_real_literal_is_a_located_error():
    # was read as inf, giving a node that cannot be printed
    e = expr_error("(* grads\n   1e400)")
    assert str(e).startswith("e.txt:2:4: ") and "1e400" in e.message and "range" in e.message


POSITION_FREE = "'gsum' sums a Map over its positions, but this operand is the same at every position"


@pytest.mark.parametrize("text, where", [
    ("(gsum (bcast grads))", (1, 2)),
    ("(+ grads\n   (gsum (bcast (gsum A))))", (2, 5)),
    ("(gsum (bcast (gap A)))", (1, 2)),  # A is reached only through a Vec: the same at every position
    ("(gsum (* (bcast grads) 2.0))", (1, 2)),
])
def test_gsum_of_a_position_free_map_is_a_located_error(text, where):
    with pytest.raises(GrammarError) as e:
        parse_expr(text, TERMS)
    assert (e.value.line, e.value.column) == where
    assert e.value.message.startswith(POSITION_FREE)
    assert "layer's size" in e.value.message and "gap" in e.value.message
    assert str(e.value).startswith(f"<expression>:{where[0]}:{where[1]}: ")


@pytest.mark.parametrize("text", ["(gsum A)", "(gsum (* A (bcast grads)))", "(gsum (norm (+ G (bcast cic))))",
                                  "(gap (bcast grads))", "(bcast (gsum A))"])
def test_gsum_of_a_varying_map_parses_and_evaluates_as_before(text):
    from sycam_dsl.evaluate import Terminals, evaluate
    node = parse_expr(text, TERMS)
    assert to_sexpr(node) == text
    t = Terminals.random(["A", "G", "grads", "cic"], n=2, k=3, hw=(3, 4), seed=0)
    a, g, grads, cic = t["A"], t["G"], t["grads"], t["cic"]
    m = (g + cic[..., None, None])
    expected = {"(gsum A)": a.sum(dim=(-2, -1)),
                "(gsum (* A (bcast grads)))": (a * grads[..., None, None]).sum(dim=(-2, -1)),
                "(gsum (norm (+ G (bcast cic))))": (m / m.abs().amax(dim=(-3, -2, -1), keepdim=True)).sum(dim=(-2, -1)),
                "(gap (bcast grads))": grads,
                "(bcast (gsum A))": a.sum(dim=(-2, -1))[..., None, None]}[text]
    assert torch.allclose(evaluate(node, t), expected, rtol=1e-5, atol=1e-6)
