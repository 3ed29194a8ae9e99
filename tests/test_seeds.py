"""Statistics over training runs (alignbench.report.seeds) on synthetic data with known answers."""

import numpy as np
import pytest

from alignbench.report import seeds as S


def draw(rng, n_seeds, n_prompts, seed_sd=1.0, prompt_sd=1.0, mean=0.0):
    """Per-seed per-prompt values: a seed effect (training-run spread) plus prompt noise."""
    return [mean + seed_sd * rng.standard_normal() + prompt_sd * rng.standard_normal(n_prompts)
            for _ in range(n_seeds)]


def test_point_is_the_mean_of_seed_means_and_one_seed_has_no_interval():
    point, lo, hi = S.hierarchical_bootstrap([[1.0, 3.0], [5.0]])
    assert point == pytest.approx((2.0 + 5.0) / 2)
    assert lo < point < hi
    one = S.hierarchical_bootstrap([[1.0, 2.0, 3.0]])
    assert one[0] == pytest.approx(2.0) and np.isnan(one[1]) and np.isnan(one[2])
    assert np.isnan(S.seed_bootstrap([0.4])[1])


def test_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits, reps = 0, 300
    for i in range(reps):
        _, lo, hi = S.hierarchical_bootstrap(draw(rng, 10, 16, mean=0.7), n_boot=400, seed=i)
        hits += lo <= 0.7 <= hi
    # percentile bootstrap over 10 runs: nominal 95%, a little under with so few units; binomial SE ~1.3%
    assert 0.87 <= hits / reps <= 0.99, hits / reps


def test_interval_width_shrinks_as_one_over_sqrt_seeds():
    rng = np.random.default_rng(1)
    width = {}
    for n in (4, 16):
        w = [np.subtract(*S.hierarchical_bootstrap(draw(rng, n, 8), n_boot=400, seed=i)[2:0:-1]) for i in range(120)]
        width[n] = float(np.mean(w))
    assert width[4] / width[16] == pytest.approx(2.0, rel=0.2)  # sqrt(16 / 4)


def test_seed_spread_dominates_when_prompts_are_exact():
    rng = np.random.default_rng(2)
    wide = S.hierarchical_bootstrap(draw(rng, 8, 32, seed_sd=1.0, prompt_sd=0.0))
    narrow = S.hierarchical_bootstrap(draw(rng, 8, 32, seed_sd=0.1, prompt_sd=0.0))
    assert (wide[2] - wide[1]) > 5 * (narrow[2] - narrow[1])


def test_front_curve_and_frontier_score_on_a_hand_built_front():
    kl, rw = [0.0, 1.0, 2.0, 1.5, 4.0], [0.0, 1.0, 1.5, 0.5, 1.5]  # (1.5, 0.5) and (4, 1.5) are dominated
    np.testing.assert_allclose(S.front_curve(kl, rw, [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 10.0]),
                               [0.0, 0.5, 1.0, 1.25, 1.5, 1.5, 1.5])
    assert np.isnan(S.front_curve([1.0, 2.0], [0.0, 1.0], [0.5])[0])  # below the first Pareto point
    # mean of 0.5 b over [0, 2] plus ... : on [0, 1] r = b (mean 0.5); on [1, 2] r = 1 + (b - 1)/2 (mean 1.25)
    assert S.frontier_score(kl, rw, 0.0, 2.0, n_grid=2001) == pytest.approx((0.5 + 1.25) / 2, abs=1e-3)
    assert np.isnan(S.frontier_score(kl, rw, 2.0, 1.0))


def test_common_range_is_what_every_method_and_seed_reaches():
    fronts = {"a": [([0.5, 3.0], [0.1, 0.2]), ([0.2, 5.0], [0.1, 0.3])], "b": [([1.0, 2.5], [0.0, 0.4])]}
    assert S.common_range(fronts) == (1.0, 2.5)
    assert all(np.isnan(S.common_range({"a": [([0.0, 1.0], [0, 1])], "b": [([2.0, 3.0], [0, 1])]})))


def test_pairwise_difference_and_probability_of_improvement():
    p = S.pairwise([1.0, 2.0, 3.0], [0.0, 0.5, 1.0])
    assert p.diff == pytest.approx(1.5)
    # pairs (a, b): a > b in 8 of 9, one tie (1.0, 1.0) -> (8 + 0.5) / 9
    assert p.prob_improvement == pytest.approx(8.5 / 9)
    assert p.lo > 0 and p.distinguishable
    overlap = S.pairwise([0.0, 1.0, 2.0], [0.5, 1.0, 1.5])
    assert overlap.lo < 0 < overlap.hi and not overlap.distinguishable
    single = S.pairwise([1.0], [0.0, 0.1])
    assert single.diff == pytest.approx(0.95) and not single.distinguishable and np.isnan(single.lo)
