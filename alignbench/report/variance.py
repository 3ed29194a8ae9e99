"""Where the spread over runs comes from: training (run seeds) versus data (data seeds).

With several data seeds (``--data-seeds``: the preference sample and the reward model trained on it) crossed with
run seeds, a per-run quantity y[d, s] (data seed d, run seed s) is modelled as y = mu + a_d + e_ds, with a_d the
data effect (variance sigma_data^2) and e_ds the training noise (sigma_train^2); the one-way random-effects
estimates (ANOVA, method of moments) are:

* sigma_train^2 = the pooled within-data-seed variance (sample variances of each data seed's runs, weighted by
  their degrees of freedom);
* sigma_data^2 = max(0, Var_d(mean over s of y[d, s]) - sigma_train^2 / n_s), n_s the harmonic mean of the run
  seeds per data seed: the spread of the per-data-seed means beyond what training noise alone gives them.

Intervals resample data seeds, then run seeds within each (a two-level bootstrap, 95% percentile).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .seeds import LEVEL, _percentile

N_BOOT = 500


def components(groups: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """(sd_train, sd_data, sd of the per-data-seed means) of values grouped by data seed (NaN where undefined).

    groups: one sequence of per-run values per data seed (non-finite values dropped).
    """
    gs = [np.asarray([v for v in g if math.isfinite(v)], float) for g in groups]
    gs = [g for g in gs if g.size]
    dof = sum(g.size - 1 for g in gs)
    within = sum(float(((g - g.mean()) ** 2).sum()) for g in gs) / dof if dof > 0 else float("nan")
    if len(gs) < 2:
        return math.sqrt(within) if math.isfinite(within) else float("nan"), float("nan"), float("nan")
    means = np.array([g.mean() for g in gs])
    between = float(means.var(ddof=1))
    n_s = len(gs) / sum(1.0 / g.size for g in gs)
    data = max(0.0, between - (within / n_s if math.isfinite(within) else 0.0))
    return (math.sqrt(within) if math.isfinite(within) else float("nan")), math.sqrt(data), math.sqrt(between)


def decompose(groups: Sequence[Sequence[float]], *, n_boot: int = N_BOOT, seed: int = 0,
              level: float = LEVEL) -> dict[str, Any]:
    """:func:`components` with bootstrap intervals (data seeds resampled, then runs within each): keys
    ``sd_train``, ``sd_data``, ``sd_means`` and their ``_lo`` / ``_hi``, ``n_data`` (data seeds), ``n_runs``."""
    gs = [np.asarray([v for v in g if math.isfinite(v)], float) for g in groups]
    gs = [g for g in gs if g.size]
    train, data, means = components(gs)
    out: dict[str, Any] = {"sd_train": train, "sd_data": data, "sd_means": means, "n_data": len(gs),
                           "n_runs": int(sum(g.size for g in gs))}
    draws = []
    if len(gs) >= 2:
        rng = np.random.default_rng(seed)
        for _ in range(n_boot):
            pick = rng.integers(0, len(gs), len(gs))
            draws.append(components([gs[i][rng.integers(0, gs[i].size, gs[i].size)] for i in pick]))
    arr = np.array(draws, float) if draws else np.full((1, 3), np.nan)
    for j, name in enumerate(("sd_train", "sd_data", "sd_means")):
        col = arr[:, j][np.isfinite(arr[:, j])]
        out[f"{name}_lo"], out[f"{name}_hi"] = _percentile(col, level) if col.size > 1 else (float("nan"), float("nan"))
    return out
