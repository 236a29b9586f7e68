"""The output folder of a search: ``result.json``, ``cam.pt``, ``report.md``, ``heatmaps.png`` and
``score.png`` (see ``result.schema.json`` for the JSON's fields)."""

from __future__ import annotations

import datetime as _dt
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..baselines import SEARCH_BASELINES, baseline
from ..metrics.expression import expression_inputs
from ..lang.ast import to_sexpr
from ..util.files import atomic_write_json as write_json

if TYPE_CHECKING:
    from ..models.loaded import LoadedModel
    from ..parse.grammar import Grammar
    from .api import Data, Result
    from .per_class import ClassSearch
    from .problem import Problem
    from .search import SearchOutcome

SCHEMA_ID = "sycam-dsl/result/1"
FILES = {"result": "result.json", "cam": "cam.pt", "report": "report.md", "grid": "heatmaps.png",
         "plot": "score.png", "checkpoint": "checkpoint.json"}


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
                           "accepted": 0}
    for o in outcomes:
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
    """The memoized Deletion / Insertion cache's statistics (search and final tables together)."""
    memo = problem.inputs.memo
    if memo is None:
        return {"memo": None}
    st = memo.stats
    return {"memo": {"hits": st.hits, "misses": st.misses, "deduplicated": st.deduplicated,
                     "evictions": st.evictions, "hit_rate": st.hit_rate, "entries": len(memo),
                     "megabytes": memo.bytes / 2**20, "max_megabytes": memo.max_bytes / 2**20}}


def _search_part(o: SearchOutcome) -> dict[str, Any]:
    """The fields one search contributes (per class for a per-class result)."""
    return {"expression": to_sexpr(o.best) if o.best is not None else None,
            "level_scores": o.level_means,
            "levels": [{"name": n, "size": s} for n, s in zip(o.level_names, o.subsets.level_sizes)],
            "history": list(o.state.history), "stopped_by": o.stopped_by, "seconds": o.seconds,
            "counts": _counts([o])}


def result_data(result: Result, data: Data, problem: Problem, eval_problem: Problem, grammar: Grammar,
                searches: list[ClassSearch], stopped_by: str, settings: dict[str, Any],
                timings: dict[str, float]) -> dict[str, Any]:
    """The content of ``result.json``."""
    tables = result.tables
    metric, rows = tables[0]
    by_name = {r.name: r for r in rows}
    outcomes = result.outcomes
    single = outcomes[0] if result.dispatch is None and outcomes else None
    d: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "expression": result.expression,
        "type": str(result.best.type) if result.best is not None else None,
        "metric": {"name": metric.name, "options": dict(metric.options), "higher_is_better": metric.higher_is_better},
        "grammar": {"source": grammar.source, "inputs": list(grammar.inputs), "start": grammar.start.name},
        "stopped_by": stopped_by,
        "level_scores": single.level_means if single else None,
        "levels": _search_part(single)["levels"] if single else None,
        "history": list(single.state.history) if single else
        [dict(h, **{"class": s.cls}) for s in searches for h in s.outcome.state.history],
        "per_class": None,
        "baselines": [{"name": b, "expression": baseline(b).expression, "score": by_name[b].mean}
                      for b in SEARCH_BASELINES if b in by_name],
        "evaluation": [{"metric": m.name, "options": dict(m.options), "higher_is_better": m.higher_is_better,
                        "methods": [{"name": r.name, "expression": r.expression, "mean": r.mean,
                                     "best_share": r.best_share} for r in rs]} for m, rs in tables],
        "counts": _counts(outcomes),
        "timings": {**timings,
                    "enumeration_s": sum(o.enumeration.get("seconds", 0.0) for o in outcomes),
                    "scoring_s": sum(o.state.scoring_seconds for o in outcomes)},
        "images": {"total": problem.n, "evaluated": eval_problem.n, "source": data.source},
        "engine": _engine(problem),
        "settings": settings,
        "versions": versions(),
        "files": {},
    }
    if result.dispatch is not None:
        d["per_class"] = {
            "fallback": to_sexpr(result.dispatch.fallback),
            "classes": {str(s.cls): {**_search_part(s.outcome), "images": int(s.index.numel())} for s in searches},
        }
    return d


def _row_labels(data: Data, problem: Problem, rows: torch.Tensor) -> list[str]:
    out = []
    for i in rows.tolist():
        c = int(problem.targets[i])
        name = data.classes[c] if data.classes and c < len(data.classes) else f"class {c}"
        out.append(f"{data.files[int(problem.index[i])]}: {name}")
    return out


def _grid(result: Result, model: LoadedModel, data: Data, problem: Problem, n_rows: int, path: Path) -> None:
    from .figures import save_heatmap_grid

    order = result.outcomes[0].subsets.order if result.outcomes else torch.arange(problem.n)
    rows = order[:n_rows]
    part = problem.subset(rows)
    size = tuple(part.inputs.images.shape[-2:])
    def heatmaps_of(node, p: Problem) -> torch.Tensor:
        return expression_inputs(node, p.inputs, p.terminals, p.acts).heatmaps

    columns = {b: heatmaps_of(baseline(b).node, part) for b in SEARCH_BASELINES}
    if result.dispatch is not None:
        h = torch.zeros(part.n, *size, device=part.acts.device)
        for node, idx in result.dispatch.groups(part.targets).items():
            h[idx.to(h.device)] = heatmaps_of(node, part.subset(idx))
        columns["SyCAM (per class)"] = h
    elif result.best is not None:
        columns["SyCAM"] = heatmaps_of(result.best, part)
    pixels = model.normalize.inverse(part.inputs.images.detach().cpu().float())
    lo = pixels.amin(dim=(1, 2, 3), keepdim=True)
    hi = pixels.amax(dim=(1, 2, 3), keepdim=True)
    if float(lo.min()) < -0.01 or float(hi.max()) > 1.01:  # unknown normalization: show each image min-max scaled
        pixels = (pixels - lo) / (hi - lo).clamp_min(1e-12)
    save_heatmap_grid(pixels.clamp(0, 1), {k: v.detach().cpu() for k, v in columns.items()}, path,
                      row_labels=_row_labels(data, problem, rows), title=f"{model.name}: heatmaps")


def _plot(result: Result, searches: list[ClassSearch], folder: Path) -> list[str]:
    from .figures import save_score_plot

    metric, rows = result.tables[0]
    written = []
    if result.dispatch is None and result.outcomes:
        o = result.outcomes[0]
        baselines = {r.name: r.mean for r in rows if r.name in SEARCH_BASELINES}
        save_score_plot([(h["seconds"], h["score"]) for h in o.state.history], folder / FILES["plot"], metric.name,
                        metric.higher_is_better, baselines, end=o.seconds)
        written.append(FILES["plot"])
    for s in searches:
        rel = Path("classes") / f"class-{s.cls}" / FILES["plot"]
        save_score_plot([(h["seconds"], h["score"]) for h in s.outcome.state.history], folder / rel,
                        f"{metric.name} (class {s.cls})", metric.higher_is_better, None, end=s.outcome.seconds)
        written.append(rel.as_posix())
    return written


def write_outputs(result: Result, model: LoadedModel, data: Data, problem: Problem, eval_problem: Problem,
                  grammar: Grammar, searches: list[ClassSearch], stopped_by: str, settings: dict[str, Any],
                  timings: dict[str, float], t_start: float, report_images: int) -> None:
    """Fill ``result.data``; with ``result.out_dir``, write the files there too."""
    from .report import markdown_report

    result.data = result_data(result, data, problem, eval_problem, grammar, searches, stopped_by, settings, timings)
    folder = result.out_dir
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, Any] = {}
        if result.best is not None:
            if result.dispatch is not None:
                from ..backend.dispatch import save_dispatch
                save_dispatch(result.dispatch.per_class, result.dispatch.fallback, folder / FILES["cam"])
            else:
                from ..backend import save_torchscript
                save_torchscript(result.best, folder / FILES["cam"])
            files["cam"] = FILES["cam"]
        if report_images > 0:
            _grid(result, model, data, problem, report_images, folder / FILES["grid"])
            files["grid"] = FILES["grid"]
        files["plots"] = _plot(result, searches, folder)
        files["report"] = FILES["report"]
        files["result"] = FILES["result"]
        result.data["files"] = files
    result.data["timings"]["total_s"] = time.perf_counter() - t_start
    if folder is not None:
        (folder / FILES["report"]).write_text(markdown_report(result.data))
        write_json(folder / FILES["result"], result.data)
