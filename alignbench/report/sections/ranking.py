"""Ranking with uncertainty over training runs: frontier scores, pairwise differences, stability (``ranking.csv``)."""

from __future__ import annotations

import pandas as pd

from ... import io
from ..core import ReportContext, register_section
from ..ranking import verdict
from ..render import md_table
from ..schema import RANKING_CSV, cell_label
from ..winrates import fmt_ci


@register_section("ranking", order=35)
def section_ranking(ctx: ReportContext) -> str:
    rk = ctx.ranking
    io.write_text(ctx.out / RANKING_CSV, rk.to_csv(index=False))
    parts = ["## Ranking over training runs", "",
             "Each completed run is a point (KL, gold reward), and so is the reference (KL 0, its gold reward at the "
             "runs' step 0); per seed, a method's frontier is the Pareto front of all its runs (every sweep value and "
             "any other swept field) and the reference, linearly interpolated between Pareto points "
             "(a mixture of two policies does at least that well) and flat beyond the last one. The **frontier score** "
             "is its mean over KL budgets in the range every method reaches in every seed: from the largest first "
             "Pareto KL (0 with the reference point) to the smallest largest KL. Intervals: 95% percentile bootstrap over seeds (none with one "
             "seed). Policy tokens per run: forward + 2 × backward positions through the policy in training, mean over the "
             "method's runs (section Compute). P(A > B): the share of seed pairs in which A's score exceeds B's (Agarwal et al. 2021). All "
             "values are in `ranking.csv`.", ""]
    scores = rk[rk["table"] == "score"]
    if scores.empty:
        parts.append("No task has completed runs with KL and gold reward.\n")
        return "\n".join(parts)
    for task in sorted(scores["task"].unique()):
        s = scores[scores["task"] == task].sort_values("score", ascending=False)
        lo, hi = float(s["kl_lo"].iloc[0]), float(s["kl_hi"].iloc[0])
        parts.append(f"### `{task}`\n")
        if not (pd.notna(lo) and pd.notna(hi)):
            parts.append("No KL range is reached by every method in every seed: no frontier score.\n")
        else:
            parts.append(f"Common KL range: {lo:.3g}–{hi:.3g} nats.\n")
            parts.append(md_table(pd.DataFrame({
                "method": [m + (" (KL: upper bound)" if b else "") for m, b in zip(s["method"], s["kl_is_bound"])],
                "seeds": s["n_seeds"].astype(int),
                "frontier score [95% CI]": [fmt_ci(v, a, b) for v, a, b in zip(s["score"], s["ci_low"], s["ci_high"])],
                "policy tokens per run": [f"{v:.3g}" if pd.notna(v) else "" for v in s["compute_mean"]]})))
            pw = rk[(rk["table"] == "pairwise") & (rk["task"] == task)]
            pw = pw[pw["method"].astype(str) < pw["method_b"].astype(str)] if not pw.empty else pw
            if not pw.empty and pw[["n_seeds", "n_seeds_b"]].min(axis=1).max() < 2:
                parts.append("Pairwise comparisons need at least 2 seeds per method: with one seed there is no "
                             "interval over training runs (the point differences are in `ranking.csv`).\n")
            elif not pw.empty:
                parts.append(md_table(pd.DataFrame({
                    "A": pw["method"], "B": pw["method_b"],
                    "score A − B [95% CI]": [fmt_ci(v, a, b) for v, a, b in zip(pw["score"], pw["ci_low"], pw["ci_high"])],
                    "P(A > B)": pw["prob_improvement"], "verdict": [verdict(r) for _, r in pw.iterrows()]}), ".2f"))
        st = rk[(rk["table"] == "stability") & (rk["task"] == task)]
        if not st.empty and st["reward_sd"].notna().any():
            parts.append("Stability: the standard deviation over seeds of final gold reward and KL at each sweep value.\n")
            parts.append(md_table(pd.DataFrame({
                "method": st["method"], "value": [cell_label(p, v, w if isinstance(w, str) else "") for p, v, w in
                          zip(st["sweep_param"], st["sweep_value"], st["variant"])],
                "seeds": st["n_seeds"].astype(int), "reward mean": st["reward_mean"], "reward sd": st["reward_sd"],
                "KL mean": st["kl_mean"], "KL sd": st["kl_sd"]})))
        elif not st.empty:
            parts.append("Stability over seeds: not measured (one seed per sweep value).\n")
    return "\n".join(parts)
