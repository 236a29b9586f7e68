"""The fast evaluation engine: memoized Deletion / Insertion equal the plain computation, the score
cache stays within its bound, batched candidates score as one at a time, and early stopping in the
oracle never changes which candidate wins."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.metrics import MetricInputs, get_metric
from sycam_dsl.metrics.memo import ScoreCache, memoized_curve
from sycam_dsl.metrics.perturbation import blurred, perturbation_curve
from sycam_dsl.metrics.scoring import ForwardCounter
from sycam_dsl.run.runner import build_problem, loaded_model
from sycam_dsl.synthesis import Budget, Problem, Search, SearchConfig
from sycam_dsl.synthesis.problem import Data
from tests.cam_reference import TinyCNN
from tests.test_synthesis import GRAMMAR, SCH, CountingScorer, planted, scripted

MODEL = TinyCNN(classes=3).eval()
IMAGES = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TARGETS = torch.tensor([0, 1, 2, 0, 1, 2])
BLUR = blurred(IMAGES, 10.0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), candidates=st.integers(1, 3), steps=st.integers(1, 16),
       insert=st.booleans(), levels=st.integers(2, 6))
def test_memoized_curve_equals_the_plain_one(seed, candidates, steps, insert, levels):
    g = torch.Generator().manual_seed(seed)
    # few distinct values: many ties, and candidates that share top-p cell sets
    s = torch.randint(0, levels, (candidates, 6, 4, 4), generator=g).float()
    cache = ScoreCache(1.0)
    ids = torch.arange(6)
    plain = perturbation_curve(MODEL, IMAGES, TARGETS, s, steps, insert, blurred_images=BLUR)
    memo = memoized_curve(MODEL, IMAGES, TARGETS, s, steps, insert, BLUR, ids, cache, "k")
    again = memoized_curve(MODEL, IMAGES, TARGETS, s.flip(0), steps, insert, BLUR, ids, cache, "k")
    assert memo.shape == plain.shape
    assert torch.allclose(memo, plain, atol=1e-6, rtol=0)
    assert torch.allclose(again, plain.flip(0), atol=1e-6, rtol=0)


def test_second_candidate_with_the_same_rankings_costs_no_forward_pass():
    counting = ForwardCounter(MODEL)
    cache = ScoreCache(1.0)
    ids = torch.arange(6)
    s = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(1))
    memoized_curve(counting, IMAGES, TARGETS, s, 10, False, BLUR, ids, cache, "del")
    assert counting.images == 60 and cache.stats.misses == 60
    memoized_curve(counting, IMAGES, TARGETS, 2 * s + 1, 10, False, BLUR, ids, cache, "del")  # same order
    assert counting.images == 60 and cache.stats.hits == 60
    memoized_curve(counting, IMAGES, TARGETS, s, 10, True, BLUR, ids, cache, "ins")  # insertion: new keys
    assert counting.images == 120


def test_builtin_metrics_use_the_cache_and_give_the_same_scores():
    s = torch.rand(2, 6, 4, 4, generator=torch.Generator().manual_seed(2))
    from sycam_dsl.template.heatmaps import normalize_upsampled
    h = normalize_upsampled(s, (32, 32))
    for name in ("deletion", "insertion"):
        metric = get_metric(name, steps=8)
        plain = MetricInputs(IMAGES, TARGETS, model=MODEL).with_heatmaps(h, s)
        cache = ScoreCache(1.0)
        memo = MetricInputs(IMAGES, TARGETS, model=MODEL, memo=cache).with_heatmaps(h, s)
        a, b = metric(plain).per_image, metric(memo).per_image
        assert torch.allclose(a, b, atol=1e-6) and cache.stats.misses > 0
        low, high = metric.score_bounds(memo)
        assert bool((low <= b).all() and (b <= high).all())
        # a subset shares the cache under the same image ids: all hits
        sub = memo.subset(torch.tensor([4, 1]))
        hits = cache.stats.hits
        c = metric(sub.with_heatmaps(h[:, [4, 1]], s[:, [4, 1]])).per_image
        assert torch.allclose(c, b[:, [4, 1]], atol=1e-6) and cache.stats.hits == hits + 2 * 2 * 8


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal scores up to float32 rounding: a cached score may come from a batch of other images and
    steps than the plain curve's, and CPU kernels need not give bit-identical results across batches
    (as in ``test_memoized_curve_equals_the_plain_one``); a wrong cache entry is off by far more."""
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-6, rtol=0)


def _untied(hw: tuple[int, int], seed: int, candidates: int = 1) -> torch.Tensor:
    """Saliency ``[candidates, 6, h, w]`` with no ties: a random permutation of the cells per map."""
    g = torch.Generator().manual_seed(seed)
    cells = hw[0] * hw[1]
    return torch.stack([torch.randperm(cells, generator=g) for _ in range(candidates * 6)]).float().reshape(
        candidates, 6, *hw)


@pytest.mark.parametrize("hw", [(3, 3), (4, 4), (3, 5)])  # 9 and 15 cells: packed sets with padding bits
def test_insertion_of_the_reversed_ranking_reuses_the_deletion_images(hw):
    """Deletion step p of S builds x with the top-p cells of S blurred; Insertion step q of -S builds x~
    with the top-q cells of -S (the bottom q of S) from x: the same image when p = T - q. Through one
    cache the second curve costs one forward pass per image (q = T: x itself), and its scores are the
    plain ones."""
    cells = hw[0] * hw[1]
    s = _untied(hw, seed=cells)[0]
    counting = ForwardCounter(MODEL)
    cache, ids = ScoreCache(1.0), torch.arange(6)
    dele = memoized_curve(counting, IMAGES, TARGETS, s, cells, False, BLUR, ids, cache, "blur:sigma=10.0")
    assert cache.stats.hits == 0 and cache.stats.misses == counting.images == 6 * cells
    ins = memoized_curve(counting, IMAGES, TARGETS, -s, cells, True, BLUR, ids, cache, "blur:sigma=10.0")
    assert cache.stats.hits == 6 * (cells - 1)
    assert cache.stats.misses == counting.images == 6 * cells + 6 and cache.stats.deduplicated == 0
    assert _same(dele, perturbation_curve(MODEL, IMAGES, TARGETS, s, cells, False, blurred_images=BLUR))
    assert _same(ins, perturbation_curve(MODEL, IMAGES, TARGETS, -s, cells, True, blurred_images=BLUR))
    assert torch.equal(ins[:, :-1], dele.flip(-1)[:, 1:])  # step q is Deletion step T - q: the cached value
    # the other order: Insertion first, then Deletion finds all of its images but the fully blurred one
    cache = ScoreCache(1.0)
    memoized_curve(MODEL, IMAGES, TARGETS, -s, cells, True, BLUR, ids, cache, "blur:sigma=10.0")
    again = memoized_curve(MODEL, IMAGES, TARGETS, s, cells, False, BLUR, ids, cache, "blur:sigma=10.0")
    assert cache.stats.hits == 6 * (cells - 1) and _same(again, dele)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), candidates=st.integers(1, 3), steps=st.integers(1, 16),
       levels=st.integers(2, 6), reversed_too=st.booleans())
def test_a_shared_cache_gives_the_scores_of_separate_caches_and_of_none(seed, candidates, steps, levels,
                                                                       reversed_too):
    """Deletion and Insertion (of S, and of -S) through one cache equal each through its own cache and
    the plain curves, ties (few levels) included."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, levels, (candidates, 6, 4, 4), generator=g).float()
    runs = [(s, False), (s, True)] + ([(-s, True), (-s, False)] if reversed_too else [])
    ids = torch.arange(6)
    shared = ScoreCache(1.0)
    for sal, insert in runs:
        plain = perturbation_curve(MODEL, IMAGES, TARGETS, sal, steps, insert, blurred_images=BLUR)
        alone = memoized_curve(MODEL, IMAGES, TARGETS, sal, steps, insert, BLUR, ids, ScoreCache(1.0), "blur:s")
        both = memoized_curve(MODEL, IMAGES, TARGETS, sal, steps, insert, BLUR, ids, shared, "blur:s")
        assert _same(alone, plain) and _same(both, plain)


def test_builtin_blur_metrics_share_the_cache_only_at_the_same_blur_and_precision():
    """Through the built-in metrics: AOPC MoRF after Deletion and Insertion after AOPC LeRF of the same S
    (whose ranking it reverses) find their images in the cache, with the scores of no cache; at another
    blur sigma or another precision the same metrics read no entry of the first: they count the hits and
    misses, and give the scores, of a cache of their own."""
    s = _untied((4, 4), seed=9, candidates=2)
    lookups = 2 * 6 * 16
    cache = ScoreCache(4.0)
    shared = MetricInputs(IMAGES, TARGETS, model=MODEL, memo=cache).with_heatmaps(None, s)
    plain = MetricInputs(IMAGES, TARGETS, model=MODEL).with_heatmaps(None, s)
    for first, second, hits in (("deletion", "aopc_morf", lookups), ("aopc_lerf", "insertion", lookups - 2 * 6)):
        assert _same(get_metric(first)(shared).per_image, get_metric(first)(plain).per_image), first
        before = cache.stats.hits
        assert _same(get_metric(second)(shared).per_image, get_metric(second)(plain).per_image), second
        assert cache.stats.hits - before == hits, second  # all but Insertion's last step (x itself)
    for options, precision in (({"blur_sigma": 5.0}, "fp32"), ({}, "bf16"), ({"blur_sigma": 5.0}, "bf16")):
        own = ScoreCache(4.0)
        runs = []
        for memo in (own, cache):
            inputs = MetricInputs(IMAGES, TARGETS, model=MODEL, memo=memo, precision=precision).with_heatmaps(None, s)
            hits, misses, size = memo.stats.hits, memo.stats.misses, len(memo)
            scores = [get_metric(name, **options)(inputs).per_image
                      for name in ("deletion", "aopc_morf", "aopc_lerf", "insertion")]
            runs.append((scores, memo.stats.hits - hits, memo.stats.misses - misses, len(memo) - size))
        (alone, *counts), (together, *shared_counts) = runs
        assert shared_counts == counts and counts[1] == counts[2] > 0, (options, precision)
        assert all(_same(a, b) for a, b in zip(alone, together)), (options, precision)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.binary(min_size=0, max_size=40)), min_size=1, max_size=300),
       st.floats(0.0005, 0.005))   # room for 2 to 21 entries: evictions happen
def test_the_cache_never_exceeds_its_bound(entries, mb):
    cache = ScoreCache(mb)
    for i, (img, cells) in enumerate(entries):
        cache.put(("k", img, 0, cells), float(i))
        assert cache.bytes <= cache.max_bytes
        assert cache.bytes == sum(cache.entry_bytes(k) for k in cache._data)
    last = ("k", entries[-1][0], 0, entries[-1][1])
    if cache.entry_bytes(last) <= cache.max_bytes:  # the newest entry is never the one evicted
        assert cache.get(last) == float(len(entries) - 1)


def test_lru_keeps_the_recently_used_entries():
    cache = ScoreCache(3 * (240 + 1) / 2**20)  # room for three one-byte entries
    for i in range(3):
        cache.put(("k", i, 0, b"x"), float(i))
    assert cache.get(("k", 0, 0, b"x")) == 0.0        # 0 is now the most recent
    cache.put(("k", 3, 0, b"x"), 3.0)                 # evicts 1, the least recent
    assert cache.get(("k", 1, 0, b"x")) is None and cache.get(("k", 0, 0, b"x")) == 0.0
    assert len(cache) == 3 and cache.stats.evictions == 1
    assert cache.bytes == 3 * cache.entry_bytes(("k", 0, 0, b"x"))


def _tiny_problem(n: int = 16) -> Problem:
    torch.manual_seed(0)
    model = TinyCNN(classes=3)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    data = Data(x, [str(i) for i in range(n)])
    problem, _ = build_problem(loaded_model(model, None, "cpu"), "features", data,
                               ["grads", "pgrads", "cic", "abl", "G", "A"], use_cache=False, progress=False)
    return problem


def _history(out):
    return [(h["expression"], h["candidate"]) for h in out.state.history], to_sexpr(out.best)


def test_batched_candidates_score_as_one_at_a_time():
    problem = _tiny_problem()
    cfg = SearchConfig(get_metric("deletion", steps=5), Budget(candidates=1), level_sizes=(8, None),
                       equivalence_size=4, image_chunk=3)
    search = Search(problem, GRAMMAR, cfg, progress=False)
    from sycam_dsl.lang.sexpr import parse_expr
    nodes = [parse_expr(t, GRAMMAR.inputs) for t in ("grads", "(relu cic)", "(- abl pgrads)", "(* cic cic)")]
    together = search.scorer.score(nodes, 0, 1)
    for node, s in zip(nodes, together):
        assert torch.allclose(search.scorer.score([node], 0, 1)[0], s, atol=1e-6)


def test_early_stopping_and_batching_never_change_the_winner():
    plain = dict(candidate_batch=1, image_chunk=None, early_stop=False)
    # I3 of 10+ images: smaller levels are judged by the mean alone, so there early stopping has only
    # the metric's bounds to go on (and none for deletion)
    for problem, metric, levels, chunk in [(planted(seed=7), SCH, (12, 18, None), 3),
                                           (_tiny_problem(), get_metric("deletion", steps=5), (10, 12, None), 2)]:
        runs = []
        for engine in (plain, dict(candidate_batch=8, image_chunk=chunk, early_stop=True)):
            cfg = SearchConfig(metric, Budget(candidates=80), level_sizes=levels, equivalence_size=4,
                               max_size=5, **engine)
            s, counted = scripted(Search(problem, GRAMMAR, cfg, progress=False), CountingScorer)
            runs.append((s.run(), counted.work))
        (a, work_a), (b, work_b) = runs
        assert _history(a) == _history(b)
        assert a.level_means == b.level_means or all(
            abs(a.level_means[k] - b.level_means[k]) < 1e-9 for k in a.level_means)
        assert work_b < work_a  # early stopping skipped some (candidate, image) scores


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), hw=st.sampled_from([(4, 4), (7, 7), (8, 6)]),
       size=st.sampled_from([(32, 32), (31, 45), (64, 64)]), levels=st.integers(2, 50))
def test_overlap_metrics_from_saliency_equal_the_heatmap_path(seed, hw, size, levels):
    """SCH and ground-truth overlap computed from S alone (what the search does) equal the same
    metrics on the full-resolution heatmaps, ties and constant maps included."""
    from sycam_dsl.template.heatmaps import normalize_upsampled
    g = torch.Generator().manual_seed(seed)
    n = 5
    s = torch.relu(torch.randint(-levels, levels, (3, n, *hw), generator=g).float())  # ties, zeros
    s[0, 0] = 0                                                                            # a constant map
    masks = torch.rand(n, *size, generator=g) < torch.rand(n, 1, 1, generator=g).clamp(0.05, 0.95)
    masks[:, 0, 0] = True                                                                  # never empty
    inputs = MetricInputs(torch.zeros(n, 3, *size), torch.zeros(n, dtype=torch.long), masks=masks)
    h = normalize_upsampled(s, size)
    for name, tol in (("gt_overlap", 0.0), ("sch", 1e-6)):
        metric = get_metric(name)
        full = metric(inputs.with_heatmaps(h, s)).per_image
        fast = metric(inputs.with_heatmaps(None, s)).per_image
        assert torch.allclose(full, fast, atol=tol, rtol=0), name


@settings(max_examples=30, deadline=None)
@given(hw=st.tuples(st.integers(1, 9), st.integers(1, 9)), size=st.tuples(st.integers(1, 70), st.integers(1, 70)),
       seed=st.integers(0, 1000))
def test_matrix_upsampling_is_bilinear_interpolation(hw, size, seed):
    import torch.nn.functional as F

    from sycam_dsl.template.upsampling import Upsampler
    s = torch.randn(3, *hw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = F.interpolate(s[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    up = Upsampler(hw, size, dtype=torch.float64)
    assert torch.allclose(up.full(s), ref, atol=1e-12)
    lo, hi = up.extremes(s)
    assert torch.allclose(lo, ref.flatten(1).amin(1), atol=1e-12)
    assert torch.allclose(hi, ref.flatten(1).amax(1), atol=1e-12)


def test_saliency_does_not_depend_on_how_many_candidates_share_the_call():
    from sycam_dsl.lang.types import Type
    from sycam_dsl.template.saliency import saliency
    g = torch.Generator().manual_seed(3)
    acts = torch.rand(10, 64, 8, 8, generator=g)
    w = torch.randn(50, 10, 64, generator=g)
    together = saliency(w, acts, Type.VEC)
    alone = torch.stack([saliency(w[c], acts, Type.VEC) for c in range(50)])
    assert torch.equal(together, alone)
    assert torch.allclose(together, torch.relu((w[..., None, None] * acts).sum(dim=-3)), atol=1e-5)
