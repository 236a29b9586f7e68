"""Parsing the plain-text lists that options take."""

from __future__ import annotations


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated list (``"deletion, insertion"``), stripped, blanks dropped: the
    one place an option's list (metrics, baselines, terminals) is split."""
    return [n.strip() for n in text.split(",") if n.strip()]
