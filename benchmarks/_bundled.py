"""What the engine benchmarks share: the built-in benchmark as a search ``Problem``, and the first
candidates of a grammar in the enumerator's order (the candidates a search would score first)."""

from __future__ import annotations

import time

from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.enumerate import Enumerator
from sycam_dsl.lang.ast import Node
from sycam_dsl.run.runner import Data, build_problem
from sycam_dsl.synthesis import Problem, resolve_grammar
from sycam_dsl.synthesis.subsets import make_subsets


def bundled_problem(n: int, device: str = "cpu", memo_mb: float = 0) -> Problem:
    """The bundled CNN on ``n`` generated images (with masks), terminals of grammar G2."""
    model = load_bundled_model(device)
    data = bundled_images(n)
    problem, _ = build_problem(model, None, Data(data.images, data.files, data.labels, data.masks, data.classes),
                               ["grads", "pgrads", "cic", "abl", "G", "A"], device=device, use_cache=False,
                               progress=False, memo_mb=memo_mb)
    return problem


def first_candidates(problem: Problem, count: int, grammar: str = "g2", max_size: int = 12) -> list[Node]:
    """The first ``count`` candidates the enumerator yields for ``grammar``, with the search's
    equivalence subset (10 images, classes in turn)."""
    g = resolve_grammar(grammar)
    eq = make_subsets(problem.n, (problem.n,), 0, problem.classes).equivalence
    out = []
    t = time.perf_counter()
    for cand in Enumerator(g, problem.terminals.subset(eq), max_size).candidates():
        out.append(cand.term)
        if len(out) >= count:
            break
    print(f"{len(out)} candidates of {grammar} enumerated in {time.perf_counter() - t:.1f} s "
          f"(largest size {max(n.size for n in out)})")
    return out
