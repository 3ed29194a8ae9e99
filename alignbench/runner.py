"""One run: a (task, method, sweep value, seed) cell of a sweep, from config to ``summary.json``.

Layout of a run folder ``DIR/runs/<run_id>/``:

* ``config.json``  the resolved config (task, method, train, seed), written first;
* ``metrics.jsonl`` one row per evaluation step (grouped names: ``train/``, ``eval/``, ``kl/``, ``reward/``);
* ``eval_final.npz`` per-prompt results of the final evaluation (for head-to-head win rates);
* ``summary.json`` written last and atomically: its presence marks the run complete.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import io
from .api import (EvalResult, Method, NoTarget, OfflineMethod, RobustnessEvaluable, Target, TargetEvaluable,
                  TaskEnv)
from .compute import Compute
from .config import TrainConfig, non_default, stable_hash, to_dict
from .distributed import is_main_process
from .errors import TrainingFailure
from .report import names as N
from .report.checkpoints import best_index
from .report.convergence import run_convergence
from .report.schema import EARLY_STEP, EVAL_EARLY, EVAL_FINAL, RUN_SUMMARY, SUMMARY_KEYS

def configure_threads(device: torch.device) -> None:
    """One torch thread on CPU unless OMP_NUM_THREADS says otherwise: the embedded tasks' models are
    tiny, and on a 2-core machine a second thread costs more in synchronisation than it gains."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


DEFAULT_NUMERICS = {"device": "cpu", "threads": 1}


def numerics(device: torch.device) -> dict[str, Any]:
    """What changes a run's floating-point results besides its config: the device type and the number of
    torch threads (a reduction split over 2 threads rounds differently: KL moved by ~6e-6). Recorded in
    the resolved config and, where it differs from the default (CPU, 1 thread), hashed into the run id;
    precision is a TrainConfig field and hashed with it."""
    return {"device": device.type, "threads": int(torch.get_num_threads())}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunSpec:
    """What identifies a run. ``run_id`` is readable plus a hash of the resolved config."""

    task: str
    method: str
    seed: int
    method_config: Any
    task_config: Any
    train: TrainConfig
    run_id: str = ""
    numerics: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_NUMERICS))
    variant: str = ""  # the values of a method's extra grid axes (e.g. "lr=0.0001"); its fields are in identity()

    def identity(self) -> dict[str, Any]:
        """What the run id hashes: task, method, seed, every config field that differs from its default,
        and the numerics (device type, torch threads) where they differ from CPU with one thread."""
        ident = {"task": self.task, "method": self.method, "seed": self.seed,
                 "method_config": non_default(self.method_config), "task_config": non_default(self.task_config),
                 "train": non_default(self.train)}
        changed = {k: v for k, v in self.numerics.items() if DEFAULT_NUMERICS.get(k) != v}
        if changed:
            ident["numerics"] = changed
        return ident

    def resolved(self) -> dict[str, Any]:
        return {"task": self.task, "method": self.method, "seed": self.seed,
                "method_config": to_dict(self.method_config), "task_config": to_dict(self.task_config),
                "train": to_dict(self.train), "numerics": {**self.numerics, "precision": self.train.precision}}


class MetricsLogger:
    """Collects evaluation rows; rewrites ``metrics.jsonl`` atomically on each row; optional trackers."""

    def __init__(self, path: Path, report_to: tuple[str, ...] = (), run_name: str = "", config: dict | None = None,
                 write: bool = True):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.trackers = []
        self.write = write  # False on the non-main processes of a data-parallel run
        for name in report_to if write else ():
            from .tracking import make_tracker

            self.trackers.append(make_tracker(name, path.parent, run_name, config or {}))

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.write:
            io.write_jsonl(self.path, self.rows)
        for t in self.trackers:
            t.log(row)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


@dataclass
class RunContext:
    """What the harness hands a method's ``run`` (implements the protocol ``alignbench.api.RunContext``):
    the task, config, device, caches and logging."""

    spec: RunSpec
    run_dir: Path
    env: TaskEnv
    method: Method
    device: torch.device
    cache_dir: Path
    logger: MetricsLogger
    show_progress: bool = True
    last_eval: EvalResult | None = None
    last_policy: nn.Module | None = None
    extra_summary: dict[str, Any] = field(default_factory=dict)
    compute: Compute = field(default_factory=Compute)  # what the run spent (alignbench.compute)
    own_target: Target | NoTarget | None = None  # the method's population target (resolved at the first evaluation)
    # the best evaluation so far by the method's early_stop_signal: {"step", "per_prompt"} (kept in checkpoints)
    early: dict[str, Any] | None = None

    @property
    def train(self) -> TrainConfig:
        return self.spec.train

    @property
    def seed(self) -> int:
        return self.spec.seed

    def target_beta(self) -> float | None:
        """The beta whose optimal policy pi*_beta this run aims at: None for methods swept on another axis and for
        methods whose beta is not a KL coefficient (``beta_is_kl_coef`` False, e.g. SimPO's reward scale)."""
        m = self.method
        return float(m.config.beta) if m.sweep_param == "beta" and m.beta_is_kl_coef else None

    def log_eval(self, step: int, result: EvalResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if isinstance(self.env, TargetEvaluable) and result.per_prompt and "logp" in result.per_prompt:
            if self.own_target is None:
                self.own_target = resolve_target(self)
                self.extra_summary[N.OWN_TARGET] = target_label(self.own_target)
            if isinstance(self.own_target, Target):
                result.metrics.update(self.env.target_metrics(result, self.own_target))
        row = {"step": step, **(extra or {}), **result.metrics, N.COMPUTE_BUDGET: self.compute.summary()[N.COMPUTE_BUDGET]}
        self.logger.log(row)
        self.last_eval = result
        self.last_policy = None  # a table the method evaluated itself: no policy module to measure again
        self._keep_if_early(step, result)
        return row

    def _keep_if_early(self, step: int, result: EvalResult) -> None:
        """Keep this evaluation's per-prompt results if the method's early-stop signal chooses it so far (written
        as ``eval_early.npz`` at the end, see :mod:`alignbench.report.checkpoints`)."""
        signal = self.method.early_stop_signal
        if signal is None or result.per_prompt is None:
            return
        i = best_index([r.get(signal[0]) for r in self.logger.rows], signal[1])  # rows are logged in step order
        if i is not None and i == len(self.logger.rows) - 1:
            self.early = {"step": int(step), "per_prompt": result.per_prompt}
            self.extra_summary[EARLY_STEP] = int(step)

    def evaluate(self, policy: nn.Module, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate ``policy`` on the task (exactly or by sampling) and log one metrics row."""
        with self.compute.evaluating():
            result = self.env.evaluate(policy, beta=self.target_beta(), seed=self.seed)
        row = self.log_eval(step, result, extra)
        self.last_policy = policy  # the policy of the last evaluation, for evaluate_robustness
        return row

    def evaluate_robustness(self) -> None:
        """Once, after training: the task's robustness metrics (other temperatures, shifted prompts) of the policy
        of the last :meth:`evaluate`, as summary columns. Nothing where the task has none or the method logged
        its evaluations itself (no policy module, e.g. best-of-N)."""
        if self.last_policy is None or self.last_eval is None or not isinstance(self.env, RobustnessEvaluable):
            return
        with self.compute.evaluating():
            self.extra_summary.update(self.env.evaluate_robustness(
                self.last_policy, temperatures=self.train.eval_temperatures, seed=self.seed, final=self.last_eval))

    def reward_model(self):
        """The learned reward model for this task and seed (trained once, then loaded from the cache)."""
        from .reward_model import get_reward_model

        return get_reward_model(self.env, self.cache_dir, self.seed, self.device, show_progress=self.show_progress)

    # ---------------------------------------------------------------- checkpoints (resumable runs)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self, step: int, modules: dict[str, Any], extra: dict[str, Any]) -> None:
        """Atomically save everything needed to continue at ``step`` exactly as if never interrupted."""
        import io as _io

        state = {"step": step, "config_hash": stable_hash(self.spec.resolved()),
                 "modules": {k: m.state_dict() for k, m in modules.items()}, "extra": extra,
                 "rows": self.logger.rows, "torch_rng": torch.get_rng_state(),
                 "compute": self.compute.state_dict(), "early": self.early}
        buf = _io.BytesIO()
        torch.save(state, buf)
        io.write_bytes(self.checkpoint_path, buf.getvalue())
        io.write_text(self.checkpoint_path.with_suffix(".sha256"), hashlib.sha256(buf.getvalue()).hexdigest())

    def resume(self, modules: dict[str, Any], extra: dict[str, Any]) -> int:
        """Restore the last checkpoint of this run into ``modules``; returns its step (0 if none or unusable).

        Loaded with ``torch.load(weights_only=True)``; a checkpoint whose hash or config does not match is ignored.
        A resume appends ``{"pid", "resumed_from": step}`` to the run's ``attempts.jsonl``.
        """
        path, side = self.checkpoint_path, self.checkpoint_path.with_suffix(".sha256")
        if not (path.exists() and side.exists()):
            return 0
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != side.read_text().strip():
            return 0
        import io as _io

        state = torch.load(_io.BytesIO(data), weights_only=True, map_location="cpu")
        if state.get("config_hash") != stable_hash(self.spec.resolved()):
            return 0
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        extra.clear()
        extra.update(state["extra"])
        self.logger.rows = list(state["rows"])
        self.compute.load_state_dict(state.get("compute", {}))
        self.early = state.get("early")
        if self.early is not None:
            self.extra_summary[EARLY_STEP] = int(self.early["step"])
        if self.logger.write:
            io.write_jsonl(self.logger.path, self.logger.rows)
        torch.set_rng_state(state["torch_rng"])
        if self.logger.write:  # provenance: this attempt continued from the checkpoint, not from step 0
            io.append_line(self.run_dir / "attempts.jsonl",
                           io.dumps({"pid": os.getpid(), "resumed_from": int(state["step"])}))
        return int(state["step"])

    def check_finite(self, value: torch.Tensor, what: str, step: int) -> None:
        if not torch.isfinite(value).all():
            raise TrainingFailure(f"non-finite {what}", step)

    def progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        from .models import progress_disabled

        return tqdm(total=total, desc=desc, leave=False, disable=progress_disabled(self.show_progress), dynamic_ncols=True)


def resolve_target(ctx: RunContext) -> Target | NoTarget:
    """Ask the method for its population target on the env's tables (with the reward model's score table for a
    method that trains on one). A hook that raises gives NoTarget with the error; the RNG state is left as found."""
    from dataclasses import replace

    with torch.random.fork_rng(devices=[]):
        try:
            problem = ctx.env.tabular_problem()
            if ctx.method.needs_reward_model:
                from .reward_model import rm_score_table

                problem = replace(problem, rm_reward=rm_score_table(ctx.env, ctx.reward_model()))
            return ctx.method.population_target(problem)
        except Exception as e:  # noqa: BLE001 - a target is a measurement, never a reason to fail the run
            return NoTarget(f"the target hook failed: {type(e).__name__}: {e}"[:200])


def target_label(target: Target | NoTarget) -> str:
    """The summary's ``own_target`` cell: the target's formula, or "none: <reason>"."""
    return target.formula if isinstance(target, Target) else f"none: {target.reason}"


def summarize(spec: RunSpec, ctx: RunContext | None, status: str, reason: str, wall: float,
              steps: int) -> dict[str, Any]:
    """The run's one-row summary (the columns of summary.csv)."""
    metrics = ctx.last_eval.metrics if ctx is not None and ctx.last_eval is not None else {}
    row: dict[str, Any] = {
        "run_id": spec.run_id, "task": spec.task, "method": spec.method,
        "sweep_param": ctx.method.sweep_param if ctx else "beta",
        # only a KL coefficient goes in the beta column (NaN for SimPO's scale, ORPO's lambda, SLiC's delta, N)
        "beta": kl_beta(spec.method_config, ctx.method if ctx else None),
        "sweep_value": float(getattr(spec.method_config, ctx.method.sweep_param)) if ctx else float("nan"),
        "seed": spec.seed, "status": status, "reason": reason, "steps": steps, "wall_s": round(wall, 2),
    }
    if spec.variant:
        row["variant"] = spec.variant
    if getattr(spec.task_config, "data_seed", None) is not None:
        row["data_seed"] = int(spec.task_config.data_seed)
    if status != "ok":  # a failed run has no results: its metric columns stay empty (no step-0 values)
        return row
    for col, key in SUMMARY_KEYS.items():
        if key in metrics:
            row[col] = metrics[key]
    if ctx is not None:
        row.update(ctx.extra_summary)
        row.update(ctx.compute.summary())
        row.update(run_convergence(ctx.logger.rows) or {})
    return row


def run_method(method: Method, ctx: RunContext) -> None:
    """Train ``method``: the harness's offline loop for an :class:`OfflineMethod`, else the method's own ``run``."""
    if isinstance(method, OfflineMethod):
        from .trainer import train_offline

        train_offline(method, ctx)
    else:
        method.run(ctx)


def execute(spec: RunSpec, env: TaskEnv, method: Method, run_dir: Path, *, device: torch.device,
            cache_dir: Path, report_to: tuple[str, ...] = (), show_progress: bool = True) -> dict[str, Any] | None:
    """Run one spec to completion or failure; write ``summary.json`` last. Returns the summary row.

    In a data-parallel launch every process trains; only the main process writes (and returns) anything.
    """
    main = is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        io.append_line(run_dir / "attempts.jsonl", io.dumps({"pid": os.getpid(), "host": platform.node(),
                                                             "started": time.time()}))
        io.write_json(run_dir / "config.json", spec.resolved())
    seed_everything(spec.seed)
    logger = MetricsLogger(run_dir / "metrics.jsonl", report_to, spec.run_id, spec.resolved(), write=main)
    ctx = RunContext(spec=spec, run_dir=run_dir, env=env, method=method, device=device, cache_dir=cache_dir,
                     logger=logger, show_progress=show_progress and main)
    t0 = time.perf_counter()
    status, reason = "ok", ""
    try:
        run_method(method, ctx)
        if ctx.last_eval is None and main:
            raise TrainingFailure("the method never evaluated its policy", 0)
        if main:
            ctx.evaluate_robustness()
    except TrainingFailure as e:
        status, reason = "failed", f"{e.reason} at step {e.step}"
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the sweep
        if os.environ.get("ALIGNBENCH_RAISE") == "1":
            raise
        status = "failed"
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        io.write_text(run_dir / "traceback.txt", traceback.format_exc())
    finally:
        logger.close()
        ctx.compute.close()
    if not main:
        return None
    steps = int(logger.rows[-1]["step"]) if logger.rows else 0
    summary = summarize(spec, ctx, status, reason, time.perf_counter() - t0, steps)
    if ctx.last_eval is not None and ctx.last_eval.per_prompt is not None:
        io.save_arrays(run_dir / EVAL_FINAL, env.stored_arrays(ctx.last_eval.per_prompt))
    if status == "ok" and ctx.early is not None and ctx.early["step"] != steps:  # else eval_final is it
        io.save_arrays(run_dir / EVAL_EARLY, {**env.stored_arrays(ctx.early["per_prompt"]), "step": ctx.early["step"]})
    else:
        (run_dir / EVAL_EARLY).unlink(missing_ok=True)  # a stale one from an earlier attempt
    io.write_json(run_dir / RUN_SUMMARY, summary)
    for leftover in (ctx.checkpoint_path, ctx.checkpoint_path.with_suffix(".sha256")):
        leftover.unlink(missing_ok=True)  # the run is complete: its checkpoint is no longer needed
    return summary


def kl_beta(config: Any, method: Method | None) -> float:
    """The config's beta where it is the KL coefficient of the method's objective (``beta_is_kl_coef``), else NaN."""
    if method is not None and not method.beta_is_kl_coef:
        return float("nan")
    return float(getattr(config, "beta", float("nan")))
