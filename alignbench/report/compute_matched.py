"""The compute-matched view: every method's frontier cut at one common compute budget.

Each run logs its cumulative policy compute in every evaluation row (``compute/policy_tokens``: policy forward +
2 x backward positions, :mod:`alignbench.compute`). The **budget** B of a task is the smallest of the methods'
largest per-run budgets, over the methods that spent policy compute in training (a method that spent none, e.g.
best-of-N from the reference, is kept whole and named): the most compute every such method reached in at least one
run. Each run is then represented by its last evaluation within B (its step-0 evaluation, the reference, where
its first later evaluation already exceeds B), and the frontier score is computed from these points exactly as in
the ranking (:mod:`.ranking`): per seed, over the common KL range of the cut points, with a bootstrap over seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import names as N
from . import seeds as S
from .ranking import per_seed_points

COLUMNS = ["task", "method", "budget", "n_seeds", "n_runs", "n_cut", "score", "ci_low", "ci_high", "kl_lo", "kl_hi",
           "full_budget", "no_training"]


def final_budget(metrics: pd.DataFrame) -> float:
    """The run's total policy budget: the last logged cumulative ``compute/policy_tokens`` (NaN if never logged)."""
    if N.COMPUTE_BUDGET not in metrics:
        return float("nan")
    v = pd.to_numeric(metrics[N.COMPUTE_BUDGET], errors="coerce").dropna()
    return float(v.iloc[-1]) if len(v) else float("nan")


def point_within(metrics: pd.DataFrame, budget: float) -> tuple[float, float, bool] | None:
    """(KL, gold reward, cut) of the last evaluation with cumulative budget <= ``budget``; ``cut``: later
    evaluations were dropped. None when no evaluation qualifies or it lacks KL or reward."""
    need = (N.COMPUTE_BUDGET, N.KL, N.GOLD)
    if any(k not in metrics for k in need) or metrics.empty:
        return None
    m = metrics[[*need]].apply(pd.to_numeric, errors="coerce").dropna()
    within = m[m[N.COMPUTE_BUDGET] <= budget * (1 + 1e-9)]
    if within.empty:
        return None
    last = within.iloc[-1]
    return float(last[N.KL]), float(last[N.GOLD]), len(within) < len(m)


def task_budget(per_method: dict[str, list[float]]) -> tuple[float, list[str]]:
    """(B, methods without training compute): the smallest over methods of their largest run budget, over the
    methods whose largest budget is > 0. per_method: method -> final budgets of its runs."""
    tops = {m: max((b for b in v if np.isfinite(b)), default=float("nan")) for m, v in per_method.items()}
    none = sorted(m for m, t in tops.items() if np.isfinite(t) and t <= 0)
    spent = [t for t in tops.values() if np.isfinite(t) and t > 0]
    return (min(spent) if spent else float("nan")), none


def cut_points(t: pd.DataFrame, runs: dict[str, Any], budget: float) -> pd.DataFrame:
    """The summary rows ``t`` with ``kl`` and ``reward`` replaced by each run's point within ``budget``, and
    ``_cut`` (later evaluations dropped); runs without such a point are left out."""
    rows = []
    for _, r in t.iterrows():
        run = runs.get(str(r["run_id"]))
        p = point_within(run.metrics, budget) if run is not None else None
        if p is not None:
            rows.append({**r.to_dict(), "kl": p[0], "reward": p[1], "_cut": p[2]})
    return pd.DataFrame(rows)


def scores_at(summary: pd.DataFrame, runs: dict[str, Any], task: str, budget: float,
              reference: dict[tuple[str, Any], float] | None = None
              ) -> tuple[dict[str, list[float]], float, float, pd.DataFrame]:
    """(method -> per-seed frontier scores, KL range lo, hi, the cut points) of ``task``'s runs at ``budget``."""
    ok = summary[(summary["status"] == "ok") & (summary["task"].astype(str) == task)]
    cut = cut_points(ok, runs, budget)
    if cut.empty:
        return {}, float("nan"), float("nan"), cut
    pts = per_seed_points(cut, task, reference)
    lo, hi = S.common_range(pts)
    return {m: [S.frontier_score(k, r, lo, hi) for k, r in sets] for m, sets in sorted(pts.items())}, lo, hi, cut


def task_budgets(summary: pd.DataFrame, runs: dict[str, Any], task: str) -> dict[str, list[float]]:
    """method -> the final policy budgets of ``task``'s completed runs."""
    ok = summary[(summary["status"] == "ok") & (summary["task"].astype(str) == task)]
    out: dict[str, list[float]] = {}
    for rid, method in zip(ok["run_id"].astype(str), ok["method"].astype(str)):
        if rid in runs:
            out.setdefault(method, []).append(final_budget(runs[rid].metrics))
    return out


def build_compute_matched(summary: pd.DataFrame, runs: dict[str, Any],
                          reference: dict[tuple[str, Any], float] | None = None) -> pd.DataFrame:
    """One row per (task, method): the frontier score over seeds at the task's common budget (see the module)."""
    ok = summary[summary["status"] == "ok"]
    rows: list[dict[str, Any]] = []
    for task in sorted(ok["task"].astype(str).unique()):
        budgets = task_budgets(summary, runs, task)
        b, untrained = task_budget(budgets)
        if not np.isfinite(b):
            continue
        scores, lo, hi, cut = scores_at(summary, runs, task, b, reference)
        for m, sc in scores.items():
            point, clo, chi = S.seed_bootstrap(sc)
            g = cut[cut["method"].astype(str) == m]
            rows.append({"task": task, "method": m, "budget": b, "n_seeds": len(sc), "n_runs": len(g),
                         "n_cut": int(g["_cut"].sum()), "score": point, "ci_low": clo, "ci_high": chi, "kl_lo": lo,
                         "kl_hi": hi, "full_budget": max(budgets.get(m, [float("nan")])), "no_training": m in untrained})
    return pd.DataFrame(rows, columns=COLUMNS)
