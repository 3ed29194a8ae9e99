"""The ranking of methods per task, with uncertainty over training runs (``ranking.csv``).

For each task and method, every completed run is a point (KL, gold reward): all sweep values and every other
swept field together, as the DPO paper drew its frontiers, plus the reference itself (KL 0, its gold reward
from the runs' step-0 evaluations), which every method can always stay at. Per seed, a method's frontier is
the Pareto front of these points (``seeds.front_curve``). Its **frontier score** is the mean of that curve
over a common range of KL budgets: from the largest first Pareto KL (0 where the reference point is known) to
the smallest largest KL over every (method, seed) of the task, so that every method is scored only where each
of its run sets reaches (``seeds.common_range``). The score's
interval resamples seeds; pairs of methods get the difference of their mean scores with its interval and the
probability of improvement P(A > B) over seed pairs (Agarwal et al. 2021). **Stability** is the per-seed
standard deviation of final reward and KL at each sweep value.

Rows of ``ranking.csv`` (column ``table``): ``score`` (one per task and method; ``compute_mean``: its mean
policy tokens per run, forward + 2 x backward, :mod:`alignbench.compute`), ``pairwise`` (both orders of
every pair), ``stability`` (one per task, method and sweep value).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import names as N
from . import seeds as S
from .schema import cell

COLUMNS = ["table", "task", "method", "method_b", "sweep_param", "sweep_value", "variant", "n_seeds", "n_seeds_b", "score",
           "ci_low", "ci_high", "prob_improvement", "kl_lo", "kl_hi", "reward_mean", "reward_sd", "kl_mean", "kl_sd",
           "kl_is_bound", "compute_mean"]


def per_unit_points(ok: pd.DataFrame, task: str, reference: dict[tuple[str, Any], float] | None = None
                    ) -> dict[str, dict[Any, tuple[np.ndarray, np.ndarray]]]:
    """method -> seed -> its (KL, reward) point set (every completed run of that seed is a point, plus the
    reference's (0, reward) where ``reference`` has it for (task, seed))."""
    t = ok[(ok["task"] == task)].dropna(subset=["kl", "reward"])
    out: dict[str, dict[Any, tuple[np.ndarray, np.ndarray]]] = {}
    for (method, seed), g in t.groupby(["method", "seed"], sort=True):
        kl, rw = g["kl"].to_numpy(float), g["reward"].to_numpy(float)
        r0 = (reference or {}).get((task, seed))
        if r0 is not None and np.isfinite(r0):
            kl, rw = np.concatenate([[0.0], kl]), np.concatenate([[r0], rw])
        out.setdefault(str(method), {})[seed] = (kl, rw)
    return out


def per_seed_points(ok: pd.DataFrame, task: str, reference: dict[tuple[str, Any], float] | None = None
                    ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """method -> one (KL, reward) point set per seed (:func:`per_unit_points` without the seed keys)."""
    return {m: list(d.values()) for m, d in per_unit_points(ok, task, reference).items()}


def reference_rewards(runs: dict[str, Any]) -> dict[tuple[str, Any], float]:
    """(task, seed) -> the reference's gold reward: the mean over runs of their step-0 evaluation (the policy
    before any update is the reference), where logged."""
    vals: dict[tuple[str, Any], list[float]] = {}
    for r in runs.values():
        m = r.metrics
        if "step" not in m or N.GOLD not in m:
            continue
        at0 = pd.to_numeric(m.loc[m["step"] == 0, N.GOLD], errors="coerce").dropna()
        kl0 = pd.to_numeric(m.loc[m["step"] == 0, N.KL], errors="coerce").dropna() if N.KL in m else at0 * 0
        if len(at0) and (len(kl0) == 0 or abs(float(kl0.iloc[0])) < 1e-9):
            vals.setdefault((r.task, r.seed), []).append(float(at0.iloc[0]))
    return {k: float(np.mean(v)) for k, v in vals.items()}


def build_ranking(summary: pd.DataFrame, reference: dict[tuple[str, Any], float] | None = None,
                  kl_range: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """The rows of ``ranking.csv``. ``kl_range``: task -> the KL range of the frontier scores (default: the common
    range of ``summary``'s runs), so that rankings of other checkpoints of the same runs share one range."""
    ok = summary[summary["status"] == "ok"]
    rows: list[dict[str, Any]] = []
    if ok.empty or "kl" not in ok or "reward" not in ok:
        return pd.DataFrame(rows, columns=COLUMNS)
    for task in sorted(ok["task"].astype(str).unique()):
        pts = per_seed_points(ok, task, reference)
        lo, hi = (kl_range or {}).get(task) or S.common_range(pts)
        scores = {m: [S.frontier_score(k, r, lo, hi) for k, r in sets] for m, sets in pts.items()}
        t = ok[ok["task"] == task]
        bound = {m: bool("kl_is_bound" in g and (pd.to_numeric(g["kl_is_bound"], errors="coerce") > 0.5).any())
                 for m, g in t.groupby("method")}
        for m, sc in sorted(scores.items()):
            point, clo, chi = S.seed_bootstrap(sc)
            rows.append({"table": "score", "task": task, "method": m, "n_seeds": len(sc), "score": point,
                         "ci_low": clo, "ci_high": chi, "kl_lo": lo, "kl_hi": hi, "kl_is_bound": bound.get(m, False),
                         "compute_mean": mean_budget(t[t["method"] == m])})
        names = sorted(scores)
        for a in names:
            for b in names:
                if a == b:
                    continue
                p = S.pairwise(scores[a], scores[b])
                rows.append({"table": "pairwise", "task": task, "method": a, "method_b": b, "n_seeds": p.n_a,
                             "n_seeds_b": p.n_b, "score": p.diff, "ci_low": p.lo, "ci_high": p.hi,
                             "prob_improvement": p.prob_improvement, "kl_lo": lo, "kl_hi": hi})
        for key, g in t.groupby(["method", *cell(t)], sort=True):
            m, v = key[0], key[1]
            rw, kl = pd.to_numeric(g["reward"], errors="coerce"), pd.to_numeric(g["kl"], errors="coerce")
            rows.append({"table": "stability", "task": task, "method": m, "sweep_param": str(g["sweep_param"].iloc[0]),
                         "sweep_value": float(v), "variant": str(key[2]) if len(key) > 2 else "", "n_seeds": int(g["seed"].nunique()), "reward_mean": float(rw.mean()),
                         "reward_sd": float(rw.std(ddof=1)) if len(g) > 1 else float("nan"),
                         "kl_mean": float(kl.mean()), "kl_sd": float(kl.std(ddof=1)) if len(g) > 1 else float("nan")})
    return pd.DataFrame(rows, columns=COLUMNS)


def mean_budget(runs: pd.DataFrame) -> float:
    """Mean policy budget per run (``compute/policy_tokens``: forward + 2 x backward tokens), NaN if not recorded."""
    if N.COMPUTE_BUDGET not in runs:
        return float("nan")
    v = pd.to_numeric(runs[N.COMPUTE_BUDGET], errors="coerce").dropna()
    return float(v.mean()) if len(v) else float("nan")


def verdict(row: pd.Series) -> str:
    """A pairwise row in words: who leads, only where the interval over seeds excludes 0."""
    n_a, n_b = int(row["n_seeds"]), int(row["n_seeds_b"])
    n = f"{n_a} seed{'s' if n_a != 1 else ''}" if n_a == n_b else f"{n_a} and {n_b} seeds"
    lo, hi = row["ci_low"], row["ci_high"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"no interval over seeds with {n}"
    if lo > 0:
        return f"{row['method']} ahead ({n})"
    if hi < 0:
        return f"{row['method_b']} ahead ({n})"
    return f"not distinguishable with {n}"
