"""Which evaluated checkpoint of a run counts: the final one, the early-stopped one, or the envelope of all of them.

Every run is evaluated every ``eval_every`` steps; each evaluation is a (KL, gold reward) point. Three ways to
turn a method's runs into a frontier (per seed, then aggregated over seeds with :mod:`.seeds`):

* **final**          the last evaluation of each run (what the ranking and the win rates use);
* **early-stopped**  per run, the evaluation a practitioner would keep without the gold reward: where the
                     method's declared ``early_stop_signal`` (a logged metric and "min" or "max", e.g. the
                     held-out preference loss, minimised) is best, the earliest on ties
                     (:func:`early_stop_choice`); methods trained on the gold reward declare it as their signal,
                     which makes their choice an oracle (``early_stop_oracle``); methods without a signal
                     (best-of-N: no training) have no early-stopped policy;
* **envelope**       the Pareto front of every evaluation of every run (:func:`envelope`): an oracle upper bound,
                     since choosing among checkpoints by their gold reward needs the gold reward.

A frontier here is the upper concave hull of the Pareto points (``seeds.front_curve(concave=True)``: the rewards
mixtures of the policies reach), so that more points never lower it and the envelope bounds the other two from
above. The cost of training too long is the per-seed difference of frontier scores, final minus early-stopped, over
one KL range (:func:`paired_gap`); early-stopped minus envelope measures how much the practitioner's signal leaves
on the table. All functions here are pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import names as N
from . import seeds as S
from .diagnostics import pareto_front
from .ranking import per_unit_points
from .schema import BASE_COLUMNS, EARLY_STEP, as_frame

FINAL, EARLY, ENVELOPE = "final", "early-stopped", "envelope"
CHOICES = (FINAL, EARLY, ENVELOPE)
MODES = ("min", "max")


def early_stop_choice(rows: pd.DataFrame | Sequence[dict[str, Any]], signal: str, mode: str) -> int | None:
    """Position (in step order) of the evaluation where ``signal`` is lowest (``mode`` "min") or highest ("max"),
    the earliest step on ties; None where the signal was never logged (no finite value).

    Rows where the signal is missing are not candidates (e.g. the step-0 row of an online method, which has no
    training reward yet). A signal that never improves on its first value chooses its first row: on the offline
    loop the step-0 evaluation, the reference policy itself.
    """
    best_index([], mode)  # checks the mode
    df = as_frame(rows)
    if signal not in df:
        return None
    return best_index(pd.to_numeric(df[signal], errors="coerce").to_numpy(float), mode)


def best_index(values: Sequence[float | None], mode: str) -> int | None:
    """Position of the lowest ("min") or highest ("max") finite value of ``values`` (N,), the first on ties; None
    where none is finite. (What :func:`early_stop_choice` applies to rows in step order.)"""
    if mode not in MODES:
        raise ValueError(f"early-stop signal: mode must be 'min' or 'max', got {mode!r}")
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    if not ok.any():
        return None
    best = v[ok].min() if mode == "min" else v[ok].max()
    return int(np.flatnonzero(ok & (v == best))[0])


def envelope(points: Any) -> np.ndarray:
    """(M, 2) Pareto front of (KL, reward) points, as an array sorted by KL: the points no other point beats on both
    (lower KL and higher reward). Input (P, 2); rows with a NaN are dropped."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    k, r = pareto_front(p[:, 0], p[:, 1])
    return np.stack([np.asarray(k, float), np.asarray(r, float)], axis=1) if len(k) else np.zeros((0, 2))


@dataclass(frozen=True)
class Gap:
    """Mean over seeds of a paired per-seed difference, with its 95% bootstrap interval over seeds (NaN with fewer
    than 2 seeds) and the number of seeds."""

    diff: float
    lo: float
    hi: float
    n: int

    @property
    def distinguishable(self) -> bool:
        return bool(math.isfinite(self.lo) and math.isfinite(self.hi) and (self.lo > 0 or self.hi < 0))


def paired_gap(a: Mapping[Any, float], b: Mapping[Any, float]) -> Gap:
    """a minus b per seed (the seeds both have, finite values only), resampled over seeds."""
    d = [float(a[s]) - float(b[s]) for s in a if s in b and math.isfinite(a[s]) and math.isfinite(b[s])]
    diff, lo, hi = S.seed_bootstrap(d)
    return Gap(diff, lo, hi, len(d))


def final_vs_early_gap(final: Mapping[Any, float], early: Mapping[Any, float]) -> Gap:
    """The cost of training too long: per-seed frontier score of the final policies minus that of the early-stopped
    ones (negative where stopping early gives the better frontier)."""
    return paired_gap(final, early)


# ------------------------------------------------------------------------------------------ from a results folder


def evaluation_table(runs: Mapping[str, Any], signals: Mapping[str, Sequence[str] | None]) -> pd.DataFrame:
    """One row per evaluation of every given run: run_id, task, method, seed, step, kl, reward, and two flags,
    ``final`` (its last evaluation with KL and reward) and ``early`` (the one its method's signal chooses; a run
    whose signal was never logged keeps its final one, and ``fallback`` says so; methods without a signal: never).

    ``runs``: run id -> an object with task, method, seed and metrics (a frame of ``metrics.jsonl``; see
    ``schema.RunData``); ``signals``: method -> (metric, mode) or None."""
    out = []
    for rid, r in runs.items():
        m = r.metrics
        if N.KL not in m or N.GOLD not in m:
            continue
        kl = pd.to_numeric(m[N.KL], errors="coerce").to_numpy(float)
        rw = pd.to_numeric(m[N.GOLD], errors="coerce").to_numpy(float)
        valid = np.flatnonzero(np.isfinite(kl) & np.isfinite(rw))
        if not valid.size:
            continue
        sig = signals.get(r.method)
        early = early_stop_choice(m, sig[0], sig[1]) if sig else None
        fallback = bool(sig) and early is None
        if fallback or (early is not None and early not in valid):
            early, fallback = int(valid[-1]), True
        for i in valid:
            out.append({"run_id": rid, "task": r.task, "method": r.method, "seed": r.seed,
                        "step": float(m["step"].iloc[i]), "kl": kl[i], "reward": rw[i], "final": i == valid[-1],
                        "early": early is not None and i == early, "fallback": fallback})
    cols = ["run_id", "task", "method", "seed", "step", "kl", "reward", "final", "early", "fallback"]
    return pd.DataFrame(out, columns=cols)


def point_sets(table: pd.DataFrame, task: str, choice: str, reference: Mapping[tuple[str, Any], float] | None = None
               ) -> dict[str, dict[Any, tuple[np.ndarray, np.ndarray]]]:
    """method -> seed -> (KL, reward) points of ``choice`` (final: each run's last evaluation; early-stopped: each
    run's chosen one; envelope: every evaluation), plus the reference (0, its reward) where known."""
    t = table if choice == ENVELOPE else table[table["final" if choice == FINAL else "early"].astype(bool)]
    return per_unit_points(t, task, reference)


def choice_summary(summary: pd.DataFrame, table: pd.DataFrame, choice: str) -> pd.DataFrame:
    """The summary's completed runs with ``kl`` and ``reward`` of the chosen checkpoint (final: unchanged; early-
    stopped: the chosen evaluation's, runs without one dropped), so the ranking and win-rate code can take it."""
    ok = summary[summary["status"] == "ok"]
    if choice == FINAL:
        return ok
    pick = table[table["early"].astype(bool)].set_index("run_id")
    s = ok[ok["run_id"].astype(str).isin(pick.index)]
    s = s[[c for c in s.columns if c in BASE_COLUMNS or c in ("kl_is_bound", EARLY_STEP)]].copy()  # no final metrics
    rid = s["run_id"].astype(str)
    s["kl"] = pick.loc[rid, "kl"].to_numpy(float)
    s["reward"] = pick.loc[rid, "reward"].to_numpy(float)
    return s


# ------------------------------------------------------------------------------------------ checkpoints.csv

COLUMNS = ["table", "task", "method", "method_b", "choice", "comparison", "signal", "mode", "oracle", "run_id", "seed",
           "early_step", "final_step", "fallback", "n_seeds", "n_seeds_b", "score", "ci_low", "ci_high",
           "prob_improvement", "kl_lo", "kl_hi"]
GAPS = (("final − early-stopped", FINAL, EARLY), ("early-stopped − envelope", EARLY, ENVELOPE))


def signals_of(methods_info: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, str] | None]:
    """method -> its declared (signal, mode) from ``sweep.json``'s method declarations, or None."""
    out: dict[str, tuple[str, str] | None] = {}
    for m, info in methods_info.items():
        sig = info.get("early_stop_signal")
        out[m] = (str(sig[0]), str(sig[1])) if sig else None
    return out


def build_checkpoints(summary: pd.DataFrame, table: pd.DataFrame, methods_info: Mapping[str, Mapping[str, Any]],
                      reference: Mapping[tuple[str, Any], float], final_ranking: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``checkpoints.csv`` (column ``table``): ``signal`` (one per method: its signal, mode and whether
    it is an oracle), ``run`` (one per run: chosen and final step), ``score`` (frontier score per task, method and
    choice over the final policies' common KL range, with its interval over seeds), ``gap`` (final − early-stopped
    and early-stopped − envelope, paired by seed) and ``pairwise`` (the ranking's pairwise rows at the final and at
    the early-stopped policies, over the same KL range). ``table``: :func:`evaluation_table`."""
    from .ranking import build_ranking

    rows: list[dict[str, Any]] = []
    sig = signals_of(methods_info)
    for m in sorted(table["method"].unique()):
        s = sig.get(m)
        rows.append({"table": "signal", "method": m, "signal": s[0] if s else "", "mode": s[1] if s else "",
                     "oracle": bool(methods_info.get(m, {}).get("early_stop_oracle", False))})
    for rid, g in table.groupby("run_id", sort=True):
        e = g[g["early"].astype(bool)]
        rows.append({"table": "run", "run_id": rid, "task": g["task"].iloc[0], "method": g["method"].iloc[0],
                     "seed": g["seed"].iloc[0], "early_step": float(e["step"].iloc[0]) if len(e) else float("nan"),
                     "final_step": float(g.loc[g["final"], "step"].iloc[0]), "fallback": bool(g["fallback"].iloc[0])})
    sc = final_ranking[final_ranking["table"] == "score"] if len(final_ranking) else final_ranking
    ranges = {t: (float(g["kl_lo"].iloc[0]), float(g["kl_hi"].iloc[0])) for t, g in sc.groupby("task")}
    early_ranking = build_ranking(choice_summary(summary, table, EARLY), dict(reference), ranges)
    for task in sorted(table["task"].unique()):
        lo, hi = ranges.get(task, (float("nan"), float("nan")))
        scores = {c: {m: {seed: S.frontier_score(k, r, lo, hi, concave=True) for seed, (k, r) in per.items()}
                      for m, per in point_sets(table, task, c, reference).items()} for c in CHOICES}
        for m in sorted(scores[FINAL]):
            for c in CHOICES:
                if m in scores[c]:
                    point, clo, chi = S.seed_bootstrap(list(scores[c][m].values()))
                    rows.append({"table": "score", "task": task, "method": m, "choice": c,
                                 "n_seeds": len(scores[c][m]), "score": point, "ci_low": clo, "ci_high": chi,
                                 "kl_lo": lo, "kl_hi": hi})
            for name, a, b in GAPS:
                if m in scores[a] and m in scores[b]:
                    gap = paired_gap(scores[a][m], scores[b][m])
                    rows.append({"table": "gap", "task": task, "method": m, "comparison": name, "n_seeds": gap.n,
                                 "score": gap.diff, "ci_low": gap.lo, "ci_high": gap.hi, "kl_lo": lo, "kl_hi": hi})
    for choice, rk in ((FINAL, final_ranking), (EARLY, early_ranking)):
        pw = rk[rk["table"] == "pairwise"] if len(rk) else rk
        for _, r in pw.iterrows():
            rows.append({"table": "pairwise", "choice": choice, **{k: r[k] for k in (
                "task", "method", "method_b", "n_seeds", "n_seeds_b", "score", "ci_low", "ci_high", "prob_improvement",
                "kl_lo", "kl_hi")}})
    return pd.DataFrame(rows, columns=COLUMNS)
