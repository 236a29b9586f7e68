"""Forward passes at the hardware's limit: ``cic``, ``abl`` and Deletion against the model's own
batched inference throughput, measured in one run on the same device, batch size and precision.

For each model (default: the bundled small CNN at 64 px on 32 generated images, and torchvision's
resnet18 with seeded random weights at 224 px on 2 smooth random images) and each precision it
measures, in images (or rows) per second:

* **the limit**: the model's own batched inference throughput on a prebuilt batch of the same size,
  under the same precision, the better of contiguous and channels-last input;
* ``cic`` (ScoreCAM): masked images per second through the terminal loop (dead channels, which cost
  no forward pass, are not counted), as a share of the limit; for resnet18 the first
  ``--cic-channels`` channels only, to keep the run short;
* ``abl`` (AblationCAM): ablated rows per second. It reruns only the layers after the target layer,
  so its limit is **the tail's** own throughput: those layers on a prebuilt batch of activation rows
  (its rate against the full model's limit is printed too, as a multiple);
* Deletion: perturbed images per second through the Deletion curve of ``--candidates`` random
  saliency maps at ``--steps`` steps, plain (``perturbation_curve``, every perturbed image through the
  model) and memoized (``memoized_curve`` with a cold ``ScoreCache``: the images it sends).

``--batch N`` runs every loop at N (the library's default layouts: the metrics contiguous, as fp32
results at a fixed batch size are bit-identical to earlier versions, plus a channels-last Deletion
row); ``--batch auto`` lets each loop pick its size (``chunk_size="auto"``, ``plan_forward``) and
measures each limit at the size its loop picked. Each figure is the best of ``--repeat`` interleaved
rounds (a shared machine drifts, so the limit and the loops alternate). On the CPU each loop also
runs once with the model's forward timed: the share of the loop's time inside the model is the
steadiest measure of its overhead on a busy machine (a limit of 100% minus that share).

For bf16 / fp16 it prints, against fp32, the largest absolute difference of ``cic``, of ``abl`` and
of the per-image Deletion scores, and the mean per-image Pearson and Spearman correlation of the
``cic`` and ``abl`` heatmaps (for resnet18's channel subset: the partial CAM of those channels).

    python benchmarks/bench_throughput.py [--models bundled,resnet18] [--precision fp32,bf16]
        [--batch 32|auto] [--device cpu|cuda] [--repeat 2]

``--runtime torch,onnxruntime,openvino`` compares the inference runtimes instead (``models.runtime``):
for each model (add ``efficientnet_lite0``, the shipped weights) and precision, each runtime's raw
throughput at its own best batch (of 1..64; the tail's of 1..1,024 rows), the ``cic``, ``abl`` and
Deletion loops at the library's ``auto`` batch sizes (on a runtime: its own best batch) as a share of
it, each loop as a multiple of torch fp32 eager's raw throughput at torch's best batch (the tail's for
``abl``), and, on the CPU, each loop's batch and the share of its time inside the forward passes. A
sweep of interleaved rounds picks each runtime's best batch (the best median); then each round measures
every runtime's model and tail at that batch beside its loops. Rates are the medians of those rounds,
and a share (or multiple) is the median over them of the loop's rate over the limit's in the same round
(not over the sweep's best, the maximum of many noisy cells)::

    python benchmarks/bench_throughput.py --runtime torch,onnxruntime,openvino \
        --models bundled,resnet18,efficientnet_lite0 --precision fp32,bf16
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sycam_dsl.allocator import keep_freed_memory
from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.cam.ablation_pass import ablation_pass
from sycam_dsl.cam.layer_split import layer_access, tail_runner
from sycam_dsl.cam.sanity import spearman
from sycam_dsl.cam.scorecam_pass import scorecam_pass
from sycam_dsl.lang.types import Type
from sycam_dsl.metrics.memo import ScoreCache, memoized_curve
from sycam_dsl.metrics.perturbation import blurred, deletion_from_curve, perturbation_curve
from sycam_dsl.metrics.scoring import class_scores
from sycam_dsl.models import load_model, resolve_device, resolve_layer
from sycam_dsl.template.heatmaps import heatmaps

try:  # (absent before the speed issue: this file also measures that version, at fp32 and a fixed batch)
    from sycam_dsl.metrics.scoring import plan_forward
    from sycam_dsl.models.precision import forward_precision
except ImportError:
    from contextlib import nullcontext as _null

    plan_forward = None  # type: ignore[assignment]

    def forward_precision(precision, device):  # type: ignore[no-redef]
        return _null()


def call(fn: Callable, *args: object, **kwargs: object) -> object:
    """``fn(*args, **kwargs)`` without the keywords ``fn`` does not take (an earlier version's)."""
    params = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


def takes(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


@dataclass
class Setup:
    name: str
    module: torch.nn.Module
    layer: str
    x: torch.Tensor
    cic_channels: int | None


@dataclass
class Task:
    fn: Callable[[], object]
    items: int
    batch: int
    kind: str                 # "model", "tail" or a loop (compared with its limit)
    limit: str | None = None  # the task whose rate is this loop's limit
    best: float = 0.0
    out: object = None
    in_model: float | None = None  # share of the loop's time inside the model's forward (CPU)


@dataclass
class Run:
    """One model at one precision: its tasks and what they computed."""

    tasks: dict[str, Task] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    describe: str = ""
    steps: int = 0


def setups(args: argparse.Namespace) -> list[Setup]:
    out = []
    for name in args.models.split(","):
        if name == "bundled":
            m = load_bundled_model(args.device)
            x = bundled_images(args.bundled_images).images
            out.append(Setup("bundled small CNN, 64 px", m.module, m.target_layer, x, None))
        else:
            m = load_model(name, None if name.startswith("efficientnet") else args.weights, args.device)
            gen = torch.Generator().manual_seed(0)
            # smooth random images: noise blurred so that activations have spatial structure
            x = F.avg_pool2d(torch.randn(args.images, 3, args.size + 8, args.size + 8, generator=gen), 9, stride=1) * 3
            layer = m.target_layer or resolve_layer(m, None)[0]
            out.append(Setup(f"{name} ({'shipped weights' if name.startswith('efficientnet') else args.weights}), "
                             f"{args.size} px", m.module, layer, x, args.cic_channels or None))
    return out


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def rate(task: Task, min_seconds: float, dev: torch.device) -> float:
    """Items per second of ``task.fn`` (run until ``min_seconds`` have passed, at least once)."""
    sync(dev)
    t0 = time.perf_counter()
    runs = 0
    while True:
        task.out = task.fn()
        runs += 1
        sync(dev)
        t = time.perf_counter() - t0
        if t >= min_seconds:
            return runs * task.items / t


def layer_values(s: Setup, x: torch.Tensor) -> tuple:
    """``(access, A [N, K, h, w], logits, targets, A of cic's channels, live cic rows)`` of ``s`` on ``x``."""
    access = layer_access(s.module, s.layer)
    with torch.no_grad():
        acts, logits = access.forward(x)
    cic_acts = acts[:, :s.cic_channels] if s.cic_channels else acts
    cflat = cic_acts.flatten(2)
    return access, acts, logits, logits.argmax(1), cic_acts, int((cflat.amax(2) > cflat.amin(2)).sum())


def build_run(s: Setup, args: argparse.Namespace, precision: str, dev: torch.device) -> Run:
    """The tasks of one model at one precision, their batch sizes resolved (``auto``: by the library,
    on a first, untimed run that also warms up)."""
    module, x = s.module, s.x.to(dev)
    access, acts, logits, targets, cic_acts, live = layer_values(s, x)
    n, k, h, w = acts.shape
    runner = tail_runner(access)
    steps = min(args.steps, h * w)
    sal = torch.rand(args.candidates, n, h, w, generator=torch.Generator().manual_seed(1)).to(dev)
    blur = blurred(x)
    auto = args.batch == "auto"
    sizes: dict[str, int] = {}
    loop_model: list[torch.nn.Module] = [module]  # the loops' model: the module, or it timed
    fixed = 0 if auto else int(args.batch)

    def cic(chunk: int | str) -> Callable[[], object]:
        return lambda: call(scorecam_pass, loop_model[0], x, cic_acts, targets, chunk, False, precision=precision,
                            sizes=sizes)

    def abl(chunk: int | str) -> Callable[[], object]:
        return lambda: call(ablation_pass, access, x, acts, logits, targets, chunk, "auto", False, precision=precision,
                            sizes=sizes)

    def deletion(batch: int, cl: bool) -> Callable[[], object]:
        return lambda: call(perturbation_curve, loop_model[0], x, targets, sal, steps, False, dev, batch,
                            blurred_images=blur, precision=precision, channels_last=cl)

    def memo(batch: int, cl: bool) -> Callable[[], object]:
        def run() -> object:
            cache = ScoreCache(64)
            call(memoized_curve, loop_model[0], x, targets, sal, steps, False, blur, torch.arange(n), cache,
                 "deletion", dev, batch, precision=precision, channels_last=cl)
            return cache.stats.misses
        return run

    def model(batch: int, fmt: torch.memory_format) -> Callable[[], object]:
        xb = x[torch.arange(batch, device=dev) % n].contiguous(memory_format=fmt)

        def run() -> object:
            with torch.inference_mode(), forward_precision(precision, dev):
                return module(xb)
        return run

    def tail(batch: int) -> Callable[[], object]:
        rows = torch.arange(batch, device=dev) % n
        ab, carried = acts[rows].clone(), runner.carry(x[rows])

        def run() -> object:
            with torch.inference_mode(), forward_precision(precision, dev):
                return runner(ab, carried)
        return run

    if auto:  # the library picks; this first run also warms up
        cic("auto")()
        abl("auto")()
        assert plan_forward is not None, "this version has no batch_size='auto'"
        b_del, cl_del = plan_forward(module, x, dev, "auto", precision)
        b_cic, b_abl = sizes["cic"], sizes["abl"]
    else:
        b_cic = b_abl = b_del = fixed
        cl_del = False
    misses = memo(b_del, cl_del)()
    assert isinstance(misses, int)
    r = Run()
    for b in sorted({b_cic, b_del}):
        for fmt, name in ((torch.contiguous_format, "contiguous"), (torch.channels_last, "channels-last")):
            r.tasks[f"model, batch {b}, {name}"] = Task(model(b, fmt), b, b, "model")
    r.tasks[f"tail after the layer, batch {b_abl}"] = Task(tail(b_abl), b_abl, b_abl, "tail")
    r.tasks["cic"] = Task(cic(b_cic), live, b_cic, "loop", f"model, batch {b_cic}")
    r.tasks["abl"] = Task(abl(b_abl), n * k, b_abl, "loop", f"tail after the layer, batch {b_abl}")
    layout = ", channels-last" if cl_del else ""
    r.tasks[f"Deletion{layout}"] = Task(deletion(b_del, cl_del), args.candidates * n * steps, b_del, "loop",
                                        f"model, batch {b_del}")
    if not auto and takes(perturbation_curve, "channels_last"):
        r.tasks["Deletion, channels-last"] = Task(deletion(b_del, True), args.candidates * n * steps, b_del, "loop",
                                                  f"model, batch {b_del}")
    r.tasks[f"Deletion{layout}, memoized (cold)"] = Task(memo(b_del, cl_del), misses, b_del, "loop",
                                                         f"model, batch {b_del}")
    r.outputs.update(acts=acts, cic_acts=cic_acts, targets=targets)
    r.outputs["base"] = call(class_scores, module, x, targets, dev, b_del, precision=precision)  # type: ignore[assignment]
    r.describe = (f"layer {s.layer} {list(acts.shape[1:])}, {n} images; cic on {cic_acts.shape[1]} channels ({live} "
                  f"live rows), abl {n * k} rows, Deletion {args.candidates} maps x {n} images x P={steps} "
                  f"({misses} memo misses)")
    r.steps = steps
    if dev.type == "cpu":  # where the loops' time goes: one more run of each with the model timed
        timed = Timed(module)
        loop_model[0] = timed
        for t in r.tasks.values():
            if t.kind == "loop" and t.limit is not None and t.limit.startswith("model"):
                timed.seconds = 0.0
                t0 = time.perf_counter()
                t.fn()
                t.in_model = timed.seconds / (time.perf_counter() - t0)
        loop_model[0] = module
    return r


class Timed(torch.nn.Module):
    """``model``, adding the seconds of each forward pass to ``seconds``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seconds = model, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - t0
        return out


def limit_of(r: Run, task: Task) -> float:
    """The limit for ``task``: the best layout of the model at its batch, or the tail."""
    assert task.limit is not None
    if task.limit.startswith("tail"):
        return r.tasks[task.limit].best
    return max(t.best for name, t in r.tasks.items() if name.startswith(task.limit + ","))


def report(r: Run, precision: str) -> None:
    print(f"  {precision}:")
    print(f"    {'what':38} {'batch':>5} {'per second':>12}  share of its limit  (time in the model)")
    full = {t.batch: limit_of(r, Task(lambda: None, 0, t.batch, "x", f"model, batch {t.batch}"))
            for t in r.tasks.values() if t.kind == "model"}
    for name, t in r.tasks.items():
        if t.kind == "model":
            share = "(limit: the better layout)" if t.best == full[t.batch] else ""
        elif t.kind == "tail":
            share = "(the limit of abl)"
        else:
            share = f"{t.best / limit_of(r, t):6.1%}"
            if t.in_model is not None:
                share += f"              ({t.in_model:.1%})"
            if name == "abl":
                ref = max(full.values())
                share += f" of the tail; {t.best / ref:.0f}x the full model's images/s"
        print(f"    {name:38} {t.batch:5d} {t.best:12,.1f}  {share}")


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def compare(ref: Run, low: Run, precision: str, size: tuple[int, int]) -> None:
    """Largest differences of ``low`` from fp32's ``ref`` and the heatmaps' correlations."""
    print(f"  {precision} against fp32:")
    for name in ("cic", "abl"):
        a, b = ref.tasks[name].out, low.tasks[name].out
        assert isinstance(a, tuple) and isinstance(b, tuple)
        diff = float((a[0] - b[0]).abs().max())
        acts = ref.outputs["cic_acts"] if name == "cic" else ref.outputs["acts"]
        ha = heatmaps(a[0], acts, Type.VEC, size)
        hb = heatmaps(b[0], acts, Type.VEC, size)
        print(f"    {name}: largest |difference| {diff:.3g} (values up to {float(a[0].abs().max()):.3g}); heatmaps: "
              f"mean Pearson {float(pearson(ha, hb).nanmean()):.4f}, mean Spearman "
              f"{float(spearman(ha, hb).nanmean()):.4f}")
    key = next(k for k in ref.tasks if k.startswith("Deletion") and "memo" not in k)
    key_low = next(k for k in low.tasks if k.startswith("Deletion") and "memo" not in k)
    ca, cb = ref.tasks[key].out, low.tasks[key_low].out
    assert isinstance(ca, torch.Tensor) and isinstance(cb, torch.Tensor)
    sa = deletion_from_curve(ca, ref.outputs["base"])
    sb = deletion_from_curve(cb, low.outputs["base"])
    print(f"    Deletion (P={ref.steps}): largest |score difference| {float((sa - sb).abs().max()):.3g} over "
          f"{sa.numel()} (map, image) scores; largest |y_c difference| on the curve {float((ca - cb).abs().max()):.3g}")


# -- --runtime: each inference runtime against torch fp32 eager ---------------------------------------

#: Batch sizes tried for a runtime's raw throughput ("its own best batch").
SWEEP = (1, 2, 4, 8, 16, 32, 64)
#: ... and for the tail's raw throughput (``abl``'s batches are rows of activations, hundreds at a time).
TAIL_SWEEP = (*SWEEP, 256, 1024)


class Inside:
    """Seconds spent inside the forward passes of a module while watched: a runtime's ``_run`` (the
    converted model, without the conversion of its inputs and outputs), or a torch module's forward
    (hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.seconds, self._start = module, 0.0, 0.0

    def run(self, fn: Callable[[], object]) -> float:
        """The share of ``fn()``'s time spent inside the module."""
        from sycam_dsl.models.runtime import RuntimeModule

        self.seconds, m = 0.0, self.module
        if isinstance(m, RuntimeModule):
            inner = m._run

            def timed(arrays: list) -> object:
                t0 = time.perf_counter()
                try:
                    return inner(arrays)
                finally:
                    self.seconds += time.perf_counter() - t0

            m._run = timed  # type: ignore[method-assign]
            undo = [lambda: setattr(m, "_run", inner)]
        else:
            undo = [m.register_forward_pre_hook(lambda *_: setattr(self, "_start", time.perf_counter())).remove,
                    m.register_forward_hook(lambda *_: setattr(self, "seconds", self.seconds + time.perf_counter()
                                                                - self._start)).remove]
        try:
            t0 = time.perf_counter()
            fn()
            return self.seconds / (time.perf_counter() - t0)
        finally:
            for u in undo:
                u()


def runtime_tasks(s: Setup, args: argparse.Namespace, name: str, precision: str, dev: torch.device,
                  folder: str) -> tuple[dict[str, tuple[Callable[[], object], int, int]], dict[str, Inside]] | str:
    """(``{task: (run, rows per run, batch)}``, ``{loop: what its forward passes run in}``) of one runtime
    at one precision: the model's raw throughput at each batch of ``SWEEP`` (``model@B``), the tail's at
    each of ``TAIL_SWEEP`` (``tail@B``), and the cic, abl and Deletion loops at the library's batch
    (``auto``); a string saying why when the runtime cannot run it."""
    from sycam_dsl.models.runtime import RuntimeSpec, forward_module, unsupported

    why = unsupported(name, precision, dev)
    if why is not None:
        return why
    spec = RuntimeSpec(name, precision, folder)
    module, x = s.module, s.x.to(dev)
    access, acts, logits, targets, cic_acts, live = layer_values(s, x)
    n, k, h, w = acts.shape
    fwd = forward_module(module, [x[:1]], spec, show=True)
    runner = tail_runner(access)
    carried = runner.carry(x[:1])
    tail = runner
    if name != "torch" and runner.split is not None:
        tail = runner.with_tail(forward_module(runner.split.tail, [acts[:1], *carried], spec, part=f"tail@{s.layer}",
                                               what="the tail", show=True))
    convs = name in ("torch", "compile") and any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    fmt = torch.channels_last if convs else torch.contiguous_format  # torch's best layout here

    def model_run(xb: torch.Tensor) -> object:
        with torch.inference_mode(), forward_precision(precision, dev):
            return fwd(xb)

    def tail_run(ab: torch.Tensor, cb: list[torch.Tensor]) -> object:
        with torch.inference_mode(), forward_precision(precision, dev):
            return tail(ab, cb)

    tasks: dict[str, tuple[Callable[[], object], int, int]] = {}
    for b in SWEEP:
        xb = x[torch.arange(b) % n].contiguous(memory_format=fmt)
        tasks[f"model@{b}"] = (lambda xb=xb: model_run(xb), b, b)
    for b in TAIL_SWEEP:
        # prebuilt, as abl's loop builds the carried values (Lite0's tail carries the input image, for its
        # batch size) once per block of images
        ab, cb = acts[torch.arange(b) % n].clone(), [c[torch.zeros(b, dtype=torch.long, device=dev)] for c in carried]
        tasks[f"tail@{b}"] = (lambda ab=ab, cb=cb: tail_run(ab, cb), b, b)
    sizes: dict[str, int] = {}
    steps = min(args.steps, h * w)
    sal = torch.rand(args.candidates, n, h, w, generator=torch.Generator().manual_seed(1)).to(dev)
    blur = blurred(x)
    b_del, cl_del = plan_forward(fwd, x, dev, "auto", precision)
    loops: dict[str, tuple[Callable[[], object], int]] = {
        "cic": (lambda: scorecam_pass(module, x, cic_acts, targets, "auto", False, precision, sizes, fwd), live),
        "abl": (lambda: ablation_pass(access, x, acts, logits, targets, "auto", "auto", False, precision, sizes,
                               None if name == "torch" else spec), n * k),
        "Deletion": (lambda: perturbation_curve(fwd, x, targets, sal, steps, False, dev, b_del, blurred_images=blur,
                                                precision=precision, channels_last=cl_del),
                     args.candidates * n * steps)}
    for what, (fn, items) in loops.items():
        fn()  # warm-up; the batch sizes are known after it
        tasks[what] = (fn, items, {"cic": sizes.get("cic", 0), "abl": sizes.get("abl", 0), "Deletion": b_del}[what])
    # the module abl's forward passes run in: the converted tail ablation_pass gets (one per process and
    # spec), else the split's torch tail
    tail_module = tail.tail if tail is not runner else (runner.split.tail if runner.split is not None else module)
    assert tail_module is not None
    inside = {"cic": Inside(fwd), "abl": Inside(tail_module), "Deletion": Inside(fwd)}
    return tasks, inside


def best_of(rates: dict[str, tuple[float, int]], prefix: str) -> tuple[float, int]:
    """(rows per second, batch) of the best ``prefix@B`` task."""
    return max(v for key, v in rates.items() if key.startswith(prefix + "@"))


def runtime_main(args: argparse.Namespace, dev: torch.device) -> None:
    """``--runtime``: each runtime's raw throughput at its own best batch, the loops as a share of it and
    as a multiple of torch fp32 eager at torch's best batch.

    Two phases. The sweep runs every batch size of every runtime once per round, rounds interleaved; the
    size with the best median rate is the runtime's best batch. Then each round runs, for every runtime,
    its model and tail at their best batch followed by the three loops. The raw figures are the medians
    of these rounds; a loop's share (and its multiple of torch) is the median over rounds of its rate
    over the limit measured in the same round. Dividing by the sweep's best instead would divide one
    loop figure by the maximum of many noisy cells (on a shared machine, a lucky window rather than the
    runtime's speed); the paired median also takes out the machine's drift."""
    import statistics
    import tempfile

    names = [r for r in args.runtime.split(",") if r]
    precisions = [p for p in args.precision.split(",") if p]
    folder = tempfile.mkdtemp(prefix="bench-runtime-")
    loops = ("cic", "abl", "Deletion")
    for s in setups(args):
        s.module.to(dev).eval()
        print(f"\n{s.name}, layer {s.layer}, {s.x.shape[0]} images"
              + (f", cic on the first {s.cic_channels} channels" if s.cic_channels else ""))
        built = {(r, p): runtime_tasks(s, args, r, p, dev, folder) for p in precisions for r in names}
        ran = {key: made[0] for key, made in built.items() if not isinstance(made, str)}
        sweep: dict[tuple[str, str], dict[str, list[float]]] = {key: {} for key in ran}
        for _ in range(args.repeat):
            for key, tasks in ran.items():
                for what, (fn, items, batch) in tasks.items():
                    if what not in loops:
                        sweep[key].setdefault(what, []).append(rate(Task(fn, items, batch, what), args.min_seconds,
                                                                    dev))
        # each part's best batch: the best median over the rounds (their best would favour a lucky round)
        medians = {key: {what: (statistics.median(v), ran[key][what][2]) for what, v in rates.items()}
                   for key, rates in sweep.items()}
        best = {key: {part: best_of(medians[key], part)[1] for part in ("model", "tail")} for key in ran}
        # the paired rounds: {key: {task: [rate per round]}}, task "model", "tail" or a loop
        rounds: dict[tuple[str, str], dict[str, list[float]]] = {key: {} for key in ran}
        for _ in range(args.repeat):
            for key, tasks in ran.items():
                for what in ("model", "tail", *loops):
                    fn, items, batch = tasks[f"{what}@{best[key][what]}" if what in best[key] else what]
                    rounds[key].setdefault(what, []).append(rate(Task(fn, items, batch, what), args.min_seconds,
                                                                 dev))
        # where each loop's time goes: one more run with its forward passes timed (the steadiest figure on a
        # shared machine: the rest is the loop's own work, building batches and reading scores)
        inside = {key: {loop: watch.run(made[0][loop][0]) for loop, watch in made[1].items()}
                  for key, made in built.items() if not isinstance(made, str) and dev.type == "cpu"}
        base = rounds.get(("torch", "fp32"))
        print(f"  {'runtime':12} {'prec':5} {'model/s (batch)':>18} {'tail rows/s (batch)':>21}   "
              f"{'cic: /s, share, x torch':>26}   {'abl: /s, share, x torch':>26}   "
              f"{'Deletion: /s, share, x torch':>30}")
        for (r, p), made in built.items():
            if isinstance(made, str):
                print(f"  {r:12} {p:5} not run: {made}")
                continue
            got = rounds[(r, p)]
            cells = [f"{statistics.median(got['model']):10,.1f} ({best[(r, p)]['model']:3d})",
                     f"{statistics.median(got['tail']):12,.0f} ({best[(r, p)]['tail']:4d})"]
            for loop, limit in (("cic", "model"), ("abl", "tail"), ("Deletion", "model")):
                share = statistics.median(a / b for a, b in zip(got[loop], got[limit]))
                times = (statistics.median(a / b for a, b in zip(got[loop], base[limit])) if base
                         else float("nan"))
                cells.append(f"{statistics.median(got[loop]):10,.1f} {share:6.1%} {times:6.2f}x")
            print(f"  {r:12} {p:5} {cells[0]:>18} {cells[1]:>21}   {cells[2]:>26}   {cells[3]:>26}   {cells[4]:>30}")
            if (r, p) in inside:
                cells = [f"{made[0][loop][2]:>4d} rows, {inside[(r, p)][loop]:6.1%} in it" for loop in loops]
                print(f"  {'':12} {'':5} {'loops: batch, time in the model':>41}   {cells[0]:>26}   {cells[1]:>26}   "
                      f"{cells[2]:>30}")
        print("  (model, tail: the runtime's raw throughput at its best batch (the sweep's best median), the median "
              "of the paired rounds; a loop: "
              "its median rate, its share of the runtime's raw throughput at that batch and its multiple of "
              "torch fp32 eager's at torch's best batch, each the median over rounds of the ratio to the limit "
              "measured in the same round, the tail's for abl; in it: the share of the loop's time inside the "
              "runtime's forward passes, the tail's for abl)")


def main() -> None:
    keep_freed_memory()  # as the CLI does (see sycam_dsl.allocator)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bundled,resnet18", help="bundled and/or torchvision names (default "
                                                                 "bundled,resnet18)")
    ap.add_argument("--weights", default="random:0", help="torchvision models: state-dict file or random:SEED")
    ap.add_argument("--images", type=int, default=2, help="torchvision models: images (default 2)")
    ap.add_argument("--bundled-images", type=int, default=32, help="bundled model: images (default 32)")
    ap.add_argument("--size", type=int, default=224, help="torchvision models: image side (default 224)")
    ap.add_argument("--cic-channels", type=int,
                    help="torchvision models: cic on the first C channels only (default 32, with --runtime 128, so "
                         "that a cic pass holds enough masked images to measure the loop rather than its fixed cost; "
                         "0: all)")
    ap.add_argument("--batch", default="auto", help="images / rows per forward pass, or auto (default auto)")
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated fp32, bf16, fp16 (default fp32,bf16)")
    ap.add_argument("--steps", type=int, default=10, help="Deletion steps (default 10)")
    ap.add_argument("--candidates", type=int, default=2, help="saliency maps for Deletion (default 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved rounds; the best counts (--runtime: the sweep's rounds, then as many paired "
                         "rounds; default 3)")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="least time per measurement (default 0.5)")
    ap.add_argument("--runtime", help="comma-separated torch, onnxruntime, openvino: compare the runtimes instead "
                                       "(raw throughput at each one's best batch; loops as a share of it and as a "
                                       "multiple of torch fp32 eager); --models also takes efficientnet_lite0")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadier on a shared "
                                                "machine, where one busy core stalls every multi-threaded kernel)")
    args = ap.parse_args()
    if args.cic_channels is None:
        args.cic_channels = 128 if args.runtime else 32
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch != "auto" and not (args.batch.isdigit() and int(args.batch) > 0):
        ap.error(f"--batch: expected a positive integer or auto, got {args.batch!r}")
    dev = resolve_device(args.device)
    if args.runtime:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}, {args.repeat} rounds")
        t0 = time.perf_counter()
        runtime_main(args, dev)
        print(f"\n{time.perf_counter() - t0:.0f} s")
        return
    precisions = [p for p in args.precision.split(",") if p]
    if "fp32" not in precisions and len(precisions) > 0:
        precisions.insert(0, "fp32")  # the reference of the comparisons
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}, batch {args.batch}, "
          f"precision {','.join(precisions)}, best of {args.repeat}")
    t_start = time.perf_counter()
    for s in setups(args):
        s.module.to(dev).eval()
        runs = {p: build_run(s, args, p, dev) for p in precisions}
        for r in runs.values():
            for t in r.tasks.values():
                t.out = t.fn()  # warm-up (and, for auto, the sizes are known by now)
        for _ in range(args.repeat):
            for r in runs.values():
                for t in r.tasks.values():
                    t.best = max(t.best, rate(t, args.min_seconds, dev))
        print(f"\n{s.name}: {runs['fp32'].describe}")
        for p, r in runs.items():
            report(r, p)
        for p in precisions:
            if p != "fp32":
                compare(runs["fp32"], runs[p], p, (s.x.shape[-2], s.x.shape[-1]))
    print(f"\n{time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
