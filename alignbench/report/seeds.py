"""Statistics over training runs: intervals that resample seeds, frontier scores, and pairwise comparisons.

A comparison of methods is a statement about a distribution of training runs, so the unit of resampling is
the **seed** (a training run), as in Agarwal et al. 2021 ("Deep RL at the edge of the statistical
precipice", arXiv 2108.13264, the ``rliable`` library): with few runs, report interval estimates from a
bootstrap over runs and the probability of improvement rather than point estimates.

* :func:`hierarchical_bootstrap`  mean over seeds of per-seed means over prompts, with a percentile interval
                                  from a two-level bootstrap: seeds resampled with replacement, then the
                                  prompts of each drawn seed (sampled tasks). On exact tasks a seed's value
                                  is exact and only seeds are resampled.
* :func:`front_curve`            a run set's Pareto front of (KL, reward), linearly interpolated (a mixture of
                                  two policies reaches at least the interpolated reward at the interpolated
                                  KL, by the convexity of KL), flat beyond its largest KL: the best reward
                                  the method reached within a KL budget.
* :func:`frontier_score`         the mean of that curve over a common KL range of budgets.
* :func:`pairwise`               the mean difference of two methods' per-seed scores with its bootstrap
                                  interval, and the probability of improvement P(A > B) over seed pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .diagnostics import pareto_front as pareto

N_BOOT = 2000
LEVEL = 0.95


def _percentile(stats: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return float(lo), float(hi)


def hierarchical_bootstrap(per_seed: Sequence[Sequence[float] | float], *, n_boot: int = N_BOOT, seed: int = 0,
                           level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lower, upper) of the mean over seeds of each seed's mean over its units (prompts).

    ``per_seed``: one entry per seed, either a scalar (an exact value) or the per-prompt values of that seed.
    Seeds are resampled with replacement, then, within each drawn seed, its prompts. With fewer than 2 seeds
    the interval is (NaN, NaN): an interval over prompts alone would leave out training-run spread.
    """
    groups = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in per_seed]
    groups = [g[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if g.size]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    point = float(np.mean([g.mean() for g in groups]))
    if len(groups) < 2:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    s = len(groups)
    pick = rng.integers(0, s, size=(n_boot, s))
    means = np.empty((s, n_boot))
    for i, g in enumerate(groups):  # each seed's prompt-bootstrap means, one per draw
        means[i] = g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(1) if g.size > 1 else g[0]
    stats = means[pick, np.arange(n_boot)[:, None]].mean(1)
    lo, hi = _percentile(stats, level)
    return point, lo, hi


def seed_bootstrap(values: Sequence[float], *, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lower, upper) over per-seed scalars, seeds resampled (NaN interval with fewer than 2 seeds)."""
    return hierarchical_bootstrap([float(v) for v in values], n_boot=n_boot, seed=seed, level=level)


# ------------------------------------------------------------------------------------------ frontiers


def upper_hull(k: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The upper concave hull of a Pareto front (k ascending, r ascending): the rewards mixtures of its policies reach
    (adding points never lowers it, unlike interpolation between adjacent Pareto points)."""
    hk: list[float] = []
    hr: list[float] = []
    for x, y in zip(np.asarray(k, float), np.asarray(r, float)):
        while len(hk) >= 2 and (hk[-1] - hk[-2]) * (y - hr[-2]) - (hr[-1] - hr[-2]) * (x - hk[-2]) >= 0:
            hk.pop()
            hr.pop()
        hk.append(float(x))
        hr.append(float(y))
    return np.asarray(hk), np.asarray(hr)


def front_curve(kl: Sequence[float], reward: Sequence[float], budgets: Sequence[float], *,
                concave: bool = False) -> np.ndarray:
    """The best reward within each KL budget: the Pareto front linearly interpolated between its points (``concave``:
    its upper concave hull), flat after its last point, NaN below its first point."""
    k, r = pareto(kl, reward)
    if concave:
        k, r = upper_hull(k, r)
    b = np.asarray(budgets, dtype=float)
    if k.size == 0:
        return np.full(b.shape, np.nan)
    out = np.interp(b, k, r)  # np.interp is flat beyond the last point
    out[b < k[0] - 1e-12] = np.nan
    return out


def frontier_score(kl: Sequence[float], reward: Sequence[float], lo: float, hi: float, n_grid: int = 200, *,
                   concave: bool = False) -> float:
    """Mean of :func:`front_curve` over ``n_grid`` budgets evenly spaced in [lo, hi] (NaN if any is undefined)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return float("nan")
    vals = front_curve(kl, reward, np.linspace(lo, hi, n_grid), concave=concave)
    return float(vals.mean()) if np.isfinite(vals).all() else float("nan")


def common_range(fronts: dict[str, Sequence[tuple[Sequence[float], Sequence[float]]]]) -> tuple[float, float]:
    """The KL budgets every method reaches in every seed: from the largest first Pareto KL to the smallest largest
    KL, over all (method, seed) run sets. (NaN, NaN) when that range is empty."""
    firsts, lasts = [], []
    for runs in fronts.values():
        for kl, rw in runs:
            k, _ = pareto(kl, rw)
            if k.size:
                firsts.append(float(k[0]))
                lasts.append(float(np.max(np.asarray(kl, float)[np.isfinite(np.asarray(kl, float))])))
    if not firsts:
        return float("nan"), float("nan")
    lo, hi = max(firsts), min(lasts)
    return (lo, hi) if hi > lo else (float("nan"), float("nan"))


# ------------------------------------------------------------------------------------------ comparisons


@dataclass
class Pairwise:
    diff: float  # mean over seeds of A's score minus mean over seeds of B's
    lo: float
    hi: float
    prob_improvement: float  # P(score_A > score_B) over all seed pairs, ties 1/2
    n_a: int
    n_b: int

    @property
    def distinguishable(self) -> bool:
        """The interval of the difference excludes 0."""
        return bool(math.isfinite(self.lo) and math.isfinite(self.hi) and (self.lo > 0 or self.hi < 0))


def probability_of_improvement(a: Sequence[float], b: Sequence[float]) -> float:
    """P(X > Y) for X drawn from ``a``'s seeds and Y from ``b``'s, ties counting 1/2 (Agarwal et al. 2021)."""
    x = np.asarray(a, float)[:, None]
    y = np.asarray(b, float)[None, :]
    if x.size == 0 or y.size == 0:
        return float("nan")
    return float(((x > y) + 0.5 * (x == y)).mean())


def pairwise(a: Sequence[float], b: Sequence[float], *, n_boot: int = N_BOOT, seed: int = 0,
             level: float = LEVEL) -> Pairwise:
    """Difference of the means of two methods' per-seed scores, with a percentile interval from resampling
    each method's seeds independently (NaN interval unless both have at least 2 seeds)."""
    x = np.asarray([v for v in a if math.isfinite(v)], float)
    y = np.asarray([v for v in b if math.isfinite(v)], float)
    if x.size == 0 or y.size == 0:
        return Pairwise(float("nan"), float("nan"), float("nan"), float("nan"), int(x.size), int(y.size))
    diff = float(x.mean() - y.mean())
    lo = hi = float("nan")
    if x.size >= 2 and y.size >= 2:
        rng = np.random.default_rng(seed)
        bx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
        by = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(1)
        lo, hi = _percentile(bx - by, level)
    return Pairwise(diff, lo, hi, probability_of_improvement(x, y), int(x.size), int(y.size))
