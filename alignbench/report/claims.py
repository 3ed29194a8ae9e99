"""Claims from the literature, checked against a results folder: one :class:`Claim` per statement, in ``CLAIMS``.

A claim is a sentence, its source, and a check: a pure function of :class:`ClaimData` (the summary, the ranking,
the per-run diagnostics, every run's config and evaluation rows, what each method declared) returning one
:class:`Verdict` per task it applies to. A verdict is "supported" or "contradicted" only where the 95% interval
over seeds of the quantity that decides it excludes the claim's threshold; otherwise "undecided" (not
distinguishable with n seeds, or one seed: no interval); "not tested" where the sweep has no data for it.
To add a claim, append a ``Claim`` to ``CLAIMS`` (its check returns verdicts; nothing else changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from .diagnosis import gao_fit_points, gao_points
from .schema import RunData
from .seeds import seed_bootstrap

SUPPORTED, CONTRADICTED, UNDECIDED, NOT_TESTED = "supported", "contradicted", "undecided", "not tested"


@dataclass(frozen=True)
class Verdict:
    status: str  # SUPPORTED, CONTRADICTED, UNDECIDED or NOT_TESTED
    evidence: str  # the numbers, with their n
    task: str = ""


@dataclass
class ClaimData:
    """What a check reads (built from a report context by :meth:`from_context`, or by hand in tests)."""

    summary: pd.DataFrame
    ranking: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_run: pd.DataFrame = field(default_factory=pd.DataFrame)  # Diagnosis.per_run (kl_bounded, ...)
    runs: dict[str, RunData] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # sweep.json "methods"

    @classmethod
    def from_context(cls, ctx: Any) -> "ClaimData":
        return cls(ctx.summary, ctx.ranking, ctx.diagnosis.per_run, ctx.runs, ctx.meta.get("methods", {}))

    def labels(self, run_id: str) -> str:
        """The run's preference-label model (task config ``labels``), "" when the task has none."""
        r = self.runs.get(str(run_id))
        return str(((r.config if r else {}) or {}).get("task_config", {}).get("labels", ""))

    def uses_learned_reward(self, method: str) -> bool:
        info = self.methods.get(method, {})
        return bool(info.get("needs_reward_model", bool(info.get("proxy_curve"))))


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    check: Callable[[ClaimData], list[Verdict]]


def seeds_txt(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def decide(m: float, lo: float, hi: float, n: int, threshold: float = 0.0) -> str:
    """SUPPORTED when the interval lies above ``threshold``, CONTRADICTED below it, else UNDECIDED."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return UNDECIDED
    return SUPPORTED if lo > threshold else CONTRADICTED if hi < threshold else UNDECIDED


def undecided_reason(lo: float, n: int) -> str:
    return "one seed: no interval" if not math.isfinite(lo) else f"not distinguishable with {seeds_txt(n)}"


# ------------------------------------------------------------------------------------------ the checks


def check_kl_runaway(data: ClaimData, a: str = "dpo", b: str = "ipo") -> list[Verdict]:
    """Deterministic labels: per seed, the share of ``a``'s runs whose KL is not bounded over the last third of
    training minus the same share of ``b``'s; supported when the interval over seeds lies above 0."""
    ok = data.summary[data.summary["status"] == "ok"]
    det = ok[[data.labels(r) == "deterministic" for r in ok["run_id"].astype(str)]] if len(ok) else ok
    pr = data.per_run
    out = []
    for task in sorted(set(det["task"])) or [""]:
        have = set(det.loc[det["task"] == task, "method"])
        if not {a, b} <= have:
            out.append(Verdict(NOT_TESTED, f"needs both {a} and {b} trained on deterministic labels (the stress "
                                           "preset, configs/stress.yaml)", task))
            continue
        ids = set(det.loc[(det["task"] == task) & det["method"].isin([a, b]), "run_id"].astype(str))
        t = pr[pr["run_id"].astype(str).isin(ids)].dropna(subset=["kl_bounded"]) if "kl_bounded" in pr else pr.iloc[0:0]
        if set(t["method"]) != {a, b}:
            out.append(Verdict(NOT_TESTED, "KL needs at least three evaluations per run", task))
            continue
        unb = (~t["kl_bounded"].astype(bool)).astype(float)
        share = unb.groupby([t["method"], t["seed"]]).mean().unstack(0)
        diff = (share[a] - share[b]).dropna()
        m, lo, hi = seed_bootstrap(diff.to_numpy(float))
        n = int(diff.size)
        k = {x: f"{int(unb[t['method'] == x].sum())} of {int((t['method'] == x).sum())} runs" for x in (a, b)}
        ev = (f"KL not bounded in {k[a]} of {a} and {k[b]} of {b}; share of {a} minus share of {b}, mean over seeds "
              f"{m:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else "") + f" (n={seeds_txt(n)})")
        status = decide(m, lo, hi, n)
        out.append(Verdict(status, ev if status != UNDECIDED else f"{ev}; {undecided_reason(lo, n)}", task))
    return out


def check_gao_hump(data: ClaimData, n_boot: int = 200) -> list[Verdict]:
    """Methods trained on a learned reward: Gao et al.'s fit of gold reward on d = sqrt(KL) over all evaluations. The
    fit has an interior peak iff b > 0 (RL form d(alpha - b log d)); supported when the 95% seed-bootstrap interval of
    b (refitting on resampled seeds) lies above 0 and the point fit peaks inside the observed KL range; contradicted
    when it lies below 0 (gold reward still rising with KL)."""
    ok = data.summary[data.summary["status"] == "ok"]
    out = []
    for (task, method), g in ok.groupby(["task", "method"], sort=True):
        if not data.uses_learned_reward(str(method)):
            continue
        by_seed: dict[Any, list[RunData]] = {}
        for rid, seed in zip(g["run_id"].astype(str), g["seed"]):
            if rid in data.runs:
                by_seed.setdefault(seed, []).append(data.runs[rid])
        multi = any(len(r.metrics) > 1 for rs in by_seed.values() for r in rs)
        pts = [gao_points(rs, multi) for rs in by_seed.values()]  # per seed: (KL, reward, step-0 rewards)

        def fit_on(idx) -> Any:
            return gao_fit_points(*(sum((pts[i][j] for i in idx), []) for j in range(3)), multi)

        fit = fit_on(range(len(pts)))
        if fit is None:
            out.append(Verdict(NOT_TESTED, f"{method}: too few evaluation points for a fit", str(task)))
            continue
        seeds = list(by_seed)
        bs = []
        if len(seeds) >= 2:  # refit on seeds resampled with replacement
            rng = np.random.default_rng(0)
            bs = [f.b for f in (fit_on(rng.integers(0, len(pts), len(pts))) for _ in range(n_boot)) if f is not None]
        lo, hi = (np.quantile(bs, [0.025, 0.975]) if bs else (float("nan"), float("nan")))
        n = len(seeds)
        status = decide(fit.b, float(lo), float(hi), n)
        if status == SUPPORTED and not fit.peak_observed:
            status = UNDECIDED
        ev = (f"{method}: b = {fit.b:.3g}" + (f" [{lo:.3g}, {hi:.3g}]" if bs else "") + f", peak at KL "
              f"{fit.kl_star:.3g} vs largest observed {fit.kl_max:.3g} nats, R² = {fit.r2:.2f}, {fit.n} points "
              f"(n={seeds_txt(n)})")
        if status == UNDECIDED:
            ev += "; " + ("the predicted peak lies beyond the observed KL" if bs and lo > 0
                          else undecided_reason(float(lo), n))
        out.append(Verdict(status, ev, str(task)))
    return out or [Verdict(NOT_TESTED, "no method trained on a learned reward model in this sweep")]


def check_frontier_dominates(data: ClaimData, a: str = "dpo", b: str = "ppo") -> list[Verdict]:
    """The ranking's pairwise frontier-score difference a - b (mean best gold reward over the common KL range):
    supported when its 95% interval over seeds lies above 0, contradicted below 0."""
    rk = data.ranking
    if rk.empty or "table" not in rk:
        return [Verdict(NOT_TESTED, f"no ranking (needs {a} and {b} with KL and reward)")]
    out = []
    for task in sorted(set(rk["task"])):
        pw = rk[(rk["table"] == "pairwise") & (rk["task"] == task) & (rk["method"] == a) & (rk["method_b"] == b)]
        if pw.empty:
            out.append(Verdict(NOT_TESTED, f"needs both {a} and {b}", task))
            continue
        r = pw.iloc[0]
        if not math.isfinite(float(r["score"])):
            out.append(Verdict(NOT_TESTED, "no KL range reached by both in every seed", task))
            continue
        n = int(min(r["n_seeds"], r["n_seeds_b"]))
        lo, hi = float(r["ci_low"]), float(r["ci_high"])
        status = decide(float(r["score"]), lo, hi, n)
        ev = (f"frontier score {a} − {b} over KL {r['kl_lo']:.3g}–{r['kl_hi']:.3g} nats: {float(r['score']):.3f}"
              + (f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else "")
              + f", P({a} > {b}) = {float(r['prob_improvement']):.2f} (n={int(r['n_seeds'])} and "
              f"{int(r['n_seeds_b'])} seeds)")
        out.append(Verdict(status, ev if status != UNDECIDED else f"{ev}; {undecided_reason(lo, n)}", task))
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim("DPO's KL runs away with deterministic preferences while IPO's stays bounded.",
          "IPO paper, Azar et al. 2023, arXiv 2310.12036, §4.2 and §5.4", check_kl_runaway),
    Claim("Gold reward rises then falls with KL when the policy optimises a learned reward.",
          "Gao et al. 2022, arXiv 2210.10760", check_gao_hump),
    Claim("DPO's reward-KL frontier dominates PPO's.", "DPO paper, Rafailov et al. 2023, arXiv 2305.18290, §6.1 IMDb",
          check_frontier_dominates),
)
