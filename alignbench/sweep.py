"""The sweep runner: plan (``planning``), run what is not complete (``executors``), then write the folder-level
files (summary.csv, sweep.json, the report) from every completed run, under a lock on the folder.

Everything is validated before anything is written, so bad input leaves the results folder as it was.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from . import cache, folder, io
from .config import to_dict
from .distributed import is_main_process
from .errors import ConfigError
from .executors import _env, _execute_pending, _run_locked, resolve_workers
from .folder import environment_facts
from .planning import Plan, SweepConfig, plan
from .report.schema import summary_frame
from .runner import configure_threads

# what callers import from here (the sweep's public face): planning and execution live in their own modules
from .executors import _init_worker, gpu_slots, run_one  # noqa: E402,F401
from .planning import load_sweep_config  # noqa: E402,F401
from .runner import RunSpec  # noqa: E402,F401


def preflight(cfg: SweepConfig, the_plan: Plan) -> None:
    """Checks that need no task setup, before anything is written: the results folder can be written and
    belongs to this sweep (:func:`alignbench.folder.check_plan`), the cache folder is usable."""
    why = io.unwritable(cfg.out)
    if why:
        raise ConfigError("out", why)
    cache.check_dir(cfg.cache_dir)
    folder.check_plan(Path(cfg.out), [s.run_id for s in the_plan.specs], cfg.force)


def run_sweep(cfg: SweepConfig) -> pd.DataFrame:
    """Run (or resume) a sweep and write summary.csv, sweep.json and the report. Returns the summary.

    Runs another process holds are waited for (their lock), so the sweep ends with every run of its plan
    complete; summary.csv and the report cover every completed run in the folder.
    """
    from .models import select_device
    from .report import write_report

    the_plan = plan(cfg)  # validates everything before the first write
    preflight(cfg, the_plan)
    device = select_device(cfg.device)
    out = Path(cfg.out)
    t0 = time.perf_counter()
    done = {s.run_id: folder.read_summary(out / "runs" / s.run_id, warn=False) for s in the_plan.specs}
    pending = [s for s in the_plan.specs if done[s.run_id] is None]
    for s in pending:  # report truncated markers once, up front
        folder.read_summary(out / "runs" / s.run_id)
    progress = folder.Progress(len(pending), len(the_plan.specs) - len(pending))
    task_facts: dict[str, Any] = {}
    task_notes: dict[str, list[str]] = {}
    in_process = cfg.executor == "local" and resolve_workers(cfg, max(len(pending), 1)) == 1
    for tname, task in the_plan.tasks.items():
        if is_main_process() and (any(s.task == tname for s in pending) or not (out / "sweep.json").exists()):
            # task-level files: the exact frontier, arrays shared by all runs, estimation facts
            env = _env(task, cfg.cache_dir, device if in_process else select_device("cpu"))
            out.mkdir(parents=True, exist_ok=True)
            frontier = env.frontier()
            if frontier is not None:
                io.write_text(out / f"frontier_{tname}.csv", frontier.to_csv(index=False))
            artifacts = env.artifacts()
            if artifacts:
                io.save_arrays(out / f"task_{tname}.npz", artifacts)
            task_facts[tname] = env.describe()
            task_notes[tname] = list(env.notes())
    results = _execute_pending(cfg, the_plan, pending, progress) if pending else {}
    if not is_main_process():
        return summary_frame([r for r in results.values() if r is not None])
    held = [s for s in pending if results.get(s.run_id) is None]
    if held:  # runs of this plan that another sweep process holds: wait for them (documented)
        progress.say(f"sweep: waiting for {len(held)} run(s) held by another process")
        for spec in held:
            task = the_plan.task_of(spec)
            results[spec.run_id] = _run_locked(cfg, spec, the_plan.methods[spec.run_id],
                                               lambda task=task: _env(task, cfg.cache_dir, device), device,
                                               blocking=True)
    out.mkdir(parents=True, exist_ok=True)
    with io.file_lock(out):  # one writer of the folder-level files at a time (the folder itself is locked)
        recorded = folder.recorded_runs(out) or []
        order = list(dict.fromkeys(recorded + [s.run_id for s in the_plan.specs]))
        summary = summary_frame(folder.completed_rows(out, order))
        summary.attrs["plan"] = [s.run_id for s in the_plan.specs]  # this sweep's runs (the CLI counts them)
        text = summary.to_csv(index=False)
        unchanged = (not pending and (out / "summary.csv").exists() and (out / "summary.csv").read_text() == text
                     and (out / "report.md").exists() and set(order) == set(recorded))
        if unchanged:  # nothing ran and nothing changed: leave the folder byte for byte as it was
            return summary
        io.write_text(out / "summary.csv", text)
        previous = io.read_json(out / "sweep.json") if (out / "sweep.json").exists() else {}
        record: dict[str, Any] = {"config": previous.get("config", to_dict(cfg))}
        added = list(previous.get("added", []))
        if previous and set(order) != set(recorded):  # --force: this sweep's runs join the folder's
            added.append(to_dict(cfg))
        if added:
            record["added"] = added
        io.write_json(out / "sweep.json", {
            **record,
            "runs": order,
            "grids": folder.merge_grids(previous.get("grids", {}), _grids(the_plan)),
            "tasks": {**previous.get("tasks", {}), **task_facts},
            "notes": {**previous.get("notes", {}), **task_notes},
            # what the report reads about each method (it never names a method itself)
            "methods": {**previous.get("methods", {}),
                        **{s.method: type(the_plan.methods[s.run_id]).report_info() for s in the_plan.specs}},
            "environment": environment_facts(device),
            "wall_s": round(time.perf_counter() - t0, 1),
            "ran": len(pending), "skipped": len(the_plan.specs) - len(pending),
            "workers": resolve_workers(cfg, max(len(pending), 1)),
        })
        write_report(out)
    return summary


def _grids(p: Plan) -> dict[str, dict[str, list[float]]]:
    grids: dict[str, dict[str, list[float]]] = {}
    for s in p.specs:
        m = p.methods[s.run_id]
        grids.setdefault(s.task, {}).setdefault(f"{s.method} ({m.sweep_param})", [])
        v = m.sweep_value
        if v not in grids[s.task][f"{s.method} ({m.sweep_param})"]:
            grids[s.task][f"{s.method} ({m.sweep_param})"].append(v)
    return grids
