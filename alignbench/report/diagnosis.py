"""Diagnostics over training, computed once per report: per-run flags, Gao et al. fits, and the figures.

Everything is read from the results folder: each run's ``metrics.jsonl``, and what each method declared in
``sweep.json`` (its proxy metric, its diagnostics panels, a proxy reward curve to draw against the gold
reward). Nothing here names a method or a task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import diagnostics as D
from .render import save_figure, slug, theme, value_palette
from .schema import RunData, frontier_csv, sym

# the panels every diagnostics figure may have after the method's own: the reward-vs-KL path, entropy, length
PATH = "PATH"
COMMON_PANELS: list[tuple[str, list[tuple[str, str, str]], str]] = [
    (PATH, [], ""),
    ("policy entropy", [("policy/entropy", "", "-")], "entropy [nats]"),
    ("completion length", [("policy/length", "", "-")], "length [tokens]"),
]


def method_panels(info: dict[str, Any]) -> list[tuple[str, list[tuple[str, str, str]], str]]:
    """A method's declared panels (``Method.diagnostic_panels``, as saved in sweep.json), then the common ones."""
    own = [(p["title"], [tuple(s) for s in p["series"]], p["ylabel"]) for p in info.get("panels", [])]
    return own + COMMON_PANELS


def _has(runs: list[RunData], key: str) -> bool:
    return any(key in r.metrics and r.metrics[key].notna().any() for r in runs)


def _multi_step(runs: list[RunData]) -> bool:
    return any(len(r.metrics) > 1 for r in runs)


def method_gao_fit(runs: list[RunData]) -> D.GaoFit | None:
    """Gao et al.'s RL form fitted to every evaluation point (gold reward, KL) of a method's runs on a
    task (steps of training and sweep values together); the best-of-N form for single-step methods."""
    multi = _multi_step(runs)
    return gao_fit_points(*gao_points(runs, multi), multi)


def gao_fit_points(kl: list[float], rew: list[float], r0: list[float], multi: bool) -> D.GaoFit | None:
    """The fit of :func:`method_gao_fit` on points from :func:`gao_points` (None when there are too few)."""
    ref = float(np.mean(r0)) if r0 else None
    try:
        return D.fit_gao_rl(kl, rew, ref) if multi else D.fit_gao_bon(kl, rew, ref)
    except ValueError:
        return None


def gao_points(runs: list[RunData], multi: bool) -> tuple[list[float], list[float], list[float]]:
    """(KL, gold reward) of every evaluation of ``runs`` (after step 0 when ``multi``), and the step-0 rewards."""
    kl, rew, r0 = [], [], []
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
    return kl, rew, r0


def plot_method_diagnostics(out: Path, task: str, method: str, runs: list[RunData], fit: D.GaoFit | None,
                            panels: list[tuple[str, list[tuple[str, str, str]], str]] = COMMON_PANELS) -> Path | None:
    """Small multiples over training steps for the runs of one (task, method), coloured by sweep value."""
    runs = [r for r in runs if not r.metrics.empty]
    if not runs or not _multi_step(runs):
        return None
    panels = [p for p in panels if p[0] == PATH and _has(runs, D.KL) and _has(runs, D.GOLD)
              or any(_has(runs, k) for k, _, _ in p[1])]
    if not panels:
        return None
    ncol = 3
    nrow = math.ceil(len(panels) / ncol)
    theme(0.8)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.1 * nrow), squeeze=False)
    pal = value_palette([r.value for r in runs])
    axis = sym(runs[0].param)
    frontier = out / frontier_csv(task)
    for ax, (title, series, ylabel) in zip(axes.flat, panels):
        if title == PATH:
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
                ax.plot([], [], color=c, lw=2, label=f"{axis}={v:g}")
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
    fig.suptitle(f"{task} / {method}: diagnostics over training (colour: {axis})", fontsize=10)
    fig.tight_layout()
    path = out / f"diag_{slug(task)}_{slug(method)}.png"
    save_figure(fig, path)
    return path


def plot_proxy(out: Path, task: str, runs: list[RunData], curves: dict[str, str],
               fits: dict[str, D.GaoFit | None]) -> Path | None:
    """Proxy reward (e.g. a reward model's score of the rollouts) vs gold reward over training, and gold reward
    against d = sqrt(KL) with Gao et al.'s RL fit, for the runs whose method declared a proxy curve
    (``curves``: method -> the logged metric) and logged it."""
    runs = [r for r in runs if r.method in curves and _has([r], curves[r.method])]
    if not runs:
        return None
    theme(0.8)
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.4))
    pal = value_palette([r.value for r in runs])
    for r in runs:
        m, c, key = r.metrics, pal[r.value], curves[r.method]
        p = m[["step", key]].dropna()
        axes[0].plot(p["step"], p[key], "-", lw=1.1, color=c, label=f"{r.method} {r.label.split(' ', 1)[1]}")
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
    axes[0].set(title="proxy (reward model) reward of rollouts", xlabel="iteration", ylabel="RM reward")
    axes[1].set(title="gold reward (evaluation); ★ = peak", xlabel="iteration", ylabel="gold reward")
    axes[2].set(title="gold reward vs d = √KL", xlabel="d = √KL(π ‖ π_ref)  [√nats]", ylabel="gold reward")
    axes[0].legend(fontsize=6)
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=6)
    fig.suptitle(f"{task}: proxy vs gold reward", fontsize=10)
    fig.tight_layout()
    path = out / f"proxy_{slug(task)}.png"
    save_figure(fig, path)
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
    theme(0.8)
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
                    ax.plot(m["step"], m[key], "-", lw=1.2, color=pal[r.value], label=f"{sym(r.param)}={r.value:g}")
            ax.set_title(method if i == 0 else "")
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel if j == 0 else "")
            if i == 0:
                ax.legend(fontsize=6)
    fig.suptitle(f"{task}: KL and unseen-response mass over training", fontsize=10)
    fig.tight_layout()
    path = out / f"klgrowth_{slug(task)}.png"
    save_figure(fig, path)
    return path


@dataclass
class Diagnosis:
    """Everything the diagnostics section computed, for the findings section."""

    per_run: pd.DataFrame
    fits: dict[tuple[str, str], D.GaoFit]
    figures: list[Path]


def diagnose(out: Path, summary: pd.DataFrame, runs: dict[str, RunData], methods: dict[str, dict[str, Any]],
             *, figures: bool = True) -> Diagnosis:
    """Per-run diagnostics of every completed run, a Gao et al. fit per (task, method), and the figures.

    ``methods``: what each method declared (``sweep.json``'s "methods": proxy metric, panels, proxy curve).
    """
    ok_ids = set(summary.loc[summary["status"] == "ok", "run_id"].astype(str))

    def info(method: str) -> dict[str, Any]:
        return dict(methods.get(method, {}))

    rows = []
    by_tm: dict[tuple[str, str], list[RunData]] = {}
    for rid, r in runs.items():
        if rid not in ok_ids:
            continue
        by_tm.setdefault((r.task, r.method), []).append(r)
        proxy = info(r.method).get("proxy_metric")
        d = D.run_diagnostics(r.metrics, proxies=(proxy,) if proxy else ()) if not r.metrics.empty else {}
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
            p = plot_method_diagnostics(out, key[0], key[1], rs, fit if fit is not None and fit.form == "rl" else None,
                                        method_panels(info(key[1])))
            if p:
                figs.append(p)
    if figures:
        for task in sorted({t for t, _ in by_tm}):
            ms = {m: rs for (t, m), rs in by_tm.items() if t == task}
            curves = {m: info(m)["proxy_curve"] for m in ms if info(m).get("proxy_curve")}
            p = plot_proxy(out, task, [r for rs in ms.values() for r in rs], curves,
                           {m: fits.get((task, m)) for m in ms if m in curves and _has(ms[m], curves[m])})
            if p:
                figs.append(p)
            p = plot_kl_growth(out, task, ms)
            if p:
                figs.append(p)
    return Diagnosis(per_run, fits, figs)
