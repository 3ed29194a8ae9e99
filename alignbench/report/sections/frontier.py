"""The reward-vs-KL frontier: gold reward against KL(π‖π_ref) per task, with the exact optimal frontier."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..core import ReportContext, register_section
from ..render import method_palette, save_figure, theme
from ..schema import cell, cell_label, frontier_csv
from ..seeds import seed_bootstrap

FIGURE = "frontier.png"
SYMLOG_LINTHRESH = 1.0  # the KL axis is linear on [0, 1] nats and logarithmic above: one far run no longer squeezes the rest


def plot_frontier(out: Path, summary: pd.DataFrame) -> Path | None:
    """Gold reward vs KL per task: one colour per method, points labelled by their sweep value,
    error bars where the metrics are sampled, the optimal frontier where the task has one."""
    out = Path(out)
    ok = summary[summary["status"] == "ok"]
    if ok.empty or "kl" not in ok or "reward" not in ok or ok["kl"].notna().sum() == 0:
        return None
    ok = ok[ok["kl"].notna() & ok["reward"].notna()]
    tasks = sorted(ok["task"].unique())
    theme()
    n_methods = summary["method"].nunique()
    fig, axes = plt.subplots(1, len(tasks), figsize=((6.4 + (1.2 if n_methods > 6 else 0)) * len(tasks), 4.8 + 0.12 * max(0, n_methods - 8)),
                             squeeze=False)
    palette = method_palette(list(summary["method"].unique()))
    for ax, task in zip(axes[0], tasks):
        df = ok[ok["task"] == task]
        fpath = out / frontier_csv(task)
        if fpath.exists():
            fr = pd.read_csv(fpath)
            kmax = max(float(df["kl"].max()) * 1.15, 0.5)
            fr = fr[fr["kl"] <= kmax]
            ax.plot(fr["kl"], fr["reward"], color="black", lw=1.6, label="optimal frontier $\\pi^*_\\beta$", zorder=1)
        for method, g in df.groupby("method"):
            color = palette[method]
            # a faint dot per run (seed), the mean per sweep value, bars: 95% interval over seeds
            ax.plot(g["kl"], g["reward"], "o", ms=3, color=color, alpha=0.25, zorder=2)
            cells = []
            for v, c in g.groupby(cell(g)):
                kl_m, kl_lo, kl_hi = seed_bootstrap(c["kl"].to_numpy(float))
                rw_m, rw_lo, rw_hi = seed_bootstrap(c["reward"].to_numpy(float))
                cells.append((kl_m, rw_m, kl_m - kl_lo, kl_hi - kl_m, rw_m - rw_lo, rw_hi - rw_m,
                              v if isinstance(v, tuple) else (v,)))
            cells.sort()
            a = np.array([c[:6] for c in cells], dtype=float)
            has_err = bool(np.isfinite(a[:, 2:]).any())
            ax.errorbar(a[:, 0], a[:, 1], xerr=np.nan_to_num(a[:, 2:4].T) if has_err else None,
                        yerr=np.nan_to_num(a[:, 4:6].T) if has_err else None, fmt="o-", color=color, ms=5, lw=1.0,
                        alpha=0.9, capsize=2, label=method, zorder=3)
            axis = g["sweep_param"].iloc[0]
            for c in cells:
                ax.annotate(cell_label(axis, *c[6]), (c[0], c[1]), fontsize=6.5,
                            color=color, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{task}: reward vs KL")
        ax.set_xscale("symlog", linthresh=SYMLOG_LINTHRESH, linscale=1.0)
        ax.set_xlabel(f"KL(π ‖ π_ref)  [nats; linear below {SYMLOG_LINTHRESH:g}, log above]")
        ax.set_ylabel("gold reward (mean over seeds)")
        ax.set_xlim(left=0.0)
        if n_methods > 6:  # many methods: the legend beside the axes, not over the points
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / FIGURE
    save_figure(fig, path)
    return path


@register_section("frontier", order=20, figures=(FIGURE,))
def section_frontier(ctx: ReportContext) -> str:
    fig = ctx.add_figure(plot_frontier(ctx.out, ctx.summary))
    parts = ["## Reward vs KL frontier", ""]
    if fig is None:
        parts.append("No completed run reported both KL and gold reward.\n")
    else:
        parts.append(f"![frontier]({fig.name})\n")
        n = ctx.ok.groupby(["task", "method", *cell(ctx.ok)])["seed"].nunique()
        seeds_txt = (f"{int(n.min())} seed{'s' if n.min() != 1 else ''} per point" if n.min() == n.max()
                     else f"{int(n.min())}-{int(n.max())} seeds per point")
        parts.append("Gold reward against KL(π‖π_ref) in nats, one colour per method, each point the mean over seeds of "
                     "one value of its sweep axis (β, or N for best-of-N), with a faint dot per seed; bars are 95% "
                     f"bootstrap intervals over seeds in both KL and reward ({seeds_txt}; no bars with a single seed). "
                     "The KL axis is linear below 1 nat and logarithmic above. The black line is the exact optimal "
                     "frontier π*_β = π_ref exp(r/β)/Z where the task has one: no policy can lie above it.\n")
    return "\n".join(parts)
