"""One terminal table (``sycam_dsl.lang.terminals``): each terminal's type, meaning, the pass that
computes it and whether it needs a backward pass, in one place; every consumer derives from it.

Each consumer is checked two ways: its sets equal the table's, and (where it reads the table when
it runs) a changed table changes what it does, so that a consumer that spells a fact out again
fails here."""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sycam_dsl.cam import compute, store
from sycam_dsl.cam.compute import compute_records, prepare_run
from sycam_dsl.cam.gradient_pass import recorded_gradients
from sycam_dsl.cam.store import BadEntry, TerminalStore, compute_terminals_stored, record_keys
from sycam_dsl.deploy import explainer
from sycam_dsl.lang import terminals as table
from sycam_dsl.lang.terminals import (
    ABLATION,
    GRADIENT,
    PASSES,
    SCORECAM,
    TABLE,
    TERMINALS,
    Terminal,
    backward_terminals,
    expensive_groups,
    expensive_terminals,
    needs_backward,
    pass_of,
    pass_of_record,
    passes_for,
    record_fields,
    terminals_of_pass,
)
from sycam_dsl.lang.types import Type
from sycam_dsl.synthesis import on_demand
from sycam_dsl.synthesis.on_demand import TerminalSource
from tests.cam_reference import TinyCNN

ALL = list(TERMINALS)
ROOT = Path(__file__).resolve().parents[1] / "sycam_dsl"


def _tiny() -> tuple[TinyCNN, torch.Tensor]:
    torch.manual_seed(0)
    return TinyCNN().eval(), torch.randn(2, 3, 32, 32)


# -- the table itself ---------------------------------------------------------------------------------

def test_the_table_holds_each_terminal_once_with_its_pass():
    assert list(TABLE) == ["grads", "pgrads", "cic", "abl", "mlogits", "acts", "G", "A"]
    assert TERMINALS == {n: (t.type, t.meaning) for n, t in TABLE.items()}
    assert all(t.computed_by in PASSES for t in TABLE.values())
    assert [p.record for p in PASSES] == ["base", "cic", "abl"]  # store keys: never renamed
    assert {n: pass_of(n) for n in ALL} == {"grads": GRADIENT, "pgrads": GRADIENT, "cic": SCORECAM, "abl": ABLATION,
                                            "mlogits": SCORECAM, "acts": GRADIENT, "G": GRADIENT, "A": GRADIENT}


def test_the_facts_the_table_states():
    assert terminals_of_pass(SCORECAM) == ("cic", "mlogits")  # one ScoreCAM pass gives both
    assert terminals_of_pass(ABLATION) == ("abl",)
    assert expensive_terminals() == {"cic", "mlogits", "abl"}
    assert expensive_groups() == [("cic", "mlogits"), ("abl",)]
    assert backward_terminals() == {"grads", "pgrads", "G"}
    assert needs_backward(["acts", "G"]) and not needs_backward(["cic", "abl", "acts", "A", "mlogits"])
    assert passes_for(["mlogits"]) == (GRADIENT, SCORECAM)
    assert passes_for(["abl", "grads"]) == (GRADIENT, ABLATION)
    assert {p.record: record_fields(p) for p in PASSES} == {
        "base": ("A", "logits", "targets"), "cic": ("cic", "mlogits"), "abl": ("abl", "ablated_logits", "abl_method")}
    assert all(pass_of_record(p.record) == p for p in PASSES)


def test_a_new_terminal_joins_its_pass_everywhere(monkeypatch):
    monkeypatch.setitem(TABLE, "smax", Terminal(Type.VEC, "softmax of mlogits", SCORECAM))
    assert terminals_of_pass(SCORECAM) == ("cic", "mlogits", "smax")
    assert "smax" in expensive_terminals() and ("cic", "mlogits", "smax") in expensive_groups()
    assert record_fields(SCORECAM) == ("cic", "mlogits", "smax")
    assert passes_for(["smax"]) == (GRADIENT, SCORECAM)


#: The modules that implement a pass name what it yields (``test_each_record_holds_its_pass_terminals_and_fields``
#: checks their records against the table).
PASS_MODULES = {ROOT / "cam" / f"{name}_pass.py" for name in ("gradient", "scorecam", "ablation")}


def test_no_consumer_spells_out_a_pass_group():
    """The table's groups are not written again as literals: a tuple, list or set of names holding two
    terminals of one pass (``("cic", "mlogits")``, ``{"grads", "pgrads", "G"}``) outside the table."""
    groups = [terminals_of_pass(p) for p in PASSES] + [tuple(backward_terminals())]
    found = []
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "lang" / "terminals.py" or path in PASS_MODULES:
            continue
        text = path.read_text()
        for literal in re.findall(r"[\(\[{]([^()\[\]{}\n]*)[\)\]}]", text):
            if not re.fullmatch(r'\s*"\w+"(\s*,\s*"\w+")*\s*,?\s*', literal):
                continue  # not a collection of names (a dict of values, a call's arguments)
            names = set(re.findall(r"\"(\w+)\"", literal))
            if any(len(names & set(g)) >= 2 for g in groups):
                found.append(f"{path.relative_to(ROOT)}: {literal.strip()}")
    assert not found, found


# -- the engine (cam.compute) ---------------------------------------------------------------------------

def test_the_engine_record_kinds_and_passes_come_from_the_table(monkeypatch):
    assert (compute.BASE, compute.CIC, compute.ABL) == tuple(p.record for p in PASSES)
    model, x = _tiny()
    assert prepare_run(model, "features", x, None, ["mlogits"], progress=False).kinds == ("base", "cic")
    assert prepare_run(model, "features", x, None, ["abl", "acts"], progress=False).kinds == ("base", "abl")
    monkeypatch.setitem(TABLE, "abl", replace(TABLE["abl"], computed_by=SCORECAM))
    assert prepare_run(model, "features", x, None, ["abl"], progress=False).kinds == ("base", "cic")


def test_each_record_holds_its_pass_terminals_and_fields():
    """What each pass's records hold, computed for every terminal, is the table's grouping."""
    model, x = _tiny()
    run = prepare_run(model, "features", x, None, ALL, chunk_size=4, progress=False)
    records: dict[str, list[compute.Record | None]] = {kind: [None] * run.n for kind in run.kinds}
    compute_records(run, records)
    for p in PASSES:
        record = records[p.record][0]
        assert record is not None
        assert set(record_fields(p)) <= record.keys()
        stored = {n for n in terminals_of_pass(p) if TABLE[n].derived_from is None}
        assert record.keys() & set(TERMINALS) == stored
        assert record.keys() - set(TERMINALS) == set(p.byproducts)


def test_the_gradient_pass_records_backward_terminals_only():
    assert all(recorded_gradients([n]) <= backward_terminals() for n in ALL)
    assert recorded_gradients(ALL) == backward_terminals()
    assert all(not recorded_gradients([n]) for n in ALL if not TABLE[n].backward)


# -- the store (cam.store) -----------------------------------------------------------------------------

def test_the_store_checks_the_table_fields(tmp_path, monkeypatch):
    model, x = _tiny()
    st = TerminalStore(tmp_path)
    compute_terminals_stored(model, "features", x, None, ["cic"], progress=False, store=st)
    run = prepare_run(model, "features", x, None, ["cic"], progress=False)
    key = record_keys(run, x)["cic"][0]
    assert set(st.load(key) or {}) == set(record_fields(SCORECAM))
    assert not hasattr(store, "_FIELDS")
    # a table whose ScoreCAM pass gives one more terminal: the old entry lacks it, so it is not used
    monkeypatch.setitem(TABLE, "smax", Terminal(Type.VEC, "softmax of mlogits", SCORECAM))
    with pytest.raises(BadEntry, match="not the entry of its key"):
        st.load(key)


# -- terminals on demand (synthesis.on_demand) -----------------------------------------------------------

def _source(names: list[str]) -> TerminalSource:
    return TerminalSource(names, {"acts": torch.zeros(4, 3)}, lambda asked, index: {})


def test_on_demand_derives_expensive_and_its_groups(monkeypatch):
    assert on_demand.EXPENSIVE == expensive_terminals()
    source = _source(["acts", "cic", "mlogits", "abl"])
    assert source.group("cic") == ["cic", "mlogits"] and source.group("mlogits") == ["cic", "mlogits"]
    assert source.group("abl") == ["abl"]
    monkeypatch.setattr(table, "TABLE", {**TABLE, "abl": replace(TABLE["abl"], computed_by=SCORECAM)})
    assert _source(["acts", "cic", "mlogits", "abl"]).group("abl") == ["cic", "abl", "mlogits"]


def test_the_search_builds_its_source_with_the_table_groups():
    from sycam_dsl.synthesis import build

    text = inspect.getsource(build)
    assert "EXPENSIVE" in text and "groups=" not in text


# -- the explainer file (deploy.explainer) ---------------------------------------------------------------

def test_the_explainer_inputs_are_the_table_terminals():
    assert explainer.WEIGHT_INPUTS == tuple(TERMINALS)
    assert explainer.GRADIENT_ONLY == set(terminals_of_pass(GRADIENT))
    # TorchScript needs the weights' arguments spelled out: they must be the table's, in its order
    params = list(inspect.signature(explainer._IgnoreClasses.forward).parameters)
    assert params == ["self", "classes", *TERMINALS]
    params = list(inspect.signature(explainer.Explainer.cic).parameters)
    assert params == ["self", "x", "a", "t", "state"]


@pytest.mark.parametrize("names", [["grads"], ["mlogits"], ["abl", "acts"], ["A"], ALL])
def test_the_explainer_runs_the_passes_the_table_names(names):
    e = explainer.Explainer(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity(), names, vec=True)
    passes = passes_for(names)
    assert (e.need_grad, e.need_cic, e.need_abl) == (needs_backward(names), SCORECAM in passes, ABLATION in passes)


def test_the_explainer_follows_a_changed_table(monkeypatch):
    monkeypatch.setitem(TABLE, "abl", replace(TABLE["abl"], computed_by=SCORECAM))
    e = explainer.Explainer(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity(), ["abl"], vec=True)
    assert e.need_cic and not e.need_abl
