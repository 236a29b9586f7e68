"""Exceptions with messages a user can act on; the CLI prints them as one line."""

from __future__ import annotations


class SycamError(Exception):
    """Base class of every error sycam-dsl raises on purpose."""


class GrammarError(SycamError):
    """An error in a grammar file or an expression, located as ``file:line:col``."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None,
                 source: str = "<string>") -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        super().__init__(self.located())

    def located(self) -> str:
        if self.line is None:
            return f"{self.source}: {self.message}"
        return f"{self.source}:{self.line}:{self.column}: {self.message}"

    def with_source(self, source: str) -> GrammarError:
        return GrammarError(self.message, self.line, self.column, source)


class ShapeError(SycamError):
    """A tensor whose shape does not fit its terminal's type; the message names the terminal."""
