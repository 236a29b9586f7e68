"""Enumerator throughput: g2.sy up to size 7 on seeded terminal values [10, 2048], one CPU thread.

Prints terms per CPU second (process time of this single-threaded run, so other jobs on the
machine inflate it less than wall time) through canonicalization and observational equivalence, the counts per
size, and,
as a baseline measured in the same run, the cost of canonicalizing the same terms from scratch
(``to_sympy`` of the whole term, what the incremental memoized build replaces).

    python benchmarks/bench_enumerate.py [--grammar grammars/g2.sy] [--max-size 7] [--channels 2048]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sycam_dsl.allocator import keep_freed_memory
from sycam_dsl.canonicalize import to_sympy
from sycam_dsl.enumerate import Enumerator
from sycam_dsl.evaluate import Terminals
from sycam_dsl.parse import load_grammar

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grammar", default=str(ROOT / "grammars" / "g2.sy"))
    ap.add_argument("--max-size", type=int, default=7)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--baseline-sample", type=int, default=2000,
                    help="terms canonicalized from scratch for the baseline")
    args = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()

    g = load_grammar(args.grammar)
    terms = Terminals.random(list(g.inputs), n=args.images, k=args.channels, seed=0)
    en = Enumerator(g, terms, args.max_size)
    t0, c0 = time.perf_counter(), time.process_time()
    yielded = [c.term for c in en.candidates()]
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    total = en.stats.total()
    print(f"grammar {args.grammar}, max size {args.max_size}, terminals [{args.images}, {args.channels}], "
          f"torch {torch.__version__}, 1 thread")
    print(en.stats.table())
    print(f"enumerated {total.generated} terms ({total.yielded} candidates) in {dt:.2f} s wall, {cpu:.2f} s CPU: "
          f"{total.generated / cpu:,.0f} terms per CPU second ({total.generated / dt:,.0f} per wall second)")
    st = en.stats
    print(f"canonicalization: {st.canonical_seconds:.2f} s of {st.seconds:.2f} s enumerating "
          f"({st.canonical_seconds / st.seconds:.0%}); sympy calls: {en.canon.sympy_calls} "
          f"({en.canon.sympy_calls / total.generated:.2f} per term)")
    per_term = cpu / total.generated

    # Baseline: canonical forms built from scratch for a sample of the same (largest) terms.
    sample = yielded[-args.baseline_sample:]
    c0 = time.process_time()
    for t in sample:
        hash(to_sympy(t))
    base = (time.process_time() - c0) / max(len(sample), 1)
    print(f"baseline: sympy form from scratch {base * 1e6:.0f} us/term vs. whole pipeline {per_term * 1e6:.0f} "
          f"us/term (ratio {base / per_term:.1f}x)")


if __name__ == "__main__":
    sys.exit(main())
