"""The reward-vs-KL frontier: gold reward against KL(π‖π_ref) per task, with the exact optimal frontier."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..core import ReportContext, register_section
from ..render import fmt_value, method_palette, save_figure, theme
from ..schema import frontier_csv, sym

FIGURE = "frontier.png"


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
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.8), squeeze=False)
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
            g = g.groupby("sweep_value", as_index=False).agg(
                kl=("kl", "mean"), reward=("reward", "mean"), n=("kl", "size"),
                kl_sd=("kl", "std"), reward_sd=("reward", "std"), sweep_param=("sweep_param", "first"),
                kl_se=("kl_se", "mean") if "kl_se" in g else ("kl", lambda s: np.nan),
                reward_se=("reward_se", "mean") if "reward_se" in g else ("reward", lambda s: np.nan))
            g = g.sort_values("kl")
            xerr = g["kl_se"].where(g["kl_se"].notna(), g["kl_sd"] / np.sqrt(g["n"]))
            yerr = g["reward_se"].where(g["reward_se"].notna(), g["reward_sd"] / np.sqrt(g["n"]))
            has_err = bool(np.isfinite(xerr.astype(float)).any() or np.isfinite(yerr.astype(float)).any())
            color = palette[method]
            ax.errorbar(g["kl"], g["reward"], xerr=xerr.fillna(0) if has_err else None,
                        yerr=yerr.fillna(0) if has_err else None, fmt="o-", color=color, ms=5, lw=1.0,
                        alpha=0.9, capsize=2, label=method, zorder=3)
            axis = g["sweep_param"].iloc[0]
            for _, r in g.iterrows():
                ax.annotate(f"{sym(axis)}={fmt_value(r['sweep_value'])}", (r["kl"], r["reward"]), fontsize=6.5,
                            color=color, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{task}: reward vs KL")
        ax.set_xlabel("KL(π ‖ π_ref)  [nats]")
        ax.set_ylabel("gold reward (mean)")
        ax.set_xlim(left=-0.02 * max(0.5, float(df["kl"].max())))
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
        parts.append("Gold reward against KL(π‖π_ref) in nats, one colour per method, each point labelled by the "
                     "value of its sweep axis (β, or N for best-of-N); seeds are averaged, bars are standard errors. "
                     "The black line is the exact optimal frontier π*_β = π_ref exp(r/β)/Z where the task has one: "
                     "no policy can lie above it.\n")
    return "\n".join(parts)
