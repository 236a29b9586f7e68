"""``sycam-dsl compile``: an expression (or a per-class result.json) to a TorchScript / torch.export file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..deploy.method import per_class_result
from ..errors import SycamError
from ..lang.ast import Node
from .options import (
    check_memory,
    expression_source,
    height_width,
    output_file,
    positive_int,
    terminal_values_memory,
    weight_expression,
)


def configure(k: argparse.ArgumentParser) -> None:
    k.description = ("Compile an expression into a file that torch.jit.load (or "
                                          "torch.export.load) runs without sycam-dsl installed.")
    k.add_argument("expression", help="an expression such as '(relu (+ grads cic))', a file holding one, or a "
                                      "result.json (a per-class result compiles its dispatch)")
    k.add_argument("--member", metavar="K|knee", help="of a result.json of a search over several metrics: compile "
                                                     "front member K (default: the knee member, its expression)")
    k.add_argument("--grammar", help="grammar file, or a shipped grammar name (g2), whose inputs type the "
                                      "expression's terminals")
    k.add_argument("-o", "--output", required=True, help="output file (.pt for torchscript, .pt2 for export)")
    k.add_argument("--format", choices=("torchscript", "export"), default="torchscript",
                   help="torchscript (default): a .pt for torch.jit.load; export: a .pt2 for torch.export.load")
    k.add_argument("--channels", type=positive_int, default=64, help="K for the export format's example input")
    k.add_argument("--hw", type=height_width, default=(7, 7), help="h x w for the export format's example input")
    k.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..backend import save_dispatch, save_export, save_torchscript
    from ..evaluate import Terminals
    from ..lang.sexpr import parse_expr
    from ..lang.terminals import terminal_types
    from ..parse import resolve_grammar

    output_file(args.output)
    args.expression = expression_source(args.expression)  # a result folder: its result.json
    types = dict(resolve_grammar(args.grammar).inputs) if args.grammar else terminal_types()
    per_class = per_class_result(args.expression)
    if args.member is not None:
        from ..deploy.method import load_method

        node = load_method(args.expression, types, args.member)
        assert isinstance(node, Node)  # a per-class result has no member to choose (load_method says so)
    elif per_class is not None:
        if args.format != "torchscript":
            raise SycamError("a per-class result compiles to TorchScript only (drop --format export)")
        if not isinstance(per_class["fallback"], str):
            raise SycamError(f"{args.expression} holds no expression (its search scored no candidate)")
        classes = {int(c): parse_expr(text, types) for c, text in per_class["classes"].items() if text}
        save_dispatch(classes, parse_expr(per_class["fallback"], types), args.output)
        print(f"wrote {args.output} (torchscript): forward(classes, terminals...) dispatching {len(classes)} "
              f"class expressions, fallback {per_class['fallback']}")
        return
    else:
        _, node = weight_expression(args.expression, types)
    out = Path(args.output)
    if args.format == "torchscript":
        save_torchscript(node, out)
    else:
        names = sorted(node.terminals())
        check_memory(terminal_values_memory(names, 2, args.channels, args.hw, copies=2),
                     f"the export's example input ({args.channels} channels at {args.hw[0]}x{args.hw[1]})",
                     "use a smaller --channels or --hw (the exported program takes any size)")
        example = Terminals.random(names, n=2, k=args.channels, hw=args.hw)
        save_export(node, out, example)
    print(f"wrote {out} ({args.format}): forward({', '.join(node.terminals())}) -> {node.type} weights")
