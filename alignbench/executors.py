"""Executing a sweep's pending runs: in this process, in local worker processes (CPU cores or GPU slots), or as
Ray tasks. Every worker re-plans the sweep from its config (deterministic) and runs one run under its lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import cache, folder, io
from .api import Method, Task
from .config import from_mapping, stable_hash, to_dict
from .distributed import is_main_process
from .errors import AlignbenchError, ConfigError
from .planning import Plan, SweepConfig, plan
from .runner import RunSpec, execute



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
    task = the_plan.task_of(spec)
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


def default_workers(device: str, runs_per_gpu: int) -> int:
    """The worker count when a sweep sets none: ``$ALIGNBENCH_WORKERS``, else runs_per_gpu per visible GPU, else one
    per CPU core this process may use (each run uses one torch thread on the CPU)."""
    import torch

    env = os.environ.get("ALIGNBENCH_WORKERS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError("workers", f"$ALIGNBENCH_WORKERS must be an integer >= 1, got {env!r}")
        return int(env)
    n_gpu = torch.cuda.device_count() if device != "cpu" else 0
    if n_gpu:
        return n_gpu * runs_per_gpu
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(cfg: SweepConfig, n_pending: int) -> int:
    """Workers for ``n_pending`` runs: the configured count (or the default), never more than the runs."""
    workers = cfg.workers if cfg.workers is not None else default_workers(cfg.device, cfg.runs_per_gpu)
    return max(1, min(workers, n_pending))


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
    n_workers = resolve_workers(cfg, len(pending))
    if n_workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        slots = gpu_slots(n_workers, torch.cuda.device_count() if cfg.device != "cpu" else 0, cfg.runs_per_gpu)
        workers = len(slots) or n_workers
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
        task = the_plan.task_of(spec)
        progress.start(spec.run_id)
        out[spec.run_id] = _run_locked(cfg, spec, the_plan.methods[spec.run_id],
                                       lambda task=task: _env(task, cfg.cache_dir, device), device)
        progress.end(spec.run_id, out[spec.run_id])
    return out
