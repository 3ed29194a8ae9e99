"""Where each method's gap to the frontier comes from: its own target's gap (objective) and the rest (estimation)."""

from __future__ import annotations

import math

import pandas as pd

from ..core import ReportContext, register_section
from ..gaps import FIGURE_PREFIX, gap_table, paired_share, plot_gaps, without_target
from ..render import md_table
from ..winrates import fmt_ci


def method_sentence(summary: pd.DataFrame, table: pd.DataFrame, task: str, method: str) -> str:
    """One sentence: the two parts averaged over the method's sweep cells, and which is larger where the 95%
    interval over seeds of their difference excludes 0 (else "not distinguishable with n seeds")."""
    t = table[(table["task"] == task) & (table["method"] == method)]
    target = str(t["target"].iloc[0]) if "target" in t and len(t) else ""
    d, lo, hi, n = paired_share(summary, task, method)
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if not math.isfinite(lo):
        verdict = f"no interval with {seeds}"
    elif lo > 0:
        verdict = f"the estimation gap is the larger part by {fmt_ci(d, lo, hi)} ({seeds})"
    elif hi < 0:
        verdict = f"the objective gap is the larger part by {fmt_ci(-d, -hi, -lo)} ({seeds})"
    else:
        verdict = f"the two parts are not distinguishable with {seeds}"
    return (f"- `{task}` {method} (target {target}): mean over its {len(t)} sweep value(s) objective gap "
            f"{t['objective_gap'].mean():.3f}, estimation gap {t['estimation_gap'].mean():.3f}; {verdict}.")


@register_section("gap sources", order=22, figures=(FIGURE_PREFIX,))
def section_gaps(ctx: ReportContext) -> str:
    parts = ["## Where each method's gap to the frontier comes from", ""]
    table = gap_table(ctx.summary)
    none = without_target(ctx.summary)
    if table.empty and not none:
        parts.append("Not measured: no completed run on an enumerable task recorded its own population target (runs "
                     "made before the `objective_gap` / `estimation_gap` columns existed need rerunning; sampled tasks "
                     "have no exact target).\n")
        return "\n".join(parts)
    parts.append("On an exact task each run's gap below the optimal frontier (gold reward of π*_β at the run's KL minus "
                 "its reward) is split in two. **Objective gap**: the same distance for the method's own population "
                 "target, the policy its loss is minimised by with infinite data and a tabular policy (docs/targets.md): "
                 "what even a perfect optimiser of that objective loses. **Estimation gap**: the rest, the run against "
                 "its own target (finite data, finite training, the network). A negative estimation gap means the run "
                 "ended nearer the frontier than its own target. Values are means over seeds with 95% bootstrap "
                 "intervals over seeds (none with one seed).\n")
    for task in sorted(set(table["task"]) if not table.empty else []):
        fig = ctx.add_figure(plot_gaps(ctx.out, table, task))
        if fig is not None:
            parts.append(f"![gaps {task}]({fig.name})\n")
    if not table.empty:
        show = pd.DataFrame({"task": table["task"], "method": table["method"], "value": table["cell"],
                             "n seeds": table["n"]})
        for col, name in (("objective_gap", "objective gap"), ("estimation_gap", "estimation gap"),
                          ("frontier_gap", "frontier gap")):
            show[name] = [fmt_ci(m, lo, hi) for m, lo, hi in
                          zip(table[col], table[f"{col}_lo"], table[f"{col}_hi"])]
        show["own target"] = table["target"]
        parts.append(md_table(show))
        parts.append("")
    lines = [method_sentence(ctx.summary, table, task, method)
             for task, method in sorted(set(zip(table["task"], table["method"])))] if not table.empty else []
    lines += [f"- `{task}` {method}: no target: {reason}." for (task, method), reason in sorted(none.items())]
    parts += lines
    return "\n".join(parts) + "\n"
