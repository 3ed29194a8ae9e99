"""Robustness to the sampling temperature: win rate against the reference as the final policy is sampled at
T = 0 (greedy) .. 1 (the DPO paper's Fig. 2 right), each method at its best sweep value and at a matched KL."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import names as N
from ..core import ReportContext, register_section
from ..render import md_table, method_palette, save_figure, theme
from ..robust_stats import selections, stat, temperatures
from ..schema import cell_label

FIGURE = "temperature.png"


def _col(t: float, metric: str = N.WIN_VS_REF) -> str:
    return N.at_temperature(metric, t)


def plot_temperature(out: Path, ok: pd.DataFrame, temps: list[float]) -> Path | None:
    """One panel per (task, selection): win rate vs T, a line per method (mean over seeds, band: 95% interval)."""
    panels = [(task, label, picks) for task in sorted(ok["task"].unique()) for label, picks in selections(ok, task)
              if any(stat(ok, u, _col(temps[-1])).n for u in picks.values())]  # tasks measured at temperatures only
    if not panels:
        return None
    theme()
    palette = method_palette(list(ok["method"].unique()))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (task, label, picks) in zip(axes[0], panels):
        for method, unit in sorted(picks.items()):
            s = [stat(ok, unit, _col(t)) for t in temps]
            m = np.array([x.mean for x in s])
            if not np.isfinite(m).any():
                continue
            ax.plot(temps, m, "o-", color=palette[method], label=unit.label, lw=1.2, ms=4)
            lo, hi = np.array([x.lo for x in s]), np.array([x.hi for x in s])
            if np.isfinite(lo).any():
                ax.fill_between(temps, lo, hi, color=palette[method], alpha=0.15, lw=0)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{task}: {label}", fontsize=10)
        ax.set_xlabel("sampling temperature T (0 = greedy)")
        ax.set_ylabel("win rate vs reference (T = 1)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out) / FIGURE
    save_figure(fig, path)
    return path


def _table(ok: pd.DataFrame, temps: list[float]) -> tuple[str, list[str]]:
    rows, findings = [], []
    lo_t, hi_t = temps[0], temps[-1]
    for task in sorted(ok["task"].unique()):
        for label, picks in selections(ok, task):
            for method, u in sorted(picks.items()):
                if not stat(ok, u, _col(hi_t)).n:  # not measured at temperatures (best-of-N; a task with them off)
                    continue
                d = stat(ok, u, _col(lo_t), minus=_col(hi_t))
                row = {"task": task, "selection": label, "method": method,
                       "value": cell_label(u.param, u.value, u.variant), "seeds": stat(ok, u, _col(hi_t)).n}
                row.update({f"T={t:g}": stat(ok, u, _col(t)).fmt() for t in temps})
                row.update({f"KL T={t:g}": stat(ok, u, _col(t, N.KL)).fmt(2) for t in (lo_t, hi_t)})
                row[f"T={lo_t:g} − T={hi_t:g}"] = d.fmt()
                rows.append(row)
                if d.n >= 2 and d.distinguishable:
                    findings.append(f"- `{task}`, {u.label} ({label}): the win rate at T={lo_t:g} is "
                                    f"{'higher' if d.mean > 0 else 'lower'} than at T={hi_t:g} by {d.fmt()} "
                                    f"(n = {d.n} seeds).")
                elif d.n:
                    findings.append(f"- `{task}`, {u.label} ({label}): T={lo_t:g} vs T={hi_t:g} not distinguishable "
                                    f"with {d.n} seed{'s' if d.n != 1 else ''}"
                                    + (" (no interval with one seed)." if d.n < 2 else f": {d.fmt()}."))
    return md_table(pd.DataFrame(rows)), findings


@register_section("temperature", order=26, figures=(FIGURE,))
def section_temperature(ctx: ReportContext) -> str:
    ok = ctx.ok
    temps = temperatures(ok) if not ok.empty else []
    parts = ["## Robustness to the sampling temperature", ""]
    if not temps:
        parts.append("No run measured its final policy at other temperatures (`eval_temperatures`; runs of methods "
                     "that evaluate their own policy table, such as best-of-N, have none).\n")
        return "\n".join(parts)
    parts.append(
        "The final policy sampled with per-token temperature T (T = 0: greedy decoding), judged against the reference "
        "sampled at T = 1, as in the DPO paper's Fig. 2 (right). Exact tasks: exact values of π_T(y|x) = Π_t "
        "softmax(logits_t / T)[y_t]; sampled tasks: the same samples and standard errors as the standard evaluation. "
        "Each method at its best sweep value (highest mean gold reward) and at the KL budget (0.3, 1, 3 or 10 nats) "
        "that the most methods reach within a factor 2 (the sweep value whose mean KL at T = 1 is closest to it). "
        "Cells: mean over seeds [95% bootstrap interval over seeds]; with one seed no interval. The last column "
        "is the per-seed difference between the lowest and highest temperature. Runs without these measurements "
        "(best-of-N; the sentiment task by default, where they are off for time: `eval_temperatures`) are left out.\n")
    if ok["seed"].nunique() < 2:
        parts.append("Only one seed: no intervals, and no finding is drawn.\n")
    path = ctx.add_figure(plot_temperature(ctx.out, ok, temps))
    if path is not None:
        parts.append(f"![win rate vs temperature]({Path(path).name})\n")
    table, findings = _table(ok, temps)
    parts.append(table)
    if findings:
        parts += ["**Findings** (interval of the difference excluding 0; else withheld):", ""] + findings + [""]
    return "\n".join(parts)
