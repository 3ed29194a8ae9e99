"""The failed runs with their reason, and every completed run as an appendix."""

from __future__ import annotations

import pandas as pd

from .. import names as N
from ..core import ReportContext, register_section
from ..render import md_table


@register_section("failed", order=60)
def section_failed(ctx: ReportContext) -> str:
    summary = ctx.summary
    failed = summary[summary["status"] != "ok"]
    cols = [c for c in ("run_id", "task", "method", "sweep_value", "steps", "reason") if c in failed]
    body = md_table(failed[cols]) if not failed.empty else "No run failed.\n"
    return "## Failed runs\n\n" + body


@register_section("runs", order=70)
def section_runs(ctx: ReportContext) -> str:
    summary = ctx.summary
    cols = [c for c in ("task", "method", "sweep_param", "sweep_value", "seed", "kl", "kl_se", "reward", "reward_se",
                        "win_rate_vs_ref", "frontier_gap", "kl_to_target", "unseen_mass", "steps", "wall_s", N.COMPUTE_BUDGET, N.CONVERGED)
            if c in summary]
    ok = ctx.ok.sort_values([c for c in ("task", "method", "sweep_value", "seed") if c in summary])
    table = ok[cols].rename(columns={N.COMPUTE_BUDGET: "policy tokens", N.CONVERGED: "converged"})
    if "policy tokens" in table:
        table["policy tokens"] = [f"{v:.3g}" if v == v else "" for v in pd.to_numeric(table["policy tokens"])]
    return "## All runs\n\n" + md_table(table) + "\n"
