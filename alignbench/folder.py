"""The results folder of a sweep: which sweep made it, which runs are complete, progress lines.

* ``sweep.json`` records the runs of the sweep that made the folder. A sweep that plans runs outside that
  list is refused with a one-line error before anything is written (a new ``--out`` folder, or ``--force``
  to add them): a README example or a bare ``alignbench sweep`` can never shrink or replace the committed
  results. A sweep whose runs are all in the list (the same command, or a part of it) resumes.
* ``summary.csv`` (and the report, which reads it) is rebuilt from every completed run in the folder, under
  the folder's lock, so the last of two concurrent sweeps writes the complete summary.
* A run is complete when its ``summary.json`` parses; a truncated one is redone, with a notice.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from . import io
from .errors import ConfigError

SUMMARY = "summary.json"


def notice(message: str) -> None:
    print(f"alignbench: {message}", file=sys.stderr, flush=True)


def read_summary(run_dir: Path, *, warn: bool = True) -> dict[str, Any] | None:
    """A run's summary row, or None when the run is incomplete (no ``summary.json``, or one that does not
    parse: a truncated file is reported and treated as incomplete, never a crash)."""
    path = run_dir / SUMMARY
    if not path.exists():
        return None
    try:
        row = io.read_json(path)
    except (ValueError, UnicodeDecodeError, OSError):
        row = None
    if isinstance(row, dict) and row.get("run_id") == run_dir.name:
        return row
    if warn:
        notice(f"{path} is unreadable (truncated?); the run is incomplete and will be redone")
    return None


def recorded_runs(out: Path) -> list[str] | None:
    """The run ids of the sweep that made ``out`` (None when the folder has no ``sweep.json``)."""
    path = out / "sweep.json"
    if not path.exists():
        return None
    try:
        runs = io.read_json(path).get("runs")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise ConfigError("out", f"{path} is unreadable; move it away or use a new --out folder") from None
    return list(runs or [])


def check_plan(out: Path, run_ids: list[str], force: bool) -> None:
    """Refuse a sweep that plans runs outside those of the sweep that made ``out`` (unless ``force``)."""
    recorded = recorded_runs(out)
    if recorded is None or force:
        return
    known = set(recorded)
    new = [r for r in run_ids if r not in known]
    if new:
        raise ConfigError("out", f"{out} holds the results of another sweep ({len(recorded)} runs in sweep.json); "
                                 f"this one plans {len(new)} run(s) not in it (e.g. {new[0]}): choose a new --out "
                                 f"folder, or add --force to add them to this one")


def completed_rows(out: Path, order: Iterable[str]) -> list[dict[str, Any]]:
    """Summary rows of every completed run in ``out/runs``: those of ``order`` first, in that order, then
    any others by run id (runs added by other sweeps are never dropped from the summary)."""
    runs = out / "runs"
    present = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    ordered = list(dict.fromkeys([r for r in order if r in set(present)] + present))
    rows = []
    for rid in ordered:
        row = read_summary(runs / rid, warn=False)
        if row is not None:
            rows.append(row)
    return rows


class Progress:
    """One line per run start and end (run k of N, run id, status, wall time, KL and reward) and the skip
    count, on stdout; silent under ALIGNBENCH_QUIET=1. Per-step tqdm bars stay on terminals."""

    def __init__(self, total: int, skipped: int):
        self.total, self.k = total, 0
        self.on = os.environ.get("ALIGNBENCH_QUIET") != "1"
        self.t0: dict[str, float] = {}
        self.say(f"sweep: {total + skipped} runs; skipped {skipped} already complete, running {total}")

    def say(self, line: str) -> None:
        if self.on:
            print(line, flush=True)

    def start(self, run_id: str) -> None:
        self.k += 1
        self.t0[run_id] = time.perf_counter()
        self.say(f"[{self.k}/{self.total}] start {run_id}")

    def end(self, run_id: str, row: dict[str, Any] | None, k: int | None = None) -> None:
        if row is None:
            self.say(f"[{k or self.k}/{self.total}] held by another process: {run_id}")
            return
        wall = row.get("wall_s", time.perf_counter() - self.t0.get(run_id, time.perf_counter()))
        facts = "".join(f" {m}={row[m]:.4g}" for m in ("kl", "reward") if isinstance(row.get(m), (int, float)))
        why = f" ({row.get('reason')})" if row.get("status") != "ok" and row.get("reason") else ""
        self.say(f"[{k or self.k}/{self.total}] {row.get('status')} {run_id} in {float(wall):.1f}s{facts}{why}")


def merge_grids(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Union of two sweep.json grids (task -> "method (axis)" -> values), old values first."""
    out = {t: {k: list(v) for k, v in g.items()} for t, g in old.items()}
    for t, g in new.items():
        for k, values in g.items():
            have = out.setdefault(t, {}).setdefault(k, [])
            have.extend(v for v in values if v not in have)
    return out


def environment_facts(device: Any) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "datasets", "trl", "accelerate", "numpy", "vaderSentiment"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "device": str(device),
            "cpu_count": os.cpu_count(), "versions": versions}
