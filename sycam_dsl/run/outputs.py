"""The output folder of a search: ``result.json``, ``cam.pt``, ``report.md``, ``heatmaps.png`` and
``score.png`` (see ``result.schema.json`` for the JSON's fields), and with a test split
``generalization.png`` (``generalization.py``), written from one ``RunRecord``; a
search over several metrics writes ``front.png`` (the front against the baselines) instead of
``score.png``, and one TorchScript file per front member, ``front/member-K.pt`` (``cam.pt`` is the
knee member's);
``take_output_folder`` checks and locks the folder before a run starts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..baselines import SEARCH_BASELINES, baseline
from ..errors import SycamError
from ..metrics.controls import control_maps
from ..models import LoadedModel
from ..synthesis.evaluation import method_heatmaps
from ..synthesis.per_class import ClassSearch, checkpoint_kind
from ..synthesis.problem import Data, Problem
from ..util.files import FolderLocked, folder_lock, writable_folder
from ..util.files import atomic_write_json as write_json
from .generalization import PLOT_FILE, save_curve
from .result import Result, RunRecord, result_data

FILES = {"result": "result.json", "cam": "cam.pt", "report": "report.md", "grid": "heatmaps.png",
         "plot": "score.png", "checkpoint": "checkpoint.json", "front_plot": "front.png", "front": "front"}


def member_file(k: int) -> str:
    """Where front member ``k``'s TorchScript module is written, relative to the output folder."""
    return f"{FILES['front']}/member-{k}.pt"


@contextmanager
def claim_output_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock for the ``with`` block, so that a folder that
    cannot take the results, or one another run is writing to, is refused (one ``SycamError``
    line) before any work rather than after the search. The same process may claim it again."""
    try:
        writable_folder(folder)
    except NotADirectoryError as e:
        raise SycamError(f"cannot use {folder} as the output folder: {e}") from None
    except OSError as e:
        raise SycamError(f"cannot write to the output folder {folder}: {e.strerror or e}") from None
    try:
        with folder_lock(folder):
            yield folder
    except FolderLocked as e:
        who = f"pid {e.pid}" if e.pid is not None else "pid unknown"
        raise SycamError(f"{folder} is used by another sycam-dsl run ({who}); wait for it or choose another "
                         f"output folder (-o)") from None


@contextmanager
def take_output_folder(folder: Path, resume: bool, per_class: bool, strict: bool = False) -> Iterator[Path]:
    """Claim ``folder`` for a run (``claim_output_folder``: created and locked for the ``with``
    block) and check its checkpoint: a resumed run must find one of its kind, one search's without
    ``per_class`` and per-class searches' with it (each would start new searches next to the
    checkpoints it does not read). ``strict`` (``synth``): also refuse to resume a folder with no
    checkpoint, and to start afresh in one that holds a checkpoint; it names the options to change."""
    no_checkpoint = f"--resume: no checkpoint in {folder} (give the --out folder of the search to continue)"
    if strict and resume and not folder.is_dir():
        raise SycamError(no_checkpoint)
    # locked before the checks, so that a folder another run is writing to is named as such
    with claim_output_folder(folder):
        kind = checkpoint_kind(folder)
        if strict and kind is not None and not resume:
            raise SycamError(f"{folder} holds the checkpoint of an earlier search: pass --resume to continue it, "
                             f"or choose another --out folder")
        if strict and resume and kind is None:
            raise SycamError(no_checkpoint)
        if resume and per_class and kind == "single":
            raise SycamError(f"cannot resume {folder} with per-class searches: it holds the checkpoint of a "
                             f"single search (resume it without --per-class)")
        if resume and not per_class and kind == "per-class":
            raise SycamError(f"cannot resume {folder} as a single search: it holds the checkpoints of per-class "
                             f"searches (resume it with --per-class)")
        yield folder


def _row_labels(data: Data, problem: Problem, rows: torch.Tensor) -> list[str]:
    out = []
    target = problem.inputs.target  # another kind than the class: its name (the targets are its ids)
    for i in rows.tolist():
        c = int(problem.targets[i])
        name = target.name if target is not None else data.classes[c] if data.classes and c < len(data.classes) \
            else f"class {c}"
        out.append(f"{data.files[int(problem.index[i])]}: {name}")
    return out


def _grid(result: Result, model: LoadedModel, data: Data, problem: Problem, n_rows: int, path: Path) -> None:
    from .figures import save_heatmap_grid

    order = result.outcomes[0].subsets.order if result.outcomes else torch.arange(problem.n)
    rows = order[:n_rows]
    part = problem.subset(rows)
    columns = {b: method_heatmaps(baseline(b).node, part) for b in SEARCH_BASELINES}
    if result.dispatch is not None:
        columns["SyCAM (per class)"] = method_heatmaps(result.dispatch, part)
    elif result.best is not None:
        columns["SyCAM"] = method_heatmaps(result.best, part)
    # the control maps the tables score (the same seed and image ids), SyCAM's own blurred
    settings = result.data["settings"] if result.data else {}
    sycam = columns.get("SyCAM", columns.get("SyCAM (per class)"))
    columns.update(control_maps(settings.get("controls") or (), part.inputs.images, part.index,
                                int(settings.get("seed") or 0), sycam))
    pixels = model.normalize.inverse(part.inputs.images.detach().cpu().float())
    lo = pixels.amin(dim=(1, 2, 3), keepdim=True)
    hi = pixels.amax(dim=(1, 2, 3), keepdim=True)
    if float(lo.min()) < -0.01 or float(hi.max()) > 1.01:  # unknown normalization: show each image min-max scaled
        pixels = (pixels - lo) / (hi - lo).clamp_min(1e-12)
    save_heatmap_grid(pixels.clamp(0, 1), {k: v.detach().cpu() for k, v in columns.items()}, path,
                      row_labels=_row_labels(data, problem, rows), title=f"{model.name}: heatmaps")


def _front_plot(front: dict[str, Any], path: Path, title: str = "") -> None:
    """``front.png``: the front's means on the searched images (``result.json``'s ``front``), the
    baselines' beside them."""
    from .figures import save_front_plot

    names = [m["name"] for m in front["metrics"]]
    save_front_plot([(f"#{k}", [m["search"][n] for n in names]) for k, m in enumerate(front["members"])],
                    [(m["name"] + title, m["higher_is_better"]) for m in front["metrics"]], path,
                    {b: [v[n] for n in names] for b, v in front["baselines"].items()}, front["knee"])


def _plot(result: Result, searches: list[ClassSearch], folder: Path) -> list[str]:
    from .figures import save_score_plot

    metric, rows = result.searched_tables[0]  # the incumbent's history is scored on the searched images
    written = []
    front = result.data.get("front")
    if front is not None:
        _front_plot(front, folder / FILES["front_plot"])
        written.append(FILES["front_plot"])
    elif result.dispatch is None and result.outcomes:
        o = result.outcomes[0]
        baselines = {r.name: r.mean for r in rows if r.name in SEARCH_BASELINES}
        save_score_plot([(h["seconds"], h["score"]) for h in o.state.history], folder / FILES["plot"], metric.name,
                        metric.higher_is_better, baselines, end=o.seconds)
        written.append(FILES["plot"])
    for s in searches:
        part = result.data["per_class"]["classes"][str(s.cls)].get("front")
        if part is not None:
            rel = Path("classes") / f"class-{s.cls}" / FILES["front_plot"]
            _front_plot(part, folder / rel, f" (class {s.cls})")
            written.append(rel.as_posix())
            continue
        rel = Path("classes") / f"class-{s.cls}" / FILES["plot"]
        save_score_plot([(h["seconds"], h["score"]) for h in s.outcome.state.history], folder / rel,
                        f"{metric.name} (class {s.cls})", metric.higher_is_better, None, end=s.outcome.seconds)
        written.append(rel.as_posix())
    return written


def write_outputs(record: RunRecord) -> None:
    """Fill ``record.result.data``; with ``record.result.out_dir``, write the files there too."""
    from .report import markdown_report

    result = record.result
    result.data = result_data(record)
    folder = result.out_dir
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, Any] = {}
        if result.best is not None:
            if result.dispatch is not None:
                from ..backend.dispatch_module import save_dispatch
                save_dispatch(result.dispatch.per_class, result.dispatch.fallback, folder / FILES["cam"])
            else:
                from ..backend import save_torchscript
                save_torchscript(result.best, folder / FILES["cam"])
                for k, node in enumerate(result.front):
                    (folder / member_file(k)).parent.mkdir(exist_ok=True)
                    save_torchscript(node, folder / member_file(k))
                    result.data["front"]["members"][k]["file"] = member_file(k)
                if result.front:
                    files["front"] = [member_file(k) for k in range(len(result.front))]
            files["cam"] = FILES["cam"]
        if record.report_images > 0:
            _grid(result, record.model, record.data, record.searched, record.report_images, folder / FILES["grid"])
            files["grid"] = FILES["grid"]
        files["plots"] = _plot(result, record.searches, folder)
        curve = result.data.get("generalization")
        if curve is not None:
            save_curve(curve, folder / PLOT_FILE, result.outcomes[0].seconds if result.outcomes else None)
            files["generalization"] = PLOT_FILE
        files["report"] = FILES["report"]
        files["result"] = FILES["result"]
        result.data["files"] = files
    result.data["timings"]["total_s"] = time.perf_counter() - record.t_start
    if folder is not None:
        (folder / FILES["report"]).write_text(markdown_report(result.data))
        write_json(folder / FILES["result"], result.data)
