"""The sweep runner: tasks x methods x sweep values x seeds, skip-completed, one lock per run.

Everything is validated before anything is written, so bad input leaves the results folder as it was.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import io
from .api import Method, Task
from .config import (TrainConfig, check_choice, check_int, from_mapping, load_yaml, param, stable_hash,
                     to_dict)
from .errors import AlignbenchError, ConfigError
from .registry import get_method, get_task, load_plugins, methods as all_methods
from .runner import RunSpec, execute


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the same fields on the command line (flags) and in a YAML file (``--config``)."""

    tasks: tuple[str, ...] = param(("exact",), "tasks to run (see `alignbench list`)")
    methods: tuple[str, ...] = param((), "methods to run; empty = the task's default set")
    betas: tuple[float, ...] = param((), "beta grid for every beta-swept method; empty = each method's own grid")
    grid: dict[str, Any] = param({}, "per-method grid override, e.g. {bon: [1, 4, 16]} (the method's sweep axis)")
    seeds: tuple[int, ...] = param((0,), "random seeds; each cell of the grid runs once per seed")
    steps: int | None = param(None, "optimizer steps per run; default: the task's")
    out: str = param("results/default", "results folder")
    device: str = param("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    cache_dir: str = param(".cache/alignbench", "cache of reference models, reference log-probs, reward models")
    method_args: dict[str, Any] = param({}, "per-method config fields, e.g. {ipo: {length_normalize: true}}")
    task_args: dict[str, Any] = param({}, "per-task config fields, e.g. {exact: {labels: deterministic}}")
    train_args: dict[str, Any] = param({}, "TrainConfig overrides for every run, e.g. {lr: 5e-4}")
    report_to: tuple[str, ...] = param((), "experiment trackers: tensorboard, wandb (off by default)")
    plugins: tuple[str, ...] = param((), "extra plugin files or folders holding methods or tasks")
    progress: bool = param(True, "show progress bars")

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", "at least one task is needed")
        for i, b in enumerate(self.betas):
            from .config import check_positive

            check_positive(f"betas[{i}]", b)
        for i, s in enumerate(self.seeds):
            check_int(f"seeds[{i}]", s, 0)
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        if not self.out:
            raise ConfigError("out", "must name a folder")
        for r in self.report_to:
            check_choice("report_to", r, ("tensorboard", "wandb"))
        for section in ("grid", "method_args", "task_args"):
            for k, v in getattr(self, section).items():
                if section != "grid" and not isinstance(v, dict):
                    raise ConfigError(f"{section}.{k}", "must be a mapping of fields")


def load_sweep_config(path: str | None, overrides: dict[str, Any]) -> SweepConfig:
    """YAML file (safe loader) first, then command-line flags on top; all validated."""
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(SweepConfig, data)


# ------------------------------------------------------------------------------------------ planning


@dataclass
class Plan:
    config: SweepConfig
    tasks: dict[str, Task]
    specs: list[RunSpec]
    methods: dict[str, Method]  # run_id -> method instance


def _method_names(cfg: SweepConfig, task_cls: type[Task]) -> list[str]:
    if cfg.methods:
        return list(cfg.methods)
    if task_cls.default_methods is not None:
        return list(task_cls.default_methods)
    return [n for n, m in all_methods().items() if _compatible(m, task_cls) is None]


def _compatible(method_cls: type[Method], task_cls: type[Task]) -> str | None:
    """Why a method cannot run on a task (from declared attributes), or None."""
    if (method_cls.needs_preferences or method_cls.needs_reward_model) and not task_cls.has_preferences:
        need = "needs_reward_model" if method_cls.needs_reward_model else "needs_preferences"
        return f"method '{method_cls.name}' {need} but task '{task_cls.name}' has no preference data"
    if method_cls.needs_gold_reward and not task_cls.has_gold_reward:
        return f"method '{method_cls.name}' needs_gold_reward but task '{task_cls.name}' has no gold reward"
    return None


def plan(cfg: SweepConfig) -> Plan:
    """Resolve every run of the sweep (configs built and validated; nothing written)."""
    load_plugins(list(cfg.plugins))
    for name in cfg.tasks:
        get_task(name)
    for name in cfg.grid:
        get_method(name)
    for name in cfg.method_args:
        get_method(name)
    for name in cfg.task_args:
        if name not in cfg.tasks:
            raise ConfigError(f"task_args.{name}", f"task '{name}' is not in tasks {list(cfg.tasks)}")
    tasks: dict[str, Task] = {}
    specs: list[RunSpec] = []
    methods: dict[str, Method] = {}
    for tname in cfg.tasks:
        task_cls = get_task(tname)
        task = task_cls(from_mapping(task_cls.config_cls, cfg.task_args.get(tname, {}), where=f"task_args.{tname}"))
        tasks[tname] = task
        train_over = dict(cfg.train_args)
        if cfg.steps is not None:
            train_over["steps"] = cfg.steps
        train = task.train_config(train_over)
        for mname in _method_names(cfg, task_cls):
            method_cls = get_method(mname)
            why = _compatible(method_cls, task_cls)
            if why:
                raise AlignbenchError(why)
            margs = dict(cfg.method_args.get(mname, {}))
            axis = method_cls.sweep_param
            if mname in cfg.grid:
                values = cfg.grid[mname]
                values = [values] if not isinstance(values, (list, tuple)) else values
            elif cfg.betas and axis == "beta":
                values = list(cfg.betas)
            else:
                values = list(method_cls.default_grid)
            if axis in margs:
                raise ConfigError(f"method_args.{mname}.{axis}", f"is the sweep axis; set it with the grid instead")
            for v in values:
                mcfg = from_mapping(method_cls.config_cls, {**margs, axis: v}, where=f"method_args.{mname}")
                for seed in cfg.seeds:
                    spec = RunSpec(task=tname, method=mname, seed=seed, method_config=mcfg,
                                   task_config=task.config, train=train)
                    value = getattr(mcfg, axis)
                    spec.run_id = f"{tname}-{mname}-{axis}{value:g}-s{seed}-{stable_hash(spec.resolved(), 6)}"
                    specs.append(spec)
                    methods[spec.run_id] = method_cls(mcfg)
    return Plan(cfg, tasks, specs, methods)


# ------------------------------------------------------------------------------------------ running


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


def run_sweep(cfg: SweepConfig) -> pd.DataFrame:
    """Run (or resume) a sweep and write summary.csv, sweep.json and the report. Returns the summary."""
    from .models import select_device
    from .report import write_report

    the_plan = plan(cfg)  # validates everything before the first write
    device = select_device(cfg.device)
    out = Path(cfg.out)
    cache_dir = Path(cfg.cache_dir)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    task_facts: dict[str, Any] = {}
    for tname, task in the_plan.tasks.items():
        specs = [s for s in the_plan.specs if s.task == tname]
        pending = [s for s in specs if not (out / "runs" / s.run_id / "summary.json").exists()]
        env = None
        if pending or not (out / f"frontier_{tname}.csv").exists():
            env = task.setup(cache_dir, device)
            out.mkdir(parents=True, exist_ok=True)
            frontier = env.frontier()
            if frontier is not None:
                io.write_text(out / f"frontier_{tname}.csv", frontier.to_csv(index=False))
            artifacts = env.artifacts()
            if artifacts:
                io.save_arrays(out / f"task_{tname}.npz", artifacts)
            task_facts[tname] = env.describe()
        for spec in specs:
            run_dir = out / "runs" / spec.run_id
            summary_path = run_dir / "summary.json"
            if summary_path.exists():
                rows.append(io.read_json(summary_path))
                continue
            with io.file_lock(run_dir / ".lock", blocking=False) as got:
                if not got:  # another sweep process is running it; it will write its own summary
                    continue
                if summary_path.exists():  # finished by another process while we waited
                    rows.append(io.read_json(summary_path))
                    continue
                rows.append(execute(spec, env, the_plan.methods[spec.run_id], run_dir, device=device,
                                    cache_dir=cache_dir, report_to=cfg.report_to, show_progress=cfg.progress))
    summary = pd.DataFrame(rows)
    io.write_text(out / "summary.csv", summary.to_csv(index=False))
    previous = io.read_json(out / "sweep.json") if (out / "sweep.json").exists() else {}
    io.write_json(out / "sweep.json", {
        "config": to_dict(cfg),
        "runs": [s.run_id for s in the_plan.specs],
        "grids": _grids(the_plan),
        "tasks": {**previous.get("tasks", {}), **task_facts},
        "environment": environment_facts(device),
        "wall_s": round(time.perf_counter() - t0, 1),
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
