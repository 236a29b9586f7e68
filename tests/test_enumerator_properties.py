"""Property-based tests of the enumerator, canonicalization and observational equivalence.

(a) every enumerated term type-checks and is derivable; (b) with pruning off, exactly the
grammar's terms up to size n, each once, smallest first; (c) every pruned term equals a term
yielded before it; (d) canonicalization is sound on inputs with zeros, negatives and ties;
(e) on Map grammars, the enumerator's value of every candidate equals ``evaluate``'s and the
compiled TorchScript module's, and no candidate sums a position-free Map (``gsum``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sycam_dsl.backend import compile_torchscript, signature
from sycam_dsl.canonicalize import to_sympy
from sycam_dsl.enumerate import Enumerator
from sycam_dsl.errors import GrammarError
from sycam_dsl.evaluate import Terminals, evaluate
from sycam_dsl.lang.ast import HOLE, to_sexpr
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.parse import parse_grammar

from .helpers import brute_force_terms, derivable
from .test_backend import assert_agree

VEC_TERMINALS = ["grads", "pgrads", "cic", "abl"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def small_grammars(draw) -> str:
    """Grammar text: 1-3 Vec non-terminals (optionally a Real one) with random productions."""
    n_nt = draw(st.integers(1, 3))
    nts = [f"N{i}" for i in range(n_nt)]
    use_real = draw(st.booleans())
    inputs = draw(st.lists(st.sampled_from(VEC_TERMINALS), min_size=1, max_size=3, unique=True))
    rules = []
    for nt in nts:
        prods = set()
        # every non-terminal gets a leaf so the grammar is productive
        prods.add(draw(st.sampled_from(inputs)))
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["bin", "bin", "un", "leaf", "unit", "topk", "const", "nested"]))
            a, b = draw(st.sampled_from(nts)), draw(st.sampled_from(nts))
            if kind == "bin":
                prods.add(f"({draw(st.sampled_from(['+', '-', '*', '/']))} {a} {b})")
            elif kind == "un":
                prods.add(f"({draw(st.sampled_from(['relu', 'neg', 'abs', 'sq', 'sqrt', 'norm']))} {a})")
            elif kind == "leaf":
                prods.add(draw(st.sampled_from(inputs)))
            elif kind == "unit" and a != nt:
                prods.add(a)
            elif kind == "topk":
                prods.add(f"(topk {a} {draw(st.integers(1, 3))})")
            elif kind == "const" and use_real:
                prods.add(f"(* C {a})")
            elif kind == "nested":
                prods.add(f"(+ (relu {a}) {draw(st.sampled_from(inputs))})")
        rules.append(f"({nt} Vec ({' '.join(sorted(prods))}))")
    if use_real:
        rules.append("(C Real (0.5 2.0 (+ C C)))")
    params = " ".join(f"({t} Vec)" for t in inputs)
    return f"(synth-cam w ({params}) Vec ({' '.join(rules)}))"


def _grammar(text: str):
    try:
        return parse_grammar(text, "random.sy")
    except GrammarError:
        assume(False)  # unreachable non-terminals and the like: not a grammar to test with


def _terminals(grammar, seed: int = 0, k: int = 6) -> Terminals:
    return Terminals.random(list(grammar.inputs), n=3, k=k, seed=seed)


@SETTINGS
@given(small_grammars(), st.integers(2, 5))
def test_enumerated_terms_type_check_and_are_derivable(text, max_size):
    g = _grammar(text)
    terms = list(Enumerator(g, _terminals(g), max_size))
    assert terms, "a productive grammar yields at least its leaves"
    for t in terms:
        assert t.size <= max_size
        reparsed = parse_expr(to_sexpr(t), g.inputs)
        assert reparsed == t and reparsed.type == g.start.type
        assert derivable(g, g.start.name, t), f"{t} is not derivable from {g.start.name}"


@SETTINGS
@given(small_grammars(), st.integers(1, 5))
def test_unpruned_enumeration_is_exactly_the_grammar_smallest_first(text, max_size):
    g = _grammar(text)
    got = list(Enumerator(g, _terminals(g), max_size, canonicalize=False, equivalence=False))
    expected = brute_force_terms(g, max_size)[g.start.name]
    assert len(got) == len(set(got)), "a term was yielded twice"
    assert set(got) == set().union(*expected.values())
    sizes = [t.size for t in got]
    assert sizes == sorted(sizes), "not smallest first"


@SETTINGS
@given(small_grammars(), st.integers(1, 5), st.integers(0, 3))
def test_taking_a_unit_productions_terms_early_changes_no_order(text, max_size, seed):
    # E -> T first in E's productions: E takes T's terms as each T production ends (the first
    # candidates come before T's later productions are evaluated); the stream must be the same
    g = _grammar(text)
    terms = _terminals(g, seed)
    early = Enumerator(g, terms, max_size)
    late = Enumerator(g, terms, max_size)
    late._forward = {}
    got = [(to_sexpr(c.term), c.index) for c in early.candidates()]
    assert got == [(to_sexpr(c.term), c.index) for c in late.candidates()]
    assert early.stats.as_dict()["per_size"] == late.stats.as_dict()["per_size"]


def test_the_first_unit_productions_terms_come_before_later_productions_are_evaluated():
    g = parse_grammar("(synth-cam w ((grads Vec) (cic Vec)) Vec ((E Vec) (T Vec))"
                      " ((E Vec (T (+ E E))) (T Vec (grads cic))))", "units.sy")
    read: list[str] = []

    class Logged(Terminals):
        def __getitem__(self, name):
            read.append(name)
            return super().__getitem__(name)

    base = Terminals.random(["grads", "cic"], n=3, k=4, seed=0)
    stream = Enumerator(g, Logged({n: base[n] for n in base}), 3).candidates()
    read.clear()  # what the constructor looked at (shapes)
    assert to_sexpr(next(stream).term) == "grads" and "cic" not in read
    assert to_sexpr(next(stream).term) == "cic"


def _random_costs(g, rnd) -> dict:
    """A cost per production: 1-3, unit productions 0-2."""
    return {p: rnd.randint(0, 2) if p.template.kind == HOLE else rnd.randint(1, 3)
            for nt in g.nonterminals.values() for p in nt.productions}


@SETTINGS
@given(small_grammars(), st.integers(1, 6), st.randoms(use_true_random=False))
def test_costed_enumeration_is_every_term_once_cheapest_first(text, max_cost, rnd):
    g = _grammar(text)
    costs = _random_costs(g, rnd)
    got = [c.term for c in Enumerator(g, _terminals(g), max_cost, canonicalize=False, equivalence=False,
                                      costs=costs).candidates()]
    by_cost = brute_force_terms(g, max_cost, costs)[g.start.name]  # cost -> terms with a derivation of that cost
    cheapest: dict = {}
    for c in sorted(by_cost):
        for t in by_cost[c]:
            cheapest.setdefault(t, c)
    assert len(got) == len(set(got)), "a term was yielded twice"
    assert set(got) == set(cheapest), "a term was skipped, or one costs more than the bound"
    order = [cheapest[t] for t in got]
    assert order == sorted(order), "a term came after a more expensive one"


@SETTINGS
@given(small_grammars(), st.integers(1, 5), st.integers(0, 3))
def test_costs_equal_to_the_sizes_give_the_size_order_exactly(text, max_size, seed):
    g = _grammar(text)
    terms = _terminals(g, seed)
    sizes = {p: p.fixed_size for nt in g.nonterminals.values() for p in nt.productions}
    costed = Enumerator(g, terms, max_size, costs=sizes)
    plain = Enumerator(g, terms, max_size)
    assert [(to_sexpr(c.term), c.index) for c in costed.candidates()] == \
        [(to_sexpr(c.term), c.index) for c in plain.candidates()]


def test_costs_must_be_integers_of_at_least_one():
    g = parse_grammar("(synth-cam w ((grads Vec)) Vec ((E Vec) (T Vec)) ((E Vec (T (relu E))) (T Vec (grads))))", "c.sy")
    unit, relu = g.nonterminals["E"].productions
    terms = _terminals(g)
    assert [to_sexpr(t) for t in Enumerator(g, terms, 3, costs={unit: 0, relu: 2})] == ["grads", "(relu grads)"]
    for bad in ({relu: 0}, {unit: -1}, {relu: 1.5}):
        with pytest.raises(ValueError, match="integer cost"):
            Enumerator(g, terms, 3, costs=bad)


@SETTINGS
@given(small_grammars(), st.integers(2, 5), st.integers(0, 3))
def test_every_pruned_term_equals_an_earlier_yielded_term(text, max_size, seed):
    g = _grammar(text)
    terms = _terminals(g, seed)
    events = []
    en = Enumerator(g, terms, max_size, on_prune=lambda nt, t, why, earlier: events.append((nt, t, why, earlier)))
    yielded = []
    for cand in en.candidates():
        yielded.append(cand.term)
        assert torch.equal(cand.value, evaluate(cand.term, terms).expand_as(cand.value))
    position = {t: i for i, t in enumerate(yielded)}
    for nt, t, why, earlier in events:
        assert earlier is not None and earlier.size <= t.size
        # ``earlier`` is the kept term: for a canonical duplicate of a term that was itself merged by
        # equivalence, that is the equivalence representative, so compare values, not forms.
        a, b = evaluate(t, terms), evaluate(earlier, terms)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (t, why, earlier)
        if nt == g.start.name:
            assert earlier in position, f"{t} was pruned for {earlier}, which was never yielded"
            assert t == earlier or t not in position, "a term was both yielded and pruned"


def _tricky_inputs(names, seed):
    """Float64 values with exact zeros, negatives and ties (repeated values within a row)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        v = torch.randint(-3, 4, (3, 8), generator=g).double()  # many zeros and ties
        v[:, :4] += torch.randn(3, 4, generator=g, dtype=torch.float64) * (seed % 2)
        out[name] = v
    return Terminals(out)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_canonicalization_is_sound_on_zeros_negatives_and_ties(seed):
    g = parse_grammar("""(synth-cam w ((grads Vec) (cic Vec) (abl Vec)) Vec
      ((E Vec (grads cic abl (+ E E) (- E E) (* E E) (/ E E) (relu E) (sq E) (neg E) (topk E 2)))))""")
    fit = Terminals.random(["grads", "cic", "abl"], n=2, k=8, seed=seed)
    seen: dict = {}
    pairs = 0
    for t in Enumerator(g, fit, 4, equivalence=False, canonicalize=False):
        seen.setdefault(to_sympy(t), []).append(t)
    inputs = _tricky_inputs(["grads", "cic", "abl"], seed)
    for group in seen.values():
        ref = evaluate(group[0], inputs)
        for other in group[1:]:
            pairs += 1
            v = evaluate(other, inputs)
            scale = ref.abs().max().clamp_min(1.0)
            assert torch.allclose(v, ref, rtol=1e-9, atol=1e-9 * float(scale)), (group[0], other)
    assert pairs > 50, "the grammar should produce many terms with equal canonical forms"
    # The enumerator's own canonical ids (memoized, flattened, with atoms) must be as sound.
    events = []
    for _ in Enumerator(g, fit, 4, equivalence=False,
                        on_prune=lambda nt, t, why, earlier: events.append((t, earlier))):
        pass
    assert len(events) > 50
    for t, earlier in events:
        a, b = evaluate(t, inputs), evaluate(earlier, inputs)
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max().clamp_min(1.0))), (t, earlier)


# --------------------------------------------------------------------------------------------- (e) Map grammars

MAP_TERMINALS = ["A", "G"]
#: h, w > 1, so that a sum over positions differs from the value at one position.
MAP_HW = (3, 4)


@st.composite
def map_grammars(draw) -> str:
    """Grammar text: a Map non-terminal M and a Vec one V over Map and Vec terminals, with
    bcast, gap, gsum, norm and softmax; the start is M or V."""
    maps = draw(st.lists(st.sampled_from(MAP_TERMINALS), min_size=1, max_size=2, unique=True))
    vecs = draw(st.lists(st.sampled_from(VEC_TERMINALS), min_size=0, max_size=2, unique=True))
    m_prods = set(maps)
    v_prods = set(vecs) or {"(gap M)"}
    for _ in range(draw(st.integers(1, 5))):
        m_prods.add(draw(st.sampled_from(["(bcast V)", "(+ M M)", "(* M M)", "(- M V)", "(relu M)", "(norm M)",
                                          "(* M (bcast V))", "(sq M)"])))
    for _ in range(draw(st.integers(1, 5))):
        v_prods.add(draw(st.sampled_from(["(gap M)", "(gsum M)", "(gsum M)", "(norm V)", "(softmax V)",
                                          "(+ V V)", "(/ V V)", "(gsum (* M M))",
                                          "(relu V)"])))
    rules = [f"(M Map ({' '.join(sorted(m_prods))}))", f"(V Vec ({' '.join(sorted(v_prods))}))"]
    if draw(st.booleans()):
        rules.reverse()
    start_type = rules[0].split()[1]
    params = " ".join([f"({t} Map)" for t in maps] + [f"({t} Vec)" for t in vecs])
    return f"(synth-cam w ({params}) {start_type} ({' '.join(rules)}))"


def _has_position_free_gsum(term) -> bool:
    """Whether a gsum in ``term`` sums a Map with no Map terminal reached through Map-typed nodes
    (an independent restatement of the rule in ``sycam_dsl.lang.operators``)."""
    def varies(n) -> bool:
        return n.type.value == "Map" and (n.kind == "var" or any(varies(a) for a in n.args))
    return any(n.kind == "op" and n.head == "gsum" and not varies(n.args[0]) for n in term.walk())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(map_grammars(), st.integers(2, 5), st.integers(0, 3))
def test_map_values_agree_between_enumerator_evaluator_and_torchscript(text, max_size, seed):
    g = _grammar(text)
    terms = Terminals.random(list(g.inputs), n=2, k=5, hw=MAP_HW, seed=seed)
    compiled = 0
    for cand in Enumerator(g, terms, max_size).candidates():
        t = cand.term
        expected = evaluate(t, terms)
        _agree(t, "enumerator", cand.value, expected.expand_as(cand.value))
        assert not _has_position_free_gsum(t), f"{t} sums a position-free Map"
        # Compiling is slow: check the terms that reduce over or broadcast to positions, a few per grammar.
        if compiled < 8 and any(n.kind == "op" and n.head in ("gsum", "bcast", "norm") for n in t.walk()):
            compiled += 1
            module = compile_torchscript(t)
            out = module(*(terms[name] for name, _ in signature(t)))
            _agree(t, "TorchScript", out.expand_as(cand.value), expected.expand_as(cand.value))


def _agree(term, what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """``assert_agree``, naming the term whose values differ."""
    try:
        assert_agree(actual, expected)
    except AssertionError as e:
        raise AssertionError(f"{what} and evaluate differ on {term}") from e
