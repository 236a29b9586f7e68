"""The per-class dispatch module (class-based decomposition, docs/search.md#per-class-search) against the evaluator."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sycam_dsl.backend import CompileError, compile_dispatch, generate_dispatch_source, save_dispatch
from sycam_dsl.evaluate import Terminals, evaluate
from sycam_dsl.lang.ast import Node, apply, hole, var
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import TERMINALS, terminal_types
from sycam_dsl.lang.types import Type

from .test_backend import assert_agree, saliency_reference, terms


def parse(text: str) -> Node:
    return parse_expr(text, terminal_types())


def union_inputs(per_class: Mapping[int, Node], fallback: Node) -> list[str]:
    used = {name for node in [*per_class.values(), fallback] for name in node.terminals()}
    return [name for name in TERMINALS if name in used]


def reference(per_class: Mapping[int, Node], fallback: Node, terminals: Terminals, classes: torch.Tensor,
              acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W and S built row by row from the evaluator: row i is the expression of class classes[i]
    (the fallback's when it has none). Map weights are expanded over h, w when any expression
    gives a full map (the documented shape rule)."""
    nodes = [*per_class.values(), fallback]
    values = {node: evaluate(node, terminals) for node in nodes}
    if fallback.type == Type.MAP:
        h = max(v.shape[2] for v in values.values())
        w = max(v.shape[3] for v in values.values())
        values = {node: v.expand(v.shape[0], v.shape[1], h, w) for node, v in values.items()}
    chosen = [per_class.get(int(c), fallback) for c in classes]
    weights = torch.stack([values[node][i] for i, node in enumerate(chosen)])
    sal = torch.stack([saliency_reference(values[node], acts)[i] for i, node in enumerate(chosen)])
    return weights, sal


# ---------------------------------------------------------------------------------------------
# Random dispatches: random well-typed expressions (from the operator table), random class maps
# (classes sharing an expression, classes sharing the fallback's), random class vectors that
# include classes without an expression and negative ones.

@st.composite
def dispatches(draw: st.DrawFn) -> tuple[dict[int, Node], Node, Terminals, torch.Tensor, torch.Tensor]:
    typ = draw(st.sampled_from([Type.VEC, Type.MAP]))
    pool = draw(st.lists(terms(typ, depth=3, root=True), min_size=1, max_size=3))
    fallback = draw(st.sampled_from(pool))
    per_class = draw(st.dictionaries(st.integers(0, 5), st.sampled_from(pool), max_size=5))
    n, k = draw(st.integers(1, 7)), draw(st.integers(1, 5))
    hw = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    classes = torch.tensor(draw(st.lists(st.integers(-2, 7), min_size=n, max_size=n)), dtype=torch.int64)
    seed = draw(st.integers(0, 2**20))
    terminals = Terminals.random(union_inputs(per_class, fallback), n=n, k=k, hw=hw, seed=seed)
    acts = torch.relu(torch.randn([n, k, *hw], generator=torch.Generator().manual_seed(seed)))
    return per_class, fallback, terminals, classes, acts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dispatches())
def test_dispatch_agrees_with_evaluator_row_by_row(case) -> None:
    per_class, fallback, terminals, classes, acts = case
    module = compile_dispatch(per_class, fallback)
    args = [terminals[name] for name in union_inputs(per_class, fallback)]
    expected_w, expected_s = reference(per_class, fallback, terminals, classes, acts)
    # The second call runs the profiling executor's optimized graph.
    for _ in range(2):
        assert_agree(module(classes, *args), expected_w)
    assert_agree(module.saliency(acts, classes, *args), expected_s)


# ---------------------------------------------------------------------------------------------
# Specific cases

VEC_CLASSES = {
    0: parse("grads"),                                   # GradCAM
    2: parse("(topk pgrads 2)"),
    5: parse("(norm (- cic (/ grads 3)))"),
    7: parse("(topk pgrads 2)"),                         # shares class 2's expression
    9: parse("(softmax mlogits)"),                       # the fallback's expression
}
VEC_FALLBACK = parse("(softmax mlogits)")


def _vec_case(n: int = 9, k: int = 6, seed: int = 3):
    terminals = Terminals.random(union_inputs(VEC_CLASSES, VEC_FALLBACK), n=n, k=k, hw=(4, 5), seed=seed)
    acts = torch.relu(torch.randn([n, k, 4, 5], generator=torch.Generator().manual_seed(seed)))
    return terminals, acts


def test_vec_dispatch_every_row_uses_its_class_or_the_fallback() -> None:
    terminals, acts = _vec_case()
    module = compile_dispatch(VEC_CLASSES, VEC_FALLBACK)
    args = [terminals[name] for name in ("grads", "pgrads", "cic", "mlogits")]  # TERMINALS order
    classes = torch.tensor([0, 2, 5, 7, 9, 1, 100, -1, 2])
    w = module(classes, *args)
    assert w.shape == (9, 6)
    for i, c in enumerate(classes.tolist()):
        node = VEC_CLASSES.get(c, VEC_FALLBACK)
        assert torch.equal(w[i], evaluate(node, terminals)[i]), (i, c, str(node))
    expected_w, expected_s = reference(VEC_CLASSES, VEC_FALLBACK, terminals, classes, acts)
    assert_agree(module.saliency(acts, classes, *args), expected_s)
    # All rows in one class, all rows in the fallback, int32 classes.
    for classes in (torch.full([9], 5), torch.full([9], 42), torch.arange(9, dtype=torch.int32)):
        assert_agree(module(classes, *args), reference(VEC_CLASSES, VEC_FALLBACK, terminals, classes, acts)[0])


def test_source_header_lists_classes_and_each_distinct_expression_once() -> None:
    src = generate_dispatch_source(VEC_CLASSES, VEC_FALLBACK)
    assert "#   0 -> _expr0: grads" in src
    assert "#   2 -> _expr1: (topk pgrads 2)" in src and "#   7 -> _expr1: (topk pgrads 2)" in src
    assert "#   9 -> _expr3: (softmax mlogits)" in src
    assert "#   any other class (fallback) -> _expr3: (softmax mlogits)" in src
    assert src.count("def _expr") == 4  # grads, topk, norm, softmax: shared ones once
    assert src.count("self._topk(pgrads, 2)") == 1 and src.count("torch.softmax") == 1
    assert "def forward(self, classes: Tensor, grads: Tensor, pgrads: Tensor, cic: Tensor, mlogits: Tensor)" in src
    assert "def saliency(self, activations: Tensor, classes: Tensor, grads: Tensor," in src
    # The fallback's rows are the classes served by other expressions, inverted (9 is the fallback's).
    assert "torch.tensor([0, 2, 5, 7], dtype=classes.dtype, device=classes.device), invert=True" in src


def test_a_class_with_the_fallback_expression_and_a_single_expression() -> None:
    fallback = parse("(* (topk grads 2) 0.5)")
    src = generate_dispatch_source({4: fallback}, fallback)
    assert src.count("def _expr") == 1 and "isin" not in src
    module = compile_dispatch({4: fallback, 1: parse("(* (topk grads 2) 0.5)")}, fallback)
    t = Terminals.random(["grads"], n=4, k=5)
    assert torch.equal(module(torch.tensor([4, 1, 0, -3]), t["grads"]), evaluate(fallback, t))
    assert_agree(compile_dispatch({}, fallback)(torch.tensor([0, 1, 2, 3]), t["grads"]), evaluate(fallback, t))


MAP_CLASSES = {
    1: parse("(relu G)"),                                # LayerCAM: a full map
    3: parse("(bcast (/ (gap (* A G)) (gap A)))"),       # XGradCAM: constant over positions
    4: parse("(* (bcast (topk pgrads 2)) (sqrt A))"),
}
MAP_FALLBACK = parse("(bcast grads)")


def test_map_dispatch_expands_constant_rows_to_the_full_map() -> None:
    t = Terminals.random(["grads", "pgrads", "G", "A"], n=6, k=4, hw=(3, 2), seed=5)
    acts = torch.rand(6, 4, 3, 2)
    module = compile_dispatch(MAP_CLASSES, MAP_FALLBACK)
    args = [t[name] for name in ("grads", "pgrads", "G", "A")]
    for classes in (torch.tensor([1, 3, 4, 0, 3, 9]), torch.tensor([3, 3, 0, 0, 3, 9])):
        w = module(classes, *args)
        # Full maps as soon as one expression gives one, whichever classes the batch holds.
        assert w.shape == (6, 4, 3, 2)
        expected_w, expected_s = reference(MAP_CLASSES, MAP_FALLBACK, t, classes, acts)
        assert_agree(w, expected_w)
        assert_agree(module.saliency(acts, classes, *args), expected_s)
        for i, c in enumerate(classes.tolist()):
            value = evaluate(MAP_CLASSES.get(c, MAP_FALLBACK), t)[i]
            assert torch.equal(w[i], value.expand(4, 3, 2))


def test_map_dispatch_of_constant_maps_stays_constant() -> None:
    per_class = {2: parse("(bcast (gap G))")}
    module = compile_dispatch(per_class, MAP_FALLBACK)
    t = Terminals.random(["grads", "G"], n=3, k=4, hw=(5, 5))
    classes = torch.tensor([2, 0, 2])
    w = module(classes, t["grads"], t["G"])
    assert w.shape == (3, 4, 1, 1)
    assert_agree(w, reference(per_class, MAP_FALLBACK, t, classes, torch.rand(3, 4, 5, 5))[0])


def test_inputs_fix_the_signature_and_dtype_follows_the_inputs() -> None:
    per_class = {1: parse("(- cic grads)")}
    module = compile_dispatch(per_class, parse("grads"), inputs=["A", "grads", "cic"])
    t = Terminals.random(["grads", "A", "cic"], n=3, k=4, dtype=torch.float64)
    classes = torch.tensor([1, 0, 1])
    w = module(classes, t["A"], t["grads"], t["cic"])
    assert w.dtype == torch.float64
    assert torch.equal(w, reference(per_class, parse("grads"), t, classes, t["A"])[0])


def test_errors_are_reported() -> None:
    vec, map_ = parse("grads"), parse("(relu G)")
    with pytest.raises(CompileError, match="same type.*Vec: class 1.*Map: class 2, the fallback"):
        generate_dispatch_source({1: vec, 2: map_}, map_)
    with pytest.raises(CompileError, match="same type"):
        compile_dispatch({0: map_}, vec)
    for key in (-1, True, "3", 2.0):
        with pytest.raises(CompileError, match="non-negative integers"):
            generate_dispatch_source({key: vec}, vec)
    with pytest.raises(CompileError, match="holes"):
        generate_dispatch_source({0: apply("+", (hole("E", Type.VEC), var("grads", Type.VEC)), Type.VEC)}, vec)
    with pytest.raises(CompileError, match="Vec or a Map"):
        generate_dispatch_source({0: vec}, parse("(+ 1 2.5)"))
    with pytest.raises(CompileError, match="missing from inputs"):
        generate_dispatch_source({0: parse("cic")}, vec, inputs=["grads"])
    with pytest.raises(CompileError, match="an expression"):
        generate_dispatch_source({0: "grads"}, vec)
    module = compile_dispatch({0: vec, 1: parse("(topk grads 1)")}, vec)
    with pytest.raises(Exception, match="classes must be"):
        module(torch.tensor([0, 1]), torch.randn(3, 4))


# ---------------------------------------------------------------------------------------------
# Saving: the file loads in a fresh process without sycam_dsl and tells which class uses what

def _run_fresh(code: str, cwd: Path) -> None:
    """Run ``code`` in a new interpreter that must never import sycam_dsl."""
    prelude = "import json, sys, torch, warnings\nwarnings.simplefilter('ignore')\n"
    epilogue = "\nassert 'sycam_dsl' not in sys.modules, 'sycam_dsl was imported'\nprint('OK')\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + epilogue], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_saved_dispatch_loads_without_sycam_dsl(tmp_path: Path) -> None:
    names = ["grads", "pgrads", "G", "A"]
    module = save_dispatch(MAP_CLASSES, MAP_FALLBACK, tmp_path / "dispatch.pt")
    t = Terminals.random(names, n=7, k=5, hw=(4, 3), seed=11)
    args = [t[name] for name in names]
    acts = torch.relu(torch.randn(7, 5, 4, 3, generator=torch.Generator().manual_seed(2)))
    classes = torch.tensor([4, 1, 3, 0, 1, 8, 4])
    w, s = reference(MAP_CLASSES, MAP_FALLBACK, t, classes, acts)
    assert_agree(module(classes, *args), w)
    torch.save({"args": args, "acts": acts, "classes": classes, "w": w, "s": s,
                "manifest": {"classes": {str(c): str(node) for c, node in MAP_CLASSES.items()},
                             "fallback": str(MAP_FALLBACK), "inputs": names}}, tmp_path / "case.pt")
    _run_fresh("""
        case = torch.load('case.pt')
        extra = {'sycam_dsl/source.py': '', 'sycam_dsl/dispatch.json': ''}
        m = torch.jit.load('dispatch.pt', _extra_files=extra)
        assert b'def forward(self, classes: Tensor' in extra['sycam_dsl/source.py']
        assert json.loads(extra['sycam_dsl/dispatch.json']) == case['manifest'], extra['sycam_dsl/dispatch.json']
        for _ in range(2):
            w = m(case['classes'], *case['args'])
            assert w.shape == case['w'].shape
            assert torch.allclose(w, case['w'], rtol=1e-5, atol=1e-6), (w - case['w']).abs().max()
        s = m.saliency(case['acts'], case['classes'], *case['args'])
        assert s.shape == case['s'].shape
        assert torch.allclose(s, case['s'], rtol=1e-5, atol=1e-6), (s - case['s']).abs().max()
    """, tmp_path)


def test_compiling_and_saving_emit_no_deprecation_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_dispatch(VEC_CLASSES, VEC_FALLBACK)
        save_dispatch(VEC_CLASSES, VEC_FALLBACK, tmp_path / "d.pt")
    noisy = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not noisy, [str(w.message) for w in noisy]
