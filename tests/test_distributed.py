"""Terminals and candidate scoring on Ray workers (``synthesis.distributed``): a search with workers
finds what one process finds (incumbent, candidate index, per-image scores, counts), and the
workers' terminals equal those computed here. One local Ray cluster of 2 CPUs serves every test."""

from __future__ import annotations

import json

import pytest
import torch

from sycam_dsl.errors import SycamError
from sycam_dsl.metrics import get_metric
from sycam_dsl.parse import resolve_grammar
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.run.runner import loaded_model
from sycam_dsl.synthesis import Budget, SearchOptions, distributed
from sycam_dsl.synthesis.build import build_problem
from sycam_dsl.synthesis.distributed import ClusterOptions, RayScorer, ShardPool, ShardWorker, WorkerSpec, shards
from sycam_dsl.synthesis.problem import Data
from tests.test_synthesize_api import data, tiny_model

NAMES = ["grads", "pgrads", "cic", "abl"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'sycam-dsl[distributed]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_shards_cover_the_images_once():
    for n, w in ((10, 3), (2, 5), (7, 1), (8, 2)):
        parts = shards(n, w)
        assert [i for p in parts for i in p] == list(range(n)) and all(len(p) for p in parts)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_pool_of_plain_workers_gives_the_terminals_computed_here(monkeypatch):
    monkeypatch.setattr(distributed, "ROUND_IMAGES", 1)  # rounds of one image per worker
    x, masks = data(10)
    loaded = loaded_model(tiny_model(), None, "cpu")
    here, info = build_problem(loaded, "features", Data(x, [str(i) for i in range(10)]), NAMES, use_cache=False,
                               progress=False)
    g = resolve_grammar("g2")
    spec = WorkerSpec(loaded, info.layer, tuple(NAMES), get_metric("deletion", steps=3),
                      g.start.type, {"use_cache": False})
    parts = shards(10, 3)
    workers = [ShardWorker(spec, x[p.start:p.stop], info.targets[p.start:p.stop], None) for p in parts]
    pool = ShardPool(workers, parts, remote=False)
    index = torch.tensor([9, 0, 4, 5, 3])
    seen = []
    got = pool.terminals(["cic", "abl", "grads"], index, lambda done, total: seen.append((done, total)))
    # shards 0-2, 3-5, 6-9: a round has images 9, 0 and 4 (one per shard), then shard 1's 5, then its 3
    assert seen == [(3, 5), (4, 5), (5, 5)]
    for name in ("cic", "abl", "grads"):
        torch.testing.assert_close(got[name], here.terminals[name][index], rtol=1e-5, atol=1e-6)


def _search(tmp_path, name, cluster, per_class=False, resume=False, terminals="on-demand", metric="deletion"):
    x, masks = data(30)
    synthesize(tiny_model(), "features", x, metric=metric, metric_options={"steps": 3},
               budget=Budget(candidates=25), per_class=per_class, data=DataOptions(masks=masks, use_cache=False),
               search=SearchOptions(level_sizes=(6, 12, None), equivalence_size=4, seed=1, min_class_images=4,
                                    terminals=terminals),
               output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / name, cluster=cluster,
               resume=resume)
    return json.loads((tmp_path / name / "result.json").read_text())


def _same(a, b):
    assert [(h["expression"], h["candidate"], h.get("baseline")) for h in a["history"]] == \
        [(h["expression"], h["candidate"], h.get("baseline")) for h in b["history"]]
    scores = (lambda d: [x for h in d["history"] for x in h.get("scores", [h.get("score")])])  # noqa: E731
    assert scores(a) == pytest.approx(scores(b), rel=1e-5)
    assert a["expression"] == b["expression"] and a["counts"] == b["counts"]


@pytest.mark.parametrize("per_class, terminals", [(False, "on-demand"), (True, "on-demand"), (False, "eager")])
def test_a_search_on_two_workers_finds_what_one_process_finds(ray_cluster, tmp_path, per_class, terminals):
    one = _search(tmp_path, "one", ClusterOptions(), per_class, terminals=terminals)
    two = _search(tmp_path, "two", ClusterOptions(workers=2), per_class, terminals=terminals)
    if per_class:
        assert one["per_class"]["classes"].keys() == two["per_class"]["classes"].keys()
        for c in one["per_class"]["classes"]:
            _same(one["per_class"]["classes"][c], two["per_class"]["classes"][c])
    else:
        _same(one, two)
    # the final tables (scored in the driver, on terminals the workers computed)
    for a, b in zip(one["evaluation"], two["evaluation"], strict=True):
        assert [m["name"] for m in a["methods"]] == [m["name"] for m in b["methods"]]
        assert [m["mean"] for m in a["methods"]] == pytest.approx([m["mean"] for m in b["methods"]], rel=1e-5)
    assert two["settings"]["workers"] == 2 and one["settings"]["workers"] == 0
    assert two["engine"]["workers"] == {"count": 2, "restarts": 0} and one["engine"]["workers"] is None


def _seg_net():
    from tests.test_targets import SegNet, _setup

    return _setup(SegNet(), dtype=torch.float32)[0]


@pytest.mark.parametrize("make, layer, target", [(_seg_net, "block", "segmentation:1"),
                                                 (tiny_model, "features", "classes:0,2")])
def test_a_search_for_another_target_on_two_workers_finds_what_one_process_finds(ray_cluster, tmp_path, make,
                                                                                  layer, target):
    def search(name, cluster):
        x, masks = data(30)
        synthesize(make(), layer, x, metric="deletion", metric_options={"steps": 3}, budget=Budget(candidates=25),
                   data=DataOptions(masks=masks, targets=target, use_cache=False),
                   search=SearchOptions(level_sizes=(6, 12, None), equivalence_size=4, seed=1),
                   output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / name, cluster=cluster)
        return json.loads((tmp_path / name / "result.json").read_text())

    one, two = search("one", ClusterOptions()), search("two", ClusterOptions(workers=2))
    _same(one, two)
    assert two["settings"]["target"] == one["settings"]["target"] == target
    # the final tables, scored in the driver with the target bound over all images again
    for a, b in zip(one["evaluation"], two["evaluation"], strict=True):
        assert [m["mean"] for m in a["methods"]] == pytest.approx([m["mean"] for m in b["methods"]], rel=1e-5)


def test_a_front_search_on_two_workers_finds_what_one_process_finds(ray_cluster, tmp_path):
    one = _search(tmp_path, "one", ClusterOptions(), metric="deletion,insertion")
    two = _search(tmp_path, "two", ClusterOptions(workers=2), metric="deletion,insertion")
    _same(one, two)
    assert one["front"] is not None
    assert [m["expression"] for m in one["front"]["members"]] == [m["expression"] for m in two["front"]["members"]]
    for a, b in zip(one["front"]["members"], two["front"]["members"]):
        assert a["search"] == pytest.approx(b["search"], rel=1e-5)
    assert two["settings"]["workers"] == 2


def test_a_worker_killed_mid_search_is_replaced_and_the_result_is_unchanged(ray_cluster, tmp_path, monkeypatch):
    one = _search(tmp_path, "one", ClusterOptions())
    calls = []
    score = RayScorer.score

    def killing(self, nodes, level, chunk):
        calls.append(level)
        if len(calls) == 4:  # the worker of shard 0 dies between two calls
            ray_cluster.kill(self.pool.workers[0])
        return score(self, nodes, level, chunk)

    monkeypatch.setattr(RayScorer, "score", killing)
    two = _search(tmp_path, "two", ClusterOptions(workers=2))
    _same(one, two)
    assert two["engine"]["workers"] == {"count": 2, "restarts": 1}


def test_a_search_with_workers_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    """A driver stopped after 10 candidates leaves a checkpoint; resumed with workers it ends where
    one uninterrupted process does."""
    one = _search(tmp_path, "one", ClusterOptions())
    x, masks = data(30)
    args = dict(metric="deletion", metric_options={"steps": 3}, data=DataOptions(masks=masks, use_cache=False),
                search=SearchOptions(level_sizes=(6, 12, None), equivalence_size=4, seed=1),
                output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "two",
                cluster=ClusterOptions(workers=2))
    synthesize(tiny_model(), "features", x, budget=Budget(candidates=10), **args)
    synthesize(tiny_model(), "features", x, budget=Budget(candidates=25), resume=True, **args)
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    _same(one, two)


def test_workers_without_ray_say_how_to_install_it(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(SycamError, match=r"pip install 'sycam-dsl\[distributed\]'"):
        _search(tmp_path, "none", ClusterOptions(workers=2))
