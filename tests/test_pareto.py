"""Multi-objective synthesis: Pareto dominance, the front's indices, the knee and the front plot."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image

from sycam_dsl.run import figures
from sycam_dsl.run.figures import BASELINE_COLOURS, FRONT_COLOUR, KNEE_COLOUR, save_front_plot
from sycam_dsl.synthesis.pareto import _scale, dominates, knee, pareto_indices

# --------------------------------------------------------------------------------------------------
# dominance


def test_dominates_both_higher():
    assert dominates([1.0, 2.0], [1.0, 1.0], [True, True])
    assert not dominates([1.0, 1.0], [1.0, 2.0], [True, True])
    assert dominates([3.0, 2.0], [1.0, 1.0], [True, True])


def test_dominates_mixed_directions():
    # metric 0 better high, metric 1 better low
    assert dominates([1.0, 0.1], [0.5, 0.3], [True, False])
    assert not dominates([0.5, 0.3], [1.0, 0.1], [True, False])
    assert dominates([1.0, 0.3], [1.0, 0.4], [True, False])  # equal on one, better on the other
    assert not dominates([1.0, 0.4], [1.0, 0.3], [True, False])
    assert dominates([0.2], [0.5], [False]) and not dominates([0.5], [0.2], [False])


def test_one_better_one_worse_does_not_dominate():
    a, b = [1.0, 0.5], [0.5, 0.1]  # a better on metric 0; on metric 1 (lower is better) b is better
    assert not dominates(a, b, [True, False]) and not dominates(b, a, [True, False])
    assert dominates(a, b, [True, True])  # with metric 1 better high, a wins on both


def test_equal_points_do_not_dominate():
    assert not dominates([0.3, 0.7, 1.0], [0.3, 0.7, 1.0], [True, False, True])


def test_dominates_with_infinities():
    assert dominates([math.inf, 0.0], [1.0, 0.0], [True, True])
    assert dominates([1.0, -math.inf], [1.0, 0.0], [True, False])


def test_dominates_errors():
    with pytest.raises(ValueError, match="point b has 1 values, expected 2"):
        dominates([1.0, 2.0], [1.0], [True, True])
    with pytest.raises(ValueError, match="point a has 3 values, expected 2"):
        dominates([1.0, 2.0, 3.0], [1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="at least one metric"):
        dominates([], [], [])
    with pytest.raises(ValueError, match="point a, metric 1: value is NaN"):
        dominates([1.0, math.nan], [1.0, 2.0], [True, True])


# --------------------------------------------------------------------------------------------------
# the front's indices


def _brute_front(points, higher):
    """The definition, spelled out without :func:`dominates`."""
    def beats(a, b):
        at_least = all((x >= y) if h else (x <= y) for x, y, h in zip(a, b, higher))
        strictly = any((x > y) if h else (x < y) for x, y, h in zip(a, b, higher))
        return at_least and strictly
    return [i for i, p in enumerate(points) if not any(beats(q, p) for j, q in enumerate(points) if j != i)]


def test_pareto_indices_matches_brute_force_on_random_points():
    rng = random.Random(1234)
    sizes = []
    for _ in range(300):
        m = rng.randint(1, 4)
        higher = [rng.random() < 0.5 for _ in range(m)]
        # few distinct values, so equal points and ties on single metrics are common
        points = [[float(rng.randint(0, 4)) for _ in range(m)] for _ in range(rng.randint(0, 25))]
        got = pareto_indices(points, higher)
        assert got == _brute_front(points, higher), (points, higher)
        assert got == sorted(got)
        sizes.append(len(got))
    assert min(sizes) == 0 and max(sizes) > 3  # the draws cover empty and sizeable fronts


def test_pareto_indices_keeps_equal_points_and_respects_direction():
    points = [[1.0, 1.0], [2.0, 0.5], [2.0, 0.5], [0.5, 0.5], [2.0, 2.0]]
    assert pareto_indices(points, [True, True]) == [4]
    assert pareto_indices(points, [True, False]) == [1, 2]  # equal points both stay
    assert pareto_indices(points, [False, False]) == [3]
    assert pareto_indices(points, [False, True]) == [0, 3, 4]  # 4 is the best on metric 1
    assert pareto_indices([], [True]) == []


def test_pareto_indices_errors():
    with pytest.raises(ValueError, match="point 1 has 3 values, expected 2"):
        pareto_indices([[1.0, 2.0], [1.0, 2.0, 3.0]], [True, True])
    with pytest.raises(ValueError, match="point 0, metric 0: value is NaN"):
        pareto_indices([[math.nan, 2.0]], [True, True])
    with pytest.raises(ValueError, match="at least one metric"):
        pareto_indices([[]], [])


# --------------------------------------------------------------------------------------------------
# the knee

# A = (1.0, 0.0), B = (0.0, 0.5), both metrics better high: the ideal point is (1.0, 0.5), A falls
# short by (0, 0.5) and B by (1.0, 0).
FRONT = [[1.0, 0.0], [0.0, 0.5]]


def _raw_distance(point, ideal):
    return math.dist(point, ideal)


def test_knee_normalization_by_the_baselines_changes_the_answer():
    ideal = [1.0, 0.5]
    # raw distances: A 0.5, B 1.0 -> A
    assert [_raw_distance(p, ideal) for p in FRONT] == [0.5, 1.0]
    # the baselines span 4 on metric 0 and 0.25 on metric 1: A = 0.5 / 0.25 = 2, B = 1 / 4 = 0.25 -> B
    baselines = [[0.0, 0.0], [4.0, 0.25], [2.0, 0.1]]
    assert knee(FRONT, baselines, [True, True]) == 1
    # the same with metric 1 better low (values negated): the same answer
    flipped = [[x, -y] for x, y in FRONT]
    assert knee(flipped, [[x, -y] for x, y in baselines], [True, False]) == 1


def test_knee_scale_falls_back_to_the_front_range():
    # fewer than two baselines: the front's ranges (1, 0.5): A = 0.5/0.5 = 1, B = 1/1 = 1, a tie -> A
    assert knee(FRONT, [], [True, True]) == 0
    assert knee(FRONT, [[9.0, 9.0]], [True, True]) == 0
    # baselines span 1.5 on metric 0 and 0 on metric 1 (front range 0.5 then): A = 1, B = 1/1.5 -> B;
    # a scale of 1 on metric 1 would give A = 0.5 and pick A
    assert knee(FRONT, [[0.0, 0.3], [1.5, 0.3]], [True, True]) == 1
    # a non-finite baseline value makes the range not finite: the front range again -> B
    assert knee(FRONT, [[0.0, 0.3], [1.5, math.inf]], [True, True]) == 1
    # (the finite values alone span 3.0 on metric 1, which would give A = 0.5 / 3 and pick A)
    assert knee(FRONT, [[0.0, 0.3], [1.5, math.nan], [1.0, 3.3]], [True, True]) == 1


def test_knee_scale_falls_back_to_one():
    assert _scale([0.2, 0.2], [0.7, 0.7]) == 1.0  # baselines and front both flat
    assert _scale([], [0.7]) == 1.0
    assert _scale([0.1, 0.5], [0.0, 9.0]) == pytest.approx(0.4)  # the baselines' range first
    assert _scale([0.1], [0.0, 9.0]) == 9.0
    # members equal on metric 1: no division by zero, the best on metric 0 wins
    assert knee([[0.2, 0.5], [0.9, 0.5], [0.4, 0.5]], [], [True, True]) == 1
    assert knee([[0.2, 0.5], [0.9, 0.5], [0.4, 0.5]], [], [False, True]) == 0


def test_knee_ties_and_edges():
    assert knee([[0.5, 0.5], [0.5, 0.5]], [], [True, True]) == 0
    assert knee([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], [], [True, True]) == 0  # all three tie
    assert knee([[0.0, 1.0], [0.6, 0.6], [1.0, 0.0]], [], [True, True]) == 1  # the middle one
    assert knee([[0.3, 0.7]], [[0.0, 0.0], [1.0, 1.0]], [True, False]) == 0  # a lone member
    assert knee([], [[0.0, 0.0]], [True, True]) is None


def test_knee_errors():
    with pytest.raises(ValueError, match="front member 1, metric 0: value inf is not finite"):
        knee([[0.1, 0.2], [math.inf, 0.2]], [], [True, True])
    with pytest.raises(ValueError, match="front member 0, metric 1: value nan is not finite"):
        knee([[0.1, math.nan]], [], [True, True])
    with pytest.raises(ValueError, match="front member 0 has 1 values, expected 2"):
        knee([[0.1]], [], [True, True])
    with pytest.raises(ValueError, match="baseline 1 has 3 values, expected 2"):
        knee([[0.1, 0.2]], [[0.0, 0.0], [1.0, 2.0, 3.0]], [True, True])
    with pytest.raises(ValueError, match="at least one metric"):
        knee([[]], [], [])


# --------------------------------------------------------------------------------------------------
# the front plot

METRICS = [("insertion AUC", True), ("deletion AUC", False), ("sparsity", True)]
MEMBERS = [("#0", [0.9, 0.5, 0.1]), ("#1", [0.7, 0.3, 0.2]), ("#2", [0.5, 0.1, 0.05])]
BASELINES = {"gradcam": [0.3, 0.4, 0.3], "gradcam++": [0.65, 0.35, 0.25]}


def _cut(n: int, members=MEMBERS, baselines=BASELINES):
    return [(label, v[:n]) for label, v in members], METRICS[:n], {k: v[:n] for k, v in baselines.items()}


def _read(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def _count(pixels: np.ndarray, colour) -> int:
    return int((pixels == np.array(colour)).all(-1).sum())


@pytest.mark.parametrize("n", [2, 3])
def test_front_plot_draws_members_baselines_and_knee(tmp_path, n):
    front, metrics, baselines = _cut(n)
    path = save_front_plot(front, metrics, tmp_path / "a" / "front.png", baselines)
    assert path == tmp_path / "a" / "front.png"
    pixels = _read(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    one = _read(save_front_plot(front[:1], metrics, tmp_path / "one.png", baselines))
    panels = 1 if n == 2 else n * (n - 1)
    # two more members add two filled markers (about 80 pixels each) per panel; the legend is the same
    assert _count(pixels, FRONT_COLOUR) - _count(one, FRONT_COLOUR) > 2 * 50 * panels
    assert _count(pixels, KNEE_COLOUR) == 0
    # the first baseline (lowest on metric 0) sits in the left half, away from the legend; named " ",
    # its hollow marker is all there is of its colour there
    unnamed = {" ": baselines["gradcam"], "gradcam++": baselines["gradcam++"]}
    marker = _read(save_front_plot(front, metrics, tmp_path / "u.png", unnamed))
    assert _count(marker[:, : marker.shape[1] // 2], BASELINE_COLOURS[0]) > 30
    assert _count(pixels[:, : pixels.shape[1] // 2], BASELINE_COLOURS[0]) > 60  # with its name
    with_knee = _read(save_front_plot(front, metrics, tmp_path / "k.png", baselines, knee=1))
    assert _count(with_knee, KNEE_COLOUR) > 150 * panels  # the bigger marker in every panel (and the legend)
    assert _count(with_knee, FRONT_COLOUR) < _count(pixels, FRONT_COLOUR)  # the knee is not drawn blue


@pytest.mark.parametrize("n", [2, 3])
def test_front_plot_layout_and_knee(tmp_path, n):
    front, metrics, baselines = _cut(n)
    path = save_front_plot(front, metrics, tmp_path / "m" / "front.png", baselines, knee=1)
    pixels = _read(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    if n == 3:
        assert pixels.shape[0] > 400 and pixels.shape[1] > 400  # a matrix of panels
    plain = save_front_plot(front, metrics, tmp_path / "plain.png", baselines)
    assert plain.read_bytes() != path.read_bytes()  # the knee shows
    assert _count(pixels, KNEE_COLOUR) > 20 and _count(_read(plain), KNEE_COLOUR) == 0


def test_front_plot_empty_front(tmp_path):
    front, metrics, baselines = _cut(2, members=[])
    pixels = _read(save_front_plot(front, metrics, tmp_path / "e.png", baselines))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert _count(pixels, FRONT_COLOUR) == 0 and _count(pixels, BASELINE_COLOURS[0]) > 20
    bare = save_front_plot([], METRICS, tmp_path / "bare.png")  # no baselines either
    assert _read(bare).shape[0] > 100


def test_front_plot_skips_non_finite_values(tmp_path):
    members = [("#0", [0.5, math.nan]), ("#1", [math.inf, 0.2]), ("#2", [0.4, 0.3])]
    path = save_front_plot(members, METRICS[:2], tmp_path / "n.png", {"b": [math.nan, 0.1]})
    assert _count(_read(path), FRONT_COLOUR) > 0


def test_front_plot_errors(tmp_path):
    front, metrics, baselines = _cut(2)
    with pytest.raises(ValueError, match="at least two metrics, got 1"):
        save_front_plot([("#0", [0.1])], METRICS[:1], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"front member 1 \('#1'\) has 3 values, expected 2"):
        save_front_plot([front[0], MEMBERS[1]], metrics, tmp_path / "x.png")
    with pytest.raises(ValueError, match="baseline 'b' has 1 values, expected 2"):
        save_front_plot(front, metrics, tmp_path / "x.png", {"b": [0.1]})
    with pytest.raises(ValueError, match="knee 3 is not the index of a front member"):
        save_front_plot(front, metrics, tmp_path / "x.png", knee=3)
    assert not (tmp_path / "x.png").exists()


def test_axis_label_text():
    assert figures._axis_label("insertion AUC", True) == "insertion AUC (higher is better)"
    assert figures._axis_label("deletion AUC", False) == "deletion AUC (lower is better)"
