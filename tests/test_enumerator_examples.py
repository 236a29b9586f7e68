"""Concrete checks of the enumerator on the shipped grammars, and of the heatmap-level check."""

from __future__ import annotations

from pathlib import Path

import torch

from sycam_dsl.enumerate import Enumerator
from sycam_dsl.equivalence import HeatmapIndex
from sycam_dsl.evaluate import Terminals, evaluate
from sycam_dsl.lang.ast import varies_over_positions
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.types import Type
from sycam_dsl.parse import load_grammar, parse_grammar

GRAMMARS = Path(__file__).resolve().parents[1] / "grammars"


def test_maps_grammar_yields_hirescam_layercam_and_xgradcam():
    g = load_grammar(GRAMMARS / "maps.sy")
    terms = Terminals.random(list(g.inputs), n=3, k=8, hw=(4, 4), seed=1)
    cands = list(Enumerator(g, terms, 8).candidates())
    assert all(c.value.shape == (3, 8, 4, 4) for c in cands)
    for text in ["G", "(relu G)", "(bcast (/ (gap (* A G)) (gap A)))"]:
        expected = evaluate(parse_expr(text, g.inputs), terms).expand(3, 8, 4, 4)
        # the term itself or its canonical twin, e.g. (* G A) for (* A G)
        same = [c.term for c in cands if torch.allclose(c.value, expected, rtol=1e-6, atol=1e-7)]
        assert same and same[0].size == parse_expr(text, g.inputs).size, text


def test_g2_counts_are_consistent_and_deterministic():
    g = load_grammar(GRAMMARS / "g2.sy")
    terms = Terminals.random(list(g.inputs), n=4, k=16, seed=0)
    runs = []
    for _ in range(2):
        en = Enumerator(g, terms, 5)
        runs.append([str(t) for t in en])
        total = en.stats.total()
        assert total.generated == (total.undefined + total.duplicates + total.canonical + total.equivalent
                                   + total.kept)
        assert total.undefined == 0  # g2 has no gsum
        assert total.yielded == len(runs[-1])
        assert total.canonical > 0 and total.equivalent > 0
    assert runs[0] == runs[1]
    # the first candidates are the terminals themselves, smallest first
    assert runs[0][:4] == ["grads", "pgrads", "cic", "abl"]


def test_equivalent_terms_are_merged_keeping_the_smallest():
    g = load_grammar(GRAMMARS / "g2.sy")
    terms = Terminals.random(list(g.inputs), n=4, k=16, seed=0)
    out = [str(t) for t in Enumerator(g, terms, 5)]
    # (- grads grads) is zero; (* grads (- cic cic)) is also zero and comes later: only one zero survives
    zeros = [t for t in out if torch.count_nonzero(evaluate(parse_expr(t, g.inputs), terms)) == 0]
    assert len(zeros) == 1
    # (+ grads pgrads) and (+ pgrads grads) are one canonical form: only the first is yielded
    assert "(+ grads pgrads)" in out and "(+ pgrads grads)" not in out


def test_heatmap_index_merges_positive_multiples_only():
    terms = Terminals.random(["grads", "cic", "A"], n=3, k=8, hw=(5, 5), seed=2)
    acts = torch.relu(terms["A"])
    index = HeatmapIndex(acts, Type.VEC)
    grads, cic = terms["grads"], terms["cic"]
    assert index.check(grads, "grads") is None
    assert index.check(grads + grads, "(+ grads grads)") == "grads"  # same normalized heatmap
    assert index.check(cic, "cic") is None
    assert index.check(-grads, "(neg grads)") is None  # a negative factor changes the heatmap
    maps = HeatmapIndex(acts, Type.MAP)
    assert maps.check(terms["A"], "A") is None
    assert maps.check(terms["A"] * 3.0, "(* 3.0 A)") == "A"
    assert len(index) == 3 and len(maps) == 1


def test_sums_of_position_free_maps_are_never_enumerated():
    """gsum of a position-free Map is not a term: dropped and counted as undefined; the rest agree
    with evaluate after broadcasting (h, w > 1, where the sum and one position differ)."""
    g = parse_grammar("""(synth-cam w ((A Map) (grads Vec)) Vec
      ((V Vec (grads (gsum M) (gap M))) (M Map (A (bcast V) (* M M)))))""")
    terms = Terminals.random(list(g.inputs), n=2, k=4, hw=(3, 4), seed=0)
    en = Enumerator(g, terms, 6)
    cands = list(en.candidates())
    texts = [str(c.term) for c in cands]
    assert "(gsum A)" in texts and "(gsum (* A (bcast grads)))" in texts
    assert "(gsum (bcast grads))" not in texts and "(gsum (bcast (gsum A)))" not in texts
    assert all(varies_over_positions(n.args[0]) for c in cands for n in c.term.walk() if n.head == "gsum")
    total = en.stats.total()
    assert total.undefined > 0 and "undefined" in en.stats.table() and en.stats.as_dict()["total"]["undefined"]
    assert total.generated == (total.undefined + total.duplicates + total.canonical + total.equivalent
                               + total.kept)
    for c in cands:
        assert torch.allclose(c.value, evaluate(c.term, terms).expand_as(c.value), rtol=1e-5, atol=1e-6), c.term
