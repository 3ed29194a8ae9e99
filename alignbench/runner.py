"""One run: a (task, method, sweep value, seed) cell of a sweep, from config to ``summary.json``.

Layout of a run folder ``DIR/runs/<run_id>/``:

* ``config.json``  the resolved config (task, method, train, seed), written first;
* ``metrics.jsonl`` one row per evaluation step (grouped names: ``train/``, ``eval/``, ``kl/``, ``reward/``);
* ``eval_final.json`` per-prompt results of the final evaluation (for head-to-head win rates);
* ``summary.json`` written last and atomically: its presence marks the run complete.
"""

from __future__ import annotations

import hashlib
import math
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
from .api import EvalResult, Method, TaskEnv
from .config import TrainConfig, non_default, stable_hash, to_dict
from .distributed import is_main_process
from .errors import TrainingFailure

SUMMARY_KEYS = {  # summary.csv column <- final metric name
    "kl": "kl/ref",
    "kl_se": "kl/ref_se",
    "reward": "reward/gold",
    "reward_se": "reward/gold_se",
    "win_rate_vs_ref": "winrate/vs_ref",
    "win_rate_vs_ref_se": "winrate/vs_ref_se",
    "entropy": "policy/entropy",
    "length": "policy/length",
    "frontier_gap": "exact/frontier_gap",
    "kl_to_target": "kl/to_target",
    "unseen_mass": "exact/unseen_mass",
    "kl_is_bound": "kl/is_bound",
    "win_rate_vs_chosen": "winrate/vs_chosen",
}
BASE_COLUMNS = ["run_id", "task", "method", "sweep_param", "beta", "sweep_value", "seed", "status", "reason",
                "steps", "wall_s"]


def summary_frame(rows: list[dict[str, Any]]) -> "Any":
    """summary.csv as a DataFrame with a fixed column order (base columns, metrics, then extras sorted)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    known = [c for c in BASE_COLUMNS + list(SUMMARY_KEYS) if c in df.columns]
    return df[known + sorted(c for c in df.columns if c not in known)]


def configure_threads(device: torch.device) -> None:
    """One torch thread on CPU unless OMP_NUM_THREADS says otherwise: the embedded tasks' models are
    tiny, and on a 2-core machine a second thread costs more in synchronisation than it gains."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


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

    def identity(self) -> dict[str, Any]:
        """What the run id hashes: task, method, seed and every config field that differs from its default."""
        return {"task": self.task, "method": self.method, "seed": self.seed,
                "method_config": non_default(self.method_config), "task_config": non_default(self.task_config),
                "train": non_default(self.train)}

    def resolved(self) -> dict[str, Any]:
        return {"task": self.task, "method": self.method, "seed": self.seed,
                "method_config": to_dict(self.method_config), "task_config": to_dict(self.task_config),
                "train": to_dict(self.train)}


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
    """What the harness hands a method's ``run``: the task, config, device, caches and logging."""

    spec: RunSpec
    run_dir: Path
    env: TaskEnv
    method: Method
    device: torch.device
    cache_dir: Path
    logger: MetricsLogger
    show_progress: bool = True
    last_eval: EvalResult | None = None
    extra_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> TrainConfig:
        return self.spec.train

    @property
    def seed(self) -> int:
        return self.spec.seed

    def target_beta(self) -> float | None:
        """The beta whose optimal policy pi*_beta this run aims at (None for methods swept on another axis)."""
        return float(self.method.config.beta) if self.method.sweep_param == "beta" else None

    def log_eval(self, step: int, result: EvalResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        row = {"step": step, **(extra or {}), **result.metrics}
        self.logger.log(row)
        self.last_eval = result
        return row

    def evaluate(self, policy: nn.Module, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate ``policy`` on the task (exactly or by sampling) and log one metrics row."""
        result = self.env.evaluate(policy, beta=self.target_beta(), seed=self.seed)
        return self.log_eval(step, result, extra)

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
                 "rows": self.logger.rows, "torch_rng": torch.get_rng_state()}
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


def summarize(spec: RunSpec, ctx: RunContext | None, status: str, reason: str, wall: float,
              steps: int) -> dict[str, Any]:
    """The run's one-row summary (the columns of summary.csv)."""
    metrics = ctx.last_eval.metrics if ctx is not None and ctx.last_eval is not None else {}
    row: dict[str, Any] = {
        "run_id": spec.run_id, "task": spec.task, "method": spec.method,
        "sweep_param": ctx.method.sweep_param if ctx else "beta",
        "beta": float(getattr(spec.method_config, "beta", float("nan"))),
        "sweep_value": float(getattr(spec.method_config, ctx.method.sweep_param)) if ctx else float("nan"),
        "seed": spec.seed, "status": status, "reason": reason, "steps": steps, "wall_s": round(wall, 2),
    }
    for col, key in SUMMARY_KEYS.items():
        if key in metrics:
            row[col] = metrics[key]
    if ctx is not None:
        row.update(ctx.extra_summary)
    return row


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
        method.run(ctx)
        if ctx.last_eval is None and main:
            raise TrainingFailure("the method never evaluated its policy", 0)
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
    if not main:
        return None
    steps = int(logger.rows[-1]["step"]) if logger.rows else 0
    summary = summarize(spec, ctx, status, reason, time.perf_counter() - t0, steps)
    if ctx.last_eval is not None and ctx.last_eval.per_prompt is not None:
        io.save_arrays(run_dir / "eval_final.npz", ctx.last_eval.per_prompt)
    io.write_json(run_dir / "summary.json", summary)
    for leftover in (ctx.checkpoint_path, ctx.checkpoint_path.with_suffix(".sha256")):
        leftover.unlink(missing_ok=True)  # the run is complete: its checkpoint is no longer needed
    return summary


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
