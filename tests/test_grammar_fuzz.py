"""Property: the grammar-file parser never crashes; it returns a ``Grammar`` or raises a
``GrammarError`` located at ``file:line:col`` inside the text. Any other exception fails.

Inputs come from (a) random bytes, (b) the s-expression grammar itself (``sexpr.lark``) and a
grammar-file-shaped Lark grammar, through ``hypothesis.extra.lark.from_lark``, and (c) random
mutations of the shipped grammar files.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from sycam_dsl.errors import GrammarError
from sycam_dsl.lang.operators import OPERATORS
from sycam_dsl.lang.reader import MAX_DEPTH, read
from sycam_dsl.lang.terminals import TERMINALS
from sycam_dsl.lang.types import Type
from sycam_dsl.parse import Grammar, parse_grammar

GRAMMARS = Path(__file__).resolve().parent.parent / "grammars"
SHIPPED = {p.name: p.read_text() for p in sorted(GRAMMARS.glob("*.sy"))}

LOCATED = re.compile(r"^f\.sy:(\d+):(\d+): .+", re.S)
WS = " \t\f\r\n"  # what the reader skips (common.WS): an error never points there

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Words that steer random text towards the deeper checks.
VOCAB = (["synth-cam", "synth-fun", "set-option", "set-logic", "check-synth", ":real-constants",
          ":int-constants", "Constant", "Variable", "Vec", "Map", "Real", "Int", "E", "F", "C", "weights"]
         + list(TERMINALS) + list(OPERATORS))


# --------------------------------------------------------------------------- the oracle


def comment_spans(text: str) -> list[tuple[int, int]]:
    spans, i = [], text.find(";")
    while i >= 0:
        j = text.find("\n", i)
        j = len(text) if j < 0 else j
        spans.append((i, j))
        i = text.find(";", j)
    return spans


def offset(text: str, line: int, col: int) -> int:
    lines = text.split("\n")
    assert 1 <= line <= len(lines), (line, len(lines))
    assert 1 <= col <= len(lines[line - 1]) + 1, (line, col, lines[line - 1])
    return sum(len(x) + 1 for x in lines[: line - 1]) + col - 1


def position(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def check(text: str) -> Grammar | GrammarError:
    """Parse ``text``; fail on anything but a Grammar or a well-located GrammarError."""
    try:
        g = parse_grammar(text, "f.sy")
    except GrammarError as e:
        s = str(e)
        m = LOCATED.match(s)
        assert m, s
        line, col = int(m[1]), int(m[2])
        assert (line, col) == (e.line, e.column) and e.source == "f.sy"
        pos = offset(text, line, col)
        if e.message.startswith("no synth-cam"):
            assert (line, col) == (1, 1)
        else:
            assert pos < len(text) and text[pos] not in WS, (s, text[pos:pos + 10])
            assert not any(a <= pos < b for a, b in comment_spans(text)), (s, "inside a comment")
        return e
    # a grammar that loads is consistent
    assert isinstance(g, Grammar) and g.source == "f.sy"
    assert g.start.type == g.output and g.output in (Type.VEC, Type.MAP)
    assert all(TERMINALS[n][0] == t for n, t in g.inputs.items())
    for nt in g.nonterminals.values():
        assert nt.productions
        for p in nt.productions:
            assert p.template.type == nt.type or (nt.type == Type.REAL and p.template.type == Type.INT)
            for h in p.holes:
                assert h.head in g.nonterminals and g.nonterminals[h.head].type == h.type
            assert set(p.template.terminals()) <= set(g.inputs)
    return g


# --------------------------------------------------------------------------- (a) random bytes

_FRAGMENTS = [b"(", b")", b" ", b"\n", b";", b"(synth-cam w ((grads Vec)) Vec ((E Vec (grads", b"(+ E E)",
              b"(topk grads 5)", b")))", b"1e-3", b"-", b"\xc3\xa9", b"\xff", b"\x00", b"\r\n", b"#"]
_bytes = st.one_of(st.binary(max_size=300),
                   st.lists(st.one_of(st.binary(max_size=4), st.sampled_from(_FRAGMENTS)), max_size=40)
                   .map(b"".join))


@FUZZ
@given(_bytes)
def test_random_bytes_give_a_grammar_or_a_located_error(data):
    check(data.decode("utf-8", errors="replace"))
    check(data.decode("latin-1"))


# --------------------------------------------------------------------------- (b) generated from grammars


def _sexpr_lark() -> lark.Lark:
    """A fresh Lark object from the product's own ``sexpr.lark`` (the product's cached parser is
    left alone, as from_lark compiles the grammar)."""
    text = resources.files("sycam_dsl.lang").joinpath("sexpr.lark").read_text()
    return lark.Lark(text, parser="lalr")


_SEXPR = _sexpr_lark()
_PATTERNS = {t.name: t.pattern.to_regexp() for t in _SEXPR.terminals}
_SEP = st.sampled_from([" ", "\n", "\t", "  ", "\r\n"])


def _spaced(s: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(s, _SEP).map("".join)


def test_sexpr_lark_has_the_terminals_the_fuzzer_knows():
    assert {"LPAR", "RPAR", "NUMBER", "SYMBOL", "COMMENT"} <= set(_PATTERNS)


@FUZZ
@given(from_lark(_SEXPR))
def test_raw_from_lark_strings_give_a_grammar_or_a_located_error(text):
    # from_lark glues tokens without the %ignore'd whitespace, so some strings are not in the
    # language (e.g. "1" then "a" gives "1a"): the parser must still answer with a located error.
    check(text)


_SPACED_SEXPR = from_lark(_SEXPR, explicit={
    "LPAR": _spaced(st.just("(")),
    "RPAR": _spaced(st.just(")")),
    "NUMBER": _spaced(st.one_of(st.sampled_from(["0", "1", "5", "-2", "0.5", "1e-20", ".5", "+3", "2."]),
                                st.from_regex(_PATTERNS["NUMBER"], fullmatch=True))),
    "SYMBOL": _spaced(st.one_of(st.sampled_from(VOCAB), st.from_regex(_PATTERNS["SYMBOL"], fullmatch=True))),
    "COMMENT": st.from_regex(_PATTERNS["COMMENT"], fullmatch=True).map(lambda c: c + "\n"),
})


@FUZZ
@given(_SPACED_SEXPR)
def test_spaced_sexpr_strings_read_and_give_a_grammar_or_a_located_error(text):
    # with a separator after every token the string is in the s-expression language: the reader
    # must accept it, and only the later checks may reject it
    try:
        read(text, "f.sy")
    except GrammarError as e:  # only the reader's limits may reject a string of the language
        assert LIMIT_MESSAGE.match(e.message), str(e)
    check(text)


# A grammar-file-shaped grammar (docs/language.md#grammar-files) over a small vocabulary, so that many strings
# reach the type, arity, non-terminal and reachability checks (and some load).
_FILE_LARK = lark.Lark(r"""
start: preamble* synth preamble*
preamble: LPAR SETOPT OPTION LPAR NUMBER* RPAR RPAR
        | LPAR IGNORED RPAR
synth: LPAR SYNTH NAME LPAR INPUT* RPAR OUTPUT decls? LPAR rule+ RPAR RPAR
decls: LPAR decl* RPAR
decl: LPAR NTTYPE RPAR
rule: LPAR NTTYPE LPAR prod+ RPAR RPAR
prod: TERM | NT | NUMBER
    | LPAR CONSTVAR TYPE RPAR
    | LPAR OP prod RPAR
    | LPAR OP prod prod RPAR
%declare LPAR RPAR SETOPT OPTION NUMBER IGNORED SYNTH NAME INPUT OUTPUT NTTYPE TERM NT CONSTVAR TYPE OP
""", parser="lalr")


def _mostly(good: list[str], bad: list[str], k: int = 3) -> st.SearchStrategy[str]:
    """Mostly ``good`` words, sometimes a ``bad`` one, so errors are spread over all checks."""
    return st.sampled_from(good * k + bad)


_FILE_TOKENS = {
    "LPAR": st.just("("), "RPAR": st.just(")"),
    "SETOPT": st.just("set-option"),
    "OPTION": _mostly([":real-constants", ":int-constants"], [":colour"]),
    "NUMBER": _mostly(["1", "2", "3", "5", "10", "0.5", "2.0"], ["0", "-1", "1e-3"]),
    "IGNORED": st.sampled_from(["set-logic ALL", "check-synth"]),
    "SYNTH": st.sampled_from(["synth-cam", "synth-fun"]),
    "NAME": st.sampled_from(["weights", "f"]),
    "INPUT": _mostly(["(grads Vec)", "(pgrads Vec)", "(cic Vec)", "(abl Vec)", "(G Map)", "(A Map)"],
                     ["(G Vec)", "(foo Vec)", "(grads)"]),
    "OUTPUT": _mostly(["Vec", "Vec", "Map"], ["Real"]),
    "NTTYPE": _mostly(["E Vec", "E Vec", "F Vec", "C Real", "K Int", "M Map"], ["E Map", "Z Bool"]),
    "TERM": _mostly(["grads", "pgrads", "cic", "abl", "G", "A"], ["foo"]),
    "NT": st.sampled_from(["E", "E", "E", "F", "C", "K", "M"]),
    "CONSTVAR": st.sampled_from(["Constant", "Variable"]),
    "TYPE": st.sampled_from(["Vec", "Map", "Real", "Int"]),
    "OP": _mostly(list(OPERATORS), ["exp"], k=1),
}
_GRAMMAR_FILES = from_lark(_FILE_LARK, explicit={k: _spaced(v) for k, v in _FILE_TOKENS.items()})


@FUZZ
@given(_GRAMMAR_FILES)
def test_generated_grammar_files_give_a_grammar_or_a_located_error(text):
    read(text, "f.sy")
    check(text)


# --------------------------------------------------------------------------- (c) mutated shipped files

TOKEN = re.compile(r"\(|\)|;[^\n]*|[^\s();]+|\s+")


def tokens(text: str) -> list[str]:
    toks = TOKEN.findall(text)
    assert "".join(toks) == text
    return toks


_ODD_CHARS = st.one_of(st.sampled_from(list("()();; \n\t\r#'\".-+0123eE\x00\x0b\xa0é٣")), st.characters())
_NEW_TOKEN = st.one_of(st.sampled_from(VOCAB + ["(", ")", "()", "0", "-1", "2.5", "1e-20", "1x", ";"]),
                       st.text(max_size=5))


@st.composite
def mutated(draw, text: str) -> str:
    kind = draw(st.sampled_from(["del_char", "ins_char", "rep_char", "del_tok", "ins_tok", "rep_tok",
                                 "drop_paren", "add_paren", "swap_tok", "dup_line"]))
    n = len(text)
    if kind in ("del_char", "rep_char"):
        i = draw(st.integers(0, n - 1))
        return text[:i] + (draw(_ODD_CHARS) if kind == "rep_char" else "") + text[i + 1:]
    if kind in ("ins_char", "add_paren"):
        i = draw(st.integers(0, n))
        c = draw(st.sampled_from("()")) if kind == "add_paren" else draw(_ODD_CHARS)
        return text[:i] + c + text[i:]
    if kind == "drop_paren":
        i = draw(st.sampled_from([j for j, c in enumerate(text) if c in "()"]))
        return text[:i] + text[i + 1:]
    if kind == "dup_line":
        lines = text.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[: i + 1] + lines[i:])
    toks = tokens(text)
    solid = [i for i, t in enumerate(toks) if not t.isspace()]
    i = draw(st.sampled_from(solid))
    if kind == "del_tok":
        del toks[i]
    elif kind == "ins_tok":
        toks.insert(i, " " + draw(_NEW_TOKEN) + " ")
    elif kind == "rep_tok":
        toks[i] = draw(_NEW_TOKEN)
    else:  # swap_tok
        j = draw(st.sampled_from(solid))
        toks[i], toks[j] = toks[j], toks[i]
    return "".join(toks)


@st.composite
def mutated_file(draw, max_mutations: int = 3) -> str:
    text = SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))]
    for _ in range(draw(st.integers(1, max_mutations))):
        text = draw(mutated(text))
    return text


def test_shipped_files_are_the_fuzz_seeds():
    assert set(SHIPPED) == {"g1.sy", "g2.sy", "maps.sy"}
    for text in SHIPPED.values():
        assert isinstance(check(text), Grammar)


@FUZZ
@given(mutated_file())
def test_mutated_grammar_files_give_a_grammar_or_a_located_error(text):
    check(text)


def paren_model(text: str) -> tuple[int | None, list[int]]:
    """Independent paren matcher: the first ')' that closes nothing, else the '(' left open."""
    in_comment = [False] * len(text)
    for a, b in comment_spans(text):
        in_comment[a:b] = [True] * (b - a)
    stack: list[int] = []
    for i, c in enumerate(text):
        if in_comment[i]:
            continue
        if c == "(":
            stack.append(i)
        elif c == ")":
            if not stack:
                return i, []
            stack.pop()
    return None, stack


@FUZZ
@given(st.sampled_from(sorted(SHIPPED)), st.data())
def test_unbalanced_parens_are_located_at_a_paren(name, data):
    text = SHIPPED[name]
    if data.draw(st.booleans(), label="add"):
        i = data.draw(st.integers(0, len(text)), label="insert at")
        text = text[:i] + data.draw(st.sampled_from("()"), label="paren") + text[i:]
    else:
        i = data.draw(st.sampled_from([j for j, c in enumerate(text) if c in "()"]), label="delete at")
        text = text[:i] + text[i + 1:]
    result = check(text)
    stray, unclosed = paren_model(text)
    if stray is None and not unclosed:
        return  # the change was inside a comment, or kept the count: any located answer will do
    assert isinstance(result, GrammarError), text
    pos = offset(text, result.line, result.column)
    assert text[pos] in "()", (str(result), text)
    if stray is not None:
        assert pos == stray and "unexpected ')'" in result.message, (str(result), position(text, stray))
    else:
        assert pos in unclosed and "never closed" in result.message, (str(result), unclosed)


# --------------------------------------------------------------------------- limits (crashes found while writing these tests)

# Before the reader had limits these raised RecursionError / ValueError instead of a GrammarError.
LIMIT_MESSAGE = re.compile(r"^(number .+ (is too long|is out of the range of a float32.*)|integer .+ does not fit in 64 bits"
                           r"|parentheses nested deeper than \d+ levels)$", re.S)


def check_shallow_stack(text: str) -> Grammar | GrammarError:
    """``check``, failing fast on a RecursionError (pytest takes minutes to render its traceback)."""
    try:
        return check(text)
    except RecursionError:
        pytest.fail("RecursionError on deeply nested input", pytrace=False)


def first_too_deep(text: str, limit: int) -> int:
    depth = 0
    for i, c in enumerate(text):
        depth += (c == "(") - (c == ")")
        if depth > limit:
            return i
    raise AssertionError("not too deep")


@pytest.mark.parametrize("text", [
    "(" * 3000 + ")" * 3000,
    "(synth-cam w ((grads Vec)) Vec ((E Vec (grads " + "(relu " * 2000 + "E" + ")" * 2000 + "))))",
], ids=["3000-parens", "2000-relu"])
def test_deep_nesting_is_a_located_error(text):
    e = check_shallow_stack(text)
    assert isinstance(e, GrammarError) and "nested deeper than" in e.message
    assert offset(text, e.line, e.column) == first_too_deep(text, MAX_DEPTH)


def test_nesting_up_to_the_limit_is_accepted():
    # exactly MAX_DEPTH levels: synth-cam, rule list, rule and production list, then the relus
    relus = MAX_DEPTH - 4
    text = ("(synth-cam w ((grads Vec)) Vec\n ((E Vec (grads "
            + "(relu " * relus + "E" + ")" * relus + "))))")
    g = check_shallow_stack(text)
    assert isinstance(g, Grammar)
    deep = g.start.productions[1]
    assert deep.template.size == relus and str(deep).count("(relu") == relus
    one_more = text.replace("(grads ", "(grads (relu ", 1).replace("))))", ")))))", 1)
    e = check_shallow_stack(one_more)
    assert isinstance(e, GrammarError) and "nested deeper" in e.message


@pytest.mark.parametrize("text, number", [
    ("(synth-cam w ((grads Vec)) Vec ((E Vec (grads (topk E " + "1" * 5000 + ")))))", "1" * 5000),
    ("(set-option :int-constants (\n  " + "1" * 5000 + "))", "1" * 5000),
    ("(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (* C E))) (C Real (1e400))))", "1e400"),
    ("(set-option :real-constants (0.5 -1.5e999))", "-1.5e999"),
], ids=["topk-param", "int-pool", "real-1e400", "real-pool"])
def test_out_of_range_literal_is_a_located_error(text, number):
    e = check(text)
    assert isinstance(e, GrammarError) and LIMIT_MESSAGE.match(e.message), e
    assert offset(text, e.line, e.column) == text.index(number)


BIG_INT = "1" * 400  # a valid Int (< 4300 digits) but beyond the range of a float


@pytest.mark.parametrize("text", [
    "(set-option :real-constants (" + BIG_INT + "))\n"
    "(synth-cam w ((grads Vec)) Vec ((E Vec (grads (* C E))) (C Real ((Constant Real)))))",
    "(synth-cam w ((grads Vec)) Vec ((E Vec (grads (* C E))) (C Real (" + BIG_INT + "))))",
], ids=["real-pool", "real-nonterminal"])
def test_int_literal_too_big_for_a_real_is_a_located_error(text):
    e = check(text)
    assert isinstance(e, GrammarError) and offset(text, e.line, e.column) == text.index(BIG_INT)
