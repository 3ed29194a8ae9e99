"""The cost of training too long: every evaluated checkpoint on the frontier, final vs early-stopped vs envelope
(``checkpoints.csv``, ``winrates_early.csv``, ``checkpoints_<task>.png``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ... import io
from .. import checkpoints as C
from .. import seeds as S
from ..core import ReportContext, register_section
from ..ranking import reference_rewards, verdict
from ..render import md_table, save_figure, slug, theme
from ..schema import CHECKPOINTS_CSV, WINRATES_EARLY_CSV, ResultsData
from ..winrates import CSV_COLUMNS, fmt_ci, matched_kl_rows, matrix_markdown, units

PREFIX = "checkpoints_"
STYLE = {C.FINAL: ("tab:blue", "-"), C.EARLY: ("tab:green", "--"), C.ENVELOPE: ("grey", ":")}


def _n(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def build(ctx: ReportContext) -> dict:
    """The evaluation table, checkpoints.csv's rows and the early-stopped matched-KL win rates (computed once)."""
    def make() -> dict:
        info = ctx.meta.get("methods", {})
        ok = {rid: r for rid, r in ctx.runs.items() if r.status == "ok"}
        table = C.evaluation_table(ok, C.signals_of(info))
        reference = reference_rewards(ctx.runs)
        rows = C.build_checkpoints(ctx.summary, table, info, reference, ctx.ranking)
        io.write_text(ctx.out / CHECKPOINTS_CSV, rows.to_csv(index=False, float_format="%.6g"))
        early = C.choice_summary(ctx.summary, table, C.EARLY)
        wr = pd.DataFrame(matched_kl_rows(ResultsData(ctx.out, early, policy="early"), units(early)),
                          columns=CSV_COLUMNS)
        io.write_text(ctx.out / WINRATES_EARLY_CSV, wr.to_csv(index=False))
        return {"table": table, "rows": rows, "reference": reference, "winrates": wr}

    return ctx.once("checkpoints", make)


def plot_task(out: Path, task: str, table: pd.DataFrame, reference: dict, kl_range: tuple[float, float],
              n_grid: int = 60) -> Path | None:
    """One panel per method: the mean over seeds of the final, early-stopped and envelope frontiers (best reward
    within each KL budget), with 95% bands over seeds where there are at least 2; the shaded span is the KL range
    of the scores."""
    sets = {c: C.point_sets(table, task, c, reference) for c in C.CHOICES}
    methods = sorted(sets[C.FINAL])
    if not methods:
        return None
    theme(0.8)
    cols = min(4, len(methods))
    rows_n = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.3 * cols, 2.7 * rows_n), squeeze=False)
    for ax, m in zip(axes.ravel(), methods):
        kmax = max(float(np.nanmax(k)) for k, _ in sets[C.ENVELOPE][m].values())
        grid = np.linspace(0.0, max(kmax, 1e-3), n_grid)
        for c in C.CHOICES:
            if m not in sets[c]:
                continue
            curves = np.array([S.front_curve(k, r, grid, concave=True) for k, r in sets[c][m].values()])
            stats = np.array([S.seed_bootstrap(curves[:, j][np.isfinite(curves[:, j])]) for j in range(n_grid)])
            color, ls = STYLE[c]
            ax.plot(grid, stats[:, 0], ls, color=color, lw=1.4, label=c)
            if len(curves) >= 2:
                ax.fill_between(grid, stats[:, 1], stats[:, 2], color=color, alpha=0.15, lw=0)
        if all(map(math.isfinite, kl_range)):
            ax.axvspan(*kl_range, color="khaki", alpha=0.25, lw=0)
        ax.set_title(f"{m} ({_n(len(sets[C.FINAL][m]))})", fontsize=9)
        ax.set_xlabel("KL budget [nats]", fontsize=8)
        ax.set_ylabel("best gold reward", fontsize=8)
    for ax in axes.ravel()[len(methods):]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=STYLE[c][0], ls=STYLE[c][1], label=c + (" (oracle)" if c == C.ENVELOPE else ""))
               for c in C.CHOICES]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower right")
    fig.suptitle(f"{task}: final vs early-stopped vs envelope (oracle) frontiers, mean over seeds", fontsize=10)
    fig.tight_layout()
    path = Path(out) / f"{PREFIX}{slug(task)}.png"
    save_figure(fig, path)
    return path


def _gap_words(r: pd.Series, what: str) -> str:
    n = int(r["n_seeds"])
    if not (r["ci_low"] > 0 or r["ci_high"] < 0):
        return f"{what}: not distinguishable with {_n(n)} ({fmt_ci(r['score'], r['ci_low'], r['ci_high'])})"
    d = float(r["score"])
    if what == C.GAPS[0][0]:
        lead = f"training to the end {'costs' if d < 0 else 'gains'} {abs(d):.3g} frontier score"
    else:
        lead = f"the signal leaves {abs(d):.3g} frontier score to the oracle envelope" if d < 0 else "above the envelope"
    return f"{lead}: {what} = {fmt_ci(d, r['ci_low'], r['ci_high'])} (n={n} seeds, paired)"


def _wr_verdict(r: pd.Series | None) -> str:
    if r is None:
        return "not compared"
    n = int(r["n_seeds"])
    if not (np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"])):
        return f"no interval with {_n(n)}"
    if r["ci_low"] > 0.5:
        return f"{r['method_a']} beats {r['method_b']} ({fmt_ci(r['win_rate'], r['ci_low'], r['ci_high'])}, {_n(n)})"
    if r["ci_high"] < 0.5:
        return f"{r['method_b']} beats {r['method_a']} ({_n(n)})"
    return f"not distinguishable with {_n(n)}"


def ranking_changes(rows: pd.DataFrame, task: str) -> list[str]:
    """Pairs whose frontier-score verdict differs between the final and the early-stopped policies."""
    pw = rows[(rows["table"] == "pairwise") & (rows["task"] == task)]
    pw = pw[pw["method"].astype(str) < pw["method_b"].astype(str)]
    at = {ch: {(r["method"], r["method_b"]): r for _, r in g.iterrows()} for ch, g in pw.groupby("choice")}
    out = []
    for pair, r in sorted(at.get(C.FINAL, {}).items()):
        e = at.get(C.EARLY, {}).get(pair)
        vf, ve = verdict(r), verdict(e) if e is not None else ""
        if e is not None and vf != ve:
            out.append(f"- `{task}`, {pair[0]} vs {pair[1]}: at final policies {vf}; early-stopped, {ve}.")
    return out


def _pairs(df: pd.DataFrame, table: str, task: str) -> dict[tuple[str, str], pd.Series]:
    """(method_a, method_b) -> its row of a win-rate table, one order of each pair (A before B by name)."""
    d = df[(df["table"] == table) & (df["task"] == task)]
    return {(r["method_a"], r["method_b"]): r for _, r in d.iterrows() if str(r["method_a"]) < str(r["method_b"])}


def _ci_cell(df: pd.DataFrame) -> str:
    return fmt_ci(*df[["score", "ci_low", "ci_high"]].iloc[0]) if len(df) else "excluded (no signal)"


def winrate_changes(final: pd.DataFrame, early: pd.DataFrame, task: str) -> list[str]:
    out = []
    for table in sorted(set(final.get("table", [])) | set(early.get("table", []))):
        if not str(table).startswith("kl"):
            continue
        f, e = _pairs(final, table, task), _pairs(early, table, task)
        for pair in sorted(set(f) & set(e)):  # pairs compared at both choices
            vf, ve = _wr_verdict(f[pair]), _wr_verdict(e[pair])
            if vf.split(" (")[0] != ve.split(" (")[0]:
                out.append(f"- `{task}`, KL budget {table[2:]} nats, {pair[0]} vs {pair[1]}: at final policies {vf}; "
                           f"early-stopped, {ve}.")
    return out


@register_section("checkpoints", order=37, figures=(PREFIX,))
def section_checkpoints(ctx: ReportContext) -> str:
    parts = ["## Checkpoints: final vs early-stopped vs envelope", "",
             "Every run is evaluated every `eval_every` steps. Three frontiers per method, each per seed and then "
             "averaged over seeds: **final** (each run's last evaluation, as in the ranking and win rates), "
             "**early-stopped** (per run, the evaluation where the method's declared signal, available without the "
             "gold reward, is best; the earliest on ties) and **envelope** (the Pareto front of every evaluation of "
             "every run: an *oracle* upper bound, since it chooses by gold reward). A frontier here is the upper "
             "concave hull of its points (the rewards mixtures of the policies reach; more points never lower it, so "
             "the envelope bounds the other two), flat beyond its largest KL (a policy within budget); its score is "
             "its mean over the final policies' common KL range of the ranking. Differences are paired by seed, "
             "intervals 95% bootstrap over seeds (none with one seed). The ranking comparisons below use the "
             "ranking's own frontier (Pareto points interpolated) over the same KL range; methods without a signal "
             "are left out of the early-stopped comparisons. All values are in `checkpoints.csv`; early-stopped "
             "matched-KL win rates in `winrates_early.csv`.", ""]
    d = build(ctx)
    table, rows = d["table"], d["rows"]
    if table.empty:
        parts.append("No completed run logged KL and gold reward.\n")
        return "\n".join(parts)
    sig = rows[rows["table"] == "signal"]
    parts.append("### Signals\n")
    parts.append(md_table(pd.DataFrame({
        "method": sig["method"],
        "early-stop signal": [f"{s} ({mo})" if s else "none: no early-stopped policy" for s, mo in
                              zip(sig["signal"].fillna(""), sig["mode"].fillna(""))],
        "oracle": ["**yes**: its training reward is the gold reward" if o else "no" for o in sig["oracle"]]})))
    if not any("early_stop_signal" in v for v in ctx.meta.get("methods", {}).values()):
        parts.append("`sweep.json` records no early-stop signals (a folder written before methods declared them): "
                     "no early-stopped policies; the envelope is shown.\n")
    runs = rows[rows["table"] == "run"]
    fb = runs[runs["fallback"].astype(bool)]
    if len(fb):
        parts.append(f"{len(fb)} run(s) never logged their signal and keep their final policy: "
                     + ", ".join(f"`{r}`" for r in fb["run_id"]) + ".\n")
    findings: list[str] = []
    single: set[str] = set()  # tasks with a method of one seed: its gaps are points without a claim
    for task in sorted(table["task"].unique()):
        parts.append(f"### `{task}`\n")
        sc = rows[(rows["table"] == "score") & (rows["task"] == task)]
        lo, hi = (float(sc["kl_lo"].iloc[0]), float(sc["kl_hi"].iloc[0])) if len(sc) else (float("nan"),) * 2
        fig = ctx.add_figure(plot_task(ctx.out, task, table, d["reference"], (lo, hi)))
        if fig is not None:
            parts.append(f"![{fig.name}]({fig.name})\n")
        if not (math.isfinite(lo) and math.isfinite(hi)):
            parts.append("No KL range is reached by every method in every seed: no scores.\n")
            continue
        parts.append(f"KL range of the scores: {lo:.3g}–{hi:.3g} nats.")
        r = runs[(runs["task"] == task) & runs["early_step"].notna()]
        if len(r):
            parts.append(f"Step of the early-stopped policies: median {np.median(r['early_step']):.0f} of a median last "
                         f"step {np.median(r['final_step']):.0f} over {len(r)} runs; "
                         f"{int((r['early_step'] < r['final_step']).sum())} stopped before their last evaluation.")
        parts.append("")
        tab = []
        for m, g in sc.groupby("method", sort=True):
            cell = {c: g[g["choice"] == c] for c in C.CHOICES}
            gp = rows[(rows["table"] == "gap") & (rows["task"] == task) & (rows["method"] == m)].set_index("comparison")
            tab.append({"method": m, "seeds": int(cell[C.FINAL]["n_seeds"].iloc[0]), "final": _ci_cell(cell[C.FINAL]),
                        "early-stopped": _ci_cell(cell[C.EARLY]), "envelope (oracle)": _ci_cell(cell[C.ENVELOPE]),
                        **{name: (fmt_ci(*gp.loc[name, ["score", "ci_low", "ci_high"]]) if name in gp.index else "")
                           for name, _, _ in C.GAPS}})
            for name, _, _ in C.GAPS:
                if name in gp.index and int(gp.loc[name, "n_seeds"]) >= 2:
                    findings.append(f"- `{task}`, {m}: " + _gap_words(gp.loc[name], name))
                elif name in gp.index:
                    single.add(task)
        parts.append(md_table(pd.DataFrame(tab)))
        findings += ranking_changes(rows, task)
        findings += winrate_changes(ctx.winrates, d["winrates"], task)
        wr = d["winrates"]
        wt = wr[wr["task"] == task] if len(wr) else wr
        if len(wt):
            parts.append("Matched-KL win rates of the early-stopped policies (as in the win-rate section, each method "
                         "at its sweep value of mean early-stopped KL closest to the budget):\n")
            for b, g in wt.groupby("budget_kl", sort=True):
                parts.append(f"**KL budget {b:g} nats** (judge: {g['judge'].iloc[0]})\n")
                parts.append(matrix_markdown(g))
        else:
            parts.append("No matched-KL win rates of early-stopped policies (no per-prompt results of them: "
                         "`eval_early.npz`, or fewer than two methods near a budget).\n")
    parts.append("### What the checkpoints show\n")
    parts.append("Gaps are stated with their interval only where it excludes 0, else as not distinguishable; "
                 "final − early-stopped below 0 is the cost of training too long. Verdict changes list the pairs whose "
                 "comparison differs between final and early-stopped policies.\n")
    findings += [f"- `{t}`: methods with one seed: their gaps are in the table as point values, with no interval "
                 "and no claim (one seed)." for t in sorted(single)]
    parts.append("\n".join(findings) + "\n" if findings else "_none_\n")
    return "\n".join(parts)
