"""The report a researcher reads: ``DIR/report.md`` and its figures, rebuilt from the files alone.

``alignbench report DIR`` reads ``summary.csv``, ``sweep.json``, ``frontier_<task>.csv`` and the run
folders; it never needs a model. Sections are small functions so that new ones slot in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import io  # noqa: E402
from .errors import AlignbenchError  # noqa: E402


def load_results(out: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    if not out.is_dir():
        raise AlignbenchError(f"report: results folder not found: {out}")
    path = out / "summary.csv"
    if not path.exists():
        raise AlignbenchError(f"report: {path} not found (run `alignbench sweep --out {out}` first)")
    try:
        summary = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise AlignbenchError(f"report: {path} is unreadable ({type(e).__name__})") from None
    meta = io.read_json(out / "sweep.json") if (out / "sweep.json").exists() else {}
    return summary, meta


def method_palette(methods: list[str]) -> dict[str, Any]:
    colors = sns.color_palette("tab10", n_colors=max(10, len(methods)))
    return {m: colors[i % len(colors)] for i, m in enumerate(sorted(methods))}


def _fmt_value(v: float) -> str:
    return f"{v:g}"


def plot_frontier(out: Path, summary: pd.DataFrame) -> Path | None:
    """Gold reward vs KL per task: one colour per method, points labelled by their sweep value,
    error bars where the metrics are sampled, the optimal frontier where the task has one."""
    ok = summary[summary["status"] == "ok"]
    if ok.empty or "kl" not in ok or "reward" not in ok:
        return None
    tasks = sorted(ok["task"].unique())
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.8), squeeze=False)
    palette = method_palette(list(summary["method"].unique()))
    for ax, task in zip(axes[0], tasks):
        df = ok[ok["task"] == task]
        fpath = out / f"frontier_{task}.csv"
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
            has_err = bool(np.isfinite(xerr.fillna(np.nan)).any() or np.isfinite(yerr.fillna(np.nan)).any())
            color = palette[method]
            ax.errorbar(g["kl"], g["reward"], xerr=xerr.fillna(0) if has_err else None,
                        yerr=yerr.fillna(0) if has_err else None, fmt="o-", color=color, ms=5, lw=1.0,
                        alpha=0.9, capsize=2, label=method, zorder=3)
            axis = g["sweep_param"].iloc[0]
            for _, r in g.iterrows():
                sym = "β" if axis == "beta" else axis
                ax.annotate(f"{sym}={_fmt_value(r['sweep_value'])}", (r["kl"], r["reward"]), fontsize=6.5,
                            color=color, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{task}: reward vs KL")
        ax.set_xlabel("KL(π ‖ π_ref)  [nats]")
        ax.set_ylabel("gold reward (mean)")
        ax.set_xlim(left=-0.02 * max(0.5, float(df["kl"].max())))
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "frontier.png"
    _save(fig, path)
    return path


def _save(fig: Any, path: Path) -> None:
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    io.write_bytes(path, buf.getvalue())


def _md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                cells.append("" if math.isnan(v) else format(v, floatfmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def section_setup(summary: pd.DataFrame, meta: dict[str, Any]) -> str:
    cfg = meta.get("config", {})
    env = meta.get("environment", {})
    lines = ["## What was run", ""]
    lines.append(f"- Tasks: {', '.join(sorted(summary['task'].unique()))}")
    for task, grids in meta.get("grids", {}).items():
        for m, vals in grids.items():
            lines.append(f"- `{task}` / {m}: {', '.join(_fmt_value(v) for v in vals)}")
    lines.append(f"- Seeds: {', '.join(str(s) for s in cfg.get('seeds', sorted(summary['seed'].unique())))}")
    steps = summary.groupby("method")["steps"].max().to_dict()
    lines.append("- Budget (steps or iterations per run): " + ", ".join(f"{m} {int(s)}" for m, s in sorted(steps.items())))
    for task, facts in meta.get("tasks", {}).items():
        desc = "; ".join(f"{k}: {v}" for k, v in facts.items())
        lines.append(f"- `{task}` estimation: {desc}")
    if env:
        vers = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
        lines.append(f"- Device: {env.get('device')} ({env.get('cpu_count')} CPUs, {env.get('platform')}); Python {env.get('python')}; {vers}")
    if "wall_s" in meta:
        lines.append(f"- Wall time of the last sweep invocation: {meta['wall_s']:.0f} s; sum of run times: {summary['wall_s'].sum():.0f} s")
    return "\n".join(lines) + "\n"


def section_runs(summary: pd.DataFrame) -> str:
    cols = [c for c in ("task", "method", "sweep_param", "sweep_value", "seed", "kl", "kl_se", "reward", "reward_se",
                        "win_rate_vs_ref", "frontier_gap", "kl_to_target", "steps", "wall_s") if c in summary]
    ok = summary[summary["status"] == "ok"].sort_values(["task", "method", "sweep_value", "seed"])
    return "## All runs\n\n" + _md_table(ok[cols]) + "\n"


def section_failed(summary: pd.DataFrame) -> str:
    failed = summary[summary["status"] != "ok"]
    body = _md_table(failed[["run_id", "reason"]]) if not failed.empty else "No run failed.\n"
    return "## Failed runs\n\n" + body


def write_report(out: str | Path) -> Path:
    """(Re)build ``out/report.md`` and its figures from the files in ``out``."""
    out = Path(out)
    summary, meta = load_results(out)
    parts = ["# alignbench report", ""]
    parts.append(section_setup(summary, meta))
    fig = plot_frontier(out, summary)
    parts.append("## Reward vs KL frontier\n")
    if fig is not None:
        parts.append(f"![frontier]({fig.name})\n")
        parts.append("Gold reward against KL(π‖π_ref) in nats, one colour per method, each point labelled by the "
                     "value of its sweep axis (β, or N for best-of-N). The black line is the exact optimal "
                     "frontier π*_β = π_ref exp(r/β)/Z where the task has one: no policy can lie above it.\n")
    parts.append(section_runs(summary))
    parts.append(section_failed(summary))
    path = out / "report.md"
    io.write_text(path, "\n".join(parts))
    return path
