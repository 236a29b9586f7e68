"""``sycam-dsl check``: parse and type-check a grammar file, print a summary."""

from __future__ import annotations

import argparse


def configure(c: argparse.ArgumentParser) -> None:
    c.description = ("Parse and type-check a grammar file and print a short summary.")
    c.add_argument("grammar", help="grammar file (.sy), or a shipped grammar: g1, g2, maps")
    c.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..parse import resolve_grammar
    print(resolve_grammar(args.grammar).summary())
