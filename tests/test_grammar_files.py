"""Grammar files (docs/language.md#grammar-files): the shipped grammars, and one test per kind of error.

Every error test pins the exact ``file:line:col`` prefix and checks that the message says what
was expected, so a wrong location or a vague message fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sycam_dsl.errors import GrammarError
from sycam_dsl.lang.ast import CONST, HOLE, OP, VAR, Node
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import terminal_types
from sycam_dsl.lang.types import Type
from sycam_dsl.parse import Grammar, load_grammar, parse_grammar
from sycam_dsl.parse.grammar import DEFAULT_REAL_CONSTANTS

GRAMMARS = Path(__file__).resolve().parent.parent / "grammars"


# --------------------------------------------------------------------------- helpers


def derivable(term: Node, nt: str, grammar: Grammar, _active: frozenset = frozenset()) -> bool:
    """Whether ``term`` is a complete term of non-terminal ``nt``: a small recursive matcher of the
    term against the productions, independent of the enumerator. ``_active`` cuts unit cycles."""
    key = (term, nt)
    if key in _active:
        return False
    active = _active | {key}
    return any(_matches(term, p.template, grammar, active) for p in grammar.nonterminals[nt].productions)


def _matches(term: Node, tmpl: Node, grammar: Grammar, active: frozenset) -> bool:
    if tmpl.kind == HOLE:
        return term.type == tmpl.type and derivable(term, tmpl.head, grammar, active)
    if tmpl.kind in (VAR, CONST):
        return term == tmpl
    assert tmpl.kind == OP
    return (term.kind == OP and term.head == tmpl.head and len(term.args) == len(tmpl.args)
            and all(_matches(a, b, grammar, active) for a, b in zip(term.args, tmpl.args)))


def expr(text: str) -> Node:
    return parse_expr(text, terminal_types())


def error(text: str, **kw) -> GrammarError:
    with pytest.raises(GrammarError) as info:
        parse_grammar(text, "f.sy", **kw)
    return info.value


def assert_error(text: str, where: str, *expected: str) -> GrammarError:
    """``where`` is ``LINE:COL``; each of ``expected`` must appear in the message."""
    e = error(text)
    assert str(e).startswith(f"f.sy:{where}: "), str(e)
    assert f"{e.line}:{e.column}" == where and e.source == "f.sy"
    for part in expected:
        assert part in e.message, (part, str(e))
    return e


def templates(g: Grammar, nt: str) -> list[str]:
    return [str(p) for p in g.nonterminals[nt].productions]


# --------------------------------------------------------------------------- shipped grammars


@pytest.mark.parametrize("name", ["g1.sy", "g2.sy", "maps.sy"])
def test_shipped_grammar_loads(name):
    g = load_grammar(GRAMMARS / name)
    assert g.name == "weights"
    assert g.source == str(GRAMMARS / name)
    assert g.start is next(iter(g.nonterminals.values()))
    assert g.start.type == g.output
    assert all(nt.productions for nt in g.nonterminals.values())
    assert g.summary().startswith(str(GRAMMARS / name))


def test_g1_inputs_and_nonterminals():
    g = load_grammar(GRAMMARS / "g1.sy")
    assert g.inputs == {"grads": Type.VEC, "pgrads": Type.VEC}
    assert g.output == Type.VEC
    assert [(n.name, n.type) for n in g.nonterminals.values()] == [("E", Type.VEC), ("C", Type.REAL)]
    assert templates(g, "E") == ["grads", "pgrads", "(+ E E)", "(- E E)", "(* E E)", "(/ E E)",
                                 "(relu E)", "(* C E)"]
    # (Constant Real) expands to the default pool
    assert [p.template.head for p in g.nonterminals["C"].productions] == list(DEFAULT_REAL_CONSTANTS)
    assert derivable(expr("grads"), "E", g) and derivable(expr("pgrads"), "E", g)
    assert derivable(expr("(* 0.5 (relu (- grads pgrads)))"), "E", g)
    assert not derivable(expr("cic"), "E", g)
    assert not derivable(expr("(* 0.25 grads)"), "E", g)  # 0.25 is not in the default pool


def test_g2_inputs_nonterminals_and_classic_methods():
    g = load_grammar(GRAMMARS / "g2.sy")
    assert g.inputs == {"grads": Type.VEC, "pgrads": Type.VEC, "cic": Type.VEC, "abl": Type.VEC}
    assert g.output == Type.VEC
    assert [(n.name, n.type) for n in g.nonterminals.values()] == [("E", Type.VEC), ("T", Type.VEC)]
    assert templates(g, "T") == ["grads", "pgrads", "cic", "abl", "(topk grads 1)", "(topk grads 5)",
                                 "(topk grads 10)"]
    for method in ("grads", "pgrads", "cic", "abl"):  # GradCAM, GradCAM++, ScoreCAM, AblationCAM
        assert derivable(expr(method), "E", g), method
    assert derivable(expr("(/ (relu cic) (+ abl (topk grads 5)))"), "E", g)
    assert not derivable(expr("(topk grads 2)"), "E", g)
    assert not derivable(expr("acts"), "E", g)


def test_maps_inputs_nonterminals_and_map_methods():
    g = load_grammar(GRAMMARS / "maps.sy")
    assert g.inputs == {"G": Type.MAP, "A": Type.MAP}
    assert g.output == Type.MAP
    assert [(n.name, n.type) for n in g.nonterminals.values()] == [("M", Type.MAP), ("V", Type.VEC)]
    assert templates(g, "M") == ["G", "A", "(relu M)", "(* M M)", "(+ M M)", "(bcast V)"]
    assert templates(g, "V") == ["(gap M)", "(/ V V)", "(relu V)"]
    xgradcam = expr("(bcast (/ (gap (* A G)) (gap A)))")
    hirescam = expr("G")
    layercam = expr("(relu G)")
    for term in (xgradcam, hirescam, layercam):
        assert term.type == Type.MAP
        assert derivable(term, "M", g), str(term)
    # the matcher can say no
    assert not derivable(expr("(gap G)"), "M", g)          # a Vec, not a Map
    assert not derivable(expr("(sqrt G)"), "M", g)         # no sqrt in maps.sy
    assert not derivable(expr("(bcast (/ (gap A) (gap (* A G) )))"), "V", g)  # Map-typed, V is Vec


def test_comments_and_blank_lines_are_ignored():
    text = "; leading comment (with a paren\n\n(synth-cam w ; name\n ((grads Vec)) ; inputs )\n Vec\n ((E Vec (grads))))\n; trailing"
    g = parse_grammar(text, "f.sy")
    assert g.inputs == {"grads": Type.VEC} and templates(g, "E") == ["grads"]


def test_rules_without_declarations_are_accepted():
    g = parse_grammar("(synth-cam w ((grads Vec)) Vec ((E Vec (grads (relu E)))))", "f.sy")
    assert templates(g, "E") == ["grads", "(relu E)"]


# --------------------------------------------------------------------------- syntax errors


#: A grammar with a Real constant non-terminal, for the constant-pool options.
POOL = "(synth-cam w ((grads Vec)) Vec\n  ((E Vec) (C Real))\n  ((E Vec (grads (* C E)))\n   (C Real ((Constant Real)))))"

#: Grammar texts that must fail to load: (text, LINE:COL of the error, parts of its message).
ERROR_CASES = [
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads # E))))\n', '2:18', ("unexpected character '#'",), id='unexpected_character'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (topk E 5x)))))\n', '2:26', ("unexpected character '5'", 'followed by a space or a parenthesis'), id='number_glued_to_a_symbol_is_an_unexpected_character'),
    # line 3: "  ((E Vec (grads)))))": the 5th ')' (column 21) closes nothing
    pytest.param('(set-logic ALL)\n(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads)))))\n(check-synth)\n', '3:21', ("unexpected ')'", "no '('"), id='stray_closing_paren'),
    pytest.param('(set-logic ALL))', '1:16', ("unexpected ')'",), id='stray_closing_paren_on_first_line'),
    # line 2 "  ((E Vec (grads (relu E)))": the '(' at column 3 (the rule list) stays open
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (relu E)))\n', '2:3', ('never closed', "expected ')'"), id='missing_paren_inside_a_line'),
    pytest.param('', '1:1', ('no synth-cam',), id='empty_file_has_no_synth_cam-1'),
    pytest.param('; only a comment\n\n', '1:1', ('no synth-cam',), id='empty_file_has_no_synth_cam-2'),
    pytest.param('(synth-cam w ((grads Vec) (foo Vec)) Vec\n  ((E Vec (grads))))', '1:28', ("unknown terminal 'foo'", 'known:', 'grads', 'pgrads', 'G'), id='unknown_terminal_in_inputs'),
    pytest.param('(synth-cam w ((grads Vec)\n              (G Vec)) Vec\n  ((E Vec (grads))))', '2:18', ("terminal 'G' has type Map, not Vec",), id='input_with_the_wrong_type'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads cic))))', '2:18', ("terminal 'cic' is not an input", '(cic Vec)'), id='terminal_used_but_not_an_input'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (exp E)))))', '2:19', ("unknown operator 'exp'", 'relu', 'topk'), id='unknown_operator'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (relu E E)))))', '2:19', ("'relu' takes 1 operand, got 2",), id='wrong_arity-1'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (+ E)))))', '2:19', ("'+' takes 2 operands, got 1",), id='wrong_arity-2'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (gap E)))))', '2:19', ('type mismatch', "'gap' expects a Map", 'got (Vec)'), id='type_mismatch_gap_on_a_vec'),
    pytest.param('(synth-cam w ((grads Vec) (G Map)) Vec\n  ((E Vec (grads G))))', '2:18', ('production of type Map', "'E' of type Vec"), id='type_mismatch_map_production_in_a_vec_nonterminal'),
    pytest.param('(synth-cam w ((G Map)) Vec\n  ((M Map (G))))', '2:7', ("start non-terminal 'M' has type Map", 'returns Vec'), id='type_mismatch_start_nonterminal_against_output'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (topk E 0)))))', '2:26', ("operand 2 of 'topk' must be a positive Int, got 0",), id='int_param_not_positive-1'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (pow E -2)))))', '2:25', ('must be a positive Int, got -2',), id='int_param_not_positive-2'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (topk E 2.5)))))', '2:26', ("operand 2 of 'topk' must be an Int, got Real",), id='int_param_not_an_int-1'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (pow E E)))))', '2:25', ("operand 2 of 'pow' must be an Int, got Vec",), id='int_param_not_an_int-2'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (relu F)))))', '2:24', ("unknown terminal or non-terminal 'F'", 'non-terminals: E'), id='undefined_nonterminal'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec) (F Vec))\n  ((E Vec (grads))))', '2:12', ("non-terminal 'F' is declared but has no rule",), id='declared_but_no_rule'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec))\n  ((E Vec (grads F))\n   (F Vec (grads))))', '4:5', ("non-terminal 'F' has a rule but is not declared",), id='rule_but_not_declared'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec) (F Vec))\n  ((E Vec (grads))\n   (F Vec (grads (relu F)))))', '4:5', ("non-terminal 'F' is unreachable from the start symbol 'E'",), id='unreachable_nonterminal'),
    pytest.param('(synth-cam w ((grads Vec)) Vec\n  ((E Vec) (F Vec))\n  ((E Vec (grads (+ E F)))\n   (F Vec ((relu F) (neg F)))))', '4:5', ("non-terminal 'F' derives no finite term",), id='nonterminal_deriving_no_finite_term'),
    pytest.param('(set-logic ALL)\n(check-synth)\n', '1:1', ('no synth-cam declaration',), id='no_synth_cam'),
    pytest.param('(synth-cam w ((grads Vec)) Vec ((E Vec (grads))))\n' + '; again\n' + '(synth-cam w ((grads Vec)) Vec ((E Vec (grads))))\n', '3:1', ('a second synth-cam', 'one function'), id='two_synth_cam-1'),
    pytest.param('(synth-cam w ((grads Vec)) Vec ((E Vec (grads))))\n' + '  ' + '(synth-cam w ((grads Vec)) Vec ((E Vec (grads))))\n'.replace('synth-cam', 'synth-fun'), '2:3', ('a second synth-fun',), id='two_synth_cam-2'),
    pytest.param('(set-logic ALL)\n(declare-var x Vec)\n(synth-cam w ((grads Vec)) Vec ((E Vec (grads))))', '2:2', ("unknown command 'declare-var'", 'synth-cam', 'set-option'), id='unknown_command'),
    pytest.param('\n  synth-cam', '2:3', ('expected a command in parentheses',), id='top_level_atom_is_not_a_command'),
    pytest.param('(set-option :colour (1 2))\n' + POOL, '1:13', ("unknown option ':colour'", ':real-constants'), id='set_option_errors_are_located-1'),
    pytest.param('(set-option :real-constants (0.5 x))\n' + POOL, '1:34', ('expected a number',), id='set_option_errors_are_located-2'),
    pytest.param('(set-option :int-constants (2 0))\n' + POOL, '1:31', ('integers from 1',), id='set_option_errors_are_located-3'),
    pytest.param('(set-option :real-constants ())\n' + POOL, '5:13', ('Real constant pool is empty',), id='set_option_errors_are_located-4'),
    # a Vec hole under bcast can never vary either
    pytest.param('(synth-cam w ((grads Vec) (A Map)) Vec\n  ((E Vec (grads (gsum A) (+ E (gsum (bcast grads)))))))', '2:33', ("'gsum' sums a Map over its positions", 'same at every position', "layer's size"), id='gsum_of_a_position_free_map_in_a_production_is_a_located_error-1'),
    pytest.param('(synth-cam w ((grads Vec) (A Map)) Vec\n  ((E Vec (grads (gsum A) (gsum (bcast E))))))', '2:28', ("'gsum' sums a Map over its positions",), id='gsum_of_a_position_free_map_in_a_production_is_a_located_error-2'),
]


@pytest.mark.parametrize("text, where, expected", ERROR_CASES)
def test_grammar_errors_are_located(text: str, where: str, expected: tuple[str, ...]):
    assert_error(text, where, *expected)


def test_missing_paren_reported_at_the_unclosed_paren_not_at_end_of_file():
    text = ("(set-logic ALL)\n"
            "(set-option :real-constants (0.5 1.0)\n"      # never closed
            "(synth-cam w ((grads Vec)) Vec\n"
            "  ((E Vec (grads (relu E)))))\n"
            "(check-synth)\n")
    e = assert_error(text, "2:1", "never closed", "expected ')'")
    assert e.line != text.count("\n") + 1


# --------------------------------------------------------------------------- terminals and operators


# --------------------------------------------------------------------------- non-terminals


# --------------------------------------------------------------------------- commands


def test_synth_fun_is_a_synonym_of_synth_cam():
    text = "(synth-cam weights ((grads Vec) (cic Vec)) Vec\n ((E Vec))\n ((E Vec (grads cic (* E E)))))"
    a = parse_grammar(text, "f.sy")
    b = parse_grammar(text.replace("synth-cam", "synth-fun"), "f.sy")
    assert (a.name, a.inputs, a.output) == (b.name, b.inputs, b.output)
    assert list(a.nonterminals) == list(b.nonterminals) == ["E"]
    assert templates(a, "E") == templates(b, "E") == ["grads", "cic", "(* E E)"]


# --------------------------------------------------------------------------- constant pools



def consts(g: Grammar, nt: str = "C") -> list:
    prods = g.nonterminals[nt].productions
    assert all(p.template.kind == CONST and p.template.type == Type.REAL for p in prods)
    return [p.template.head for p in prods]


def test_constant_real_uses_the_default_pool():
    assert consts(parse_grammar(POOL, "f.sy")) == list(DEFAULT_REAL_CONSTANTS)


def test_set_option_real_constants_overrides_the_default_pool():
    g = parse_grammar("(set-option :real-constants (0.25 4.0))\n" + POOL, "f.sy")
    assert consts(g) == [0.25, 4.0]
    # Int literals in the pool become Reals
    g = parse_grammar("(set-option :real-constants (3 0.5))\n" + POOL, "f.sy")
    assert consts(g) == [3.0, 0.5] and all(type(c) is float for c in consts(g))


def test_explicit_real_constants_argument_overrides_the_file():
    g = parse_grammar("(set-option :real-constants (0.25 4.0))\n" + POOL, "f.sy", real_constants=[8.0])
    assert consts(g) == [8.0]
    assert consts(parse_grammar(POOL, "f.sy", real_constants=(1.5, 2.5))) == [1.5, 2.5]


# --------------------------------------------------------------------------- load_grammar


def test_load_grammar_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.sy"
    with pytest.raises(GrammarError) as info:
        load_grammar(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "cannot read" in str(info.value)


def test_load_grammar_reports_errors_with_the_file_path(tmp_path):
    path = tmp_path / "bad.sy"
    path.write_text("(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (exp E)))))\n")
    with pytest.raises(GrammarError) as info:
        load_grammar(path)
    assert str(info.value).startswith(f"{path}:2:19: unknown operator 'exp'")


# Regressions for what the parser tests found: each was a crash or a misleading message.

def test_int_nonterminal_productions_must_be_positive():
    text = "(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (topk E K))) (K Int (0 -3))))"
    with pytest.raises(GrammarError) as info:
        parse_grammar(text, "f.sy")
    assert str(info.value).startswith("f.sy:2:39:") and "integers from 1" in str(info.value)


def test_api_constant_pools_are_validated():
    text = "(synth-cam w ((grads Vec)) Vec ((E Vec (grads (topk E (Constant Int))))))"
    with pytest.raises(GrammarError, match="Int constants"):
        parse_grammar(text, "f.sy", int_constants=[0, -2])
    with pytest.raises(GrammarError, match="finite"):
        parse_grammar(text, "f.sy", real_constants=[float("nan")])


def test_start_symbol_is_the_first_declared_nonterminal():
    g = parse_grammar("(synth-cam w ((grads Vec)) Vec ((E Vec) (C Real)) "
                      "((C Real (0.5)) (E Vec (grads (* C E)))))", "f.sy")
    assert g.start.name == "E"


def test_constant_as_an_operand_says_it_must_be_a_whole_production():
    text = "(synth-cam w ((grads Vec)) Vec ((E Vec (grads (+ E (Constant Real))))))"
    with pytest.raises(GrammarError) as info:
        parse_grammar(text, "f.sy")
    assert str(info.value).startswith("f.sy:1:53:") and "whole productions" in str(info.value)


@pytest.mark.parametrize("digits", ["\u0665", "\u0661.\u0665e\u0662"])
def test_only_ascii_digits_are_numbers(digits):
    with pytest.raises(GrammarError, match="unexpected character"):
        parse_grammar(f"(synth-cam w ((grads Vec)) Vec ((E Vec (grads (topk E {digits})))))", "f.sy")


def test_grammar_file_with_byte_order_mark_loads(tmp_path):
    f = tmp_path / "bom.sy"
    f.write_bytes("\ufeff(synth-cam w ((grads Vec)) Vec ((E Vec (grads))))".encode("utf-8"))
    assert load_grammar(f).start.name == "E"


def test_known_type_in_the_wrong_place_is_not_called_unknown():
    with pytest.raises(GrammarError) as info:
        parse_grammar("(synth-cam w ((grads Int)) Vec ((E Vec (grads))))", "f.sy")
    assert "not allowed here" in str(info.value) and "unknown" not in str(info.value)


def test_gsum_over_a_map_nonterminal_loads():
    # M may hold a position-free Map, (bcast E): the enumerator drops those sums, the grammar is fine
    g = parse_grammar("(synth-cam w ((grads Vec) (A Map)) Vec ((E Vec (grads (gsum M))) (M Map (A (bcast E)))))")
    assert [str(p) for p in g.nonterminals["E"].productions] == ["grads", "(gsum M)"]
