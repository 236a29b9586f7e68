"""What a synthesis run gives: the ``Result`` that ``synthesize`` returns, the ``RunRecord`` of
everything the output folder is written from, and the content of ``result.json`` (``result_data``;
see ``result.schema.json`` for its fields)."""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..baselines import BASELINE_EXPRESSIONS, SEARCH_BASELINES, baseline
from ..cam.sanity import check_warnings
from ..errors import SycamError
from ..lang.ast import Node, to_sexpr
from ..metrics.compare import Row
from ..metrics.controls import control_warnings, is_control
from ..metrics.intervals import PairedComparison, family_verdicts, paired_bootstrap
from ..metrics.registry import Metric
from ..models import LoadedModel
from ..parse.grammar import Grammar
from ..synthesis.dispatch import Dispatch
from ..synthesis.evaluation import Method, method_warnings
from ..synthesis.front import column_means, covers
from ..synthesis.incumbent import better, in_grammar, not_chosen_reason
from ..synthesis.on_demand import OnDemandTerminals
from ..synthesis.oracle import SMALL_LEVEL
from ..synthesis.per_class import ClassSearch
from ..synthesis.problem import Data, Problem
from ..synthesis.search import SearchOutcome
from ..synthesis.split import Split
from ..version import __version__

#: The synthesized method's name in the tables.
SYCAM = "SyCAM"
SCHEMA_ID = "sycam-dsl/result/1"


@dataclass
class Result:
    """What ``synthesize`` returns (and ``result.json`` holds, as ``data``).

    ``best``: the synthesized expression (for a per-class result, the fallback); ``dispatch``: the
    per-class expressions when ``per_class``; ``tables``: one comparison table per report metric
    (SyCAM and the baselines) on the test split, or on the searched images when the split is off;
    ``search_tables``: the same on the searched images when there is a test split (else None);
    ``out_dir``: where the files were written; ``front``: a search over several metrics: the Pareto
    front's expressions (``best`` is the one at ``knee``, the suggested trade-off)."""

    best: Node | None
    dispatch: Dispatch | None
    tables: list[tuple[Metric, list[Row]]]
    data: dict[str, Any]
    out_dir: Path | None = None
    outcomes: list[SearchOutcome] = field(default_factory=list)
    search_tables: list[tuple[Metric, list[Row]]] | None = None
    front: list[Node] = field(default_factory=list)
    knee: int | None = None

    @property
    def searched_tables(self) -> list[tuple[Metric, list[Row]]]:
        """The tables on the searched images (with or without a test split)."""
        return self.search_tables if self.search_tables is not None else self.tables

    @property
    def expression(self) -> str | None:
        return None if self.best is None else to_sexpr(self.best)

    def table(self) -> str:
        """The comparison tables as text: the test split's first, then the searched images' and the
        gap between them (only the searched images' when the split is off)."""
        from ..metrics.compare import format_table

        n = self.data["images"]["evaluated"]
        text = "\n\n".join(format_table(rows, m, n) for m, rows in self.tables)
        intervals = comparison_lines(self.data)
        if intervals:
            text += "\n\n" + "\n".join(intervals)
        if self.search_tables is None:
            return text
        searched = self.data["images"]["searched"]
        search_text = "\n\n".join(format_table(rows, m, searched) for m, rows in self.search_tables)
        gap = self.data["test_split"]["gap"]
        lines = [f"test split: {n} images the search never saw", "", text, "",
                 f"search split: the {searched} images searched", "", search_text]
        if gap:
            lines += ["", f"gap of {SYCAM} (search split - test split): "
                      + ", ".join(f"{k} {v:+.4f}" for k, v in gap.items())]
        return "\n".join(lines)

    def member(self, member: int | str | None = None) -> Node:
        """Front member ``member`` (an index, or ``"knee"``/None for the knee member); the result itself
        without a front (only None or ``"knee"`` then)."""
        if self.best is None:
            raise SycamError("the search scored no candidate, so there is nothing to compile")
        return self.best if member in (None, "knee") else self.front[front_index(member, len(self.front))]

    def compile(self, member: int | str | None = None) -> torch.jit.ScriptModule:
        """The TorchScript module of the result (a class dispatch for a per-class result; a front's
        ``member``, default its knee)."""
        node = self.member(member)
        if self.dispatch is not None:
            from ..backend.dispatch_module import compile_dispatch
            return compile_dispatch(self.dispatch.per_class, self.dispatch.fallback)
        from ..backend import compile_torchscript
        return compile_torchscript(node)


def front_index(member: Any, size: int) -> int:
    """``member`` (an index or its text) as an index into a front of ``size`` members; a one-line error
    when it is not one."""
    try:
        k = int(member)
    except (TypeError, ValueError):
        raise SycamError(f"front member {member!r}: give its number (0 to {size - 1}) or knee") from None
    if not 0 <= k < size:
        raise SycamError(f"front member {k}: the front has {size} member(s)" +
                         (f", numbered 0 to {size - 1}" if size else " (the result has no front)"))
    return k


@dataclass
class RunRecord:
    """Everything the output folder of one run is written from: the ``result``; the ``model``, the
    ``data`` and the ``problem`` of all images (``eval_problem``: the searched images of the
    final tables);
    the ``grammar``; the per-class ``searches`` (empty for one search) and why the search stopped
    (``stopped_by``); ``settings`` and ``timings`` for ``result.json``; ``t_start`` the run's
    ``time.perf_counter()`` start; ``report_images`` rows of the heatmap grid; ``search_problem``
    the images searched (None: all), ``test_problem`` the test split's (None: off), ``split`` the
    split and ``stratified_by`` what it was stratified by; ``sanity`` the randomization check's
    figures (``cam.sanity.check_result``; None: not run); ``workers``: the Ray workers' count and
    restarts (None: one process); ``front_test``: each front member's means on the test split (None:
    no front, or no test split); ``generalization``: the curve (``generalization.py``; None: none)."""

    result: Result
    model: LoadedModel
    data: Data
    problem: Problem
    eval_problem: Problem
    grammar: Grammar
    searches: list[ClassSearch]
    stopped_by: str
    settings: dict[str, Any]
    timings: dict[str, float]
    t_start: float
    report_images: int
    search_problem: Problem | None = None
    test_problem: Problem | None = None
    split: Split | None = None
    stratified_by: str = "label"
    sanity: dict[str, Any] | None = None
    workers: dict[str, int] | None = None
    front_test: list[dict[str, float]] | None = None
    generalization: dict[str, Any] | None = None

    @property
    def searched(self) -> Problem:
        return self.search_problem if self.search_problem is not None else self.problem


def versions() -> dict[str, str]:
    import lark
    import numpy
    import sympy
    import torchvision
    return {"sycam_dsl": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "sympy": sympy.__version__, "lark": lark.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def _counts(outcomes: list[SearchOutcome]) -> dict[str, Any]:
    out: dict[str, Any] = {"enumerated": 0, "duplicates": 0, "canonical_pruned": 0, "equivalence_pruned": 0,
                           "considered": 0, "heatmap_equivalent": 0, "invalid": 0, "scored": {}, "rejected": {},
                           "accepted": 0, "restarts": 0}
    for o in outcomes:
        out["restarts"] += o.enumeration.get("restarts", 0)
        total = o.enumeration.get("total", {})
        out["enumerated"] += total.get("generated", 0)
        out["duplicates"] += total.get("duplicates", 0)
        out["canonical_pruned"] += total.get("canonical", 0)
        out["equivalence_pruned"] += total.get("equivalent", 0)
        c = o.state.counts
        for key in ("considered", "heatmap_equivalent", "invalid", "accepted"):
            out[key] += getattr(c, key)
        for key in ("scored", "rejected"):
            for level, v in getattr(c, key).items():
                out[key][level] = out[key].get(level, 0) + v
    return out


def _engine(problem: Problem) -> dict[str, Any]:
    """The memoized Deletion / Insertion cache's statistics (search and final tables together), and
    the terminals computed on demand (per group: images and seconds; None when computed up front)."""
    terms = problem.terminals
    work = terms.source.work if isinstance(terms, OnDemandTerminals) else None
    on_demand = None if work is None else {k: {"images": work.images[k], "seconds": work.seconds[k]}
                                           for k in work.images}
    memo = problem.inputs.memo
    if memo is None:
        return {"memo": None, "on_demand": on_demand}
    st = memo.stats
    return {"memo": {"hits": st.hits, "misses": st.misses, "deduplicated": st.deduplicated,
                     "evictions": st.evictions, "hit_rate": st.hit_rate, "entries": len(memo),
                     "megabytes": memo.bytes / 2**20, "max_megabytes": memo.max_bytes / 2**20},
            "on_demand": on_demand}


#: How ``pareto.knee`` picks the suggested member (for result.json and the report).
KNEE_RULE = ("the member closest to the ideal point (each metric's best value among the members), each metric "
             "divided by the baselines' range on the searched images")


def front_part(o: SearchOutcome, test: list[dict[str, float]] | None = None) -> dict[str, Any] | None:
    """``result.json``'s ``front`` of a search over several metrics (None for one metric): each member's
    means on the searched images (``I1``) and the test split, when it entered and what it evicted, the
    baselines' means on the searched images, and the knee."""
    if not o.front:
        return None
    metrics = o.metrics
    names = [m.name for m in metrics]
    baselines = {b: dict(zip(names, column_means(v)))
                 for b, v in o.state.baselines.items()}
    return {"metrics": [{"name": m.name, "options": dict(m.options), "higher_is_better": m.higher_is_better}
                        for m in metrics],
            "knee": o.knee, "knee_rule": KNEE_RULE,
            "members": [{"expression": f.expression, "knee": k == o.knee, "search": dict(zip(names, f.means)),
                         "test": test[k] if test is not None else None,
                         "entered": {"seconds": f.seconds, "candidate": f.candidate, "baseline": f.baseline},
                         "evicted": list(f.evicted)} for k, f in enumerate(o.front)],
            "baselines": baselines}


def _search_part(o: SearchOutcome) -> dict[str, Any]:
    """The fields one search contributes (per class for a per-class result)."""
    return {"expression": to_sexpr(o.best) if o.best is not None else None, "front": front_part(o),
            "level_scores": o.level_means,
            "levels": [{"name": n, "size": s} for n, s in zip(o.level_names, o.subsets.level_sizes)],
            "history": list(o.state.history), "stopped_by": o.stopped_by, "seconds": o.seconds,
            "counts": _counts([o])}


def _warnings(record: RunRecord) -> list[str]:
    """Methods of the final tables whose heatmaps mean little (``evaluation.method_warnings``)."""
    r = record.result
    methods: dict[str, Method] = {b: baseline(b).node for b in SEARCH_BASELINES}
    sycam = r.dispatch if r.dispatch is not None else r.best
    if sycam is not None:
        methods[SYCAM] = sycam
    split_warning = [record.split.warning] if record.split is not None and record.split.warning else []
    shown = record.test_problem if record.test_problem is not None else record.eval_problem
    sanity = record.sanity
    sanity_warning = [] if sanity is None else (
        [f"sanity check not run: {sanity['error']}"] if "error" in sanity else check_warnings(sanity))
    outcomes = r.outcomes if r.dispatch is None else []
    front_warning = [f"the Pareto front has one member, {outcomes[0].front[0].expression}: no trade-off between "
                     f"{', '.join(m.name for m in outcomes[0].metrics)} was found among the candidates scored"]\
        if outcomes and len(outcomes[0].front) == 1 else []
    return split_warning + front_warning + method_warnings(methods, shown) + sanity_warning


def _evaluation(tables: list[tuple[Metric, list[Row]]]) -> list[dict[str, Any]]:
    """``result.json``'s form of comparison tables. (A bootstrap interval of each mean would go
    here, per method, next to ``mean``.)"""
    return [{"metric": m.name, "options": dict(m.options), "higher_is_better": m.higher_is_better,
             "methods": [{"name": r.name, "expression": r.expression, "mean": r.mean, "best_share": r.best_share,
                          "control": r.control} for r in rs]} for m, rs in tables]


def comparisons(tables: list[tuple[Metric, list[Row]]], keep: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Per metric, the synthesized method against each other method of the table on the same images:
    the mean per-image improvement with its seeded 95% percentile-bootstrap interval (10,000
    resamples, ``metrics.intervals``), the share of images where it is better, the per-comparison
    verdict ("better" only when the interval excludes 0 in the metric's better direction), and the
    family-wise verdict over all the comparisons of this call (Holm on the bootstrap p-values), which
    the sentence states. The control maps' comparisons are a family of their own
    (docs/search.md#control-maps), so controls change no verdict against a method. ``keep``: a boolean
    ``[n]`` over the tables' images to compare on only some of them (one class's); none kept gives no
    comparison."""
    found: list[tuple[Metric, list[tuple[str, PairedComparison]]]] = []
    for m, rows in tables:
        by_name = {r.name: r for r in rows}
        if SYCAM not in by_name:
            continue

        def scores(row: Row) -> torch.Tensor:
            t = torch.tensor(row.per_image, dtype=torch.float64)
            return t if keep is None else t[keep]

        ours = scores(by_name[SYCAM])
        if ours.numel() == 0:
            continue
        found.append((m, [(r.name, paired_bootstrap(ours, scores(r), m.higher_is_better)) for r in rows
                          if r.name != SYCAM]))
    flat = {kind: [c for _, pairs in found for name, c in pairs if is_control(name) == kind]
            for kind in (False, True)}
    family = {kind: iter(family_verdicts(cs)) for kind, cs in flat.items()}
    out = []
    for m, pairs in found:
        versus = []
        for name, c in pairs:
            verdict, p_holm = next(family[is_control(name)])
            size = len(flat[is_control(name)])
            said = c.sentence(SYCAM, name, (verdict, p_holm, size))
            versus.append({"method": name, "mean_difference": c.mean, "low": c.low, "high": c.high,
                           "level": c.level, "better_share": c.better_share, "images": c.n, "verdict": c.verdict,
                           "p_value": c.p_value, "p_holm": p_holm, "family_size": size,
                           "family_verdict": verdict, "control": is_control(name), "sentence": said})
        out.append({"metric": m.name, "higher_is_better": m.higher_is_better, "versus": versus})
    return out


def comparison_lines(data: dict[str, Any]) -> list[str]:
    """The sentences of ``result.json``'s ``comparisons``, one per metric and method; for a
    per-class result, then per class (the search metric's, on that class's images)."""
    comps = data.get("comparisons") or []
    if not comps:
        return []
    where = "the test split" if data.get("evaluation_search") is not None else "these images"
    lines = [f"{SYCAM} against each method on {where} (mean per-image improvement, 95% bootstrap CI; "
             "verdicts hold for all comparisons at once, Holm's correction; the control maps' are a family "
             "of their own):"]
    for comp in comps:
        lines += [f"  {comp['metric']}: {v['sentence']}" for v in comp["versus"]]
    classes = (data.get("per_class") or {}).get("classes") or {}
    for c, part in classes.items():
        first = (part.get("comparisons") or [None])[0]
        if first is None:
            lines.append(f"  class {c}: no image of this class on {where}")
            continue
        lines += [f"  class {c}, {first['metric']}: {v['sentence']}" for v in first["versus"]]
    return lines


def _gap(test: list[tuple[Metric, list[Row]]], searched: list[tuple[Metric, list[Row]]]) -> dict[str, float]:
    """Per metric, the synthesized method's mean on the searched images minus its mean on the test
    split (empty when the search scored no candidate)."""
    out = {}
    for (m, test_rows), (_, search_rows) in zip(test, searched):
        t = {r.name: r.mean for r in test_rows}
        s = {r.name: r.mean for r in search_rows}
        if SYCAM in t and SYCAM in s:
            out[m.name] = s[SYCAM] - t[SYCAM]
    return out


def _test_split(record: RunRecord) -> dict[str, Any]:
    """``result.json``'s ``test_split``: the fraction asked for, the held-out images (positions in
    the image set and files), what stratified them, the gap and why the split is off if it is."""
    split, test = record.split, record.test_problem
    index = [] if test is None else [int(i) for i in test.index.tolist()]
    r = record.result
    return {"fraction": split.fraction if split is not None else 0.0, "images": len(index),
            "indices": index, "files": [record.data.files[i] for i in index],
            "stratified_by": record.stratified_by if index else None,
            "gap": _gap(r.tables, r.search_tables) if r.search_tables is not None else None,
            "warning": split.warning if split is not None else None}


def _not_chosen(record: RunRecord) -> list[dict[str, str]]:
    """The baselines the search metric's final table shows better on average than the result, each with
    why the search did not return it (``incumbent.not_chosen_reason``)."""
    metric, rows = record.result.tables[0]
    by_name = {r.name: r for r in rows}
    if SYCAM not in by_name:
        return []
    mean = by_name[SYCAM].mean
    outcomes = record.result.outcomes
    single = outcomes[0] if record.result.dispatch is None and outcomes else None
    out = []
    for r in rows:
        if r.name == SYCAM or r.name not in BASELINE_EXPRESSIONS or not better(r.mean, mean, metric.higher_is_better):
            continue
        if single is not None and single.front:
            out.append({"method": r.name, "reason": front_reason(r.name, record.grammar, single)})
            continue
        scores = single.state.baselines.get(r.name) if single is not None else []
        inc = single.state.incumbent if single is not None else None
        reason = not_chosen_reason(r.name, record.grammar, single.level_names if single else [], scores,
                                   inc.blocks if inc is not None else None, metric.higher_is_better,
                                   single.baseline_check if single else True,
                                   single.small_level if single else SMALL_LEVEL)
        out.append({"method": r.name, "reason": reason})
    return out


def front_reason(name: str, grammar: Grammar, o: SearchOutcome) -> str:
    """Why baseline ``name``, better than the knee member on the first metric, is not the result of a
    search over several metrics."""
    if in_grammar(grammar, name) is None:
        return f"not in the grammar {grammar.source} (the search cannot derive `{baseline(name).expression}`)"
    for k, f in enumerate(o.front):
        if f.baseline == name:
            return f"in the front (member {k}); the knee member {o.knee} is the suggested trade-off"
    if name not in o.state.baselines:
        return "in the grammar, but the search was interrupted before scoring it"
    scores = o.state.baselines[name]
    means = column_means(scores)
    for k, f in enumerate(o.front):
        if covers(f.means, means, [m.higher_is_better for m in o.metrics]):
            return (f"in the grammar, but front member {k} is at least as good on every metric on the searched "
                    f"images (I1)")
    return "in the grammar; the search did not check the baselines at the end (baseline_check off)"


def _class_comparisons(record: RunRecord, cls: int) -> dict[str, Any]:
    """A per-class search's ``comparisons`` on the final tables' images of its class (the test
    split's, predicted class), and how many there are."""
    shown = record.test_problem if record.test_problem is not None else record.eval_problem
    keep = shown.targets.cpu() == cls
    return {"evaluated": int(keep.sum()), "comparisons": comparisons(record.result.tables, keep)}


def result_data(record: RunRecord) -> dict[str, Any]:
    """The content of ``result.json`` (its ``files`` empty and ``timings`` without the total: what
    writing the output folder adds)."""
    result, grammar, searches = record.result, record.grammar, record.searches
    tables = result.tables
    metric, rows = tables[0]
    by_name = {r.name: r for r in rows}
    outcomes = result.outcomes
    single = outcomes[0] if result.dispatch is None and outcomes else None
    d: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "expression": result.expression,
        "type": str(result.best.type) if result.best is not None else None,
        "metric": {"name": metric.name, "options": dict(metric.options), "higher_is_better": metric.higher_is_better},
        "grammar": {"source": grammar.source, "inputs": list(grammar.inputs), "start": grammar.start.name},
        "stopped_by": record.stopped_by,
        "level_scores": single.level_means if single else None,
        "levels": _search_part(single)["levels"] if single else None,
        "history": list(single.state.history) if single else
        [dict(h, **{"class": s.cls}) for s in searches for h in s.outcome.state.history],
        "per_class": None,
        "front": front_part(single, record.front_test) if single else None,
        "baselines": [{"name": b, "expression": baseline(b).expression, "score": by_name[b].mean}
                      for b in SEARCH_BASELINES if b in by_name],
        "evaluation": _evaluation(tables),
        "comparisons": comparisons(tables),
        "evaluation_search": _evaluation(result.search_tables) if result.search_tables is not None else None,
        "test_split": _test_split(record),
        "generalization": record.generalization,
        "counts": _counts(outcomes),
        "timings": {**record.timings,
                    "enumeration_s": sum(o.enumeration.get("seconds", 0.0) for o in outcomes),
                    "scoring_s": sum(o.state.scoring_seconds for o in outcomes)},
        "images": {"total": record.problem.n,
                   "evaluated": record.test_problem.n if record.test_problem is not None else record.eval_problem.n,
                   "searched": record.searched.n, "source": record.data.source},
        "engine": {**_engine(record.problem), "workers": record.workers},
        "warnings": [],
        "not_chosen": _not_chosen(record),
        "sanity": record.sanity,
        "settings": record.settings,
        "versions": versions(),
        "files": {},
    }
    d["warnings"] = _warnings(record) + control_warnings(d["evaluation"], d["comparisons"])
    if record.generalization is not None and record.generalization["warning"]:
        d["warnings"].append(record.generalization["warning"])
    if result.dispatch is not None:
        d["per_class"] = {
            "fallback": to_sexpr(result.dispatch.fallback),
            "classes": {str(s.cls): {**_search_part(s.outcome), "images": int(s.index.numel()),
                                     **_class_comparisons(record, s.cls)} for s in searches},
        }
    return d
