"""Seed statistics of the robustness columns of ``summary.csv`` (per-temperature and per-prompt-split metrics).

A point is the mean over a cell's seeds, an interval the 95% percentile bootstrap over those seeds
(:func:`~alignbench.report.seeds.seed_bootstrap`; none with fewer than 2 seeds). A difference of two columns is
taken per run (seed) first, then bootstrapped over seeds, so that it is paired within each training run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from . import names as N
from .seeds import seed_bootstrap
from .winrates import DEFAULT_BUDGETS, Unit, select_best, select_matched_kl, units


@dataclass(frozen=True)
class Stat:
    """Mean over seeds with its 95% bootstrap interval over seeds (NaN with fewer than 2 seeds), and n seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0 (for a difference)."""
        return math.isfinite(self.lo) and math.isfinite(self.hi) and (self.lo > 0 or self.hi < 0)

    def fmt(self, d: int = 3) -> str:
        if not math.isfinite(self.mean):
            return ""
        if math.isfinite(self.lo) and math.isfinite(self.hi):
            return f"{self.mean:.{d}f} [{self.lo:.{d}f}, {self.hi:.{d}f}]"
        return f"{self.mean:.{d}f}"


def per_seed(summary: pd.DataFrame, unit: Unit, col: str, minus: str | None = None) -> np.ndarray:
    """(S,) finite values of ``col`` (minus ``minus``, per run) over the unit's runs (one per seed)."""
    rows = summary[summary["run_id"].astype(str).isin([str(r) for r in unit.run_ids])]
    if col not in rows or (minus is not None and minus not in rows):
        return np.empty(0)
    v = pd.to_numeric(rows[col], errors="coerce").to_numpy(float)
    if minus is not None:
        v = v - pd.to_numeric(rows[minus], errors="coerce").to_numpy(float)
    return v[np.isfinite(v)]


def stat(summary: pd.DataFrame, unit: Unit, col: str, minus: str | None = None) -> Stat:
    v = per_seed(summary, unit, col, minus)
    mean, lo, hi = seed_bootstrap(v) if v.size else (float("nan"),) * 3
    return Stat(mean, lo, hi, int(v.size))


_T_COLUMN = re.compile(re.escape(N.WIN_VS_REF) + r"@T=([0-9.eE+-]+)$")


def temperatures(summary: pd.DataFrame) -> list[float]:
    """The temperatures with a win-rate column in ``summary`` (sorted), from :func:`names.at_temperature` names."""
    out = []
    for c in summary.columns:
        m = _T_COLUMN.match(str(c))
        if m and pd.to_numeric(summary[c], errors="coerce").notna().any():
            out.append(float(m.group(1)))
    return sorted(out)


def has_split(summary: pd.DataFrame) -> bool:
    col = N.on_split(N.GOLD, N.SPLIT_SHIFT)
    return col in summary and pd.to_numeric(summary[col], errors="coerce").notna().any()


def matched_budget(us: Sequence[Unit], task: str) -> float | None:
    """The KL budget (of :data:`~.winrates.DEFAULT_BUDGETS`) that the most methods of ``task`` reach within the
    head-to-head tables' factor (ties: the larger budget); None when no method reaches any."""
    best, count = None, 0
    for b in DEFAULT_BUDGETS:
        n = sum(1 for (t, _) in select_matched_kl(us, b) if t == task)
        if n and n >= count:
            best, count = b, n
    return best


def selections(summary: pd.DataFrame, task: str) -> list[tuple[str, dict[str, Unit]]]:
    """[(label, {method: unit})]: each method of ``task`` at its best sweep value (highest mean gold reward), and
    at the matched KL budget of :func:`matched_budget`."""
    us = [u for u in units(summary) if u.task == task]
    out = [("best sweep value", {m: u for (t, m), u in select_best(us).items() if t == task})]
    b = matched_budget(us, task)
    if b is not None:
        out.append((f"KL ≈ {b:g} nats", {m: u for (t, m), u in select_matched_kl(us, b).items() if t == task}))
    return out
