"""``sycam-dsl enumerate``: a grammar's candidates, smallest first, and the counts per size."""

from __future__ import annotations

import argparse
import time

from .options import check_memory, height_width, positive_int, seed_int, terminal_values_memory


def configure(e: argparse.ArgumentParser) -> None:
    e.description = ("Enumerate candidates bottom-up with canonicalization and observational "
                                          "equivalence on seeded random terminal values; print them and the counts.")
    e.add_argument("grammar", help="grammar file (.sy), or a shipped grammar: g1, g2, maps")
    e.add_argument("--max-size", type=positive_int, required=True, help="largest term size (node count)")
    e.add_argument("--limit", type=positive_int, help="stop after this many candidates")
    e.add_argument("--seed", type=seed_int, default=0, help="seed of the random terminal values (default 0)")
    e.add_argument("--images", type=positive_int, default=10, help="N, images in the equivalence subset (default 10)")
    e.add_argument("--channels", type=positive_int, default=64, help="K, channels (default 64)")
    e.add_argument("--hw", type=height_width, default=(7, 7), help="h x w of Map terminals (default 7x7)")
    e.add_argument("--no-canonicalize", action="store_true", help="turn sympy canonicalization off")
    e.add_argument("--no-equivalence", action="store_true", help="turn observational equivalence off")
    e.add_argument("--quiet", action="store_true", help="print only the counts")
    e.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..enumerate import Enumerator
    from ..evaluate import Terminals
    from ..parse import resolve_grammar

    g = resolve_grammar(args.grammar)
    # the terminals' values and those of the first terms kept for the equivalence check, at the least
    need = terminal_values_memory(list(g.inputs), args.images, args.channels, args.hw, copies=len(g.inputs) + 16)
    check_memory(need, f"enumerating {args.grammar} on {args.images} images x {args.channels} channels at "
                       f"{args.hw[0]}x{args.hw[1]}", "use a smaller --channels, --hw or --images")
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
