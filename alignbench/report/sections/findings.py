"""Findings written from the numbers: frontier leaders, significant win rates, diagnostics that fired."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import diagnostics as D
from ..convergence import MIN_EVALS, describe
from ..core import ReportContext, register_section
from ..diagnosis import Diagnosis
from ..examples import findings_degeneration
from ..schema import cell, cell_label, sym
from ..winrates import fmt_ci
from .diagnostics import kl_bounded_statement


def ok_runs(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["status"] == "ok"]


def findings_frontier(summary: pd.DataFrame, ranking: pd.DataFrame) -> list[str]:
    """Per task: the best mean gold reward per method (with its n), and which method's frontier score beats which,
    stated only where the interval over seeds of the difference excludes 0."""
    out = []
    ok = ok_runs(summary)
    for task in sorted(ok["task"].unique()):
        t = ok[ok["task"] == task]
        best = []
        for method, g in t.groupby("method"):
            if "reward" not in g or g["reward"].isna().all():
                continue
            gg = g.groupby(cell(g)).agg(kl=("kl", "mean"), reward=("reward", "mean"), n=("seed", "nunique"))
            v = gg["reward"].idxmax()
            best.append((float(gg.loc[v, "reward"]), method, v, float(gg.loc[v, "kl"]), str(g["sweep_param"].iloc[0]),
                         int(gg.loc[v, "n"])))
        best.sort(reverse=True)
        if best:
            out.append(f"- **{task}**: highest mean gold reward per method: " + "; ".join(
                f"{m} {r:.3f} at {cell_label(p, *(v if isinstance(v, tuple) else (v,)))} (KL {k:.2f} nats, n={n})"
                for r, m, v, k, p, n in best) + ".")
        pw = ranking[(ranking["table"] == "pairwise") & (ranking["task"] == task)] if len(ranking) else ranking
        if pw.empty or pw["kl_lo"].isna().all():
            out.append(f"- **{task}**: no frontier comparison: no KL range is reached by at least two methods in every "
                       "seed.")
            continue
        lo, hi = float(pw["kl_lo"].iloc[0]), float(pw["kl_hi"].iloc[0])
        ahead = pw[pw["ci_low"] > 0].sort_values("score", ascending=False)
        if not ahead.empty:
            out.append(f"- **{task}**: frontier score (mean best reward over KL {lo:.3g}–{hi:.3g} nats) higher, with the "
                       "95% interval over seeds of the difference above 0: " + "; ".join(
                           f"{r['method']} over {r['method_b']} by {fmt_ci(r['score'], r['ci_low'], r['ci_high'])} "
                           f"(n={int(r['n_seeds'])} and {int(r['n_seeds_b'])} seeds, P(A > B) = {r['prob_improvement']:.2f})"
                           for _, r in ahead.iterrows()) + ".")
        decided = {tuple(sorted((r["method"], r["method_b"]))) for _, r in ahead.iterrows()}
        rest = pw[(pw["method"].astype(str) < pw["method_b"].astype(str))]
        rest = [r for _, r in rest.iterrows() if (r["method"], r["method_b"]) not in decided]
        if rest:
            n_max = max(max(int(r["n_seeds"]), int(r["n_seeds_b"])) for r in rest)
            if n_max < 2:
                out.append(f"- **{task}**: frontier scores not compared (one seed: no interval over training runs); "
                           "the point scores are in the ranking section.")
            elif len(rest) <= 12:
                out.append(f"- **{task}**: frontier scores not distinguishable: " + ", ".join(
                    f"{r['method']} vs {r['method_b']} (n={int(r['n_seeds'])}, {int(r['n_seeds_b'])})" for r in rest) + ".")
            else:
                out.append(f"- **{task}**: the other {len(rest)} pairs of frontier scores are not distinguishable with "
                           f"{n_max} seeds or fewer (`ranking.csv`).")
        if "frontier_gap" in t and t["frontier_gap"].notna().any():
            gaps = t.groupby("method")["frontier_gap"].agg(["median", "min", "size"]).sort_values("median")
            out.append(f"- **{task}**: distance below the optimal frontier (gold reward at the same KL), median (min) "
                       "over runs: " + "; ".join(f"{m} {r['median']:.3f} ({r['min']:.3f}; {int(r['size'])} runs)"
                                                 for m, r in gaps.iterrows()) + ".")
    return out


def findings_winrates(wr: pd.DataFrame) -> list[str]:
    """Head-to-head wins at each method's best sweep value, stated only where the interval over seeds lies above
    0.5; the rest are "not distinguishable with n seeds" (every statement names its n)."""
    out = []
    best = wr[(wr["table"] == "best")]
    if best.empty:
        return out
    n_seeds = pd.to_numeric(best.get("n_seeds", pd.Series(1, index=best.index)), errors="coerce").fillna(1)
    sig = best[(best["ci_low"] > 0.5 + 1e-6)].sort_values(["task", "win_rate"], ascending=[True, False])
    for task in sorted(best["task"].unique()):
        s = sig[sig["task"] == task]
        t = best[best["task"] == task]
        n_lo, n_hi = int(n_seeds[t.index].min()), int(n_seeds[t.index].max())
        n_txt = f"{n_lo} seed{'s' if n_lo != 1 else ''}" if n_lo == n_hi else f"{n_lo}-{n_hi} seeds"
        if n_hi < 2:
            out.append(f"- **{task}**: head-to-head win rates at each method's best sweep value are not compared: "
                       f"with {n_txt} per cell there is no interval over training runs.")
            continue
        pairs = {tuple(sorted((r["method_a"], r["method_b"]))) for _, r in t.iterrows()}
        won = {tuple(sorted((r["method_a"], r["method_b"]))) for _, r in s.iterrows()}
        if not s.empty:
            out.append(f"- **{task}**: at each method's best sweep value, win rates whose 95% interval over seeds lies "
                       f"above 0.5 ({n_txt}): " + "; ".join(
                           f"{r['method_a']} over {r['method_b']} {fmt_ci(r['win_rate'], r['ci_low'], r['ci_high'])}"
                           for _, r in s.iterrows()) + ".")
        rest = sorted(pairs - won)
        if rest:
            out.append(f"- **{task}**: not distinguishable head to head with {n_txt}: "
                       + ", ".join(f"{a} vs {b}" for a, b in rest) + ".")
    return out


def k_of_n(pr: pd.DataFrame, flag: str) -> str:
    """Where a per-run flag fired, as "k of n seeds" per (task, method, sweep value), e.g. "`exact` dpo β=0.1: 2 of 3"."""
    d = pr.dropna(subset=[flag])
    cells = []
    for (task, method, param, value), g in d.groupby(["task", "method", "param", "value"], sort=True):
        k = int(g[flag].astype(bool).sum())
        if k:
            cells.append(f"`{task}` {method} {sym(param)}={value:g}: {k} of {g['seed'].nunique()} seed"
                         + ("s" if g["seed"].nunique() != 1 else ""))
    return "; ".join(cells)


def findings_diagnostics(diag: Diagnosis) -> list[str]:
    out = []
    pr = diag.per_run
    if pr.empty:
        return out

    def lab(r: pd.Series) -> str:
        return f"`{r['task']}` {r['method']} {sym(r['param'])}={r['value']:g} (seed {r['seed']})"

    if "overoptimized" in pr:
        flagged = pr[pr["overoptimized"].fillna(False).astype(bool)]
        if flagged.empty:
            out.append("- Overoptimization: no run's gold reward fell after its peak by more than its noise while its "
                       "proxy kept rising.")
        else:
            out.append(f"- Overoptimization (k of n seeds per cell): {k_of_n(pr, 'overoptimized')}.")
            out.append(f"- Overoptimization detected in {len(flagged)} run(s): " + "; ".join(
                f"{lab(r)}: gold reward peaked at step {r['peak_step']:.0f} ({r['peak_reward']:.3f}) and fell by "
                f"{r['gold_drop']:.3f} by the end while {r['proxy']} rose by {r['proxy_change']:.3f}"
                for _, r in flagged.head(8).iterrows()) + ("; …" if len(flagged) > 8 else "") + ".")
        falls = pr[pr.get("gold_falls", pd.Series(False, index=pr.index)).fillna(False).astype(bool)
                   & ~pr["overoptimized"].fillna(False).astype(bool)]
        if not falls.empty:
            out.append(f"- Gold reward fell after its peak without a rising proxy in {len(falls)} run(s), e.g. "
                       + "; ".join(f"{lab(r)} (peak at step {r['peak_step']:.0f}, drop {r['gold_drop']:.3f})"
                                   for _, r in falls.head(4).iterrows()) + ".")
    for (task, method), f in sorted(diag.fits.items()):
        if f.has_peak and f.peak_observed:
            out.append(f"- `{task}` {method}: the Gao et al. {f.form.upper()} fit (α={f.alpha:.3f}, b={f.b:.3f}, R²={f.r2:.2f}) "
                       f"predicts the gold reward to peak at KL {f.kl_star:.2f} nats (R* = {f.r_star:.3f}), inside the "
                       f"observed range (max KL {f.kl_max:.2f}).")
    if "overfit" in pr:
        of = pr[pr["overfit"].fillna(False).astype(bool)]
        n_with = int(pr["overfit"].notna().sum())
        if of.empty:
            out.append(f"- Overfitting: in none of {n_with} offline runs did the held-out loss rise from its minimum "
                       "while the training-subset loss kept falling.")
        else:
            out.append(f"- Overfitting (k of n seeds per cell): {k_of_n(pr, 'overfit')}.")
            out.append(f"- Overfitting in {len(of)} of {n_with} offline runs (held-out loss rose while the training-subset "
                       "loss fell), e.g. " + "; ".join(
                           f"{lab(r)}: held-out loss +{r['eval_loss_rise']:.3g} after step {r['min_eval_loss_step']:.0f}, "
                           f"train−held-out accuracy gap {r['acc_gap']:.3f}" for _, r in of.head(4).iterrows()) + ".")
    if "chosen_falls" in pr:
        d = pr.dropna(subset=["chosen_falls"])
        for (task, method), g in d.groupby(["task", "method"]):
            n_f = int(g["chosen_falls"].astype(bool).sum())
            if n_f:
                w = g.loc[g["final_logratio_chosen"].idxmin()]
                out.append(f"- `{task}` {method}: the held-out chosen log-ratio ended below 0 in {n_f} of {len(g)} runs "
                           f"(the chosen likelihood fell too); lowest at {sym(w['param'])}={w['value']:g}: chosen "
                           f"{w['final_logratio_chosen']:.2f}, rejected {w['final_logratio_rejected']:.2f} nats"
                           + (f", below 0 from step {w['first_step_chosen_below_ref']:.0f}"
                              if np.isfinite(w["first_step_chosen_below_ref"]) else "") + ".")
    if "converged" in pr and pr["converged"].notna().any():
        moving = pr.dropna(subset=["converged"])
        moving = moving.assign(still_moving=~moving["converged"].astype(bool))
        n_mv, n_all = int(moving["still_moving"].sum()), len(moving)
        if n_mv:
            out.append(f"- Still moving at the end ({describe()}) in {n_mv} of {n_all} runs: "
                       f"{k_of_n(moving, 'still_moving')}. Their final points may understate these methods.")
        else:
            out.append(f"- All {n_all} runs with enough evaluations had stopped moving at the end (not still moving: "
                       f"{describe()}).")
        n_none = int(pr["converged"].isna().sum())
        if n_none:
            out.append(f"- No convergence verdict for {n_none} runs: fewer than {MIN_EVALS} evaluations after step 0.")
    if "kl_bounded" in pr and pr["kl_bounded"].notna().any():
        out.append("- KL over the last third of training:")
        out.append("  " + kl_bounded_statement(pr).replace("\n", "\n  "))
    return out


@register_section("findings", order=50)
def section_findings(ctx: ReportContext) -> str:
    summary, wr, diag = ctx.summary, ctx.winrates, ctx.diagnosis
    parts = ["## Findings", "", "Written automatically from the numbers above. A method is said to beat another only "
             "where the 95% interval over seeds (training runs) of the difference excludes 0 (win rates: 0.5); each "
             "statement gives its number of seeds n.", ""]
    lines = findings_frontier(summary, ctx.ranking) + findings_winrates(wr) + findings_diagnostics(diag)
    lines += [f"- Degeneration: {f}" for f in findings_degeneration(ctx.out, summary, ctx.runs)]
    n_fail = int((summary["status"] != "ok").sum())
    if n_fail:
        lines.append(f"- {n_fail} of {len(summary)} runs failed (see below).")
    parts += lines or ["- Nothing to report: no completed run."]
    return "\n".join(parts) + "\n"
