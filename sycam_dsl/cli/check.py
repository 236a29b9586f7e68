"""``sycam-dsl check``: parse and type-check a grammar file, print a summary."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    c = subparsers.add_parser("check", help="parse and type-check a grammar file",
                              description="Parse and type-check a grammar file and print a short summary.")
    c.add_argument("grammar", help="grammar file (.sy)")
    c.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..parse import load_grammar
    print(load_grammar(args.grammar).summary())
