"""The generalization curve (``result.json``'s ``generalization``): every incumbent of a search (over
several metrics, every entry into the front), from its ``history``, scored on the test split after
the search, beside its mean on the searched images; the incumbent best on the test split beside the
chosen one; and one warning line when a later incumbent is worse on the test split than an earlier
one (paired bootstrap, ``metrics.intervals``). The result stays the searched-split winner: choosing
on the test split would leak it. No test split, or a per-class search: no curve (null)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..lang.ast import Node, to_sexpr
from ..lang.sexpr import parse_expr
from ..lang.types import Type
from ..metrics.intervals import paired_bootstrap
from ..metrics.registry import Metric
from ..synthesis.evaluation import method_scores
from ..synthesis.problem import Problem

#: Where the curve's plot is written, relative to the output folder.
PLOT_FILE = "generalization.png"


def _searched(entry: Mapping[str, Any], names: list[str]) -> dict[str, float]:
    """A history entry's means on the searched images, by metric."""
    scores = entry["scores"] if "scores" in entry else [entry["score"]]
    return {n: float(s) for n, s in zip(names, scores)}


def _label(k: int, point: Mapping[str, Any]) -> str:
    """E.g. "incumbent 3 (`(relu g)`, 12.0 s)"."""
    return f"incumbent {k} (`{point['expression']}`, {point['seconds']:.1f} s)"


def overfit_warning(points: Sequence[Mapping[str, Any]], per_image: Sequence[torch.Tensor],
                    higher_is_better: bool) -> str | None:
    """One line when a later incumbent is worse on the test split than the best earlier one (the
    paired bootstrap of their per-image test scores ``per_image``, the later against the earlier, says
    "worse"); it names the last such pair and counts the others. None when there is none."""
    found = []
    for k in range(1, len(points)):
        means = [float(s.mean()) for s in per_image[:k]]
        j = max(range(k), key=lambda i: (_rank(means[i], higher_is_better), -i))
        c = paired_bootstrap(per_image[k], per_image[j], higher_is_better)
        if c.verdict == "worse":
            found.append((k, j, c))
    if not found:
        return None
    k, j, c = found[-1]
    more = f" ({len(found)} later incumbents are worse than an earlier one)" if len(found) > 1 else ""
    return (f"the search overfitted its images: {_label(k, points[k])} is worse on the test split than the earlier "
            f"{_label(j, points[j])} ({c.mean:+.4f}, {100 * c.level:.0f}% CI [{c.low:+.4f}, {c.high:+.4f}] over "
            f"{c.n} images){more}; the result stays the searched-split winner (see {PLOT_FILE})")


def _best(points: Sequence[Mapping[str, Any]], metric: Metric) -> int:
    """The point with the best test mean on ``metric`` (the earliest of equals)."""
    return max(range(len(points)), key=lambda k: (_rank(points[k]["test"][metric.name], metric.higher_is_better),
                                                  -k))


def _rank(mean: float, higher_is_better: bool) -> float:
    """``mean`` as a key that is higher when better; a mean that is not finite is the worst (a NaN
    compares false with everything, so a NaN first would otherwise stay the best)."""
    v = float(mean) if higher_is_better else -float(mean)
    return v if math.isfinite(v) else -math.inf


def generalization(history: Sequence[Mapping[str, Any]], metrics: list[Metric], test: Problem,
                   inputs: Mapping[str, Type], chosen: Node | None) -> dict[str, Any] | None:
    """``result.json``'s ``generalization`` of one search: its ``history`` (over the search
    ``metrics``) scored on the ``test`` split with ``method_scores``, as the final tables score; each
    point's ``versus_previous`` is the paired bootstrap of its per-image test scores against the
    previous point's. ``chosen``: the result (None: nothing scored, and no curve)."""
    if not history or chosen is None:
        return None
    names = [m.name for m in metrics]
    scored: dict[str, dict[str, torch.Tensor]] = {}
    points: list[dict[str, Any]] = []
    for h in history:
        text = h["expression"]
        if text not in scored:
            scored[text] = method_scores(parse_expr(text, inputs, source="<history>"), metrics, test)
        prev = points[-1]["expression"] if points else None
        versus = None if prev is None else {
            m.name: _versus(scored[text][m.name], scored[prev][m.name], m.higher_is_better) for m in metrics}
        points.append({"seconds": float(h["seconds"]), "candidate": h["candidate"], "expression": text,
                       **({"baseline": h["baseline"]} if h.get("baseline") is not None else {}),
                       "search": _searched(h, names), "test": {n: float(scored[text][n].mean()) for n in names},
                       "versus_previous": versus})
    chosen_text = to_sexpr(chosen)
    at = [k for k, p in enumerate(points) if p["expression"] == chosen_text]
    warning = None
    if len(metrics) == 1:  # a front's members trade the metrics off: a later one may well be worse on one
        warning = overfit_warning(points, [scored[p["expression"]][names[0]] for p in points],
                                  metrics[0].higher_is_better)
    return {"metrics": [{"name": m.name, "higher_is_better": m.higher_is_better} for m in metrics],
            "images": test.n, "points": points, "chosen": at[-1] if at else None,
            "best_test": {m.name: _best(points, m) for m in metrics}, "warning": warning}


def _versus(later: torch.Tensor, earlier: torch.Tensor, higher_is_better: bool) -> dict[str, Any]:
    """``versus_previous`` of one metric: ``later`` against ``earlier`` (per-image test scores)."""
    c = paired_bootstrap(later, earlier, higher_is_better)
    return {"mean_difference": c.mean, "low": c.low, "high": c.high, "verdict": c.verdict}


def best_test_line(d: Mapping[str, Any]) -> str | None:
    """The printed summary line: the incumbent best on the test split beside the chosen one, per
    metric (None without a curve)."""
    g = d.get("generalization")
    if not g:
        return None
    parts = []
    for m in g["metrics"]:
        name, best = m["name"], g["best_test"][m["name"]]
        p = g["points"][best]
        chosen = g["chosen"]
        if best == chosen:
            parts.append(f"{name}: the chosen incumbent {best} is also the best on the test split "
                         f"({p['test'][name]:.4g})")
            continue
        mine = "" if chosen is None else f"; the chosen incumbent {chosen}: {g['points'][chosen]['test'][name]:.4g}"
        parts.append(f"{name}: best on the test split is incumbent {best}, `{p['expression']}` "
                     f"({p['test'][name]:.4g}{mine}; the result stays the searched-split winner)")
    return f"generalization ({len(g['points'])} incumbents on {g['images']} test images): " + "; ".join(parts)


def generalization_section(d: Mapping[str, Any]) -> list[str]:
    """``report.md``'s section: the plot, the best-test line and one row per incumbent."""
    g = d.get("generalization")
    if not g:
        return []
    names = [m["name"] for m in g["metrics"]]
    lines = ["## The generalization curve", "",
             f"Each incumbent of the search, scored on the {g['images']} test images after the search "
             "(the result is still the searched-split winner).", ""]
    plot = (d.get("files") or {}).get("generalization")
    if plot:
        lines += [f"![generalization]({plot})", ""]
    lines += [str(best_test_line(d)), "",
              "| # | seconds | candidate | " + " | ".join(f"{n} searched | {n} test" for n in names)
              + " | expression |", "|---:|---:|---:|" + "---:|---:|" * len(names) + "---|"]
    for k, p in enumerate(g["points"]):
        mark = " (chosen)" if k == g["chosen"] else ""
        candidate = p["candidate"] if p["candidate"] is not None else f"baseline: {p.get('baseline')}"
        cells = " | ".join(f"{p['search'][n]:.4g} | {p['test'][n]:.4g}" for n in names)
        lines.append(f"| {k}{mark} | {p['seconds']:.1f} | {candidate} | {cells} | `{p['expression']}` |")
    return lines + [""]


def save_curve(g: Mapping[str, Any], path: Any, end: float | None = None) -> None:
    """``generalization.png`` from ``result.json``'s ``generalization`` ``g`` (``end``: when the search
    stopped)."""
    from .figures import save_generalization_plot

    names = [m["name"] for m in g["metrics"]]
    points = g["points"]
    save_generalization_plot([p["seconds"] for p in points], {n: [p["search"][n] for p in points] for n in names},
                             {n: [p["test"][n] for p in points] for n in names},
                             {m["name"]: m["higher_is_better"] for m in g["metrics"]}, path, g["chosen"],
                             g["best_test"], end)
