"""Win-rate tables: against the reference, head to head at each method's best sweep value and at matched KL
budgets, and against the preference data's chosen responses (all rows in ``winrates.csv``)."""

from __future__ import annotations

import pandas as pd

from ..core import ReportContext, register_section
from ..render import md_table
from ..schema import cell_label, sym  # noqa: F401
from ..winrates import DEFAULT_BUDGETS, MAX_KL_RATIO, fmt_ci, matrix_markdown, select_matched_kl, units


@register_section("winrates", order=30)
def section_winrates(ctx: ReportContext) -> str:
    summary, wr = ctx.summary, ctx.winrates
    parts = ["## Win rates", "",
             "Judged by the gold reward on the same prompts. Exact tasks: Bradley-Terry win probability "
             "Σ a(y) b(y') σ(r(y) − r(y')), computed exactly; sampled tasks: share of sample pairs with the higher "
             "gold reward (ties ½). Values are means over seeds. Intervals: 95% percentile bootstrap over training "
             "runs (2000 draws): seeds (seed pairs head to head) resampled, then prompts within each seed; a cell "
             "with a single seed shows no interval, since prompts alone leave out the spread between training runs. "
             "The number of seeds is in `winrates.csv` (`n_seeds`). All values are in "
             "`winrates.csv`.", ""]
    ref = wr[wr["table"] == "vs_ref"]
    parts.append("### Against the reference policy\n")
    if ref.empty:
        parts.append("No run reported a win rate against the reference.\n")
    else:
        t = ref.sort_values(["task", "method_a", "value_a"])
        df = pd.DataFrame({
            "task": t["task"], "method": t["method_a"],
            "value": [cell_label(p, v, w if isinstance(w, str) else "") for p, v, w in zip(t["param_a"], t["value_a"],
                                                                                     t["variant_a"])],
            "KL [nats]": t["kl_a"], "gold reward": t["reward_a"],
            "win rate vs ref [95% CI]": [fmt_ci(w, lo, hi) for w, lo, hi in zip(t["win_rate"], t["ci_low"], t["ci_high"])],
            "judge": t["judge"]})
        parts.append(md_table(df))
    tasks = sorted(ctx.ok["task"].unique())
    parts.append("### Head to head, each method at its best sweep value\n")
    parts.append("Row A against column B: the probability that A's response beats B's. Each method at the sweep "
                 "value with its highest mean gold reward (shown with its KL in nats).\n")
    parts.append(_h2h_tables(wr[wr["table"] == "best"], tasks))
    parts.append("### Head to head at matched KL budgets\n")
    parts.append(f"Each method at the sweep value whose mean KL is closest (in log scale) to the budget, and only if "
                 f"that KL lies within a factor {MAX_KL_RATIO:g} of it; the actual KL in nats is shown next to each "
                 "method (≤ marks an analytic upper bound, as for best-of-N): compare it with the budget before "
                 "reading the win rate.\n")
    us = units(summary)
    for b in DEFAULT_BUDGETS:
        bt = f"kl{b:g}"
        picks = select_matched_kl(us, b)
        lines = []
        for task in tasks:
            have = sorted(m for t, m in picks if t == task)
            missing = sorted({u.method for u in us if u.task == task} - set(have))
            if len(have) < 2:
                lines.append(f"`{task}`: fewer than two methods have a run within a factor {MAX_KL_RATIO:g} of "
                             f"{b:g} nats" + (f" (only {', '.join(have)})" if have else "") + ".\n")
                continue
            d = wr[(wr["table"] == bt) & (wr["task"] == task)]
            if d.empty:
                lines.append(f"`{task}`: no per-prompt results for these runs.\n")
                continue
            lines.append(f"`{task}` (judge: {d['judge'].iloc[0]})"
                         + (f"; no run within a factor {MAX_KL_RATIO:g}: {', '.join(missing)}" if missing else "") + "\n")
            lines.append(matrix_markdown(d))
        parts.append(f"**KL budget {b:g} nats**\n")
        parts += lines
    parts.append("### Against the preference data's chosen responses\n")
    ch = wr[wr["table"] == "vs_chosen"]
    if ch.empty:
        parts.append("Not available: no task saved per-prompt win rates against its chosen responses "
                     "(`winrate_vs_chosen` in `eval_final.json`, or `eval_chosen_count` in `task_<task>.npz`).\n")
    else:
        t = ch.sort_values(["task", "method_a", "value_a"])
        df = pd.DataFrame({
            "task": t["task"], "method": t["method_a"],
            "value": [cell_label(p, v, w if isinstance(w, str) else "") for p, v, w in zip(t["param_a"], t["value_a"],
                                                                                     t["variant_a"])], "KL [nats]": t["kl_a"],
            "win rate vs chosen [95% CI]": [fmt_ci(w, lo, hi) for w, lo, hi in zip(t["win_rate"], t["ci_low"], t["ci_high"])],
            "judge": t["judge"]})
        parts.append(md_table(df))
    return "\n".join(parts)


def _h2h_tables(df: pd.DataFrame, tasks: list[str]) -> str:
    if df.empty:
        return ("_none_ (needs at least two methods with per-prompt results: `logp` and the gold reward table on "
                "exact tasks, per-prompt rewards on sampled tasks)\n")
    out = []
    for task in tasks:
        d = df[df["task"] == task]
        if d.empty:
            continue
        out.append(f"`{task}` (judge: {d['judge'].iloc[0]})\n")
        out.append(matrix_markdown(d))
    return "\n".join(out)
