"""Planning a sweep: its config (the same fields as flags and YAML) and every run it implies, validated.

``plan`` resolves tasks x methods x sweep values (x extra grid axes) x seeds into run specs with their run ids;
everything is validated before anything is written, so bad input leaves the results folder as it was.
"""

from __future__ import annotations

import dataclasses

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import Method, Task
from .config import (TrainConfig, check_choice, check_int, from_mapping, load_yaml, param, stable_hash)
from .errors import AlignbenchError, ConfigError
from .registry import get_method, get_task, load_plugins, methods as all_methods
from .distributed import world_size
from .runner import RunSpec, configure_threads


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
    data_seeds: tuple[int, ...] = param((), "data seeds crossed with seeds: each sets the task's data_seed (its "
                                            "preference sample and so the reward model trained on it; the reference, "
                                            "gold reward and prompts stay); empty = the task's own data (docs/budgets.md)")
    steps: int | None = param(None, "optimizer steps per run; default: the task's")
    eval_every: int | None = param(None, "evaluate every this many steps or iterations (and at the last): the "
                                         "checkpoints an early-stopped or envelope frontier can choose from; "
                                         "default: the task's (train_args.eval_every is overridden)")
    out: str = param("results/default", "results folder")
    device: str = param("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    cache_dir: str = param(".cache/alignbench", "cache of reference models, reference log-probs, reward models")
    method_args: dict[str, Any] = param({}, "per-method config fields, e.g. {ipo: {length_normalize: true}}")
    task_args: dict[str, Any] = param({}, "per-task config fields, e.g. {exact: {labels: deterministic}}")
    train_args: dict[str, Any] = param({}, "TrainConfig overrides for every run, e.g. {lr: 5e-4}")
    report_to: tuple[str, ...] = param((), "experiment trackers: tensorboard, wandb (off by default)")
    plugins: tuple[str, ...] = param((), "extra plugin files or folders holding methods or tasks")
    progress: bool = param(True, "show progress bars")
    workers: int | None = param(None, "parallel worker processes: up to runs_per_gpu runs per GPU at a time, or CPU "
                                      "workers sharing the cores; default: one per CPU core (one torch thread each), or "
                                      "runs_per_gpu per GPU ($ALIGNBENCH_WORKERS sets the default)")
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
        _no_repeats("data_seeds", self.data_seeds)
        for i, s in enumerate(self.data_seeds):
            check_int(f"data_seeds[{i}]", s, 0)
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, 1)
        if not self.out:
            raise ConfigError("out", "must name a folder")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ConfigError("out", f"{out} exists and is not a folder")
        if out.is_dir() and not os.access(out, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError("out", f"{out} is not readable and writable")
        if self.workers is not None:
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

    def task_of(self, spec: RunSpec) -> Task:
        """The task a run is set up from: the sweep's task, or (another data seed) the same task with its config."""
        task = self.tasks[spec.task]
        return task if spec.task_config == task.config else type(task)(spec.task_config)


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


def _bad_signal(method_cls: type[Method]) -> str | None:
    """Why a method's ``early_stop_signal`` declaration is unusable (None: it is (metric, "min" | "max") or None)."""
    sig = method_cls.early_stop_signal
    if sig is None or (isinstance(sig, (tuple, list)) and len(sig) == 2 and isinstance(sig[0], str)
                       and sig[1] in ("min", "max")):
        return None
    return f"method '{method_cls.name}': early_stop_signal must be (metric, 'min' or 'max') or None, got {sig!r}"


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
        data_configs = data_seed_configs(cfg, tname, task)
        task = task_cls(data_configs[0][1])  # the first data seed's: the task-level files describe it
        tasks[tname] = task
        train_over = dict(cfg.train_args)
        if cfg.steps is not None:
            train_over["steps"] = cfg.steps
        if cfg.eval_every is not None:
            train_over["eval_every"] = cfg.eval_every
        train = task.train_config(train_over)
        for mname in _method_names(cfg, task_cls):
            method_cls = get_method(mname)
            why = _compatible(method_cls, task_cls) or _bad_signal(method_cls)
            if why:
                raise AlignbenchError(why)
            if world_size() > 1 and method_cls.data_format == "online":
                raise AlignbenchError(f"methods: '{mname}' is online; a data-parallel launch (WORLD_SIZE="
                                      f"{world_size()}) trains offline methods only; run it in a plain sweep")
            user = cfg.method_args.get(mname, {})
            margs = {**task_cls.method_defaults.get(mname, {}), **user}
            m_train_over = {**task_cls.method_train_defaults.get(mname, {}), **train_over}  # the sweep's own win
            m_train = task.train_config(m_train_over) if m_train_over != train_over else train
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
                raise ConfigError(f"method_args.{mname}.{axis}", "is the sweep axis; set it with the grid instead")
            for v in values:
                for combo in _field_grid(cfg, mname, method_cls, axis, margs, values[0], task, m_train_over):
                    mfields = {f: x for f, x in combo if f in _field_names(method_cls.config_cls)}
                    tfields = {f: x for f, x in combo if f not in mfields}
                    mcfg = from_mapping(method_cls.config_cls, {**margs, **mfields, axis: v}, where=f"method_args.{mname}")
                    run_train = task.train_config({**m_train_over, **tfields}) if tfields else m_train
                    vals = [(f, getattr(mcfg if f in mfields else run_train, f)) for f, _ in combo]  # as coerced
                    variant = ", ".join(f"{f}={x:g}" if isinstance(x, (int, float)) and not isinstance(x, bool)
                                        else f"{f}={x}" for f, x in vals)
                    for (ds, tcfg), seed in ((d, s) for d in data_configs for s in cfg.seeds):
                        spec = RunSpec(task=tname, method=mname, seed=seed, method_config=mcfg,
                                       task_config=tcfg, train=run_train, numerics=dict(facts), variant=variant)
                        value = getattr(mcfg, axis)
                        dtag = f"-d{ds}" if ds is not None else ""
                        spec.run_id = f"{tname}-{mname}-{axis}{value:g}-s{seed}{dtag}-{stable_hash(spec.identity(), 6)}"
                        if spec.run_id in methods:
                            raise ConfigError(f"grid.{mname}", f"two values give the same run {spec.run_id}")
                        specs.append(spec)
                        methods[spec.run_id] = method_cls(mcfg)
    return Plan(cfg, tasks, specs, methods)


DATA_SEED = "data_seed"  # a task config field of this name seeds the task's preference data (docs/budgets.md)


def data_seed_configs(cfg: SweepConfig, tname: str, task: Task) -> list[tuple[int | None, Any]]:
    """(data seed, task config) per data seed of the sweep: [(None, the task's config)] without ``data_seeds``.
    A task takes data seeds when its config has a ``data_seed`` field (a one-line error otherwise)."""
    if not cfg.data_seeds:
        return [(None, task.config)]
    if DATA_SEED not in _field_names(type(task.config)):
        raise ConfigError("data_seeds", f"task '{tname}' has no {DATA_SEED} field: its data cannot be reseeded")
    if DATA_SEED in cfg.task_args.get(tname, {}):
        raise ConfigError(f"task_args.{tname}.{DATA_SEED}", "is set by data_seeds; give one of the two")
    return [(d, dataclasses.replace(task.config, **{DATA_SEED: d})) for d in cfg.data_seeds]


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
