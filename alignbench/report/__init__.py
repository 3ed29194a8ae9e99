"""The report a researcher reads: ``DIR/report.md``, ``DIR/winrates.csv`` and the figures, rebuilt from the
files of a results folder alone (``alignbench report DIR``; never a model).

The package, by concern:

* :mod:`.schema`       the results folder's layout and the one reader of each file (the writers use it too);
* :mod:`.names`        metric names;
* :mod:`.winrates`     win-rate tables with bootstrap intervals; :mod:`.diagnostics` per-run diagnostics (pure);
* :mod:`.diagnosis`    diagnostics over training for a whole folder, with their figures;
* :mod:`.render`       Markdown tables, number formats, palettes, figure saving;
* :mod:`.core`         the section registry, the context sections share, :func:`write_report`;
* :mod:`.sections`     one module per group of sections (setup, frontier, win rates, diagnostics, findings, runs).

Adding a section is one module in ``sections/`` with one ``@register_section(name, order)`` line. What is
specific to a method (its proxy metric, its diagnostics panels) or to a task (its notes) is read from what
they declared in ``sweep.json``: nothing here names a method or a task.

This ``__init__`` imports nothing heavy: the harness reads :mod:`.schema` without loading matplotlib.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "write_report": "core", "register_section": "core", "unregister_section": "core", "sections": "core",
    "ReportContext": "core", "Section": "core",
    "load_results": "schema", "load_runs": "schema", "RunData": "schema", "augment_summary": "schema",
    "save_figure": "render", "md_table": "render", "method_palette": "render", "value_palette": "render",
    "_save": "render", "_md_table": "render", "_num": "render",
    "Diagnosis": "diagnosis", "diagnose": "diagnosis", "method_gao_fit": "diagnosis",
    "plot_frontier": "sections.frontier",
    "findings_frontier": "sections.findings", "findings_winrates": "sections.findings",
    "findings_diagnostics": "sections.findings", "build_ranking": "ranking",
    "kl_bounded_statement": "sections.diagnostics",
}


def __getattr__(name: str) -> Any:  # PEP 562: lazy re-exports
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
