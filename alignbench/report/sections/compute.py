"""What each method spent (compute per run) and the frontier scores at one common compute budget."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import names as N
from .. import seeds as S
from ..compute_matched import build_compute_matched, scores_at
from ..core import ReportContext, register_section
from ..ranking import reference_rewards, verdict
from ..render import md_table
from ..winrates import fmt_ci

SPENT = ((N.COMPUTE_POLICY_FWD, "policy fwd tokens"), (N.COMPUTE_POLICY_BWD, "policy bwd tokens"),
         (N.COMPUTE_REF_FWD, "reference fwd tokens"), (N.COMPUTE_SAMPLES, "samples"),
         (N.COMPUTE_RM_QUERIES, "RM queries"), (N.COMPUTE_GOLD_QUERIES, "gold queries"),
         (N.COMPUTE_EVAL_FWD, "eval fwd tokens"), ("wall_s", "wall s"))


def spent_table(ok: pd.DataFrame) -> pd.DataFrame:
    """Mean per run of every compute column, per task and method, with the number of runs."""
    cols = [(c, lab) for c, lab in SPENT if c in ok]
    rows = []
    for (task, method), g in ok.groupby(["task", "method"], sort=True):
        row = {"task": task, "method": method, "runs": len(g)}
        for c, lab in cols:
            v = pd.to_numeric(g[c], errors="coerce").mean()
            row[lab] = f"{v:.3g}" if np.isfinite(v) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _leader(ctx: ReportContext, task: str, budget: float, ordered: list[str]) -> str:
    """The top two methods at the budget, compared over seeds (withheld where the interval includes 0)."""
    if len(ordered) < 2:
        return ""
    scores, _, _, _ = scores_at(ctx.summary, ctx.runs, task, budget, reference_rewards(ctx.runs))
    a, b = ordered[0], ordered[1]
    p = S.pairwise(scores.get(a, []), scores.get(b, []))
    row = pd.Series({"method": a, "method_b": b, "n_seeds": p.n_a, "n_seeds_b": p.n_b, "ci_low": p.lo, "ci_high": p.hi})
    return (f"Top two at this budget: {a} − {b} = {fmt_ci(p.diff, p.lo, p.hi)}, P({a} > {b}) = "
            f"{p.prob_improvement:.2f}: {verdict(row)}.\n")


@register_section("compute", order=36)
def section_compute(ctx: ReportContext) -> str:
    parts = ["## Compute", ""]
    ok = ctx.ok
    if N.COMPUTE_BUDGET not in ok or ok[N.COMPUTE_BUDGET].notna().sum() == 0:
        parts.append("These runs recorded no compute (results from a version before compute counting).\n")
        return "\n".join(parts)
    parts.append("What a run spent, mean per run (`summary.csv` has each run's counts). A token is a position a "
                 "forward computed (rows × sequence length, padding included; the offline loop's prefix-sharing "
                 "packing counts its packed rows; generation with the KV cache counts the prompt once, then one "
                 "position per new token). Backward tokens: positions of forwards run with gradients. Reference "
                 "tokens: offline methods are charged one pass over their training split (the reference log-probs "
                 "are computed once per sweep and cached); online methods every rollout's reference forward. "
                 "Evaluation forwards are counted apart (eval fwd tokens), not in the budget. Samples: completions "
                 "drawn from the policy in training; RM / gold queries: completions scored as the training signal.\n")
    parts.append(md_table(spent_table(ok)))
    cm = ctx.once("compute_matched", lambda: build_compute_matched(ctx.summary, ctx.runs, reference_rewards(ctx.runs)))
    parts += ["### Compute-matched frontier", "",
              "Every run cut at one budget of policy tokens (forward + 2 × backward, logged cumulatively at each "
              "evaluation): the **budget** is the smallest of the methods' largest per-run budgets, i.e. the most "
              "compute every method that trains reached in at least one run (methods with no training compute, "
              "e.g. best-of-N, are kept whole). Each run counts with its last evaluation within the budget; the "
              "frontier score is then computed as in the ranking (common KL range of the cut points, 95% bootstrap "
              "over seeds, none with one seed). `cut`: runs whose later evaluations were dropped.", ""]
    if cm.empty:
        parts.append("No task has runs with both a logged budget and KL and gold reward.\n")
        return "\n".join(parts)
    full = ctx.ranking[ctx.ranking["table"] == "score"].set_index(["task", "method"])["score"]
    for task, g in cm.groupby("task", sort=True):
        g = g.sort_values("score", ascending=False)
        b, lo, hi = float(g["budget"].iloc[0]), float(g["kl_lo"].iloc[0]), float(g["kl_hi"].iloc[0])
        parts.append(f"#### `{task}`: budget {b:.3g} policy tokens per run\n")
        if not (np.isfinite(lo) and np.isfinite(hi)):
            parts.append("No KL range is reached by every method in every seed at this budget: no score.\n")
            continue
        parts.append(f"Common KL range at this budget: {lo:.3g}–{hi:.3g} nats.\n")
        if int(g["n_seeds"].max()) < 2:
            parts.append("One seed per method: no interval over training runs, no comparison.\n")
        parts.append(md_table(pd.DataFrame({
            "method": [m + (" (no training compute)" if nt else "") for m, nt in zip(g["method"], g["no_training"])],
            "seeds": g["n_seeds"].astype(int), "cut": [f"{c} of {n}" for c, n in zip(g["n_cut"], g["n_runs"])],
            "largest run budget": [f"{v:.3g}" for v in g["full_budget"]],
            "score at budget [95% CI]": [fmt_ci(v, a, c) for v, a, c in zip(g["score"], g["ci_low"], g["ci_high"])],
            "full-compute score": [full.get((task, m), float("nan")) for m in g["method"]]}), ".3f"))
        if int(g["n_seeds"].min()) >= 2:
            parts.append(_leader(ctx, task, b, [m for m in g["method"] if np.isfinite(g.set_index("method").loc[m, "score"])]))
    return "\n".join(parts)
