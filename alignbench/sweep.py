"""The sweep runner: tasks x methods x sweep values x seeds, skip-completed, one lock per run.

Everything is validated before anything is written, so bad input leaves the results folder as it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import cache, folder, io
from .api import Method, Task
from .config import (TrainConfig, check_choice, check_int, from_mapping, load_yaml, param, stable_hash,
                     to_dict)
from .errors import AlignbenchError, ConfigError
from .folder import environment_facts
from .registry import get_method, get_task, load_plugins, methods as all_methods
from .distributed import is_main_process, world_size
from .report.schema import RUN_SUMMARY, RUNS, SUMMARY_CSV, SWEEP_JSON, summary_frame
from .runner import RunSpec, configure_threads, execute


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the same fields on the command line (flags) and in a YAML file (``--config``)."""

    tasks: tuple[str, ...] = param(("exact",), "tasks to run (see `alignbench list`)")
    methods: tuple[str, ...] = param((), "methods to run; empty = the task's default set")
    betas: tuple[float, ...] = param(
        (), "beta grid for every method swept on a KL beta (beta_is_kl_coef); empty = each method's own grid")
    grid: dict[str, Any] = param({}, "per-method grids: METHOD -> values of its sweep axis, e.g. {bon: [1, 4, 16]}; "
                                     "METHOD.FIELD -> values of any field of its config or of the training config, "
                                     "crossed with the axis, e.g. {dpo.lr: [1e-4, 1e-3]}")
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
    workers: int = param(1, "parallel worker processes: up to runs_per_gpu runs per GPU at a time, or CPU workers "
                            "sharing the cores")
    runs_per_gpu: int = param(1, "local workers placed on each GPU (N GPUs run up to N * runs_per_gpu workers, "
                                 "pinned round-robin); Ray: each run asks for 1/runs_per_gpu of a GPU. 1 until "
                                 "measured: a GPU timing of 1, 4 and 16 is owed (benchmarks/gpu_check.sh, "
                                 "docs/performance.md)")
    executor: str = param("local", "local (this machine) or ray (one task per run on a Ray cluster; alignbench[ray])")
    ray_address: str = param("", "Ray cluster address for executor=ray ('' starts a local Ray instance)")
    force: bool = param(False, "add this sweep's runs to a results folder made by a different sweep (sweep.json)")

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", "at least one task is needed")
        for i, b in enumerate(self.betas):
            from .config import check_positive

            check_positive(f"betas[{i}]", b)
        for name in ("tasks", "methods", "betas", "seeds"):
            _no_repeats(name, getattr(self, name))
        for i, s in enumerate(self.seeds):
            check_int(f"seeds[{i}]", s, 0)
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        if not self.out:
            raise ConfigError("out", "must name a folder")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ConfigError("out", f"{out} exists and is not a folder")
        if out.is_dir() and not os.access(out, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError("out", f"{out} is not readable and writable")
        check_int("workers", self.workers, 1)
        check_int("runs_per_gpu", self.runs_per_gpu, 1)
        check_choice("executor", self.executor, ("local", "ray"))
        for r in self.report_to:
            check_choice("report_to", r, ("tensorboard", "wandb"))
        for section in ("grid", "method_args", "task_args"):
            for k, v in getattr(self, section).items():
                if section != "grid" and not isinstance(v, dict):
                    raise ConfigError(f"{section}.{k}", "must be a mapping of fields")


def _no_repeats(name: str, values: Any) -> None:
    """Repeated values would list the same run twice: refused (one line naming the field and value)."""
    seen: list[Any] = []
    for i, v in enumerate(values):
        if v in seen:
            raise ConfigError(f"{name}[{i}]", f"{v!r} is listed twice")
        seen.append(v)


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
    needs = method_cls.requires_one_of
    if needs and not any(c in task_cls.capabilities for c in needs):
        return (f"method '{method_cls.name}' needs a task env with {' or '.join(c.__name__ for c in needs)}, "
                f"which task '{task_cls.name}' does not provide")
    return None


def plan(cfg: SweepConfig) -> Plan:
    """Resolve every run of the sweep (configs built and validated; nothing written)."""
    from .models import select_device
    from .runner import numerics

    load_plugins(list(cfg.plugins))
    for name in cfg.tasks:
        get_task(name)
    for section in ("grid", "method_args"):
        for name in getattr(cfg, section):
            get_method(name.split(".", 1)[0])  # grid keys: METHOD (its sweep axis) or METHOD.FIELD
    for name in cfg.task_args:
        if name not in cfg.tasks:
            raise ConfigError(f"task_args.{name}", f"task '{name}' is not in tasks {list(cfg.tasks)}")
    swept = {m for t in cfg.tasks for m in _method_names(cfg, get_task(t))}
    for section in ("grid", "method_args"):
        for name in getattr(cfg, section):
            if name.split(".", 1)[0] not in swept:
                raise ConfigError(f"{section}.{name}", f"method '{name.split('.', 1)[0]}' is not in this sweep's "
                                                       f"methods {sorted(swept)}")
    device = select_device(cfg.device)
    configure_threads(device)
    facts = numerics(device)
    budget = cfg.steps if cfg.steps is not None else cfg.train_args.get("steps")
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
            if world_size() > 1 and method_cls.data_format == "online":
                raise AlignbenchError(f"methods: '{mname}' is online; a data-parallel launch (WORLD_SIZE="
                                      f"{world_size()}) trains offline methods only; run it in a plain sweep")
            user = cfg.method_args.get(mname, {})
            margs = {**task_cls.method_defaults.get(mname, {}), **user}
            if budget is not None and ITERATIONS in _field_names(method_cls.config_cls) and ITERATIONS not in user:
                margs[ITERATIONS] = budget  # the user's --steps is every method's budget (over a task's default)
            axis = method_cls.sweep_param
            if mname in cfg.grid:
                values = cfg.grid[mname]
                values = [values] if not isinstance(values, (list, tuple)) else values
                if not values:
                    raise ConfigError(f"grid.{mname}", "is an empty list")
                _no_repeats(f"grid.{mname}", values)
            elif cfg.betas and axis == "beta" and method_cls.beta_is_kl_coef:  # a KL beta grid fits KL betas only
                values = list(cfg.betas)
            else:
                values = list(method_cls.default_grid)
            if axis in margs:
                raise ConfigError(f"method_args.{mname}.{axis}", f"is the sweep axis; set it with the grid instead")
            for v in values:
                for combo in _field_grid(cfg, mname, method_cls, axis, margs, values[0], task, train_over):
                    mfields = {f: x for f, x in combo if f in _field_names(method_cls.config_cls)}
                    tfields = {f: x for f, x in combo if f not in mfields}
                    mcfg = from_mapping(method_cls.config_cls, {**margs, **mfields, axis: v}, where=f"method_args.{mname}")
                    run_train = task.train_config({**train_over, **tfields}) if tfields else train
                    vals = [(f, getattr(mcfg if f in mfields else run_train, f)) for f, _ in combo]  # as coerced
                    variant = ", ".join(f"{f}={x:g}" if isinstance(x, (int, float)) and not isinstance(x, bool)
                                        else f"{f}={x}" for f, x in vals)
                    for seed in cfg.seeds:
                        spec = RunSpec(task=tname, method=mname, seed=seed, method_config=mcfg,
                                       task_config=task.config, train=run_train, numerics=dict(facts), variant=variant)
                        value = getattr(mcfg, axis)
                        spec.run_id = f"{tname}-{mname}-{axis}{value:g}-s{seed}-{stable_hash(spec.identity(), 6)}"
                        if spec.run_id in methods:
                            raise ConfigError(f"grid.{mname}", f"two values give the same run {spec.run_id}")
                        specs.append(spec)
                        methods[spec.run_id] = method_cls(mcfg)
    return Plan(cfg, tasks, specs, methods)


ITERATIONS = "iterations"  # a method config field of this name counts the run's budget in iterations (PPO)


def _field_grid(cfg: SweepConfig, mname: str, method_cls: type[Method], axis: str, margs: dict[str, Any],
                axis_value: Any, task: Task, train_over: dict[str, Any]) -> list[tuple[tuple[str, Any], ...]]:
    """The combinations of a method's extra grid axes ``grid`` keys ``METHOD.FIELD`` (a field of the method's
    config, else of TrainConfig, e.g. ``dpo.lr``): every value of each, validated one by one (errors name
    ``grid.METHOD.FIELD``). [()] when the method has none. Each combination is crossed with the sweep axis."""
    import itertools

    extra = {k.split(".", 1)[1]: val for k, val in cfg.grid.items() if k.startswith(f"{mname}.")}
    mfields, tfields = _field_names(method_cls.config_cls), _field_names(TrainConfig)
    axes = []
    for f, vals in sorted(extra.items()):
        where = f"grid.{mname}.{f}"
        vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
        if not vals:
            raise ConfigError(where, "is an empty list")
        _no_repeats(where, vals)
        if f == axis:
            raise ConfigError(where, f"is the sweep axis; give its values as grid.{mname}")
        if f not in mfields and f not in tfields:
            raise ConfigError(where, f"unknown field (method fields: {', '.join(sorted(mfields))}; training fields: "
                                     f"{', '.join(sorted(tfields))})")
        for x in vals:  # each value alone, so that a bad one is named by its grid key
            try:
                if f in mfields:
                    from_mapping(method_cls.config_cls, {**margs, f: x, axis: axis_value})
                else:
                    task.train_config({**train_over, f: x})
            except ConfigError as e:
                raise ConfigError(where, str(e).split(": ", 1)[-1]) from None
        axes.append([(f, x) for x in vals])
    return list(itertools.product(*axes)) if axes else [()]


def _field_names(cls: type) -> set[str]:
    from dataclasses import fields

    return {f.name for f in fields(cls)}


# ------------------------------------------------------------------------------------------ running


_ENVS: dict[tuple[str, str, str], Any] = cache.memo("task envs")  # every run of a task shares one env


def _env(task: Task, cache_dir: str, device: Any) -> Any:
    key = (task.name, stable_hash(task.config), str(device))
    if key not in _ENVS:
        _ENVS[key] = task.setup(Path(cache_dir), device)
    return _ENVS[key]


def _run_locked(cfg: SweepConfig, spec: RunSpec, method: Method, env_fn: Any, device: Any,
                blocking: bool = False) -> dict[str, Any] | None:
    """Run ``spec`` unless it is complete or (``blocking`` False) another process holds its lock (then None).
    With ``blocking``, wait for that process and read its summary (or run it, if that process died)."""
    run_dir = Path(cfg.out) / "runs" / spec.run_id
    done = folder.read_summary(run_dir, warn=False)  # (run_sweep has reported unreadable ones)
    if done is not None:
        return done
    if not is_main_process():  # data-parallel launch: the main process holds the lock, the others follow it
        return execute(spec, env_fn(), method, run_dir, device=device, cache_dir=Path(cfg.cache_dir),
                       report_to=cfg.report_to, show_progress=False)
    with io.file_lock(run_dir / ".lock", blocking=blocking) as got:
        if not got:  # another sweep process is running it; it writes its own summary
            return None
        done = folder.read_summary(run_dir, warn=False)  # finished by another process meanwhile
        if done is not None:
            return done
        return execute(spec, env_fn(), method, run_dir, device=device, cache_dir=Path(cfg.cache_dir),
                       report_to=cfg.report_to, show_progress=cfg.progress)


def run_one(cfg_data: dict[str, Any], run_id: str, threads: int | None = None) -> dict[str, Any] | None:
    """Worker entry point (local processes, Ray tasks): re-plan the sweep (deterministic) and run one run.

    ``threads`` is the sweep's torch thread count (part of the run id where it is not 1), set before planning
    so that a worker computes the same numbers under the same run id. The worker sets up the task itself from
    the shared on-disk cache (built once, under a file lock, by whichever worker needs it first).
    """
    import torch

    from .models import quiet_transformers, select_device

    quiet_transformers()
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # keep plan()'s configure_threads from changing it
    cfg = from_mapping(SweepConfig, cfg_data)
    the_plan = plan(cfg)
    spec = next(s for s in the_plan.specs if s.run_id == run_id)
    device = select_device(cfg.device)
    task = the_plan.tasks[spec.task]
    return _run_locked(cfg, spec, the_plan.methods[run_id], lambda: _env(task, cfg.cache_dir, device), device)


def gpu_slots(workers: int, n_gpu: int, runs_per_gpu: int) -> list[int]:
    """The GPU of each local worker (index = worker): round-robin over ``n_gpu`` GPUs, ``runs_per_gpu`` per GPU.

    The pool has ``min(workers, n_gpu * runs_per_gpu)`` workers; worker i runs on GPU ``i % n_gpu``, so every GPU
    holds at most ``runs_per_gpu`` of them and the GPUs fill evenly. No GPU: an empty list (CPU workers).
    """
    if n_gpu <= 0:
        return []
    return [i % n_gpu for i in range(min(workers, n_gpu * runs_per_gpu))]


def _init_worker(gpu_queue: Any) -> None:
    """Pin a worker process to one GPU (one run per GPU at a time)."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())


def _execute_pending(cfg: SweepConfig, the_plan: Plan, pending: list[RunSpec],
                     progress: folder.Progress) -> dict[str, dict[str, Any] | None]:
    """Run pending specs with the configured executor; returns run_id -> summary (None: run elsewhere)."""
    import torch

    cfg_data = to_dict(cfg)
    ids = [s.run_id for s in pending]
    threads = torch.get_num_threads()
    if cfg.executor == "ray":
        try:
            import ray
        except ImportError:
            raise AlignbenchError("executor: 'ray' needs the ray extra (pip install 'alignbench[ray]')") from None
        if not ray.is_initialized():
            ray.init(address=cfg.ray_address or None, include_dashboard=False, log_to_driver=False)
        gpus = 1 / cfg.runs_per_gpu if (cfg.device != "cpu" and torch.cuda.is_available()) else 0
        task = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=2)(run_one)
        rows = ray.get([task.remote(cfg_data, i, threads) for i in ids])
        for k, (rid, row) in enumerate(zip(ids, rows), 1):
            progress.end(rid, row, k)
        return dict(zip(ids, rows))
    if cfg.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        slots = gpu_slots(cfg.workers, torch.cuda.device_count() if cfg.device != "cpu" else 0, cfg.runs_per_gpu)
        workers = len(slots) or cfg.workers
        queue = None
        if slots:
            queue = ctx.Queue()
            for g in slots:
                queue.put(g)
        out = {}
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(queue,)) as pool:
            for k, (rid, row) in enumerate(zip(ids, pool.map(run_one, [cfg_data] * len(ids), ids,
                                                             [threads] * len(ids))), 1):
                progress.end(rid, row, k)
                out[rid] = row
        return out
    from .models import select_device

    device = select_device(cfg.device)
    out = {}
    for spec in pending:
        task = the_plan.tasks[spec.task]
        progress.start(spec.run_id)
        out[spec.run_id] = _run_locked(cfg, spec, the_plan.methods[spec.run_id],
                                       lambda task=task: _env(task, cfg.cache_dir, device), device)
        progress.end(spec.run_id, out[spec.run_id])
    return out


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
    in_process = cfg.executor == "local" and cfg.workers == 1
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
            task = the_plan.tasks[spec.task]
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
