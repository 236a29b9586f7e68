"""Reading s-expression text (grammar files and expressions) with Lark's LALR parser.

The result is a tree of ``SList`` and ``SAtom`` that remember where they stand in the text,
so later stages can report ``file:line:col`` for any mistake.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import cast

import lark

from ..errors import GrammarError

#: Deepest nesting of parentheses accepted; far beyond any real grammar, well within Python's stack.
MAX_DEPTH = 200


@dataclass(frozen=True)
class SAtom:
    text: str
    is_number: bool
    line: int
    column: int

    @property
    def value(self) -> int | float:
        """The number this atom spells: an ``int`` unless it has a point or an exponent."""
        t = self.text
        return float(t) if any(c in t for c in ".eE") else int(t)


@dataclass(frozen=True)
class SList:
    items: tuple[SAtom | SList, ...]
    line: int
    column: int
    end_line: int
    end_column: int


SExpr = SAtom | SList


@lru_cache(maxsize=1)
def sexpr_parser() -> lark.Lark:
    """The Lark LALR parser of the s-expression syntax (``sexpr.lark``)."""
    text = resources.files(__package__).joinpath("sexpr.lark").read_text()
    return lark.Lark(text, parser="lalr", maybe_placeholders=False)


def _describe(tok: lark.Token) -> str:
    return "end of input" if tok.type == "$END" else repr(str(tok))


def _check_parens(text: str, source: str) -> None:
    """Match parentheses first, so a missing ')' is reported at the '(' it leaves open."""
    stack: list[lark.Token] = []
    try:
        for tok in sexpr_parser().lex(text):
            if tok.type == "LPAR":
                stack.append(tok)
                if len(stack) > MAX_DEPTH:
                    raise GrammarError(f"parentheses nested deeper than {MAX_DEPTH} levels", tok.line,
                                       tok.column, source)
            elif tok.type == "NUMBER":
                _check_number(tok, source)
            elif tok.type == "RPAR":
                if not stack:
                    raise GrammarError("unexpected ')' with no '(' to close", tok.line, tok.column, source)
                stack.pop()
    except lark.exceptions.UnexpectedCharacters as e:
        # Lark declares pos_in_stream as None on the base class; UnexpectedCharacters sets the lexer's int position.
        pos = cast(int, e.pos_in_stream)
        bad = text[pos] if 0 <= pos < len(text) else "?"
        nxt = text[pos + 1] if pos + 1 < len(text) else ""
        starts_number = bad in "0123456789" or (bad in ".+-" and nxt != "" and nxt in "0123456789")
        hint = " (a number must be followed by a space or a parenthesis)" if starts_number else ""
        raise GrammarError(f"unexpected character {bad!r}{hint}", e.line, e.column, source) from None
    if stack:
        tok = stack[-1]
        raise GrammarError("this '(' is never closed: expected ')'", tok.line, tok.column, source)


#: Literals become float32 tensors and (TorchScript) int64 values: their ranges.
FLOAT32_MAX = 3.4028234663852886e38
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _check_number(tok: lark.Token, source: str) -> None:
    """A literal must be a float within float32's range or an int within int64's, so that the
    enumerator, the evaluator and the compiled code all hold the same value."""
    try:
        v = SAtom(str(tok), True, *_where(tok)).value
    except ValueError:
        raise GrammarError(f"number {str(tok)[:20]}... is too long", tok.line, tok.column, source) from None
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise GrammarError(f"integer {str(tok)[:20]} does not fit in 64 bits", tok.line, tok.column, source)
        return
    try:
        finite = math.isfinite(float(v)) and abs(float(v)) <= FLOAT32_MAX
    except OverflowError:
        finite = False
    if not finite:
        raise GrammarError(f"number {str(tok)[:20]} is out of the range of a float32 (at most {FLOAT32_MAX:.4g} in "
                           f"magnitude)", tok.line, tok.column, source)


def _where(tok: lark.Token) -> tuple[int, int]:
    """A lexed token's line and column: Lark types them Optional, but its lexer always sets them."""
    assert tok.line is not None and tok.column is not None
    return tok.line, tok.column


def _convert(node: lark.Tree | lark.Token) -> SExpr:
    if isinstance(node, lark.Token):
        return SAtom(str(node), node.type == "NUMBER", *_where(node))
    lpar, *items, rpar = node.children
    assert isinstance(lpar, lark.Token) and isinstance(rpar, lark.Token)  # a list's LPAR and RPAR
    return SList(tuple(_convert(c) for c in items), *_where(lpar), *_where(rpar))


def read(text: str, source: str = "<string>") -> list[SExpr]:
    """Parse ``text`` into its top-level s-expressions; errors are ``GrammarError`` with a location."""
    _check_parens(text, source)
    try:
        tree = sexpr_parser().parse(text)
    except lark.exceptions.UnexpectedToken as e:
        raise GrammarError(f"unexpected {_describe(e.token)}", e.line, e.column, source) from None
    except lark.exceptions.UnexpectedInput as e:  # pragma: no cover - parens were checked above
        raise GrammarError(str(e).splitlines()[0], getattr(e, "line", None), getattr(e, "column", None),
                           source) from None
    return [_convert(c) for c in tree.children]
