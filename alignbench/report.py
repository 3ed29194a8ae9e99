"""The report a researcher reads: ``DIR/report.md`` and its figures, rebuilt from the files alone.

``alignbench report DIR`` reads ``summary.csv``, ``sweep.json``, ``frontier_<task>.csv``, the run
folders (``config.json``, ``metrics.jsonl``, ``eval_final.json``) and, where a task saved them,
``task_<task>.npz``; it never needs a model. Sections, in order:

1. what was run (tasks, methods, grids, seeds, budgets, versions, device, wall time);
2. the reward-vs-KL frontier (``frontier.png``);
3. win-rate tables (``winrates.csv``; vs the reference, head to head at best sweep value and at
   matched KL budgets, vs the data's chosen responses);
4. diagnostics over training: one small-multiples figure per (task, method) (``diag_<task>_<method>.png``),
   a per-run table (peak step, overoptimization, overfitting, log-ratios, KL growth), the Gao et al.
   fit per method, one PPO proxy-vs-gold figure per task (``ppo_<task>.png``), and KL / unseen-mass
   growth (``klgrowth_<task>.png``; the deterministic-preference stress preset is called out);
5. findings written from the numbers;
6. failed runs with their reason; then all runs as an appendix.

Sections are small functions of (out, summary, ...) returning Markdown, so that new ones slot in.
Everything optional (a metric, a column, a file) may be missing: the section says so and goes on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import diagnostics as D  # noqa: E402
from . import io  # noqa: E402
from . import winrates as W  # noqa: E402
from .errors import AlignbenchError  # noqa: E402

DPI = 100
FIG_PREFIXES = ("diag_", "ppo_", "klgrowth_")


def load_results(out: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    out = Path(out)
    if not out.is_dir():
        raise AlignbenchError(f"report: results folder not found: {out}")
    path = out / "summary.csv"
    if not path.exists():
        raise AlignbenchError(f"report: {path} not found (run `alignbench sweep --out {out}` first)")
    try:
        summary = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise AlignbenchError(f"report: {path} is unreadable ({type(e).__name__})") from None
    for col, default in (("status", "ok"), ("reason", ""), ("sweep_param", "beta"), ("seed", 0)):
        if col not in summary:
            summary[col] = default
    if "sweep_value" not in summary and "beta" in summary:
        summary["sweep_value"] = summary["beta"]
    summary["reason"] = summary["reason"].fillna("")
    try:
        meta = io.read_json(out / "sweep.json") if (out / "sweep.json").exists() else {}
    except ValueError:
        meta = {}
    return summary, meta


@dataclass
class RunData:
    """What the report knows about one run: its summary row, evaluation rows and resolved config."""

    run_id: str
    task: str
    method: str
    param: str
    value: float
    seed: Any
    status: str
    metrics: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.method} {W.sym(self.param)}={self.value:g}" + (f" s{self.seed}" if str(self.seed) not in ("0", "0.0") else "")


def load_runs(out: Path, summary: pd.DataFrame) -> dict[str, RunData]:
    """Every run of the summary with its ``metrics.jsonl`` (empty where missing) and ``config.json``."""
    runs: dict[str, RunData] = {}
    for _, r in summary.iterrows():
        rid = str(r["run_id"])
        folder = Path(out) / "runs" / rid
        cfg = W.read_json_or_none(folder / "config.json") or {}
        runs[rid] = RunData(rid, str(r["task"]), str(r["method"]), str(r.get("sweep_param", "beta")),
                            float(r.get("sweep_value", float("nan"))), r.get("seed", 0), str(r.get("status", "ok")),
                            D.load_metrics(folder), cfg)
    return runs


FROM_METRICS = {"win_rate_vs_chosen": "winrate/vs_chosen", "win_rate_vs_chosen_se": "winrate/vs_chosen_se"}


def augment_summary(summary: pd.DataFrame, runs: dict[str, RunData]) -> pd.DataFrame:
    """Summary columns that ``summary.csv`` lacks, taken from each run's final evaluation row."""
    summary = summary.copy()
    for col, key in FROM_METRICS.items():
        if col in summary and summary[col].notna().any():
            continue
        vals = []
        for rid in summary["run_id"].astype(str):
            m = runs[rid].metrics if rid in runs else None
            vals.append(float(m[key].dropna().iloc[-1]) if m is not None and key in m and m[key].notna().any()
                        else float("nan"))
        if any(np.isfinite(vals)):
            summary[col] = vals
    return summary


def method_palette(methods: list[str]) -> dict[str, Any]:
    colors = sns.color_palette("tab10", n_colors=max(10, len(methods)))
    return {m: colors[i % len(colors)] for i, m in enumerate(sorted(methods))}


def value_palette(values: list[float]) -> dict[float, Any]:
    vals = sorted(set(values))
    colors = sns.color_palette("viridis", n_colors=max(len(vals), 1))
    return {v: colors[i] for i, v in enumerate(vals)}


def _fmt_value(v: float) -> str:
    return f"{v:g}"


def _num(x: Any, fmt: str = ".3g") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if not math.isfinite(v) else format(v, fmt)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def _ok(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["status"] == "ok"]


# ------------------------------------------------------------------------------------------ frontier


def plot_frontier(out: Path, summary: pd.DataFrame) -> Path | None:
    """Gold reward vs KL per task: one colour per method, points labelled by their sweep value,
    error bars where the metrics are sampled, the optimal frontier where the task has one."""
    out = Path(out)
    ok = _ok(summary)
    if ok.empty or "kl" not in ok or "reward" not in ok or ok["kl"].notna().sum() == 0:
        return None
    ok = ok[ok["kl"].notna() & ok["reward"].notna()]
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
            has_err = bool(np.isfinite(xerr.astype(float)).any() or np.isfinite(yerr.astype(float)).any())
            color = palette[method]
            ax.errorbar(g["kl"], g["reward"], xerr=xerr.fillna(0) if has_err else None,
                        yerr=yerr.fillna(0) if has_err else None, fmt="o-", color=color, ms=5, lw=1.0,
                        alpha=0.9, capsize=2, label=method, zorder=3)
            axis = g["sweep_param"].iloc[0]
            for _, r in g.iterrows():
                ax.annotate(f"{W.sym(axis)}={_fmt_value(r['sweep_value'])}", (r["kl"], r["reward"]), fontsize=6.5,
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
    """PNG at ``DPI``, reduced to a 256-colour palette (about a third of the size, same look for line plots)."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    data = buf.getvalue()
    try:
        from PIL import Image

        small = _io.BytesIO()
        Image.open(_io.BytesIO(data)).convert("RGB").quantize(256).save(small, format="png", optimize=True)
        if small.tell() < len(data):
            data = small.getvalue()
    except Exception:  # noqa: BLE001 - the unreduced PNG is fine
        pass
    io.write_bytes(path, data)


def _md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, (float, np.floating)):
                cells.append("" if math.isnan(v) else format(float(v), floatfmt))
            elif isinstance(v, (bool, np.bool_)):
                cells.append("yes" if v else "no")
            else:
                cells.append("" if v is None else str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ 1. setup


def section_setup(summary: pd.DataFrame, meta: dict[str, Any], runs: dict[str, RunData] | None = None) -> str:
    cfg = meta.get("config", {})
    env = meta.get("environment", {})
    lines = ["## What was run", ""]
    lines.append(f"- Tasks: {', '.join(sorted(summary['task'].astype(str).unique()))}")
    lines.append(f"- Methods: {', '.join(sorted(summary['method'].astype(str).unique()))}")
    grids = meta.get("grids", {})
    if grids:
        for task, g in grids.items():
            for m, vals in g.items():
                lines.append(f"- `{task}` / {m}: {', '.join(_fmt_value(v) for v in vals)}")
    else:
        for (task, m, p), g in summary.groupby(["task", "method", "sweep_param"]):
            lines.append(f"- `{task}` / {m} ({p}): {', '.join(_fmt_value(v) for v in sorted(g['sweep_value'].dropna().unique()))}")
    lines.append(f"- Seeds: {', '.join(str(s) for s in cfg.get('seeds', sorted(summary['seed'].unique())))}")
    if "steps" in summary:
        steps = summary.groupby("method")["steps"].max().to_dict()
        lines.append("- Budget (steps or iterations per run): "
                     + ", ".join(f"{m} {int(s)}" for m, s in sorted(steps.items()) if pd.notna(s)))
    evals = set()
    for r in (runs or {}).values():
        t = r.config.get("train", {})
        if "eval_every" in t:
            evals.add(int(t["eval_every"]))
    if evals:
        lines.append(f"- Evaluation every {', '.join(str(e) for e in sorted(evals))} steps (step 0 is the reference)")
    for key in ("task_args", "method_args", "train_args"):
        if cfg.get(key):
            lines.append(f"- {key}: `{io.dumps(cfg[key], sort_keys=True)}`")
    lines.append(f"- KL budgets of the matched-KL comparisons: {', '.join(f'{b:g}' for b in W.DEFAULT_BUDGETS)} nats")
    for task, facts in meta.get("tasks", {}).items():
        desc = "; ".join(f"{k}: {v}" for k, v in facts.items())
        lines.append(f"- `{task}` estimation: {desc}")
    if env:
        vers = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
        lines.append(f"- Device: {env.get('device')} ({env.get('cpu_count')} CPUs, {env.get('platform')}); Python {env.get('python')}; {vers}")
    if "wall_s" in meta:
        lines.append(f"- Wall time of the last sweep invocation: {meta['wall_s']:.0f} s; "
                     f"sum of run times: {summary['wall_s'].sum():.0f} s" if "wall_s" in summary else "")
    return "\n".join(line for line in lines if line) + "\n"


def section_frontier(out: Path, summary: pd.DataFrame) -> str:
    fig = plot_frontier(out, summary)
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


# ------------------------------------------------------------------------------------------ 3. win rates


def section_winrates(out: Path, summary: pd.DataFrame, wr: pd.DataFrame) -> str:
    parts = ["## Win rates", "",
             "Judged by the gold reward on the same prompts. Exact tasks: Bradley-Terry win probability "
             "Σ a(y) b(y') σ(r(y) − r(y')), computed exactly; sampled tasks: share of sample pairs with the higher "
             "gold reward (ties ½). Intervals: 95% percentile bootstrap over prompts (2000 draws); on exact tasks the "
             "point value is exact and the interval shows the spread over the task's prompts. All values are in "
             "`winrates.csv`.", ""]
    ref = wr[wr["table"] == "vs_ref"]
    parts.append("### Against the reference policy\n")
    if ref.empty:
        parts.append("No run reported a win rate against the reference.\n")
    else:
        t = ref.sort_values(["task", "method_a", "value_a"])
        df = pd.DataFrame({
            "task": t["task"], "method": t["method_a"],
            "value": [f"{W.sym(p)}={v:g}" for p, v in zip(t["param_a"], t["value_a"])],
            "KL [nats]": t["kl_a"], "gold reward": t["reward_a"],
            "win rate vs ref [95% CI]": [W.fmt_ci(w, lo, hi) for w, lo, hi in zip(t["win_rate"], t["ci_low"], t["ci_high"])],
            "judge": t["judge"]})
        parts.append(_md_table(df))
    tasks = sorted(_ok(summary)["task"].unique())
    parts.append("### Head to head, each method at its best sweep value\n")
    parts.append("Row A against column B: the probability that A's response beats B's. Each method at the sweep "
                 "value with its highest mean gold reward (shown with its KL in nats).\n")
    parts.append(_h2h_tables(wr[wr["table"] == "best"], tasks))
    parts.append("### Head to head at matched KL budgets\n")
    parts.append(f"Each method at the sweep value whose mean KL is closest (in log scale) to the budget, and only if "
                 f"that KL lies within a factor {W.MAX_KL_RATIO:g} of it; the actual KL in nats is shown next to each "
                 "method (≤ marks an analytic upper bound, as for best-of-N): compare it with the budget before "
                 "reading the win rate.\n")
    us = W.units(summary)
    for b in W.DEFAULT_BUDGETS:
        bt = f"kl{b:g}"
        picks = W.select_matched_kl(us, b)
        lines = []
        for task in tasks:
            have = sorted(m for t, m in picks if t == task)
            missing = sorted({u.method for u in us if u.task == task} - set(have))
            if len(have) < 2:
                lines.append(f"`{task}`: fewer than two methods have a run within a factor {W.MAX_KL_RATIO:g} of "
                             f"{b:g} nats" + (f" (only {', '.join(have)})" if have else "") + ".\n")
                continue
            d = wr[(wr["table"] == bt) & (wr["task"] == task)]
            if d.empty:
                lines.append(f"`{task}`: no per-prompt results for these runs.\n")
                continue
            lines.append(f"`{task}` (judge: {d['judge'].iloc[0]})"
                         + (f"; no run within a factor {W.MAX_KL_RATIO:g}: {', '.join(missing)}" if missing else "") + "\n")
            lines.append(W.matrix_markdown(d))
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
            "value": [f"{W.sym(p)}={v:g}" for p, v in zip(t["param_a"], t["value_a"])], "KL [nats]": t["kl_a"],
            "win rate vs chosen [95% CI]": [W.fmt_ci(w, lo, hi) for w, lo, hi in zip(t["win_rate"], t["ci_low"], t["ci_high"])],
            "judge": t["judge"]})
        parts.append(_md_table(df))
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
        out.append(W.matrix_markdown(d))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ 4. diagnostics


PANELS: list[tuple[str, list[tuple[str, str, str]], str]] = [
    ("preference loss", [("eval/loss", "held-out", "-"), ("train/loss", "train subset", "--")], "loss"),
    ("implicit-reward accuracy", [("eval/implicit_acc", "held-out", "-"), ("train/implicit_acc", "train subset", "--")],
     "accuracy"),
    ("log π/π_ref on held-out pairs", [("logratio/chosen", "chosen", "-"), ("logratio/rejected", "rejected", "--"),
                                       ("logratio/margin", "margin", ":")], "log-ratio [nats]"),
    ("PPO proxy and gold reward (rollouts)", [("ppo/rm_reward", "RM (proxy)", "-"), ("ppo/gold_reward", "gold", "--")],
     "reward"),
    ("PPO updates", [("ppo/approx_kl", "approx KL", "-"), ("ppo/clipfrac", "clip fraction", "--"),
                     ("ppo/explained_variance", "explained variance", ":")], "value"),
    ("PATH", [], ""),
    ("policy entropy", [("policy/entropy", "", "-")], "entropy [nats]"),
    ("completion length", [("policy/length", "", "-")], "length [tokens]"),
]


def _has(runs: list[RunData], key: str) -> bool:
    return any(key in r.metrics and r.metrics[key].notna().any() for r in runs)


def _multi_step(runs: list[RunData]) -> bool:
    return any(len(r.metrics) > 1 for r in runs)


def method_gao_fit(runs: list[RunData]) -> D.GaoFit | None:
    """Gao et al.'s RL form fitted to every evaluation point (gold reward, KL) of a method's runs on a
    task (steps of training and sweep values together); the best-of-N form for single-step methods."""
    kl, rew, r0 = [], [], []
    multi = _multi_step(runs)
    for r in runs:
        m = r.metrics
        if D.GOLD not in m or D.KL not in m:
            continue
        d = m[[D.KL, D.GOLD, "step"]].dropna()
        if multi:
            r0 += list(d.loc[d["step"] == 0, D.GOLD])
            d = d[d["step"] > 0]
        kl += list(d[D.KL])
        rew += list(d[D.GOLD])
    ref = float(np.mean(r0)) if r0 else None
    try:
        return D.fit_gao_rl(kl, rew, ref) if multi else D.fit_gao_bon(kl, rew, ref)
    except ValueError:
        return None


def plot_method_diagnostics(out: Path, task: str, method: str, runs: list[RunData],
                            fit: D.GaoFit | None) -> Path | None:
    """Small multiples over training steps for the runs of one (task, method), coloured by sweep value."""
    runs = [r for r in runs if not r.metrics.empty]
    if not runs or not _multi_step(runs):
        return None
    panels = [p for p in PANELS if p[0] == "PATH" and _has(runs, D.KL) and _has(runs, D.GOLD)
              or any(_has(runs, k) for k, _, _ in p[1])]
    if not panels:
        return None
    ncol = 3
    nrow = math.ceil(len(panels) / ncol)
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.8)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.1 * nrow), squeeze=False)
    pal = value_palette([r.value for r in runs])
    sym = W.sym(runs[0].param)
    frontier = out / f"frontier_{task}.csv"
    for ax, (title, series, ylabel) in zip(axes.flat, panels):
        if title == "PATH":
            kmax = 0.0
            for r in runs:
                m = r.metrics.dropna(subset=[D.KL, D.GOLD]) if D.KL in r.metrics and D.GOLD in r.metrics else None
                if m is None or m.empty:
                    continue
                kmax = max(kmax, float(m[D.KL].max()))
                ax.plot(m[D.KL], m[D.GOLD], "-o", ms=2.5, lw=1.1, color=pal[r.value], alpha=0.85)
                pk = D.peak_step(m)
                if pk:
                    ax.plot([pk["kl"]], [pk["reward"]], marker="*", ms=11, color=pal[r.value], mec="black", mew=0.6,
                            zorder=5)
            if frontier.exists():
                fr = pd.read_csv(frontier)
                fr = fr[fr["kl"] <= max(kmax * 1.15, 0.5)]
                ax.plot(fr["kl"], fr["reward"], color="black", lw=1.2, label="optimal frontier")
            if fit is not None and kmax > 0:
                xs = np.linspace(0, kmax * 1.1, 100)
                ax.plot(xs, fit.predict(xs), color="0.45", ls="--", lw=1.0, label="Gao et al. RL fit")
            for v, c in pal.items():
                ax.plot([], [], color=c, lw=2, label=f"{sym}={v:g}")
            ax.plot([], [], ls="none", marker="*", color="0.3", label="gold-reward peak")
            ax.legend(fontsize=6, loc="best")
            ax.set_title("gold reward vs KL over training")
            ax.set_xlabel("KL(π ‖ π_ref) [nats]")
            ax.set_ylabel("gold reward")
            continue
        styles_used = []
        for key, name, ls in series:
            if not _has(runs, key):
                continue
            styles_used.append((name, ls))
            for r in runs:
                if key not in r.metrics:
                    continue
                m = r.metrics[["step", key]].dropna()
                ax.plot(m["step"], m[key], ls=ls, lw=1.1, color=pal[r.value], alpha=0.85)
        if title.startswith("log π"):
            ax.axhline(0.0, color="black", lw=0.7)
        if len(styles_used) > 1:
            for name, ls in styles_used:
                ax.plot([], [], ls=ls, color="0.3", label=name)
            ax.legend(fontsize=6, loc="best")
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{task} / {method}: diagnostics over training (colour: {sym})", fontsize=10)
    fig.tight_layout()
    path = out / f"diag_{_slug(task)}_{_slug(method)}.png"
    _save(fig, path)
    return path


def plot_ppo(out: Path, task: str, runs: list[RunData], fits: dict[str, D.GaoFit | None]) -> Path | None:
    """Proxy (reward-model) reward vs gold reward over PPO training, and gold reward against
    d = sqrt(KL) with Gao et al.'s RL fit, for the runs that logged ``ppo/rm_reward``."""
    runs = [r for r in runs if _has([r], "ppo/rm_reward")]
    if not runs:
        return None
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.8)
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.4))
    pal = value_palette([r.value for r in runs])
    for r in runs:
        m, c = r.metrics, pal[r.value]
        p = m[["step", "ppo/rm_reward"]].dropna()
        axes[0].plot(p["step"], p["ppo/rm_reward"], "-", lw=1.1, color=c, label=f"{r.method} {r.label.split(' ', 1)[1]}")
        if D.GOLD in m:
            g = m[["step", D.GOLD]].dropna()
            axes[1].plot(g["step"], g[D.GOLD], "-o", ms=2.5, lw=1.1, color=c)
            pk = D.peak_step(m)
            if pk:
                axes[1].plot([pk["step"]], [pk["reward"]], marker="*", ms=11, color=c, mec="black", mew=0.6)
        if D.GOLD in m and D.KL in m:
            g = m[[D.KL, D.GOLD]].dropna()
            axes[2].plot(np.sqrt(np.maximum(g[D.KL], 0)), g[D.GOLD], "o", ms=3, color=c)
    dmax = max((float(np.sqrt(max(r.metrics[D.KL].max(), 0))) for r in runs if D.KL in r.metrics), default=0.0)
    for method, fit in fits.items():
        if fit is not None and fit.form == "rl" and dmax > 0:
            ds = np.linspace(0, dmax * 1.1, 100)
            axes[2].plot(ds, fit.predict(ds ** 2), "--", color="0.4", lw=1.0,
                         label=f"{method}: R0 + d(α − b log d), α={fit.alpha:.2f}, b={fit.b:.2f}")
    axes[0].set(title="proxy (reward model) reward of rollouts", xlabel="PPO iteration", ylabel="RM reward")
    axes[1].set(title="gold reward (evaluation); ★ = peak", xlabel="PPO iteration", ylabel="gold reward")
    axes[2].set(title="gold reward vs d = √KL", xlabel="d = √KL(π ‖ π_ref)  [√nats]", ylabel="gold reward")
    axes[0].legend(fontsize=6)
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=6)
    fig.suptitle(f"{task}: PPO proxy vs gold reward", fontsize=10)
    fig.tight_layout()
    path = out / f"ppo_{_slug(task)}.png"
    _save(fig, path)
    return path


def plot_kl_growth(out: Path, task: str, by_method: dict[str, list[RunData]]) -> Path | None:
    """KL to the reference and the policy mass on responses never seen in the data, over training,
    one column per method (lines coloured by sweep value)."""
    methods = [m for m, rs in sorted(by_method.items()) if _multi_step(rs) and _has(rs, D.KL)]
    if not methods:
        return None
    rows = [(D.KL, "KL(π ‖ π_ref) [nats]")]
    if any(_has(by_method[m], "exact/unseen_mass") for m in methods):
        rows.append(("exact/unseen_mass", "mass on unseen responses"))
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.8)
    fig, axes = plt.subplots(len(rows), len(methods), figsize=(3.4 * len(methods) + 0.4, 2.8 * len(rows)),
                             squeeze=False)
    for j, method in enumerate(methods):
        rs = by_method[method]
        pal = value_palette([r.value for r in rs])
        for i, (key, ylabel) in enumerate(rows):
            ax = axes[i, j]
            for r in rs:
                if key in r.metrics:
                    m = r.metrics[["step", key]].dropna()
                    ax.plot(m["step"], m[key], "-", lw=1.2, color=pal[r.value], label=f"{W.sym(r.param)}={r.value:g}")
            ax.set_title(method if i == 0 else "")
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel if j == 0 else "")
            if i == 0:
                ax.legend(fontsize=6)
    fig.suptitle(f"{task}: KL and unseen-response mass over training", fontsize=10)
    fig.tight_layout()
    path = out / f"klgrowth_{_slug(task)}.png"
    _save(fig, path)
    return path


@dataclass
class Diagnosis:
    """Everything the diagnostics section computed, for the findings section."""

    per_run: pd.DataFrame
    fits: dict[tuple[str, str], D.GaoFit]
    stress_tasks: set[str]
    figures: list[Path]


def diagnose(out: Path, summary: pd.DataFrame, runs: dict[str, RunData], *, figures: bool = True) -> Diagnosis:
    ok_ids = set(_ok(summary)["run_id"].astype(str))
    rows = []
    by_tm: dict[tuple[str, str], list[RunData]] = {}
    stress: set[str] = set()
    for rid, r in runs.items():
        if rid not in ok_ids:
            continue
        by_tm.setdefault((r.task, r.method), []).append(r)
        if r.config.get("task_config", {}).get("labels") == "deterministic":
            stress.add(r.task)
        d = D.run_diagnostics(r.metrics) if not r.metrics.empty else {}
        rows.append({"run_id": rid, "task": r.task, "method": r.method, "param": r.param, "value": r.value,
                     "seed": r.seed, **d})
    per_run = pd.DataFrame(rows)
    fits: dict[tuple[str, str], D.GaoFit] = {}
    figs: list[Path] = []
    for key, rs in sorted(by_tm.items()):
        rs.sort(key=lambda r: (r.value, str(r.seed)))
        fit = method_gao_fit(rs)
        if fit is not None:
            fits[key] = fit
        if figures:
            p = plot_method_diagnostics(out, key[0], key[1], rs, fit if fit is not None and fit.form == "rl" else None)
            if p:
                figs.append(p)
    if figures:
        for task in sorted({t for t, _ in by_tm}):
            ms = {m: rs for (t, m), rs in by_tm.items() if t == task}
            p = plot_ppo(out, task, [r for rs in ms.values() for r in rs],
                         {m: fits.get((task, m)) for m in ms if _has(ms[m], "ppo/rm_reward")})
            if p:
                figs.append(p)
            p = plot_kl_growth(out, task, ms)
            if p:
                figs.append(p)
    return Diagnosis(per_run, fits, stress, figs)


def section_diagnostics(out: Path, summary: pd.DataFrame, diag: Diagnosis) -> str:
    parts = ["## Diagnostics over training", ""]
    figs = {p.name: p for p in diag.figures}
    diag_figs = [n for n in figs if n.startswith("diag_")]
    if not diag_figs:
        parts.append("No run logged more than one evaluation step, so there is nothing to draw over training.\n")
    else:
        parts.append("One figure per task and method; lines are coloured by the sweep value (all seeds drawn). "
                     "Preference loss and implicit-reward accuracy on held-out pairs (solid) and on a fixed training "
                     "subset of the same size (dashed): a widening gap is the overfitting signal. Log-ratios "
                     "log π/π_ref of the held-out chosen (solid) and rejected (dashed) responses and their margin "
                     "(dotted): a chosen log-ratio below 0 means the chosen likelihood fell below the reference's. "
                     "Gold reward against KL at every evaluation, a path per run starting at the reference (KL 0), "
                     "with its peak (★), the task's optimal frontier (black) and the method's Gao et al. fit (grey).\n")
        for name in sorted(diag_figs):
            parts.append(f"![{name}]({name})\n")
    ppo = sorted(n for n in figs if n.startswith("ppo_"))
    if ppo:
        parts.append("### PPO: proxy vs gold reward\n")
        parts.append("Reward-model (proxy) reward of the rollouts and gold reward at evaluations over PPO iterations, "
                     "and gold reward against d = √KL with the fitted R(d) = R0 + d(α − b log d).\n")
        for name in ppo:
            parts.append(f"![{name}]({name})\n")
    parts.append(section_per_run_table(diag.per_run))
    parts.append(section_gao(diag))
    parts.append(section_kl_growth(diag, figs))
    return "\n".join(parts)


def section_per_run_table(per_run: pd.DataFrame) -> str:
    parts = ["### Per-run diagnostics\n"]
    if per_run.empty or "n_evals" not in per_run or (per_run["n_evals"] <= 1).all():
        parts.append("_none_ (no run with more than one evaluation)\n")
        return "\n".join(parts)
    pr = per_run[per_run["n_evals"] > 1].sort_values(["task", "method", "value", "seed"])
    table = pd.DataFrame({"task": pr["task"], "method": pr["method"],
                          "value": [f"{W.sym(p)}={v:g}" for p, v in zip(pr["param"], pr["value"])],
                          "seed": pr["seed"]})

    def col(name: str, src: str, conv=None) -> None:
        if src in pr:
            table[name] = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else (conv(v) if conv else v)
                           for v in pr[src]]

    yn = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else ("**yes**" if bool(v) else "no")  # noqa: E731
    col("peak step", "peak_step", lambda v: _num(v, ".0f"))
    col("peak gold", "peak_reward", lambda v: _num(v, ".3f"))
    col("drop after peak", "gold_drop", lambda v: _num(v, ".3f"))
    col("overoptimized", "overoptimized", yn)
    col("held-out loss rise", "eval_loss_rise", lambda v: _num(v, ".3f"))
    col("acc gap train−held-out", "acc_gap", lambda v: _num(v, ".3f"))
    col("overfit", "overfit", yn)
    col("log-ratio chosen", "final_logratio_chosen", lambda v: _num(v, ".2f"))
    col("log-ratio rejected", "final_logratio_rejected", lambda v: _num(v, ".2f"))
    col("KL growth, last third", "kl_rel_growth_last_third", lambda v: "" if not np.isfinite(v) else f"{100 * v:+.0f}%")
    parts.append("Peak step: the evaluation step of highest gold reward. Overoptimized: gold reward fell after its peak "
                 "by more than 2 standard errors (and 5% of its gain) while the proxy (reward-model reward for PPO, "
                 "held-out implicit reward margin for offline methods) kept rising. Overfit: held-out preference loss "
                 "rose above its minimum (by 5% of its improvement) while the training-subset loss kept falling. "
                 "Log-ratios: final mean log π/π_ref [nats] on held-out pairs.\n")
    parts.append(_md_table(table.fillna("")))
    return "\n".join(parts)


def section_gao(diag: Diagnosis) -> str:
    parts = ["### Gao et al. fit of gold reward against d = √KL\n"]
    if not diag.fits:
        parts.append("_none_ (a fit needs at least two evaluations with KL > 0 per method)\n")
        return "\n".join(parts)
    parts.append("Least squares of R − R0 = d(α − b log d) (Gao et al. 2022, RL form) over every evaluation point of "
                 "a method's runs (all steps, all sweep values; R0 the reference's reward at d = 0); best-of-N (one "
                 "point per N) uses their best-of-N form d(α − b d). The predicted peak is where dR/dd = 0: "
                 "d* = exp(α/b − 1) (RL) or α/(2b) (BoN), KL* = d*². A peak beyond the largest observed KL is an "
                 "extrapolation.\n")
    rows = []
    for (task, method), f in sorted(diag.fits.items()):
        rows.append({"task": task, "method": method, "form": f.form, "points": f.n, "α": f.alpha, "b": f.b,
                     "R0": f.r0, "KL* [nats]": f.kl_star if f.has_peak else float("inf"),
                     "R*": f.r_star if f.has_peak else float("nan"), "max observed KL": f.kl_max, "R²": f.r2,
                     "peak within data": "yes" if f.peak_observed else ("no peak (b ≤ 0)" if not f.has_peak else "no")})
    df = pd.DataFrame(rows)
    for c in df.columns:
        if df[c].dtype.kind == "f":
            df[c] = df[c].round(6)
    parts.append(_md_table(df, ".3g"))
    return "\n".join(parts)


def section_kl_growth(diag: Diagnosis, figs: dict[str, Path]) -> str:
    pr = diag.per_run
    title = "### KL growth over training"
    parts = [title, ""]
    if diag.stress_tasks:
        parts.append(f"Runs on {', '.join(f'`{t}`' for t in sorted(diag.stress_tasks))} use deterministic preference "
                     "labels (the larger gold reward always wins; the stress preset). With deterministic labels DPO's "
                     "loss has no finite minimiser (it keeps pushing the margin), while IPO's squared loss has one "
                     "(IPO paper, arXiv 2310.12036).\n")
    for name in sorted(n for n in figs if n.startswith("klgrowth_")):
        parts.append(f"![{name}]({name})\n")
    if pr.empty or "kl_bounded" not in pr or pr["kl_bounded"].isna().all():
        parts.append("_none_ (KL needs at least three evaluations per run)\n")
        return "\n".join(parts)
    parts.append("A run counts as *unbounded* when a least-squares line through its KL values over the last third of "
                 "training rises by more than 5% of the KL at the start of that window (and by more than 0.01 nats).\n")
    parts.append(kl_bounded_statement(pr) + "\n")
    return "\n".join(parts)


def kl_bounded_statement(pr: pd.DataFrame) -> str:
    lines = []
    d = pr.dropna(subset=["kl_bounded"]) if "kl_bounded" in pr else pr.iloc[0:0]
    for task, g in d.groupby("task"):
        ok = g.groupby("method")["kl_bounded"].apply(lambda s: bool(s.astype(bool).all()))
        yes, no = sorted(ok[ok].index), sorted(ok[~ok].index)
        lines.append(f"- **`{task}`: KL bounded in every run: {', '.join(yes) or 'none'}; not bounded in at least one "
                     f"run: {', '.join(no) or 'none'}.**")
    for (task, method), g in d.groupby(["task", "method"]):
        n, nb = len(g), int(g["kl_bounded"].astype(bool).sum())
        worst = g.loc[g["kl_rel_growth_last_third"].idxmax()]
        at = f"{W.sym(worst['param'])}={worst['value']:g}"
        growth = f"{100 * worst['kl_rel_growth_last_third']:+.0f}%"
        if nb == n:
            runs_txt = "its only run" if n == 1 else f"all {n} runs"
            lines.append(f"- `{task}` / {method}: KL bounded in {runs_txt} (largest change over the last third "
                         f"{growth}, at {at}).")
        else:
            runs_txt = "its only run" if n == 1 else f"{n - nb} of {n} runs"
            lines.append(f"- `{task}` / {method}: KL **not bounded** in {runs_txt} (still growing over the last "
                         f"third, by up to {growth}, at {at}).")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ 5. findings


def method_fronts(summary: pd.DataFrame, task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ok = _ok(summary)
    ok = ok[(ok["task"] == task)]
    if "kl" not in ok or "reward" not in ok:
        return {}
    fronts = {}
    for method, g in ok.groupby("method"):
        g = g.groupby("sweep_value")[["kl", "reward"]].mean().dropna()
        if len(g):
            fronts[str(method)] = D.pareto_front(g["kl"], g["reward"])
    return fronts


def findings_frontier(summary: pd.DataFrame) -> list[str]:
    out = []
    ok = _ok(summary)
    for task in sorted(ok["task"].unique()):
        fronts = method_fronts(summary, task)
        if not fronts:
            continue
        t = ok[ok["task"] == task]
        tie = 0.0
        if "reward_se" in t and t["reward_se"].notna().any():
            tie = 2.0 * float(t["reward_se"].median())
        seg = D.frontier_leaders(fronts, tie_tol=tie)
        if not seg.empty:  # segments narrower than 2% of the compared KL range are interpolation noise
            span = float(seg["kl_hi"].max() - seg["kl_lo"].min())
            seg = seg[(seg["kl_hi"] - seg["kl_lo"]) >= 0.02 * span] if span > 0 else seg.iloc[0:0]
        best = []
        for method, g in t.groupby("method"):
            if "reward" not in g or g["reward"].isna().all():
                continue
            gg = g.groupby("sweep_value")[["kl", "reward"]].mean()
            v = gg["reward"].idxmax()
            best.append((float(gg.loc[v, "reward"]), method, v, float(gg.loc[v, "kl"]), str(g["sweep_param"].iloc[0])))
        best.sort(reverse=True)
        if best:
            out.append(f"- **{task}**: highest gold reward per method: " + "; ".join(
                f"{m} {r:.3f} at {W.sym(p)}={v:g} (KL {k:.2f} nats)" for r, m, v, k, p in best) + ".")
        if not seg.empty:
            tol = f" (leads smaller than {tie:.3f}, 2 median SEs, are called ties)" if tie > 0 else ""
            pieces = []
            for _, s in seg.iterrows():
                if s["leader"] == "tie":
                    pieces.append(f"no method ahead by more than {tie:.3f} for KL {s['kl_lo']:.3g}–{s['kl_hi']:.3g} nats")
                else:
                    pieces.append(f"{s['leader']} for KL {s['kl_lo']:.3g}–{s['kl_hi']:.3g} nats (ahead of {s['runner_up']} "
                                  f"by up to {s['max_lead']:.3f})")
            out.append(f"- **{task}**: the highest frontier (Pareto points of each method, linearly interpolated, "
                       f"compared where at least two methods reach){tol}: " + "; ".join(pieces) + ".")
        else:
            out.append(f"- **{task}**: no frontier comparison: it needs at least two methods with two or more Pareto "
                       "points at distinct KL whose KL ranges overlap (over more than a sliver).")
        if "frontier_gap" in t and t["frontier_gap"].notna().any():
            gaps = t.groupby("method")["frontier_gap"].agg(["median", "min"]).sort_values("median")
            out.append(f"- **{task}**: distance below the optimal frontier (gold reward at the same KL), median (min) "
                       "over runs: " + "; ".join(f"{m} {r['median']:.3f} ({r['min']:.3f})" for m, r in gaps.iterrows()) + ".")
    return out


def findings_winrates(wr: pd.DataFrame) -> list[str]:
    out = []
    best = wr[(wr["table"] == "best")]
    if best.empty:
        return out
    sig = best[(best["ci_low"] > 0.5 + 1e-6)].sort_values(["task", "win_rate"], ascending=[True, False])
    for task in sorted(best["task"].unique()):
        s = sig[sig["task"] == task]
        if s.empty:
            out.append(f"- **{task}**: at each method's best sweep value, no head-to-head win rate has a 95% interval "
                       "above 0.5.")
        else:
            out.append(f"- **{task}**: at each method's best sweep value, win rates whose 95% interval lies above 0.5: "
                       + "; ".join(f"{r['method_a']} over {r['method_b']} {W.fmt_ci(r['win_rate'], r['ci_low'], r['ci_high'])}"
                                   for _, r in s.iterrows()) + ".")
    return out


def findings_diagnostics(diag: Diagnosis) -> list[str]:
    out = []
    pr = diag.per_run
    if pr.empty:
        return out

    def lab(r: pd.Series) -> str:
        return f"`{r['task']}` {r['method']} {W.sym(r['param'])}={r['value']:g} (seed {r['seed']})"

    if "overoptimized" in pr:
        flagged = pr[pr["overoptimized"].fillna(False).astype(bool)]
        if flagged.empty:
            out.append("- Overoptimization: no run's gold reward fell after its peak by more than its noise while its "
                       "proxy kept rising.")
        else:
            out.append(f"- Overoptimization detected in {len(flagged)} run(s): " + "; ".join(
                f"{lab(r)}: gold reward peaked at step {r['peak_step']:.0f} ({r['peak_reward']:.3f}) and fell by "
                f"{r['gold_drop']:.3f} by the end while {r['proxy']} rose by {r['proxy_change']:.3f}"
                for _, r in flagged.head(8).iterrows()) + ("; …" if len(flagged) > 8 else "") + ".")
        falls = pr[pr.get("gold_falls", pd.Series(False, index=pr.index)).fillna(False).astype(bool)
                   & ~pr["overoptimized"].fillna(False).astype(bool)]
        if not falls.empty:
            out.append(f"- Gold reward fell after its peak without a rising proxy in {len(falls)} run(s), e.g. "
                       + "; ".join(f"{lab(r)} (peak at step {r['peak_step']:.0f}, drop {r['gold_drop']:.3f})"
                                   for _, r in falls.head(4).iterrows()) + ".")
    for (task, method), f in sorted(diag.fits.items()):
        if f.has_peak and f.peak_observed:
            out.append(f"- `{task}` {method}: the Gao et al. {f.form.upper()} fit (α={f.alpha:.3f}, b={f.b:.3f}, R²={f.r2:.2f}) "
                       f"predicts the gold reward to peak at KL {f.kl_star:.2f} nats (R* = {f.r_star:.3f}), inside the "
                       f"observed range (max KL {f.kl_max:.2f}).")
    if "overfit" in pr:
        of = pr[pr["overfit"].fillna(False).astype(bool)]
        n_with = int(pr["overfit"].notna().sum())
        if of.empty:
            out.append(f"- Overfitting: in none of {n_with} offline runs did the held-out loss rise from its minimum "
                       "while the training-subset loss kept falling.")
        else:
            out.append(f"- Overfitting in {len(of)} of {n_with} offline runs (held-out loss rose while the training-subset "
                       "loss fell), e.g. " + "; ".join(
                           f"{lab(r)}: held-out loss +{r['eval_loss_rise']:.3g} after step {r['min_eval_loss_step']:.0f}, "
                           f"train−held-out accuracy gap {r['acc_gap']:.3f}" for _, r in of.head(4).iterrows()) + ".")
    if "chosen_falls" in pr:
        d = pr.dropna(subset=["chosen_falls"])
        for (task, method), g in d.groupby(["task", "method"]):
            n_f = int(g["chosen_falls"].astype(bool).sum())
            if n_f:
                w = g.loc[g["final_logratio_chosen"].idxmin()]
                out.append(f"- `{task}` {method}: the held-out chosen log-ratio ended below 0 in {n_f} of {len(g)} runs "
                           f"(the chosen likelihood fell too); lowest at {W.sym(w['param'])}={w['value']:g}: chosen "
                           f"{w['final_logratio_chosen']:.2f}, rejected {w['final_logratio_rejected']:.2f} nats"
                           + (f", below 0 from step {w['first_step_chosen_below_ref']:.0f}"
                              if np.isfinite(w["first_step_chosen_below_ref"]) else "") + ".")
    if "kl_bounded" in pr and pr["kl_bounded"].notna().any():
        prefix = "deterministic preferences (stress preset)" if diag.stress_tasks else "KL over the last third of training"
        out.append(f"- {prefix}:")
        out.append("  " + kl_bounded_statement(pr).replace("\n", "\n  "))
    return out


def section_findings(summary: pd.DataFrame, wr: pd.DataFrame, diag: Diagnosis) -> str:
    parts = ["## Findings", "", "Written automatically from the numbers above.", ""]
    lines = findings_frontier(summary) + findings_winrates(wr) + findings_diagnostics(diag)
    n_fail = int((summary["status"] != "ok").sum())
    if n_fail:
        lines.append(f"- {n_fail} of {len(summary)} runs failed (see below).")
    parts += lines or ["- Nothing to report: no completed run."]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------ 6. runs


def section_runs(summary: pd.DataFrame) -> str:
    cols = [c for c in ("task", "method", "sweep_param", "sweep_value", "seed", "kl", "kl_se", "reward", "reward_se",
                        "win_rate_vs_ref", "frontier_gap", "kl_to_target", "unseen_mass", "steps", "wall_s") if c in summary]
    ok = _ok(summary).sort_values([c for c in ("task", "method", "sweep_value", "seed") if c in summary])
    return "## All runs\n\n" + _md_table(ok[cols]) + "\n"


def section_failed(summary: pd.DataFrame) -> str:
    failed = summary[summary["status"] != "ok"]
    cols = [c for c in ("run_id", "task", "method", "sweep_value", "steps", "reason") if c in failed]
    body = _md_table(failed[cols]) if not failed.empty else "No run failed.\n"
    return "## Failed runs\n\n" + body


def _remove_stale(out: Path, keep: list[Path]) -> None:
    names = {p.name for p in keep}
    for p in out.glob("*.png"):
        if p.name.startswith(FIG_PREFIXES) and p.name not in names:
            p.unlink(missing_ok=True)


def write_report(out: str | Path) -> Path:
    """(Re)build ``out/report.md``, ``out/winrates.csv`` and the figures from the files in ``out``."""
    out = Path(out)
    summary, meta = load_results(out)
    runs = load_runs(out, summary)
    summary = augment_summary(summary, runs)
    wr = W.build_winrates(out, summary)
    io.write_text(out / "winrates.csv", wr.to_csv(index=False))
    diag = diagnose(out, summary, runs)
    _remove_stale(out, diag.figures)
    parts = ["# alignbench report", ""]
    parts.append(section_setup(summary, meta, runs))
    parts.append(section_frontier(out, summary))
    parts.append(section_winrates(out, summary, wr))
    parts.append(section_diagnostics(out, summary, diag))
    parts.append(section_findings(summary, wr, diag))
    parts.append(section_failed(summary))
    parts.append(section_runs(summary))
    path = out / "report.md"
    io.write_text(path, "\n".join(parts))
    return path
