"""The ``sycam-dsl`` entry point: builds the parser from the command modules and runs one.

Every expected error prints as one line ``sycam-dsl: error: ...`` with exit code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..errors import SycamError

#: command -> (its module in this package, its line in ``--help``), in the order ``--help`` lists
#: them. A module's ``configure(parser)`` adds the command's options and sets ``handler``; only the
#: command being run is configured, so that ``--help`` and ``check`` never import torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("check", "parse and type-check a grammar file"),
    "enumerate": ("enumerate_cmd", "list a grammar's candidate expressions, smallest first"),
    "compile": ("compile_cmd", "compile an expression to a TorchScript (or torch.export) file"),
    "terminals": ("terminals_cmd", "compute a model's terminal values (grads, cic, abl, ...) on an image folder"),
    "eval": ("eval_cmd", "score baselines and expressions on metrics over an image folder"),
    "explain": ("explain", "draw an expression's heatmap over an image"),
    "export": ("export_cmd", "write a self-contained explainer file: model, terminals, method and template in one "
                             "TorchScript file"),
    "synth": ("synth", "search a grammar for the CAM weight expression that scores best on a metric"),
    "sanity": ("sanity", "model-parameter randomization check of a search's result (metric gaming)"),
    "train-bundled": ("train_bundled", "retrain the built-in benchmark's small CNN (reproduces its shipped weights)"),
    "cache": ("cache_cmd", "the terminal store's folder, entries and size (info), or empty it (clear)"),
}


class _WarningLines(logging.Handler):
    """The package's log warnings as ``sycam-dsl: warning: ...`` lines on stderr (looked up at each
    line, so a replaced ``sys.stderr`` gets them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"sycam-dsl: warning: {record.getMessage()}", file=sys.stderr)
        except Exception:
            self.handleError(record)


def _show_warnings() -> None:
    logger = logging.getLogger("sycam_dsl")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        logger.addHandler(_WarningLines(logging.WARNING))


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the full usage is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``sycam-dsl`` parser; ``parse_args(argv).handler(args)`` runs a command. With ``argv``,
    only the command it names is configured (the others show in ``--help`` but take no options)."""
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    p = _Parser(prog="sycam-dsl", description="Synthesize class activation mapping (CAM) methods from a "
                "grammar of weight expressions.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_line) in COMMANDS.items():
        parser = sub.add_parser(name, help=help_line)
        if chosen is None or chosen == name:
            importlib.import_module(f"{__package__}.{module}").configure(parser)
    return p


def _stop_signals_as_interrupts() -> dict[int, Any]:
    """SIGTERM and SIGHUP (a closed terminal) raise ``KeyboardInterrupt`` as Ctrl-C does, so that a
    run stops the same way: its ``finally`` blocks run (a local Ray cluster is shut down) and a search
    writes its results. An ignored signal (``nohup``) stays ignored. Returns the handlers replaced."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)  # no SIGHUP on Windows
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, interrupt)
    return previous


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is torch's out-of-memory error (CUDA, or the CPU allocator's)."""
    return type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e) or "out of memory" in str(e)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from ..allocator import keep_freed_memory

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    keep_freed_memory()
    _show_warnings()
    previous = _stop_signals_as_interrupts()
    try:
        return _run(args)
    finally:  # main() called in a process that goes on (tests, notebooks) leaves its handlers as they were
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    """``args.handler(args)``, its expected errors as one line and exit code 2."""
    try:
        code = args.handler(args)
    except KeyboardInterrupt:
        print("sycam-dsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (SycamError, OSError) as e:
        if args.debug:  # the traceback, and still the exit code of an expected error
            traceback.print_exc()
        print(f"sycam-dsl: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        # the last resort for sizes the up-front estimates let through (torch's OutOfMemoryError and its
        # CPU allocator's failures are RuntimeErrors); any other RuntimeError is a bug: its traceback
        if not isinstance(e, MemoryError) and not _out_of_memory(e):
            raise
        if args.debug:
            traceback.print_exc()
        from ..util.text import first_line  # here: util's package imports torch, which --help need not load

        first = first_line(e)
        print(f"sycam-dsl: error: out of memory ({first}); use smaller sizes, fewer images or a smaller "
              f"--batch-size / --chunk-size", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
