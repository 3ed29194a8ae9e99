"""Diagnostics over training: one figure per (task, method), the per-run table, the Gao et al. fits, KL growth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import diagnostics as D
from ..convergence import describe
from ..core import ReportContext, register_section
from ..diagnosis import Diagnosis
from ..examples import degeneration_columns
from ..render import md_table, num
from ..schema import sym


@register_section("diagnostics", order=40, figures=("diag_", "proxy_", "klgrowth_"))
def section_diagnostics(ctx: ReportContext) -> str:
    diag = ctx.diagnosis
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
    proxy = sorted(n for n in figs if n.startswith("proxy_"))
    if proxy:
        parts.append("### Proxy vs gold reward\n")
        parts.append("For the methods that optimise a proxy reward over iterations (a reward model's score of their "
                     "rollouts): the proxy reward and the gold reward at evaluations over iterations, and gold reward "
                     "against d = √KL with the fitted R(d) = R0 + d(α − b log d).\n")
        for name in proxy:
            parts.append(f"![{name}]({name})\n")
    parts.append(section_per_run_table(diag.per_run, degeneration_columns(ctx.runs)))
    parts.append(section_gao(diag))
    parts.append(section_kl_growth(ctx, diag, figs))
    return "\n".join(parts)


def section_per_run_table(per_run: pd.DataFrame, degeneration: pd.DataFrame | None = None) -> str:
    parts = ["### Per-run diagnostics\n"]
    if per_run.empty or "n_evals" not in per_run or (per_run["n_evals"] <= 1).all():
        parts.append("_none_ (no run with more than one evaluation)\n")
        return "\n".join(parts)
    pr = per_run[per_run["n_evals"] > 1].sort_values(["task", "method", "value", "seed"])
    table = pd.DataFrame({"task": pr["task"], "method": pr["method"],
                          "value": [f"{sym(p)}={v:g}" for p, v in zip(pr["param"], pr["value"])],
                          "seed": pr["seed"]})

    def col(name: str, src: str, conv=None) -> None:
        if src in pr:
            table[name] = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else (conv(v) if conv else v)
                           for v in pr[src]]

    yn = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else ("**yes**" if bool(v) else "no")  # noqa: E731
    col("peak step", "peak_step", lambda v: num(v, ".0f"))
    col("peak gold", "peak_reward", lambda v: num(v, ".3f"))
    col("drop after peak", "gold_drop", lambda v: num(v, ".3f"))
    col("overoptimized", "overoptimized", yn)
    col("held-out loss rise", "eval_loss_rise", lambda v: num(v, ".3f"))
    col("acc gap train−held-out", "acc_gap", lambda v: num(v, ".3f"))
    col("overfit", "overfit", yn)
    col("log-ratio chosen", "final_logratio_chosen", lambda v: num(v, ".2f"))
    col("log-ratio rejected", "final_logratio_rejected", lambda v: num(v, ".2f"))
    if degeneration is not None and not degeneration.empty:  # final evaluation's degeneration metrics, by run id
        for name in ("rep-2", "distinct-2"):
            if name in degeneration:
                vals = degeneration[name].reindex(pr["run_id"].astype(str)).to_numpy()
                table[name] = ["" if not np.isfinite(v) else f"{v:.3f}" for v in vals]
    col("KL growth, last third", "kl_rel_growth_last_third", lambda v: "" if not np.isfinite(v) else f"{100 * v:+.0f}%")
    col("still moving", "converged", lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
        else ("no" if bool(v) else "**yes**"))
    parts.append("Peak step: the evaluation step of highest gold reward. Overoptimized: gold reward fell after its peak "
                 "by more than 2 standard errors (and 5% of its gain) while the proxy (reward-model reward for PPO, "
                 "held-out implicit reward margin for offline methods) kept rising. Overfit: held-out preference loss "
                 "rose above its minimum (by 5% of its improvement) while the training-subset loss kept falling. "
                 "Log-ratios: final mean log π/π_ref [nats] on held-out pairs. Still moving: "
                 f"{describe()}: the run was cut short, so its final point may understate where the method would "
                 "settle.\n")
    parts.append(md_table(table.fillna("")))
    return "\n".join(parts)


def section_gao(diag: Diagnosis) -> str:
    parts = ["### Gao et al. fit of gold reward against d = √KL\n"]
    if not diag.fits:
        parts.append("_none_ (too few points: a fit needs its parameters + 2 evaluations with KL > 0 per method, "
                     "i.e. 4, or 5 when the reference reward is fitted too)\n")
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
    parts.append(md_table(df, ".3g"))
    return "\n".join(parts)


def section_kl_growth(ctx: ReportContext, diag: Diagnosis, figs: dict[str, Path]) -> str:
    pr = diag.per_run
    title = "### KL growth over training"
    parts = [title, ""]
    for task in sorted(set(ctx.ok["task"].astype(str))):
        for note in ctx.task_notes(task):
            parts.append(f"`{task}`: {note}\n")
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
        at = f"{sym(worst['param'])}={worst['value']:g}"
        growth = f"{100 * worst['kl_rel_growth_last_third']:+.0f}%"
        if nb == n:
            runs_txt = "its only run" if n == 1 else f"all {n} runs"
            lines.append(f"- `{task}` / {method}: KL bounded in {runs_txt} (largest change over the last third "
                         f"{growth}, at {at}).")
        else:
            runs_txt = "its only run" if n == 1 else f"{n - nb} of {n} runs"
            cells = "; ".join(f"{sym(p)}={v:g}: {int((~c['kl_bounded'].astype(bool)).sum())} of {c['seed'].nunique()} "
                              f"seed{'s' if c['seed'].nunique() != 1 else ''}"
                              for (p, v), c in g.groupby(["param", "value"], sort=True)
                              if (~c["kl_bounded"].astype(bool)).any())
            lines.append(f"- `{task}` / {method}: KL **not bounded** in {runs_txt} (still growing over the last "
                         f"third, by up to {growth}, at {at}; k of n seeds per value: {cells}).")
    return "\n".join(lines)
