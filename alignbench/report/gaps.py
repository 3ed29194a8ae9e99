"""Where a run's gap to the optimal frontier comes from: its own target's gap (objective) and the rest (estimation).

On an exact task every run's final evaluation splits ``frontier_gap`` (the gold frontier's reward at the run's KL
minus its reward) into ``objective_gap`` (the same distance for the method's own population target: what even a
perfect optimiser of its objective would lose) and ``estimation_gap`` (the remainder: finite data, finite training,
the function class). These are the summary columns of the same names; runs without a target have them empty and
say why in ``own_target``. Read from ``summary.csv`` only.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .names import OWN_TARGET
from .render import save_figure, slug, theme
from .schema import cell, cell_label
from .seeds import seed_bootstrap

PARTS = ("objective_gap", "estimation_gap")
FIGURE_PREFIX = "gaps_"


def gap_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, method, sweep cell) of completed runs that measured the split: n seeds, mean and 95% seed-
    bootstrap interval of each part and of the frontier gap (NaN intervals with one seed), and the target's formula."""
    ok = summary[summary["status"] == "ok"]
    if ok.empty or not set(PARTS) <= set(ok.columns):
        return pd.DataFrame()
    ok = ok[ok["objective_gap"].notna() & ok["estimation_gap"].notna()]
    rows = []
    for (task, method), g in ok.groupby(["task", "method"], sort=True):
        param = str(g["sweep_param"].iloc[0])
        for key, c in g.groupby(cell(g), sort=True):
            key = key if isinstance(key, tuple) else (key,)
            row = {"task": task, "method": method, "cell": cell_label(param, float(key[0]), *map(str, key[1:])),
                   "value": float(key[0]), "n": int(c["seed"].nunique()),
                   "target": str(c[OWN_TARGET].iloc[0]) if OWN_TARGET in c else ""}
            for col in (*PARTS, "frontier_gap"):
                m, lo, hi = seed_bootstrap(c[col].to_numpy(float))
                row.update({col: m, f"{col}_lo": lo, f"{col}_hi": hi})
            rows.append(row)
    return pd.DataFrame(rows)


def without_target(summary: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(task, method) -> the reason, for methods whose runs recorded "none: <reason>" as their own target."""
    if OWN_TARGET not in summary:
        return {}
    d = summary[(summary["status"] == "ok") & summary[OWN_TARGET].astype(str).str.startswith("none")]
    return {(str(t), str(m)): str(g[OWN_TARGET].iloc[0])[len("none: "):] for (t, m), g in d.groupby(["task", "method"])}


def paired_share(summary: pd.DataFrame, task: str, method: str) -> tuple[float, float, float, int]:
    """Estimation gap minus objective gap, averaged over a method's sweep cells per seed, then over seeds:
    (mean, lower, upper, n seeds) with a 95% seed-bootstrap interval (NaN with fewer than 2 seeds)."""
    ok = summary[(summary["status"] == "ok") & (summary["task"] == task) & (summary["method"] == method)]
    ok = ok[ok["objective_gap"].notna() & ok["estimation_gap"].notna()]
    per_seed = (ok["estimation_gap"] - ok["objective_gap"]).groupby(ok["seed"]).mean()
    m, lo, hi = seed_bootstrap(per_seed.to_numpy(float))
    return m, lo, hi, int(per_seed.size)


def plot_gaps(out: Path, table: pd.DataFrame, task: str) -> Path | None:
    """Stacked bars per (method, sweep cell): objective gap (solid) under estimation gap (hatched; drawn downward when
    negative, so the bar's end is the frontier gap); bars: 95% interval over seeds of each part."""
    t = table[table["task"] == task]
    if t.empty:
        return None
    theme()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(t) + 2.0), 4.2))
    x = np.arange(len(t))
    obj, est = t["objective_gap"].to_numpy(float), t["estimation_gap"].to_numpy(float)

    def err(col: str, m: np.ndarray) -> np.ndarray | None:
        lo, hi = t[f"{col}_lo"].to_numpy(float), t[f"{col}_hi"].to_numpy(float)
        return None if not np.isfinite(lo).any() else np.nan_to_num(np.stack([m - lo, hi - m]))

    ax.bar(x, obj, color="#4c72b0", label="objective gap (own target vs frontier)")
    ax.bar(x, est, bottom=obj, color="#dd8452", hatch="//", alpha=0.85, label="estimation gap (run vs own target)")
    ax.errorbar(x, obj, yerr=err("objective_gap", obj), fmt="none", ecolor="black", capsize=2, lw=0.8)
    ax.errorbar(x, obj + est, yerr=err("estimation_gap", est), fmt="none", ecolor="dimgray", capsize=2, lw=0.8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, [f"{m}\n{c}" for m, c in zip(t["method"], t["cell"])], fontsize=7, rotation=60, ha="right")
    ax.set_ylabel("gold reward below the frontier")
    ax.set_title(f"{task}: where the gap to the frontier comes from", pad=22)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    path = Path(out) / f"{FIGURE_PREFIX}{slug(task)}.png"
    save_figure(fig, path)
    return path
