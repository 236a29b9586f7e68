"""The ``sycam-dsl`` entry point: builds the parser from the command modules and runs one.

Every expected error prints as one line ``sycam-dsl: error: ...`` with exit code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import SycamError
from . import check, compile_cmd, enumerate_cmd, eval_cmd, explain, synth, terminals

#: The commands in the order ``--help`` lists them; each module has ``register(subparsers)``, which
#: sets ``handler`` on the parsed arguments.
COMMANDS = (check, enumerate_cmd, compile_cmd, terminals, eval_cmd, explain, synth)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the full usage is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``sycam-dsl`` parser; ``parse_args(argv).handler(args)`` runs a command."""
    p = _Parser(prog="sycam-dsl", description="Synthesize class activation mapping (CAM) methods from a "
                "grammar of weight expressions.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from ..allocator import keep_freed_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()
    try:
        code = args.handler(args)
    except KeyboardInterrupt:
        print("sycam-dsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (SycamError, OSError) as e:
        if args.debug:
            raise
        print(f"sycam-dsl: error: {e}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
