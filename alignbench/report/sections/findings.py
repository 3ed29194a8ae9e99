"""Findings written from the numbers: frontier leaders, significant win rates, diagnostics that fired."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import diagnostics as D
from ..core import ReportContext, register_section
from ..diagnosis import Diagnosis
from ..schema import sym
from ..winrates import fmt_ci
from .diagnostics import kl_bounded_statement


def ok_runs(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["status"] == "ok"]


def method_fronts(summary: pd.DataFrame, task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ok = ok_runs(summary)
    ok = ok[(ok["task"] == task)]
    if "kl" not in ok or "reward" not in ok:
        return {}
    fronts = {}
    for method, g in ok.groupby("method"):
        g = g.groupby("sweep_value")[["kl", "reward"]].mean().dropna()
        if len(g):
            fronts[str(method)] = D.pareto_front(g["kl"], g["reward"])
    return fronts


def findings_frontier(summary: pd.DataFrame) -> list[str]:
    out = []
    ok = ok_runs(summary)
    for task in sorted(ok["task"].unique()):
        fronts = method_fronts(summary, task)
        if not fronts:
            continue
        t = ok[ok["task"] == task]
        tie = 0.0
        if "reward_se" in t and t["reward_se"].notna().any():
            tie = 2.0 * float(t["reward_se"].median())
        seg = D.frontier_leaders(fronts, tie_tol=tie)
        if not seg.empty:  # segments narrower than 2% of the compared KL range are interpolation noise
            span = float(seg["kl_hi"].max() - seg["kl_lo"].min())
            seg = seg[(seg["kl_hi"] - seg["kl_lo"]) >= 0.02 * span] if span > 0 else seg.iloc[0:0]
        best = []
        for method, g in t.groupby("method"):
            if "reward" not in g or g["reward"].isna().all():
                continue
            gg = g.groupby("sweep_value")[["kl", "reward"]].mean()
            v = gg["reward"].idxmax()
            best.append((float(gg.loc[v, "reward"]), method, v, float(gg.loc[v, "kl"]), str(g["sweep_param"].iloc[0])))
        best.sort(reverse=True)
        if best:
            out.append(f"- **{task}**: highest gold reward per method: " + "; ".join(
                f"{m} {r:.3f} at {sym(p)}={v:g} (KL {k:.2f} nats)" for r, m, v, k, p in best) + ".")
        if not seg.empty:
            tol = f" (leads smaller than {tie:.3f}, 2 median SEs, are called ties)" if tie > 0 else ""
            pieces = []
            for _, s in seg.iterrows():
                if s["leader"] == "tie":
                    pieces.append(f"no method ahead by more than {tie:.3f} for KL {s['kl_lo']:.3g}–{s['kl_hi']:.3g} nats")
                else:
                    pieces.append(f"{s['leader']} for KL {s['kl_lo']:.3g}–{s['kl_hi']:.3g} nats (ahead of {s['runner_up']} "
                                  f"by up to {s['max_lead']:.3f})")
            out.append(f"- **{task}**: the highest frontier (Pareto points of each method, linearly interpolated, "
                       f"compared where at least two methods reach){tol}: " + "; ".join(pieces) + ".")
        else:
            out.append(f"- **{task}**: no frontier comparison: it needs at least two methods with two or more Pareto "
                       "points at distinct KL whose KL ranges overlap (over more than a sliver).")
        if "frontier_gap" in t and t["frontier_gap"].notna().any():
            gaps = t.groupby("method")["frontier_gap"].agg(["median", "min"]).sort_values("median")
            out.append(f"- **{task}**: distance below the optimal frontier (gold reward at the same KL), median (min) "
                       "over runs: " + "; ".join(f"{m} {r['median']:.3f} ({r['min']:.3f})" for m, r in gaps.iterrows()) + ".")
    return out


def findings_winrates(wr: pd.DataFrame) -> list[str]:
    out = []
    best = wr[(wr["table"] == "best")]
    if best.empty:
        return out
    sig = best[(best["ci_low"] > 0.5 + 1e-6)].sort_values(["task", "win_rate"], ascending=[True, False])
    for task in sorted(best["task"].unique()):
        s = sig[sig["task"] == task]
        if s.empty:
            out.append(f"- **{task}**: at each method's best sweep value, no head-to-head win rate has a 95% interval "
                       "above 0.5.")
        else:
            out.append(f"- **{task}**: at each method's best sweep value, win rates whose 95% interval lies above 0.5: "
                       + "; ".join(f"{r['method_a']} over {r['method_b']} {fmt_ci(r['win_rate'], r['ci_low'], r['ci_high'])}"
                                   for _, r in s.iterrows()) + ".")
    return out


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
    if "kl_bounded" in pr and pr["kl_bounded"].notna().any():
        out.append("- KL over the last third of training:")
        out.append("  " + kl_bounded_statement(pr).replace("\n", "\n  "))
    return out


@register_section("findings", order=50)
def section_findings(ctx: ReportContext) -> str:
    summary, wr, diag = ctx.summary, ctx.winrates, ctx.diagnosis
    parts = ["## Findings", "", "Written automatically from the numbers above.", ""]
    lines = findings_frontier(summary) + findings_winrates(wr) + findings_diagnostics(diag)
    n_fail = int((summary["status"] != "ok").sum())
    if n_fail:
        lines.append(f"- {n_fail} of {len(summary)} runs failed (see below).")
    parts += lines or ["- Nothing to report: no completed run."]
    return "\n".join(parts) + "\n"
