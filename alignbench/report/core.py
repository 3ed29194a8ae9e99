"""The report's skeleton: registered sections, the context they share, and :func:`write_report`.

A section is a function ``render(ctx: ReportContext) -> str`` (Markdown) registered with
:func:`register_section` in a module of ``alignbench/report/sections/`` (every module there is imported,
as ``methods/`` and ``tasks/`` are by the plugin registry). Adding a section is one module plus its
``@register_section`` line; sections appear in the order of their ``order`` value. A section that draws
figures declares their file-name prefixes, so that figures a previous report drew and this one did not
are removed.

What sections share (computed once, on first use): the summary, the sweep's metadata (including what each
method declared: its sweep axis, proxy metric, diagnostics panels; and each task's notes), every run's
evaluation rows, the win-rate tables (``winrates.csv``) and the diagnostics over training.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .. import io
from .schema import REPORT_MD, WINRATES_CSV, RunData, augment_summary, load_results, load_runs


@dataclass(frozen=True)
class Section:
    name: str
    order: float
    render: Callable[["ReportContext"], str]
    figures: tuple[str, ...] = ()  # file-name prefixes of the figures the section writes


_SECTIONS: dict[str, Section] = {}
_discovered = False


def register_section(name: str, order: float, *, figures: tuple[str, ...] = ()) -> Callable:
    """Decorator: register ``render(ctx) -> str`` as the report section ``name`` at position ``order``."""

    def deco(fn: Callable[["ReportContext"], str]) -> Callable[["ReportContext"], str]:
        _SECTIONS[name] = Section(name, float(order), fn, tuple(figures))
        return fn

    return deco


def unregister_section(name: str) -> None:
    _SECTIONS.pop(name, None)


def sections() -> list[Section]:
    """The registered sections in report order (built-in section modules are imported once)."""
    global _discovered
    if not _discovered:
        _discovered = True
        pkg = importlib.import_module(f"{__package__}.sections")
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
    return sorted(_SECTIONS.values(), key=lambda s: (s.order, s.name))


@dataclass
class ReportContext:
    """What every section reads: the results folder's files, parsed once."""

    out: Path
    summary: pd.DataFrame
    meta: dict[str, Any]
    runs: dict[str, RunData]
    figures: list[Path] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, out: str | Path) -> "ReportContext":
        out = Path(out)
        summary, meta = load_results(out)
        runs = load_runs(out, summary)
        return cls(out, augment_summary(summary, runs), meta, runs)

    @property
    def ok(self) -> pd.DataFrame:
        """The summary's completed runs."""
        return self.summary[self.summary["status"] == "ok"]

    def method_info(self, method: str) -> dict[str, Any]:
        """What ``method`` declared (``Method.report_info``: sweep axis, proxy metric, panels); {} if unknown."""
        return dict(self.meta.get("methods", {}).get(method, {}))

    def task_notes(self, task: str) -> list[str]:
        return list(self.meta.get("notes", {}).get(task, []))

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def winrates(self) -> pd.DataFrame:
        """Every win-rate table (the rows of ``winrates.csv``, written on first use)."""
        from .winrates import build_winrates

        def build() -> pd.DataFrame:
            wr = build_winrates(self.out, self.summary)
            io.write_text(self.out / WINRATES_CSV, wr.to_csv(index=False))
            return wr

        return self.once("winrates", build)

    @property
    def ranking(self) -> pd.DataFrame:
        """Frontier scores, pairwise comparisons and stability over seeds (:mod:`.ranking`)."""
        from .ranking import build_ranking, reference_rewards

        return self.once("ranking", lambda: build_ranking(self.summary, reference_rewards(self.runs)))

    @property
    def diagnosis(self) -> Any:
        """The diagnostics over training (per-run flags, Gao fits, figures): :class:`~.diagnosis.Diagnosis`."""
        from .diagnosis import diagnose

        def build() -> Any:
            diag = diagnose(self.out, self.summary, self.runs, self.meta.get("methods", {}))
            self.figures += diag.figures
            return diag

        return self.once("diagnosis", build)

    def add_figure(self, path: Path | None) -> Path | None:
        if path is not None:
            self.figures.append(Path(path))
        return path


def _remove_stale(ctx: ReportContext, prefixes: tuple[str, ...]) -> None:
    keep = {p.name for p in ctx.figures}
    for p in ctx.out.glob("*.png"):
        if p.name.startswith(prefixes) and p.name not in keep:
            p.unlink(missing_ok=True)


def write_report(out: str | Path) -> Path:
    """(Re)build ``out/report.md``, ``out/winrates.csv`` and the figures from the files in ``out``."""
    ctx = ReportContext.load(out)
    secs = sections()
    ctx.winrates  # noqa: B018 - winrates.csv is written whatever the sections read
    parts = ["# alignbench report", ""] + [s.render(ctx) for s in secs]
    _remove_stale(ctx, tuple(p for s in secs for p in s.figures))
    path = ctx.out / REPORT_MD
    io.write_text(path, "\n".join(parts))
    return path
