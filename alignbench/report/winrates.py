"""Win-rate tables with bootstrap intervals over prompts, built from the files of a results folder.

Judges (always the task's gold reward, on the same prompts):

* exact tasks: the Bradley-Terry probability sum_{y,y'} a(y) b(y') sigma(r(y) - r(y')) per prompt
  (:func:`exact_head_to_head`), the same judge as the task's own ``winrate/vs_ref``;
* sampled tasks: per prompt, the share of (sample of a, sample of b) pairs where a's gold reward is
  higher, ties 1/2 (:func:`sampled_head_to_head`); when a run saved only per-prompt mean rewards, the
  share of prompts where a's mean is higher (:func:`mean_head_to_head`, stated as the judge).

Every table is antisymmetric: the value of A against B is 1 minus that of B against A (ties count 1/2
on both sides), and with the same bootstrap draws the interval of B vs A mirrors that of A vs B.
Intervals are 95% percentile bootstrap intervals over training runs: seeds (seed pairs for head-to-head rows)
resampled, then prompts within each (:func:`alignbench.report.seeds.hierarchical_bootstrap`); a cell with a
single seed gets no interval, since prompts alone leave out the spread between training runs.

Tables (rows of ``winrates.csv``, column ``table``):

* ``vs_ref``      each (method, sweep value) against the reference policy;
* ``best``        methods head to head, each at its sweep value of highest mean gold reward;
* ``kl<B>``       methods head to head, each at the run whose KL is closest to the budget B nats
                  (the actual KL is in ``kl_a`` / ``kl_b``);
* ``vs_chosen``   against the preference data's chosen responses, where the task provides them.

Per-prompt inputs, read through :class:`~alignbench.report.schema.ResultsData` from ``runs/<id>/eval_final.npz``
(or ``eval_final.json`` of older versions) and
``DIR/task_<task>.npz`` (optional):
exact tasks need the policy table ``logp`` (K x N) and the gold reward table (K x N) from
``task_<task>.npz`` key ``reward``, ``eval_final.json`` key ``reward_table``, or a 2-D ``reward``;
sampled tasks use ``rewards`` (P x n gold rewards of the policy's samples), else the per-prompt means
``reward`` (P,), and ``winrate`` (P,) for the win rate against the reference.
"""

from __future__ import annotations

import hashlib

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .schema import ResultsData, cell, cell_label, read_json_or_none, sym  # noqa: F401  (re-exported)
from .seeds import hierarchical_bootstrap

DEFAULT_BUDGETS = (0.3, 1.0, 3.0, 10.0)
MAX_KL_RATIO = 2.0  # a run counts for a budget only if its KL is within this factor of it
CSV_COLUMNS = ["table", "task", "budget_kl", "method_a", "param_a", "value_a", "variant_a", "kl_a", "kl_a_is_bound",
               "reward_a", "method_b", "param_b", "value_b", "variant_b", "kl_b", "kl_b_is_bound", "reward_b", "win_rate", "ci_low", "ci_high",
               "n_prompts", "n_seeds", "judge"]


# ------------------------------------------------------------------------------------------ statistics


def bootstrap_ci(per_prompt_values: Sequence[float] | np.ndarray, stat: Callable = np.mean, n_boot: int = 2000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(statistic, lower, upper): percentile bootstrap interval of ``stat`` over resampled units.

    Units (prompts) are resampled with replacement ``n_boot`` times with a seeded generator, so the
    same call gives the same interval. NaN values are dropped; with fewer than 2 units the interval is
    (NaN, NaN).
    """
    x = np.asarray(per_prompt_values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(stat(x))
    if x.size < 2:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    samples = x[idx]
    try:
        stats = np.asarray(stat(samples, axis=1), dtype=np.float64)
        if stats.shape != (n_boot,):
            raise TypeError
    except TypeError:
        stats = np.array([stat(s) for s in samples], dtype=np.float64)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return point, float(lo), float(hi)


def _normalise_rows(logp: np.ndarray) -> np.ndarray:
    m = logp.max(-1, keepdims=True)
    return logp - (m + np.log(np.exp(logp - m).sum(-1, keepdims=True)))


def exact_head_to_head(logp_a: Any, logp_b: Any, reward: Any) -> np.ndarray:
    """(K,) per prompt: sum_{y,y'} a(y) b(y') sigma(r(y) - r(y')), the Bradley-Terry win probability of
    policy a over policy b judged by the gold reward. Inputs (K, N); log-prob rows are renormalised.
    The mean over prompts is the exact win rate (prompts weighted uniformly)."""
    la, lb = _normalise_rows(np.asarray(logp_a, float)), _normalise_rows(np.asarray(logp_b, float))
    r = np.asarray(reward, float)
    if not (la.shape == lb.shape == r.shape):
        raise ValueError(f"exact_head_to_head: shapes differ: {la.shape}, {lb.shape}, {r.shape}")
    pa, pb = np.exp(la), np.exp(lb)
    s = bt_matrix(r)
    out = np.empty(r.shape[0])
    for k in range(r.shape[0]):
        out[k] = pa[k] @ s[k] @ pb[k]
    return out


_BT_MATRICES: dict[bytes, np.ndarray] = {}


def bt_matrix(reward: np.ndarray) -> np.ndarray:
    """(K, N, N) sigma(r(y) - r(y')) per prompt, computed once per reward table (a report compares hundreds of
    policies on one table; the two most recent tables are kept: 13 MB per 1,296-response prompt)."""
    r = np.ascontiguousarray(reward, dtype=float)
    key = hashlib.sha256(r.tobytes()).digest() + repr(r.shape).encode()
    if key not in _BT_MATRICES:
        while len(_BT_MATRICES) >= 2:
            _BT_MATRICES.pop(next(iter(_BT_MATRICES)))
        _BT_MATRICES[key] = 0.5 * (1.0 + np.tanh(0.5 * (r[:, :, None] - r[:, None, :])))  # sigma, overflow-free
    return _BT_MATRICES[key]


def exact_vs_distribution(logp: Any, weights: Any, reward: Any) -> np.ndarray:
    """(K,) per prompt: BT win probability of the policy against responses drawn with ``weights``
    (K, N) non-negative (e.g. counts of the data's chosen responses; rows without weight give NaN)."""
    w = np.asarray(weights, float)
    tot = w.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        logw = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), -np.inf) - np.log(np.where(tot > 0, tot, 1.0))
    out = exact_head_to_head(logp, np.where(tot > 0, logw, 0.0), reward)
    out[tot[:, 0] <= 0] = np.nan
    return out


def sampled_head_to_head(rewards_a: Any, rewards_b: Any) -> np.ndarray:
    """(P,) per prompt: the share of (a sample, b sample) pairs where a's gold reward is higher, ties 1/2.
    Inputs (P, n) and (P, m) gold rewards of samples for the same P prompts."""
    a = np.asarray(rewards_a, float)
    b = np.asarray(rewards_b, float)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"sampled_head_to_head: {a.shape[0]} vs {b.shape[0]} prompts")
    a3, b3 = a[:, :, None], b[:, None, :]
    return ((a3 > b3) + 0.5 * (a3 == b3)).mean(axis=(1, 2))


def mean_head_to_head(reward_a: Any, reward_b: Any) -> np.ndarray:
    """(P,) per prompt: 1 if a's mean gold reward is higher, 0 if lower, 1/2 on a tie (a coarser judge,
    used when runs kept only per-prompt mean rewards)."""
    return sampled_head_to_head(np.asarray(reward_a, float).reshape(-1), np.asarray(reward_b, float).reshape(-1))


# ------------------------------------------------------------------------------------------ per-prompt data


def _align(pa: list[str] | None, pb: list[str] | None, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the prompts both runs evaluated (in a's order)."""
    if pa is None or pb is None:
        n = min(n_a, n_b)
        return np.arange(n), np.arange(n)
    where_b = {p: i for i, p in enumerate(pb)}
    ia = [i for i, p in enumerate(pa) if p in where_b]
    return np.array(ia, dtype=int), np.array([where_b[pa[i]] for i in ia], dtype=int)


def run_head_to_head(data: ResultsData, task: str, run_a: str, run_b: str) -> tuple[np.ndarray, str] | None:
    """Per-prompt win values of run a against run b, and the judge's name; None without the data."""
    ea, eb = data.eval_final(run_a), data.eval_final(run_b)
    if not ea or not eb:
        return None
    pa, pb = ea.get("prompts"), eb.get("prompts")
    if "logp" in ea and "logp" in eb:
        r = data.reward_table(task, run_a)
        if r is None:
            return None
        la, lb = np.asarray(ea["logp"], float), np.asarray(eb["logp"], float)
        ia, ib = _align(pa, pb, len(la), len(lb))
        return exact_head_to_head(la[ia], lb[ib], r[ia]), "exact BT on gold reward"
    if "rewards" in ea and "rewards" in eb:
        ra, rb = _ragged(ea["rewards"]), _ragged(eb["rewards"])
        ia, ib = _align(pa, pb, len(ra), len(rb))
        return np.array([sampled_head_to_head([ra[i]], [rb[j]])[0] for i, j in zip(ia, ib)]), "gold reward, sample pairs"
    if "reward" in ea and "reward" in eb:
        ra, rb = np.asarray(ea["reward"], float), np.asarray(eb["reward"], float)
        if ra.ndim == 1 and rb.ndim == 1:
            ia, ib = _align(pa, pb, len(ra), len(rb))
            return mean_head_to_head(ra[ia], rb[ib]), "gold reward, per-prompt means"
    return None


def _ragged(rows: Any) -> list[np.ndarray]:
    return [np.asarray(r if isinstance(r, list) else [r], float) for r in rows]


def run_vs_reference(data: ResultsData, run_id: str) -> np.ndarray | None:
    """Per-prompt win rate against the reference (sampled tasks), or None."""
    ef = data.eval_final(run_id) or {}
    if "winrate" in ef:
        return np.asarray(ef["winrate"], float)
    if "rewards" in ef and "ref_rewards" in ef:
        ra, rr = _ragged(ef["rewards"]), _ragged(ef["ref_rewards"])
        return np.array([sampled_head_to_head([a], [b])[0] for a, b in zip(ra, rr)])
    return None


def run_vs_chosen(data: ResultsData, task: str, run_id: str) -> tuple[np.ndarray, str] | None:
    """Per-prompt win rate against the data's chosen responses, where the task provides them."""
    ef = data.eval_final(run_id) or {}
    if "winrate_vs_chosen" in ef:
        return np.asarray(ef["winrate_vs_chosen"], float), "task's own (vs chosen)"
    if "rewards" in ef and "chosen_rewards" in ef:
        ra, rc = _ragged(ef["rewards"]), _ragged(ef["chosen_rewards"])
        return (np.array([sampled_head_to_head([a], [c])[0] if len(c) else np.nan for a, c in zip(ra, rc)]),
                "gold reward, sample vs chosen")
    arts = data.task_artifacts(task)
    if "logp" in ef and "eval_chosen_count" in arts:
        r = data.reward_table(task, run_id)
        if r is not None:
            return exact_vs_distribution(ef["logp"], arts["eval_chosen_count"], r), "exact BT vs held-out chosen"
    return None


# ------------------------------------------------------------------------------------------ units and selection


@dataclass
class Unit:
    """A (task, method, sweep value[, variant]) cell: its runs (one per seed), their mean KL and gold reward."""

    task: str
    method: str
    param: str
    value: float
    kl: float
    reward: float
    run_ids: list[str] = field(default_factory=list)
    kl_is_bound: bool = False
    variant: str = ""  # the values of a method's extra grid axes, where the sweep had any

    @property
    def label(self) -> str:
        return f"{self.method} {cell_label(self.param, self.value, self.variant)}"


def units(summary: pd.DataFrame) -> list[Unit]:
    """The ok runs of a summary grouped over seeds, one :class:`Unit` per (task, method, sweep value)."""
    ok = summary[summary["status"] == "ok"] if "status" in summary else summary
    if ok.empty or "sweep_value" not in ok:
        return []
    out = []
    for key, g in ok.groupby(["task", "method", *cell(ok)], sort=True):
        task, method, value = key[:3]
        variant = str(key[3]) if len(key) > 3 else ""
        param = str(g["sweep_param"].iloc[0]) if "sweep_param" in g else "beta"
        kl = float(pd.to_numeric(g["kl"], errors="coerce").mean()) if "kl" in g else float("nan")
        reward = float(pd.to_numeric(g["reward"], errors="coerce").mean()) if "reward" in g else float("nan")
        bound = bool("kl_is_bound" in g and (pd.to_numeric(g["kl_is_bound"], errors="coerce") > 0.5).any())
        out.append(Unit(str(task), str(method), param, float(value), kl, reward, list(g["run_id"]), bound, variant))
    return out


def select_best(us: Sequence[Unit]) -> dict[tuple[str, str], Unit]:
    """(task, method) -> the unit of highest mean gold reward."""
    best: dict[tuple[str, str], Unit] = {}
    for u in us:
        if not math.isfinite(u.reward):
            continue
        key = (u.task, u.method)
        if key not in best or u.reward > best[key].reward:
            best[key] = u
    return best


def select_matched_kl(us: Sequence[Unit], budget: float,
                      max_ratio: float | None = MAX_KL_RATIO) -> dict[tuple[str, str], Unit]:
    """(task, method) -> the unit whose mean KL is closest to ``budget`` nats (in log scale); a method
    without a unit within a factor ``max_ratio`` of the budget is left out (None: no limit)."""
    pick: dict[tuple[str, str], tuple[float, Unit]] = {}
    for u in us:
        if not math.isfinite(u.kl):
            continue
        dist = abs(math.log(max(u.kl, 1e-6)) - math.log(budget))
        if max_ratio is not None and dist > math.log(max_ratio) + 1e-12:
            continue
        key = (u.task, u.method)
        if key not in pick or dist < pick[key][0]:
            pick[key] = (dist, u)
    return {k: v[1] for k, v in pick.items()}


def unit_head_to_head(data: ResultsData, a: Unit, b: Unit) -> tuple[list[np.ndarray], str] | None:
    """Per-prompt values of unit a against unit b, one array per seed pair (the same seeds paired where both
    have them, else every combination, at most 25)."""
    seeds_a = _seeds(data, a)
    seeds_b = _seeds(data, b)
    common = sorted(set(seeds_a) & set(seeds_b))
    pairs = [(seeds_a[s], seeds_b[s]) for s in common] or list(itertools.product(a.run_ids, b.run_ids))[:25]
    vals, judge = [], None
    for ra, rb in pairs:
        res = run_head_to_head(data, a.task, ra, rb)
        if res is None:
            continue
        vals.append(res[0])
        judge = res[1]
    if not vals or len({len(v) for v in vals}) != 1:
        return None
    return vals, str(judge)


def _seeds(data: ResultsData, u: Unit) -> dict[Any, str]:
    s = data.summary.set_index("run_id")
    out = {}
    for rid in u.run_ids:
        seed = s.loc[rid, "seed"] if "seed" in s and rid in s.index else rid
        out[seed if not isinstance(seed, pd.Series) else seed.iloc[0]] = rid
    return out


def _row(table: str, a: Unit, b: Unit | None, vals: list[np.ndarray], judge: str, n_boot: int, seed: int,
         budget: float = float("nan"), b_name: str = "") -> dict[str, Any]:
    """One table row: the mean over seeds (or seed pairs) of the per-prompt mean, with a 95% interval from
    resampling seeds and, within each, prompts (none with a single seed: see ``report/seeds.py``)."""
    point, lo, hi = hierarchical_bootstrap(vals, n_boot=n_boot, seed=seed)
    return {"table": table, "task": a.task, "budget_kl": budget, "method_a": a.method, "param_a": a.param,
            "value_a": a.value, "variant_a": a.variant, "kl_a": a.kl, "kl_a_is_bound": a.kl_is_bound, "reward_a": a.reward,
            "method_b": b.method if b else b_name, "param_b": b.param if b else "",
            "value_b": b.value if b else float("nan"), "variant_b": b.variant if b else "", "kl_b": b.kl if b else (0.0 if b_name == "reference" else float("nan")),
            "kl_b_is_bound": b.kl_is_bound if b else False,
            "reward_b": b.reward if b else float("nan"),
            "win_rate": point, "ci_low": lo, "ci_high": hi, "n_prompts": int(np.isfinite(vals[0]).sum()),
            "n_seeds": len(vals), "judge": judge}


def _summary_row(table: str, u: Unit, summary: pd.DataFrame, col: str, b_name: str) -> dict[str, Any] | None:
    """A row from the summary's final metric when no per-prompt values were saved: exact where the run
    reported no standard error, else a normal 95% interval from the SE (averaged over seeds)."""
    runs = summary[summary["run_id"].isin(u.run_ids)]
    vals = pd.to_numeric(runs[col], errors="coerce") if col in runs else pd.Series(dtype=float)
    if vals.notna().sum() == 0:
        return None
    w = float(vals.mean())
    ses = pd.to_numeric(runs[col + "_se"], errors="coerce") if col + "_se" in runs else pd.Series(dtype=float)
    if ses.notna().sum() == 0:
        lo = hi = float("nan")
        judge = "exact BT on gold reward"
    else:
        se = float(ses.mean()) / math.sqrt(int(ses.notna().sum()))
        lo, hi = w - 1.96 * se, w + 1.96 * se
        judge = "normal interval from the run's SE (no per-prompt data)"
    row = _row(table, u, None, [np.array([w])], judge, 1, 0, b_name=b_name)
    row.update(win_rate=w, ci_low=lo, ci_high=hi, n_prompts=float("nan"), n_seeds=int(vals.notna().sum()))
    return row


def head_to_head_rows(data: ResultsData, picks: dict[tuple[str, str], Unit], table: str, *, n_boot: int = 2000,
                      seed: int = 0, budget: float = float("nan")) -> list[dict[str, Any]]:
    """Both orders of every pair of methods of the same task (A vs B and B vs A), with intervals from
    the same bootstrap draws."""
    rows = []
    by_task: dict[str, list[Unit]] = {}
    for (task, _), u in sorted(picks.items()):
        by_task.setdefault(task, []).append(u)
    for task, us in by_task.items():
        for a, b in itertools.combinations(us, 2):
            res = unit_head_to_head(data, a, b)
            if res is None:
                continue
            vals, judge = res
            rows.append(_row(table, a, b, vals, judge, n_boot, seed, budget))
            rows.append(_row(table, b, a, [1.0 - v for v in vals], judge, n_boot, seed, budget))
    return rows


def matched_kl_rows(data: ResultsData, us: Sequence[Unit], budgets: Sequence[float] = DEFAULT_BUDGETS, *,
                    n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """The head-to-head tables ``kl<B>``: at each budget B, each method at its unit of KL closest to B."""
    rows: list[dict[str, Any]] = []
    for b in budgets:
        picks = select_matched_kl(us, b)
        rows += head_to_head_rows(data, picks, f"kl{b:g}", n_boot=n_boot, seed=seed, budget=float(b))
    return rows


def build_winrates(out: str | Path, summary: pd.DataFrame, *, budgets: Sequence[float] = DEFAULT_BUDGETS,
                   n_boot: int = 2000, seed: int = 0, data: ResultsData | None = None) -> pd.DataFrame:
    """Every win-rate table of a results folder, long format (the rows of ``winrates.csv``)."""
    data = data or ResultsData(out, summary)
    us = units(summary)
    rows: list[dict[str, Any]] = []
    # vs the reference
    for u in us:
        per = [run_vs_reference(data, r) for r in u.run_ids]
        per = [p for p in per if p is not None]
        if per and len({len(p) for p in per}) == 1:
            rows.append(_row("vs_ref", u, None, per, "gold reward, sample pairs", n_boot, seed, b_name="reference"))
        else:
            row = _summary_row("vs_ref", u, summary, "win_rate_vs_ref", "reference")
            if row:
                rows.append(row)
    rows += head_to_head_rows(data, select_best(us), "best", n_boot=n_boot, seed=seed)
    rows += matched_kl_rows(data, us, budgets, n_boot=n_boot, seed=seed)
    # vs the data's chosen responses
    for u in us:
        per, judge = [], ""
        for r in u.run_ids:
            res = run_vs_chosen(data, u.task, r)
            if res is not None:
                per.append(res[0])
                judge = res[1]
        if per and len({len(p) for p in per}) == 1:
            rows.append(_row("vs_chosen", u, None, per, judge, n_boot, seed, b_name="data chosen"))
        else:
            row = _summary_row("vs_chosen", u, summary, "win_rate_vs_chosen", "data chosen")
            if row:
                rows.append(row)
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


# ------------------------------------------------------------------------------------------ Markdown


def fmt_ci(w: float, lo: float, hi: float) -> str:
    """"w [lo, hi]" with 2 decimals, or 3 where the interval is narrower than 0.02 (so that an interval that
    excludes 0.5 by a little does not print as [0.50, 0.50])."""
    if not math.isfinite(w):
        return ""
    if math.isfinite(lo) and math.isfinite(hi):
        d = 3 if hi - lo < 0.02 else 2
        return f"{w:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"
    return f"{w:.3f}"


def matrix_markdown(df: pd.DataFrame) -> str:
    """A head-to-head table of one (task, comparison) as a Markdown matrix: row = A, column = B,
    cell = win rate of A over B with its 95% interval."""
    if df.empty:
        return "_none_\n"
    labels: dict[str, str] = {}
    for side in ("a", "b"):
        for _, r in df.iterrows():
            bound = "≤ " if str(r.get(f"kl_{side}_is_bound", False)) == "True" else ""
            variant = r.get(f"variant_{side}", "")
            variant = "" if not isinstance(variant, str) else variant
            labels.setdefault(r[f"method_{side}"], f"{r[f'method_{side}']} "
                                                   f"{cell_label(r[f'param_{side}'], r[f'value_{side}'], variant)} "
                                                   f"(KL {bound}{r[f'kl_{side}']:.2g})")
    names = sorted(labels)
    cell = {(r["method_a"], r["method_b"]): fmt_ci(r["win_rate"], r["ci_low"], r["ci_high"]) for _, r in df.iterrows()}
    lines = ["| A \\ B | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for a in names:
        cells = ["—" if a == b else cell.get((a, b), "") for b in names]
        lines.append(f"| {labels[a]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
