"""Spread from training versus spread from data, where a sweep crossed data seeds with run seeds."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import seeds as S
from ..core import ReportContext, register_section
from ..ranking import per_unit_points, reference_rewards
from ..render import md_table
from ..variance import decompose
from ..winrates import fmt_ci


def unit_values(ok: pd.DataFrame, task: str, reference: dict[tuple[str, Any], float]) -> pd.DataFrame:
    """One row per (method, unit = run seed x data seed): data_seed, final reward and KL (means over the method's
    sweep values) and the frontier score (as in the ranking: common KL range over every method and unit)."""
    t = ok[ok["task"].astype(str) == task]
    pts = per_unit_points(t, task, reference)
    lo, hi = S.common_range({m: list(d.values()) for m, d in pts.items()})
    rows = []
    for (method, unit), g in t.groupby(["method", "seed"], sort=True):
        k, r = pts.get(str(method), {}).get(unit, ([], []))
        rows.append({"method": str(method), "unit": unit, "data_seed": g["data_seed"].iloc[0],
                     "reward": pd.to_numeric(g["reward"], errors="coerce").mean(),
                     "kl": pd.to_numeric(g["kl"], errors="coerce").mean(),
                     "frontier score": S.frontier_score(k, r, lo, hi) if len(k) else float("nan")})
    return pd.DataFrame(rows)


@register_section("data_seeds", order=36.5)
def section_data_seeds(ctx: ReportContext) -> str:
    ok = ctx.ok
    if "data_seed" not in ok or ok["data_seed"].notna().sum() == 0:
        return ""  # the sweep did not vary data seeds: nothing to separate
    ok = ok[ok["data_seed"].notna()]
    parts = ["## Training versus data spread", "",
             "Runs crossed run seeds (training randomness: batch order, sampling) with data seeds (the "
             "preference sample and the reward model trained on it). Per method, each (run seed, data seed) pair "
             "gives one value: final gold reward and KL averaged over the method's sweep values, and the frontier "
             "score as in the ranking. **sd training**: the pooled standard deviation over run seeds within a data "
             "seed; **sd data**: the spread of the per-data-seed means beyond what training noise explains "
             "(one-way random effects, `alignbench/report/variance.py`); sd of means: their raw spread. Intervals: "
             "95% bootstrap resampling data seeds, then run seeds within each. The other tables of this report treat "
             "each (run seed, data seed) pair as one seed.", ""]
    reference = reference_rewards(ctx.runs)
    for task in sorted(ok["task"].astype(str).unique()):
        vals = unit_values(ok, task, reference)
        n_data = int(vals["data_seed"].nunique()) if not vals.empty else 0
        parts.append(f"### `{task}`\n")
        if n_data < 2:
            parts.append(f"One data seed ({n_data}): no spread from data can be measured.\n")
            continue
        rows = []
        for method, g in vals.groupby("method", sort=True):
            for q in ("reward", "kl", "frontier score"):
                d = decompose([h[q].tolist() for _, h in g.groupby("data_seed", sort=True)])
                per = g.groupby("data_seed").size()
                rows.append({"method": method, "quantity": q,
                             "data seeds × run seeds": f"{d['n_data']} × {per.min()}" + (f"–{per.max()}" if per.max() != per.min() else ""),
                             "sd training [95% CI]": fmt_ci(d["sd_train"], d["sd_train_lo"], d["sd_train_hi"]),
                             "sd data [95% CI]": fmt_ci(d["sd_data"], d["sd_data_lo"], d["sd_data_hi"]),
                             "sd of data-seed means": d["sd_means"]})
        parts.append(md_table(pd.DataFrame(rows)))
    return "\n".join(parts)
