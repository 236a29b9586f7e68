"""The ``sycam-dsl`` command line: check, enumerate, compile, terminals, eval, explain, synth.

Every expected error prints as one line ``sycam-dsl: error: ...`` with exit code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from .cli_args import positive_int, height_width
from .errors import SycamError


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the full usage is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sycam-dsl", description="Synthesize class activation mapping (CAM) methods from a "
                "grammar of weight expressions.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("check", help="parse and type-check a grammar file",
                       description="Parse and type-check a grammar file and print a short summary.")
    c.add_argument("grammar", help="grammar file (.sy)")

    e = sub.add_parser("enumerate", help="list a grammar's candidate expressions, smallest first",
                       description="Enumerate candidates bottom-up with canonicalization and observational "
                                   "equivalence on seeded random terminal values; print them and the counts.")
    e.add_argument("grammar", help="grammar file (.sy)")
    e.add_argument("--max-size", type=positive_int, required=True, help="largest term size (node count)")
    e.add_argument("--limit", type=positive_int, help="stop after this many candidates")
    e.add_argument("--seed", type=int, default=0, help="seed of the random terminal values (default 0)")
    e.add_argument("--images", type=positive_int, default=10, help="N, images in the equivalence subset (default 10)")
    e.add_argument("--channels", type=positive_int, default=64, help="K, channels (default 64)")
    e.add_argument("--hw", type=height_width, default=(7, 7), help="h x w of Map terminals (default 7x7)")
    e.add_argument("--no-canonicalize", action="store_true", help="turn sympy canonicalization off")
    e.add_argument("--no-equivalence", action="store_true", help="turn observational equivalence off")
    e.add_argument("--quiet", action="store_true", help="print only the counts")

    k = sub.add_parser("compile", help="compile an expression to a TorchScript (or torch.export) file",
                       description="Compile an expression into a file that torch.jit.load (or "
                                   "torch.export.load) runs without sycam-dsl installed.")
    k.add_argument("expression", help="an expression such as '(relu (+ grads cic))', or a file holding one")
    k.add_argument("--grammar", help="grammar file whose inputs type the expression's terminals")
    k.add_argument("-o", "--output", required=True, help="output file (.pt for torchscript, .pt2 for export)")
    k.add_argument("--format", choices=("torchscript", "export"), default="torchscript",
                   help="torchscript (default): a .pt for torch.jit.load; export: a .pt2 for torch.export.load")
    k.add_argument("--channels", type=positive_int, default=64, help="K for the export format's example input")
    k.add_argument("--hw", type=height_width, default=(7, 7), help="h x w for the export format's example input")

    from .cam.commands import register as register_terminals
    from .metrics.commands import register as register_metrics
    from .synthesis.commands import register as register_synth
    register_terminals(sub)
    register_metrics(sub)
    register_synth(sub)
    return p


def _cmd_check(args: argparse.Namespace) -> None:
    from .parse import load_grammar
    print(load_grammar(args.grammar).summary())


def _cmd_enumerate(args: argparse.Namespace) -> None:
    from .enumerate import Enumerator
    from .evaluate import Terminals
    from .parse import load_grammar

    g = load_grammar(args.grammar)
    terms = Terminals.random(list(g.inputs), n=args.images, k=args.channels, hw=args.hw, seed=args.seed)
    en = Enumerator(g, terms, args.max_size, canonicalize=not args.no_canonicalize,
                    equivalence=not args.no_equivalence)
    t0 = time.perf_counter()
    for cand in en.candidates():
        if not args.quiet:
            print(f"{cand.index:6d}  size {cand.term.size:2d}  {cand.term}", flush=True)
        if args.limit and cand.index + 1 >= args.limit:
            break
    dt = time.perf_counter() - t0
    total = en.stats.total()
    print(en.stats.table())
    print(f"{total.yielded} candidates, {total.generated} terms generated in {dt:.2f} s "
          f"({total.generated / max(dt, 1e-9):.0f} terms/s)")


def read_expression(text: str) -> str:
    """The expression text itself, or the contents of a .sexp/.txt file or a result .json file."""
    p = Path(text)
    if not text.lstrip().startswith("(") and p.suffix in (".sexp", ".txt", ".json") and p.is_file():
        content = p.read_text()
        if p.suffix == ".json":
            import json
            try:
                return json.loads(content)["expression"]
            except (ValueError, KeyError, TypeError):
                raise SycamError(f"{p}: expected a JSON object with an 'expression' field") from None
        return content
    return text


def _per_class_result(text: str) -> dict | None:
    """``{"classes": {class: expression}, "fallback": expression}`` when ``text`` names the
    result.json of a per-class search, else None."""
    p = Path(text)
    if p.suffix != ".json" or not p.is_file():
        return None
    import json
    try:
        data = json.loads(p.read_text())
    except ValueError:
        return None
    pc = data.get("per_class") if isinstance(data, dict) else None
    if not pc:
        return None
    return {"classes": {c: part["expression"] for c, part in pc["classes"].items()}, "fallback": pc["fallback"]}


def _cmd_compile(args: argparse.Namespace) -> None:
    from .backend import save_export, save_torchscript
    from .evaluate import Terminals
    from .lang.sexpr import parse_expr
    from .lang.terminals import terminal_types
    from .parse import load_grammar

    types = dict(load_grammar(args.grammar).inputs) if args.grammar else terminal_types()
    per_class = _per_class_result(args.expression)
    if per_class is not None:
        if args.format != "torchscript":
            raise SycamError("a per-class result compiles to TorchScript only (drop --format export)")
        from .backend.dispatch import save_dispatch
        classes = {int(c): parse_expr(text, types) for c, text in per_class["classes"].items() if text}
        save_dispatch(classes, parse_expr(per_class["fallback"], types), args.output)
        print(f"wrote {args.output} (torchscript): forward(classes, terminals...) dispatching {len(classes)} "
              f"class expressions, fallback {per_class['fallback']}")
        return
    node = parse_expr(read_expression(args.expression), types)
    if not node.type.is_tensor:
        raise SycamError(f"expression {node} is a {node.type}; a weight expression must be a Vec or a Map")
    out = Path(args.output)
    if args.format == "torchscript":
        save_torchscript(node, out)
    else:
        example = Terminals.random(node.terminals(), n=2, k=args.channels, hw=args.hw)
        save_export(node, out, example)
    print(f"wrote {out} ({args.format}): forward({', '.join(node.terminals())}) -> {node.type} weights")


def main(argv: Sequence[str] | None = None) -> int:
    from .allocator import keep_freed_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()
    handlers = {"check": _cmd_check, "enumerate": _cmd_enumerate, "compile": _cmd_compile}
    try:
        code = (getattr(args, "handler", None) or handlers[args.command])(args)
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
