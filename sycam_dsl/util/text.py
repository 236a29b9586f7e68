"""Plain text: the lists that options take, and errors as one line."""

from __future__ import annotations


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated list (``"deletion, insertion"``), stripped, blanks dropped: the
    one place an option's list (metrics, baselines, terminals) is split."""
    return [n.strip() for n in text.split(",") if n.strip()]


def first_line(e: BaseException, with_type: bool = False) -> str:
    """An exception as one line for a message: its text's first line (``Type: line`` with ``with_type``),
    or its type's name when it has no text."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return f"{type(e).__name__}: {line}" if with_type else line
