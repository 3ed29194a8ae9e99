"""What was run: tasks, methods, grids, seeds, budgets, estimators, task notes, versions, device, wall time."""

from __future__ import annotations

import pandas as pd

from ... import io
from ..core import ReportContext, register_section
from ..render import fmt_value
from ..winrates import DEFAULT_BUDGETS


@register_section("setup", order=10)
def section_setup(ctx: ReportContext) -> str:
    summary, meta = ctx.summary, ctx.meta
    cfg = meta.get("config", {})
    env = meta.get("environment", {})
    lines = ["## What was run", ""]
    lines.append(f"- Tasks: {', '.join(sorted(summary['task'].astype(str).unique()))}")
    lines.append(f"- Methods: {', '.join(sorted(summary['method'].astype(str).unique()))}")
    grids = meta.get("grids", {})
    if grids:
        for task, g in grids.items():
            for m, vals in g.items():
                lines.append(f"- `{task}` / {m}: {', '.join(fmt_value(v) for v in vals)}")
    else:
        for (task, m, p), g in summary.groupby(["task", "method", "sweep_param"]):
            lines.append(f"- `{task}` / {m} ({p}): {', '.join(fmt_value(v) for v in sorted(g['sweep_value'].dropna().unique()))}")
    lines.append(f"- Seeds: {', '.join(str(s) for s in cfg.get('seeds', sorted(summary['seed'].unique())))}")
    if "steps" in summary:
        steps = summary.groupby("method")["steps"].max().to_dict()
        lines.append("- Budget (steps or iterations per run): "
                     + ", ".join(f"{m} {int(s)}" for m, s in sorted(steps.items()) if pd.notna(s)))
    evals = set()
    for r in ctx.runs.values():
        t = r.config.get("train", {})
        if "eval_every" in t:
            evals.add(int(t["eval_every"]))
    if evals:
        lines.append(f"- Evaluation every {', '.join(str(e) for e in sorted(evals))} steps (step 0 is the reference)")
    for key in ("task_args", "method_args", "train_args"):
        if cfg.get(key):
            lines.append(f"- {key}: `{io.dumps(cfg[key], sort_keys=True)}`")
    lines.append(f"- KL budgets of the matched-KL comparisons: {', '.join(f'{b:g}' for b in DEFAULT_BUDGETS)} nats")
    for task, facts in meta.get("tasks", {}).items():
        desc = "; ".join(f"{k}: {v}" for k, v in facts.items())
        lines.append(f"- `{task}` estimation: {desc}")
        for note in ctx.task_notes(task):
            lines.append(f"- `{task}`: {note}")
    if env:
        vers = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
        lines.append(f"- Device: {env.get('device')} ({env.get('cpu_count')} CPUs, {env.get('platform')}); Python {env.get('python')}; {vers}")
    if "wall_s" in meta:
        ran = (f" (it ran {meta['ran']} runs with {meta.get('workers', 1)} worker(s); {meta['skipped']} were already "
               f"complete)") if "ran" in meta else ""
        lines.append(f"- Wall time of the last sweep invocation: {meta['wall_s']:.0f} s{ran}; "
                     f"sum of run times: {summary['wall_s'].sum():.0f} s" if "wall_s" in summary else "")
    return "\n".join(line for line in lines if line) + "\n"
