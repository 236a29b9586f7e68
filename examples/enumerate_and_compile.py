"""Enumerate a grammar on seeded terminal values, then compile one candidate and run it.

    python examples/enumerate_and_compile.py [grammars/g2.sy] [max_size]

Until terminals come from a real model, the values are seeded random tensors; the pipeline
(parse -> enumerate -> canonicalize -> equivalence -> compile) is the one the search will use.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

from sycam_dsl.backend import save_torchscript
from sycam_dsl.enumerate import Enumerator
from sycam_dsl.evaluate import Terminals, evaluate
from sycam_dsl.parse import load_grammar

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    grammar = load_grammar(sys.argv[1] if len(sys.argv) > 1 else ROOT / "grammars" / "g2.sy")
    max_size = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    terms = Terminals.random(list(grammar.inputs), n=10, k=64, seed=0)

    en = Enumerator(grammar, terms, max_size)
    candidates = list(en.candidates())
    print(en.stats.table())
    last = candidates[-1].term
    print(f"{len(candidates)} candidates; the last one is {last} (size {last.size})")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cam.pt"
        save_torchscript(last, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated upstream
            module = torch.jit.load(str(path))
        compiled = module(*(terms[name] for name in last.terminals()))
        same = torch.allclose(compiled, evaluate(last, terms), rtol=1e-5, atol=1e-6)
        print(f"compiled {path.name}: forward({', '.join(last.terminals())}) agrees with the evaluator: {same}")


if __name__ == "__main__":
    main()
