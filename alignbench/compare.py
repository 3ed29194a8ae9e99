"""``alignbench compare DIR_A DIR_B``: do two results folders hold the same numbers, run by run?

Runs are matched by run id (the hash of everything that identifies a run). For every metric column of
``summary.csv`` the comparison says whether the two values are bit-identical (as written to the CSV, which
keeps every digit of a float) or how far apart they are. Columns that measure time or the machine (``wall_s``,
``perf/*``, ``*seconds*``) are reported but never count as differences. ``make reproduce`` reruns the default
sweep into a scratch folder and compares it with the committed ``results/default``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import AlignbenchError
from .report.schema import SUMMARY_CSV

ID_COLUMNS = ("run_id", "task", "method", "sweep_param", "sweep_value", "seed", "status", "reason")


def timing_column(col: str) -> bool:
    return col == "wall_s" or col.startswith("perf/") or "seconds" in col


@dataclass
class Comparison:
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)
    # run id -> (column with the largest relative difference, that difference)
    differs: dict[str, tuple[str, float]] = field(default_factory=dict)
    per_column: dict[str, float] = field(default_factory=dict)  # largest relative difference over runs
    status_changed: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.only_a or self.only_b or self.differs or self.status_changed)


def _read(folder: Path) -> pd.DataFrame:
    path = Path(folder) / SUMMARY_CSV
    if not path.is_file():
        raise AlignbenchError(f"compare: {path} not found")
    df = pd.read_csv(path, dtype={"run_id": str})
    if "run_id" not in df or df["run_id"].duplicated().any():
        raise AlignbenchError(f"compare: {path} has no unique run_id column")
    return df.set_index("run_id")


def rel_diff(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|) (0 when equal, including both NaN; inf when exactly one is NaN)."""
    if (isinstance(a, float) and math.isnan(a)) and (isinstance(b, float) and math.isnan(b)):
        return 0.0
    if a == b:
        return 0.0
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return math.inf
    if math.isnan(fa) or math.isnan(fb):
        return math.inf
    return abs(fa - fb) / max(abs(fa), abs(fb), 1e-300)


def compare(dir_a: str | Path, dir_b: str | Path) -> Comparison:
    a, b = _read(Path(dir_a)), _read(Path(dir_b))
    res = Comparison(only_a=sorted(set(a.index) - set(b.index)), only_b=sorted(set(b.index) - set(a.index)))
    cols = [c for c in a.columns if c in b.columns and c not in ID_COLUMNS and not timing_column(c)]
    for rid in sorted(set(a.index) & set(b.index)):
        if "status" in a and "status" in b and str(a.at[rid, "status"]) != str(b.at[rid, "status"]):
            res.status_changed.append(rid)
        worst = ("", 0.0)
        for c in cols:
            d = rel_diff(a.at[rid, c], b.at[rid, c])
            if d > 0:
                res.per_column[c] = max(res.per_column.get(c, 0.0), d)
                if d > worst[1]:
                    worst = (c, d)
        if worst[1] > 0:
            res.differs[rid] = worst
        elif rid not in res.status_changed:
            res.identical.append(rid)
    return res


def render(res: Comparison, dir_a: str | Path, dir_b: str | Path) -> str:
    n = len(res.identical) + len(res.differs) + len(res.status_changed)
    lines = [f"compare {dir_a} (A) with {dir_b} (B): {n} runs in both, {len(res.identical)} bit-identical, "
             f"{len(res.differs)} differ, {len(res.status_changed)} changed status; {len(res.only_a)} only in A, "
             f"{len(res.only_b)} only in B (time columns ignored)"]
    for rid, (col, d) in sorted(res.differs.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  differs  {rid}: largest relative difference {d:.3g} in {col}")
    for rid in res.status_changed:
        lines.append(f"  status   {rid}")
    for rid in res.only_a:
        lines.append(f"  only A   {rid}")
    for rid in res.only_b:
        lines.append(f"  only B   {rid}")
    if res.per_column:
        lines.append("largest relative difference per column: " + ", ".join(
            f"{c} {d:.3g}" for c, d in sorted(res.per_column.items(), key=lambda kv: -kv[1])))
    lines.append("same numbers" if res.same else "different numbers")
    return "\n".join(lines)
