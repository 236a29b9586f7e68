"""The compiled backends (TorchScript ``.pt`` and ``torch.export`` ``.pt2``) against the evaluator."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sycam_dsl.backend import (
    CompileError,
    compile_torchscript,
    export_program,
    generate_source,
    python_module,
    save_export,
    save_torchscript,
)
from sycam_dsl.evaluate import Terminals, evaluate
from sycam_dsl.lang.ast import Node, apply, const, hole, var
from sycam_dsl.lang.operators import OPERATORS, Operator
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import terminal_types
from sycam_dsl.lang.types import Type
from sycam_dsl.template.saliency import saliency

VECS = ("grads", "pgrads", "cic", "abl")
MAPS = ("G", "A")
_TYPES = (Type.INT, Type.REAL, Type.VEC, Type.MAP)


def parse(text: str) -> Node:
    return parse_expr(text, terminal_types())


def saliency_reference(w: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """The project's CAM template (docs/language.md#the-cam-template) for a weight of ``w``'s rank."""
    return saliency(w, acts, Type.VEC if w.dim() == 2 else Type.MAP)


def assert_agree(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal shapes, the same NaN/Inf entries, and finite entries equal up to a relative tolerance
    (protected division makes values large, so an absolute one would be meaningless)."""
    assert actual.shape == expected.shape
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(actual), finite)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    assert torch.equal(actual[torch.isinf(expected)], expected[torch.isinf(expected)])
    assert torch.allclose(actual[finite], expected[finite], rtol=1e-5, atol=1e-6, equal_nan=False)


# ---------------------------------------------------------------------------------------------
# Random well-typed terms, derived from the operator table so that a new operator is covered.

def _signatures(op: Operator) -> dict[Type, list[tuple[Type, ...]]]:
    """Result type -> operand types the operator accepts (Int params only as Int)."""
    out: dict[Type, list[tuple[Type, ...]]] = {}
    for types in itertools.product(_TYPES, repeat=op.arity):
        if any(types[i] != Type.INT for i in op.int_params):
            continue
        result = op.result(*types)
        if result is not None:
            out.setdefault(result, []).append(types)
    return out


SIGNATURES = {op.name: _signatures(op) for op in OPERATORS.values()}
REALS = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -3.25, 0.1, 1e-8, -1e-9, 1e-3, 7.0])
INTS = st.sampled_from([0, 1, 2, -1, 3])
INT_PARAMS = st.sampled_from([1, 2, 3, 6])


@st.composite
def terms(draw: st.DrawFn, typ: Type, depth: int, root: bool = False) -> Node:
    if typ == Type.INT:
        return const(draw(INTS))
    ops = [name for name, sigs in SIGNATURES.items() if typ in sigs]
    # Hypothesis leans towards 0, so 0 means "an operator": terms are not mostly bare leaves.
    if depth == 0 or (not root and draw(st.integers(0, 3)) == 3):
        if typ == Type.REAL:
            return const(draw(REALS))
        return var(draw(st.sampled_from(VECS if typ == Type.VEC else MAPS)), typ)
    name = draw(st.sampled_from(ops))
    op = OPERATORS[name]
    types = draw(st.sampled_from(SIGNATURES[name][typ]))
    args = [const(draw(INT_PARAMS)) if i in op.int_params else draw(terms(t, depth - 1))
            for i, t in enumerate(types)]
    return apply(name, tuple(args), typ)


@st.composite
def inputs_for(draw: st.DrawFn, node: Node) -> tuple[Terminals, torch.Tensor]:
    """Terminal values with zeros, negatives, ties and near-zero divisors, plus activations."""
    n, k = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    values = {}
    for name in node.terminals():
        shape = [n, k] if name in VECS else [n, k, h, w]
        style = draw(st.sampled_from(["ties", "normal", "tiny", "sparse", "signed zeros"]))
        x = torch.randn(shape, generator=gen)
        if style == "ties":
            x = torch.randint(-2, 3, shape, generator=gen).float()
        elif style == "tiny":
            x = x * 1e-8
        elif style == "sparse":
            x = torch.where(torch.rand(shape, generator=gen) < 0.5, torch.zeros(shape), x)
        elif style == "signed zeros":
            x = torch.where(torch.rand(shape, generator=gen) < 0.5, torch.zeros(shape), -torch.zeros(shape))
        values[name] = x
    acts = torch.relu(torch.randn([n, k, h, w], generator=gen))
    return Terminals(values), acts


@st.composite
def cases(draw: st.DrawFn) -> tuple[Node, Terminals, torch.Tensor]:
    node = draw(terms(draw(st.sampled_from([Type.VEC, Type.MAP])), depth=4, root=True))
    terminals, acts = draw(inputs_for(node))
    return node, terminals, acts


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_compiled_torchscript_agrees_with_evaluator(case: tuple[Node, Terminals, torch.Tensor]) -> None:
    node, terminals, acts = case
    module = compile_torchscript(node)
    args = [terminals[name] for name in node.terminals()]
    expected = evaluate(node, terminals)
    # The second call runs the profiling executor's optimized graph.
    for _ in range(2):
        assert_agree(module(*args), expected)
    assert_agree(module.saliency(acts, *args), saliency_reference(expected, acts))


# ---------------------------------------------------------------------------------------------
# Generated source

def test_source_has_header_one_local_per_distinct_subexpression_and_exact_constants() -> None:
    node = parse("(+ (* (topk grads 5) (/ 1 3)) (- (gap (* A G)) (topk grads 5)))")
    src = generate_source(node)
    assert f"#   W = {node}" in src
    assert "#   grads: Vec [N, K]" in src and "#   A: Map [N, K, h, w]" in src
    assert src.count("self._topk(grads, 5)") == 1  # the repeated subexpression is computed once
    assert "def forward(self, grads: Tensor, A: Tensor, G: Tensor) -> Tensor:" in src
    folded = evaluate(parse("(/ 1 3)"), Terminals.random(["grads"]))  # what the evaluator computes
    assert f"grads.new_full([1, 1], {float(folded.reshape(-1)[0])!r})" in src
    t = Terminals.random(["grads", "A", "G"], n=3, k=8, hw=(4, 4))
    assert torch.equal(compile_torchscript(node)(t["grads"], t["A"], t["G"]), evaluate(node, t))


def test_inputs_fix_the_signature_and_unused_inputs_are_accepted() -> None:
    node = parse("(- cic grads)")
    module = compile_torchscript(node, inputs=["grads", "A", "cic"])
    t = Terminals.random(["grads", "A", "cic"], n=2, k=4)
    assert torch.equal(module(t["grads"], t["A"], t["cic"]), evaluate(node, t))


@pytest.mark.parametrize("text,kind", [
    ("(/ (gap (* A G)) (gap A))", "xgradcam"),
    ("(relu G)", "layercam"),
    ("(bcast (norm grads))", "bcast"),
    ("(* (bcast (topk pgrads 2)) (sqrt A))", "mixed"),
])
def test_any_batch_size_and_dtype(text: str, kind: str) -> None:
    node = parse(text)
    module = compile_torchscript(node)
    for n, k, hw, dtype in [(1, 3, (2, 2), torch.float32), (5, 7, (3, 1), torch.float64)]:
        t = Terminals.random(node.terminals(), n=n, k=k, hw=hw, dtype=dtype)
        out = module(*[t[name] for name in node.terminals()])
        assert out.dtype == dtype
        assert_agree(out, evaluate(node, t))


def test_errors_are_reported() -> None:
    with pytest.raises(CompileError, match="holes"):
        generate_source(apply("+", (hole("E", Type.VEC), var("grads", Type.VEC)), Type.VEC))
    with pytest.raises(CompileError, match="Vec or a Map"):
        generate_source(parse("(+ 1 2.5)"))
    with pytest.raises(CompileError, match="missing from inputs"):
        generate_source(parse("(+ grads cic)"), inputs=["grads"])
    with pytest.raises(CompileError, match="unknown terminal"):
        generate_source(parse("grads"), inputs=["grads", "nope"])
    with pytest.raises(CompileError, match="twice"):
        generate_source(parse("grads"), inputs=["grads", "grads"])


def test_wrong_input_rank_is_a_readable_error() -> None:
    module = compile_torchscript(parse("(gap G)"))
    with pytest.raises(Exception, match="G must be a Map"):
        module(torch.randn(2, 3))


def test_export_module_is_dynamic_in_n_k_h_w() -> None:
    node = parse("(+ (bcast (topk grads 3)) (norm (* A G)))")
    module = export_program(node).module()
    for n, k, hw in [(1, 1, (1, 1)), (4, 9, (5, 2))]:
        t = Terminals.random(node.terminals(), n=n, k=k, hw=hw)
        assert_agree(module(*[t[name] for name in node.terminals()]), evaluate(node, t))
    assert_agree(python_module(node)(*[t[name] for name in node.terminals()]), evaluate(node, t))


# ---------------------------------------------------------------------------------------------
# Fresh processes: the saved files load without sycam_dsl

FRESH_EXPR = "(+ (* (topk grads 2) (/ 1 3)) (- (gap (* A (relu G))) (norm (- pgrads grads))))"


def _run_fresh(code: str, cwd: Path) -> None:
    """Run ``code`` in a new interpreter that must never import sycam_dsl."""
    prelude = "import sys, torch, warnings\nwarnings.simplefilter('ignore')\n"
    epilogue = "\nassert 'sycam_dsl' not in sys.modules, 'sycam_dsl was imported'\nprint('OK')\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + epilogue], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def _save_case(tmp_path: Path, node: Node) -> None:
    t = Terminals.random(node.terminals(), n=3, k=6, hw=(4, 5), seed=7)
    args = [t[name] for name in node.terminals()]
    acts = torch.relu(torch.randn(3, 6, 4, 5, generator=torch.Generator().manual_seed(1)))
    w = evaluate(node, t)
    torch.save({"args": args, "acts": acts, "w": w, "s": saliency_reference(w, acts)}, tmp_path / "case.pt")


def test_saved_torchscript_loads_without_sycam_dsl(tmp_path: Path) -> None:
    node = parse(FRESH_EXPR)
    save_torchscript(node, tmp_path / "weights.pt")
    _save_case(tmp_path, node)
    _run_fresh("""
        case = torch.load('case.pt')
        extra = {'sycam_dsl/source.py': ''}
        m = torch.jit.load('weights.pt', _extra_files=extra)
        assert b'def forward' in extra['sycam_dsl/source.py']
        w = m(*case['args'])
        assert torch.allclose(w, case['w'], rtol=1e-5, atol=1e-6), (w - case['w']).abs().max()
        s = m.saliency(case['acts'], *case['args'])
        assert s.shape == case['s'].shape
        assert torch.allclose(s, case['s'], rtol=1e-5, atol=1e-6), (s - case['s']).abs().max()
    """, tmp_path)


def test_saved_export_loads_without_sycam_dsl(tmp_path: Path) -> None:
    node = parse(FRESH_EXPR)
    save_export(node, tmp_path / "weights.pt2")
    save_export(node, tmp_path / "saliency.pt2", entry="saliency")
    _save_case(tmp_path, node)
    _run_fresh("""
        case = torch.load('case.pt')
        m = torch.export.load('weights.pt2').module()
        w = m(*case['args'])
        assert torch.allclose(w, case['w'], rtol=1e-5, atol=1e-6), (w - case['w']).abs().max()
        s = torch.export.load('saliency.pt2').module()(case['acts'], *case['args'])
        assert s.shape == case['s'].shape
        assert torch.allclose(s, case['s'], rtol=1e-5, atol=1e-6), (s - case['s']).abs().max()
    """, tmp_path)


def test_compiling_and_saving_emit_no_deprecation_warnings(tmp_path: Path) -> None:
    node = parse("(* (topk grads 2) A)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_torchscript(node)
        save_torchscript(node, tmp_path / "w.pt")
        save_export(node, tmp_path / "w.pt2")
    noisy = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not noisy, [str(w.message) for w in noisy]
