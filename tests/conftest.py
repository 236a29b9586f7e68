"""Fixtures shared by several test files."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import sycam_dsl.synthesis.search as search_module


class Clock:
    """A fake ``time`` for the search module: only the test (its scorer) moves it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """The search module's clock, replaced by a ``Clock`` at 0."""
    c = Clock()
    monkeypatch.setattr(search_module, "time", SimpleNamespace(perf_counter=c, monotonic=c))
    return c
