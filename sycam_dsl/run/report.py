"""``report.md``: the search's result for people, written from ``result.json``'s data."""

from __future__ import annotations

from typing import Any

from .generalization import generalization_section
from .result import comparison_lines


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def _runtime_line(settings: dict) -> str:
    """Where the forward-only passes ran and at which precision (results before runtimes: torch)."""
    runtime = settings.get("runtime") or {"asked": "torch", "used": "torch"}
    asked = "" if runtime["asked"] == runtime["used"] else f" (asked: {runtime['asked']})"
    return f"{runtime['used']}{asked}, {settings.get('precision', 'fp32')}; gradients in torch, float32"


def _budget(settings: dict[str, Any]) -> str:
    parts = []
    if settings["budget_seconds"] is not None:
        parts.append(f"{settings['budget_seconds']:g} s")
    if settings["budget_candidates"] is not None:
        parts.append(f"{settings['budget_candidates']} candidates")
    return ", ".join(parts) or "none"


def comparison_table(evaluation: dict[str, Any]) -> list[str]:
    """One metric's table: method, mean, share of images where it is best, expression. (An interval
    column for the test split's means would go after ``mean``.)"""
    direction = "higher" if evaluation["higher_is_better"] else "lower"
    means = [m["mean"] for m in evaluation["methods"]]
    best = max(means) if evaluation["higher_is_better"] else min(means)
    lines = [f"**{evaluation['metric']}** ({direction} is better)", "",
             "| method | mean | best on | expression |", "|---|---:|---:|---|"]
    for m in evaluation["methods"]:
        mean = _fmt(m["mean"])
        lines.append(f"| {m['name']} | {'**' + mean + '**' if m['mean'] == best else mean} | "
                     f"{100 * m['best_share']:.1f}% | `{m['expression']}` |")
    return lines + [""]


def _intervals(d: dict[str, Any]) -> list[str]:
    """The paired comparisons of ``result.json`` as a list under the tables they belong to."""
    lines = comparison_lines(d)
    return ([f"**{lines[0]}**", ""] + [f"- {line.strip()}" for line in lines[1:]] + [""]) if lines else []


def _split_line(d: dict[str, Any]) -> str:
    """The report's line on the test split: its size and stratification, or that it is off and why."""
    split = d.get("test_split") or {}
    if split.get("images"):
        return (f"{split['images']} images ({split['fraction']:g} of them, stratified by {split['stratified_by']}) "
                f"held out before the search and scored only in the tables below; {d['images']['searched']} searched")
    if split.get("warning"):
        return str(split["warning"]).removeprefix("test split ")
    return "off (test_split 0); every score is on the searched images"


def _metric_line(d: dict[str, Any], metric: dict[str, Any], opts: str) -> str:
    front = d.get("front") or next((p["front"] for p in ((d.get("per_class") or {}).get("classes") or {}).values()
                                    if p.get("front")), None)
    if front is None:
        return (f"- metric: **{metric['name']}**{f' ({opts})' if opts else ''}, "
                f"{'higher' if metric['higher_is_better'] else 'lower'} is better")
    return "- metrics (their Pareto front): " + ", ".join(
        f"**{m['name']}**" + (f" ({', '.join(f'{k}={v}' for k, v in m['options'].items())})" if m["options"] else "")
        + f", {'higher' if m['higher_is_better'] else 'lower'} is better" for m in front["metrics"])


def front_section(d: dict[str, Any]) -> list[str]:
    """The report's front: each member's means on the searched images and the test split, the knee."""
    front = d["front"]
    names = [m["name"] for m in front["metrics"]]
    test = any(m["test"] is not None for m in front["members"])
    head = " | ".join(f"{n} ({'search' if test else 'searched'})" + (f" | {n} (test)" if test else "")
                      for n in names)
    lines = [f"## Result: the Pareto front ({len(front['members'])} members)", "",
             "No member is beaten on every metric at once by another (on the searched images' means). "
             f"SyCAM in the tables below is the knee member, #{front['knee']}: {front['knee_rule']}.", "",
             f"| # | expression | {head} | entered | file |",
             "|---:|---|" + "---:|" * (len(names) * (2 if test else 1)) + "---|---|"]
    for k, m in enumerate(front["members"]):
        cells = " | ".join(_fmt(m["search"][n]) + (f" | {_fmt(m['test'][n])}" if test and m["test"] else
                                                    (" | -" if test else "")) for n in names)
        entered = m["entered"]
        when = f"baseline {entered['baseline']}" if entered["candidate"] is None else \
            f"candidate {entered['candidate']}, {entered['seconds']:.1f} s"
        knee = " (knee)" if m["knee"] else ""
        lines.append(f"| {k}{knee} | `{m['expression']}` | {cells} | {when} | {m.get('file', '-')} |")
    lines += ["", "Baselines on the searched images: " + "; ".join(
        f"{b} " + ", ".join(f"{n} {_fmt(v[n])}" for n in names) for b, v in front["baselines"].items()), ""]
    return lines


def _header(d: dict[str, Any]) -> list[str]:
    """The run's settings: model, images, split, metric, grammar and budget."""
    s, metric = d["settings"], d["metric"]
    opts = ", ".join(f"{k}={v}" for k, v in metric["options"].items())
    split_on = d.get("evaluation_search") is not None
    evaluated = "" if split_on else f" ({d['images']['evaluated']} in the evaluation set)"
    return ["# sycam-dsl synthesis report", "",
            f"- model: `{s['model']}`, layer `{s['layer']}`, {s['size']} px, device {s['device']}",
            f"- forward passes: {_runtime_line(s)}",
            f"- images: {d['images']['total']} from `{d['images']['source']}`{evaluated}",
            f"- test split: {_split_line(d)}",
            _metric_line(d, metric, opts),
            f"- grammar: `{d['grammar']['source']}`; budget: {_budget(s)}; stopped by: {d['stopped_by']}"
            + (f" (until {s['until']})" if s.get("until") is not None else ""), ""]


def _result_section(d: dict[str, Any]) -> list[str]:
    """The result: one expression, per-class expressions, or the Pareto front."""
    lines: list[str] = []
    if d["per_class"] is not None:
        lines += ["## Result: one expression per predicted class", "", "| class | images | expression | score |",
                  "|---|---:|---|---:|"]
        for c, part in d["per_class"]["classes"].items():
            score = part["level_scores"].get("I1") if part["level_scores"] else None
            lines.append(f"| {c} | {part['images']} | `{part['expression']}` | "
                         f"{_fmt(score) if score is not None else '-'} |")
        lines += ["", f"Fallback for other classes: `{d['per_class']['fallback']}`", ""]
    elif d.get("front"):
        lines += front_section(d)
    else:
        lines += ["## Result", "", f"`{d['expression']}` ({d['type']})", ""]
        if d["level_scores"]:
            lines.append("Mean score per level: " + ", ".join(
                f"{k} ({lv['size']} images) {_fmt(v)}" for (k, v), lv in zip(d["level_scores"].items(), d["levels"])))
            lines.append("")
    return lines


def _comparison_sections(d: dict[str, Any]) -> list[str]:
    """SyCAM against the baselines, on the test split and the search split when there is one."""
    lines: list[str] = []
    split_on = d.get("evaluation_search") is not None
    split = d.get("test_split") or {}
    if split_on:
        lines += [f"## SyCAM against the baselines: test split ({d['images']['evaluated']} images never searched)",
                  ""]
        for ev in d["evaluation"]:
            lines += comparison_table(ev)
        lines += _intervals(d)
        lines += [f"## SyCAM against the baselines: search split ({d['images']['searched']} images searched)", ""]
        for ev in d["evaluation_search"]:
            lines += comparison_table(ev)
        if split.get("gap"):
            lines += ["Gap of SyCAM (search split minus test split): " + ", ".join(
                f"{k} {v:+.4f}" for k, v in split["gap"].items()), ""]
    else:
        lines += ["## SyCAM against the baselines", ""]
        for ev in d["evaluation"]:
            lines += comparison_table(ev)
        lines += _intervals(d)
    return lines


def _sanity_section(d: dict[str, Any]) -> list[str]:
    """The model-parameter randomization check, when it ran."""
    lines: list[str] = []
    sanity = d.get("sanity")
    if sanity and "error" not in sanity:
        lines += ["## Sanity check: model-parameter randomization", "",
                  f"{len(sanity['randomized'])} module(s) from `{sanity['randomized'][0]}` to the output "
                  f"re-initialized (seed {sanity['seed']}), heatmaps before and after compared on "
                  f"{sanity['images']} test-split images "
                  f"(lower means the method depends more on what the model learned; `sycam-dsl sanity` runs it with "
                  f"other seeds):", "", "| method | Spearman | SSIM | expression |", "|---|---:|---:|---|"]
        lines += [f"| {m['name']} | {'n/a' if m['mean_spearman'] is None else _fmt(m['mean_spearman'])} | "
                  f"{_fmt(m['mean_ssim'])} | `{m['expression']}` |" for m in sanity["methods"]]
        lines.append("")
    return lines


def _history_section(d: dict[str, Any]) -> list[str]:
    """The incumbents, or the entries into the front, over time."""
    lines: list[str] = []
    if d["history"]:
        front = any("scores" in h for h in d["history"])
        lines += ["## " + ("Entries into the front" if front else "Incumbents"), "",
                  "| seconds | candidate | score | expression |" + (" evicted |" if front else ""),
                  "|---:|---:|---:|---|" + ("---|" if front else "")]
        for h in d["history"]:
            prefix = f"class {h['class']}: " if "class" in h else ""
            candidate = h["candidate"] if h["candidate"] is not None else f"baseline: {h.get('baseline')}"
            score = ", ".join(map(_fmt, h["scores"])) if "scores" in h else _fmt(h["score"])
            evicted = f" {', '.join(f'`{e}`' for e in h['evicted']) or '-'} |" if "scores" in h else ""
            lines.append(f"| {h['seconds']:.1f} | {candidate} | {score} | {prefix}`{h['expression']}` |{evicted}")
        lines.append("")
    return lines


def _counts_section(d: dict[str, Any]) -> list[str]:
    """Counts of the enumeration and the scoring, the timings and the memo."""
    c, t = d["counts"], d["timings"]
    lines = ["## Counts and timings", "",
             f"- enumerated terms: {c['enumerated']}; removed as duplicates {c['duplicates']}, by canonicalization "
             f"{c['canonical_pruned']}, by observational equivalence {c['equivalence_pruned']}",
             f"- candidates considered: {c['considered']}; same heatmaps as an earlier one {c['heatmap_equivalent']}; "
             f"invalid (NaN/Inf) {c['invalid']}; accepted as incumbent {c['accepted']}",
             "- scored / rejected per level: " + ", ".join(
                 f"{k} {c['scored'].get(k, 0)}/{c['rejected'].get(k, 0)}" for k in c["scored"]),
             "- seconds: " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in t.items())]
    memo = d.get("engine", {}).get("memo")
    if memo and memo["hits"] + memo["misses"] + memo["deduplicated"]:
        lines.append(f"- Deletion/Insertion cache: {100 * memo['hit_rate']:.1f}% of "
                     f"{memo['hits'] + memo['misses'] + memo['deduplicated']} perturbed images needed no forward "
                     f"pass; {memo['entries']} entries, {memo['megabytes']:.1f} MB")
    lines.append("")
    return lines


def markdown_report(d: dict[str, Any]) -> str:
    """The report of a result dict (``result.json``)."""
    lines = _header(d) + _result_section(d)
    if d.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in d["warnings"]] + [""]
    lines += _comparison_sections(d) + _sanity_section(d)
    if d.get("not_chosen"):
        lines += ["Better on average than the result, but not chosen:", ""]
        lines += [f"- {n['method']}: {n['reason']}" for n in d["not_chosen"]] + [""]
    files = d.get("files", {})
    if "grid" in files:
        lines += ["## Heatmaps", "", f"![heatmaps]({files['grid']})", ""]
    if files.get("plots"):
        title = "The front against the baselines" if d.get("front") else "Incumbent's score over time"
        lines += [f"## {title}", ""] + [f"![{'front' if 'front' in p else 'score'}]({p})"
                                        for p in files["plots"]] + [""]
    lines += generalization_section(d) + _history_section(d) + _counts_section(d)
    return "\n".join(lines)
