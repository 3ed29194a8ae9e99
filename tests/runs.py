"""One run of a method on a task env, straight through ``runner.execute`` (shared by the PPO and best-of-N tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from alignbench import io
from alignbench.config import from_mapping
from alignbench.registry import get_method
from alignbench.runner import RunSpec, execute

CPU = torch.device("cpu")


def run_method(task, env, cache, out: Path, method: str, overrides: dict, train: dict | None = None, seed: int = 0,
               name: str | None = None):
    """Run ``method`` with config ``overrides`` into ``out / (name or method)``.

    Returns (summary row, metrics.jsonl rows, the policies ``env.make_policy`` built during the run)."""
    cls = get_method(method)
    mcfg = from_mapping(cls.config_cls, overrides)
    spec = RunSpec(task="exact", method=method, seed=seed, method_config=mcfg, task_config=task.config,
                   train=task.train_config(train or {}), run_id=name or f"{method}-test")
    made = []
    original = env.make_policy

    def make_policy():
        made.append(original())
        return made[-1]

    env.make_policy = make_policy
    run_dir = Path(out) / (name or method)
    try:
        summary = execute(spec, env, cls(mcfg), run_dir, device=CPU, cache_dir=cache, show_progress=False)
    finally:
        del env.make_policy
    return summary, io.read_jsonl(run_dir / "metrics.jsonl"), made
