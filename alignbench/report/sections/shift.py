"""Distribution shift: the final policy on in-distribution and shifted prompts (DPO paper section 6.3), and the
policy mass on responses the data never showed (``exact/unseen_mass``) against KL, the way offline methods wander."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import names as N
from ..core import ReportContext, register_section
from ..render import md_table, method_palette, save_figure, theme
from ..robust_stats import has_split, stat
from ..schema import cell_label
from ..winrates import units

FIGURE = "shift_unseen_mass.png"
METRICS = ((N.GOLD, "reward"), (N.KL, "KL"), (N.WIN_VS_REF, "win rate"))


def plot_unseen_mass(ctx: ReportContext) -> Path | None:
    """exact/unseen_mass against KL at every evaluation of every run, a colour per method; the final
    evaluation of each run drawn larger. None when no run logged unseen_mass."""
    by_task: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for run in ctx.runs.values():
        m = run.metrics
        if run.status == "ok" and N.UNSEEN_MASS in m and N.KL in m and m[N.UNSEEN_MASS].notna().any():
            by_task.setdefault(run.task, []).append((run.method, m[[N.KL, N.UNSEEN_MASS]].dropna()))
    if not by_task:
        return None
    theme()
    palette = method_palette([r.method for r in ctx.runs.values()])
    fig, axes = plt.subplots(1, len(by_task), figsize=(6.0 * len(by_task), 4.4), squeeze=False)
    for ax, (task, runs) in zip(axes[0], sorted(by_task.items())):
        seen = set()
        for method, m in sorted(runs, key=lambda x: x[0]):
            c = palette[method]
            ax.plot(m[N.KL], m[N.UNSEEN_MASS], "-", color=c, alpha=0.35, lw=0.8)
            ax.plot(m[N.KL].iloc[-1:], m[N.UNSEEN_MASS].iloc[-1:], "o", color=c, ms=5,
                    label=None if method in seen else method)
            seen.add(method)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(f"{task}: policy mass on responses unseen in the data", fontsize=10)
        ax.set_xlabel("KL(π ‖ π_ref) [nats; linear below 1, log above]")
        ax.set_ylabel("exact/unseen_mass")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = ctx.out / FIGURE
    save_figure(fig, path)
    return path


def _split_table(ok: pd.DataFrame) -> tuple[str, list[str]]:
    rows, findings = [], []
    for u in units(ok):
        if stat(ok, u, N.on_split(N.GOLD, N.SPLIT_SHIFT)).n == 0:
            continue
        row = {"task": u.task, "method": u.method, "value": cell_label(u.param, u.value, u.variant),
               "seeds": stat(ok, u, N.on_split(N.GOLD, N.SPLIT_IN)).n}
        for metric, name in METRICS:
            a, b = N.on_split(metric, N.SPLIT_IN), N.on_split(metric, N.SPLIT_SHIFT)
            d = stat(ok, u, a, minus=b)
            row[f"{name} in"] = stat(ok, u, a).fmt()
            row[f"{name} shift"] = stat(ok, u, b).fmt()
            row[f"{name} in − shift"] = d.fmt()
            if metric == N.GOLD:
                if d.n >= 2 and d.distinguishable:
                    findings.append(f"- `{u.task}`, {u.label}: gold reward in − shift = {d.fmt()} (n = {d.n} seeds).")
                elif d.n:
                    findings.append(f"- `{u.task}`, {u.label}: in vs shift not distinguishable with {d.n} "
                                    f"seed{'s' if d.n != 1 else ''}.")
        rows.append(row)
    return md_table(pd.DataFrame(rows)), findings


@register_section("distribution shift", order=27, figures=(FIGURE,))
def section_shift(ctx: ReportContext) -> str:
    ok = ctx.ok
    parts = ["## Distribution shift", ""]
    split = not ok.empty and has_split(ok)
    path = ctx.add_figure(plot_unseen_mass(ctx))
    if not split and path is None:
        parts.append("No shift data in this folder: no run was evaluated on shifted prompts (exact task: "
                     "`held_out_prompts`; sentiment task: `shift_prompts`; see `configs/shift.yaml`) and none "
                     "logged `exact/unseen_mass`.\n")
        return "\n".join(parts)
    if split:
        parts.append(
            "The final policy on in-distribution prompts (`in`) and shifted ones (`shift`). Exact task: `in` = "
            "prompts with training pairs, `shift` = the `held_out_prompts` that got no pairs and no online rollouts "
            "(exact values; the all-prompt metric is their average weighted by prompt count). Sentiment task: `in` = "
            "the eval prompts, `shift` = `shift_prompts` prompts of a grammar with other subject nouns (sampled, "
            "the reference sampled on the same prompts). Every sweep cell: mean over seeds [95% bootstrap interval "
            "over seeds]; `in − shift` is the per-seed difference (paired within each run).\n")
        if ok["seed"].nunique() < 2:
            parts.append("Only one seed: no intervals, and no finding is drawn.\n")
        table, findings = _split_table(ok)
        parts.append(table)
        if findings:
            parts += ["**Findings** (interval of the difference excluding 0; else withheld):", ""] + findings + [""]
    else:
        parts.append("No run was evaluated on shifted prompts (exact: `held_out_prompts`; sentiment: "
                     "`shift_prompts`; see `configs/shift.yaml`).\n")
    if path is not None:
        parts.append("Policy mass on responses that occur in no training pair of their prompt (`exact/unseen_mass`) "
                     "against KL, at every evaluation of every run (line: one run over training; dot: its final "
                     "evaluation). Offline methods can move mass only by pushing pairs' responses up or down, so the "
                     "mass they take from the data's responses lands on unseen ones: the mechanism by which they "
                     "wander off the data.\n")
        parts.append(f"![unseen mass vs KL]({Path(path).name})\n")
    return "\n".join(parts)
