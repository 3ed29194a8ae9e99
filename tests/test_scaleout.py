"""Scale-out: local worker processes and the Ray executor give the same results as one process."""

import pandas as pd
import pytest

from alignbench.cli import main

from .conftest import free_port, require, require_executable

from .test_reliability import comparable, metrics
from .test_sweep import sweep_args


@pytest.fixture
def serial(dpo_kto_sweep):
    return dpo_kto_sweep  # the session's single-process DPO + KTO sweep (conftest.py)


def test_local_workers_match_a_single_process(tmp_path, cache_dir, serial):
    out = tmp_path / "workers"
    assert main(sweep_args(out, cache_dir, methods="dpo,kto", betas="0.1,1.0", extra=["--workers", "2"])) == 0
    pd.testing.assert_frame_equal(comparable(out / "summary.csv"), comparable(serial / "summary.csv"))
    assert metrics(out) == metrics(serial)
    assert (out / "report.md").exists()


def test_ray_executor_on_a_local_instance(tmp_path, cache_dir, serial):
    ray = require("ray", "the ray extra is not installed (pip install 'alignbench[ray]')")
    out = tmp_path / "ray"
    try:
        assert main(sweep_args(out, cache_dir, methods="dpo,kto", betas="0.1,1.0", extra=["--executor", "ray"])) == 0
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(comparable(out / "summary.csv"), comparable(serial / "summary.csv"))
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(p.name for p in (serial / "runs").iterdir())


def test_default_workers_one_per_core_capped_by_the_runs(monkeypatch):
    import os

    from alignbench import executors
    from alignbench.errors import ConfigError
    from alignbench.planning import SweepConfig

    monkeypatch.delenv("ALIGNBENCH_WORKERS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert executors.default_workers("cpu", 4) == cores  # runs_per_gpu does nothing without a GPU
    cfg = SweepConfig(device="cpu")
    assert cfg.workers is None
    assert executors.resolve_workers(cfg, 1000) == cores
    assert executors.resolve_workers(cfg, 1) == 1  # never more workers than pending runs
    assert executors.resolve_workers(SweepConfig(device="cpu", workers=3), 2) == 2
    monkeypatch.setenv("ALIGNBENCH_WORKERS", "5")
    assert executors.resolve_workers(cfg, 1000) == 5
    assert executors.resolve_workers(SweepConfig(device="cpu", workers=3), 1000) == 3  # an explicit count wins
    monkeypatch.setenv("ALIGNBENCH_WORKERS", "two")
    with pytest.raises(ConfigError, match="workers"):
        executors.resolve_workers(cfg, 10)


def test_bad_executor_and_workers(tmp_path, cache_dir, capsys):
    assert main(sweep_args(tmp_path / "x", cache_dir, extra=["--executor", "slurm"])) == 2
    assert "executor: must be one of ['local', 'ray']" in capsys.readouterr().err
    assert main(sweep_args(tmp_path / "x", cache_dir, extra=["--workers", "0"])) == 2
    assert "workers: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_data_parallel_two_processes_match_one_process(tmp_path, cache_dir, serial):
    """torchrun with 2 CPU processes (gloo): each takes half of every batch, DDP averages gradients,
    KTO's z0 is gathered over both; the results equal the single-process sweep's, written once."""
    import json
    import os
    import subprocess

    torchrun = require_executable("torchrun")  # torch's console script, in the same venv as the interpreter
    out = tmp_path / "ddp"
    env = {**os.environ, "ALIGNBENCH_QUIET": "1", "OMP_NUM_THREADS": "1"}
    args = sweep_args(out, cache_dir, methods="dpo,kto", betas="0.1,1.0")
    launch = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "alignbench"]
    proc = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = comparable(out / "summary.csv"), comparable(serial / "summary.csv")
    assert list(a["run_id"]) == list(b["run_id"])
    for col in ("kl", "reward", "win_rate_vs_ref"):
        assert a[col].to_numpy() == pytest.approx(b[col].to_numpy(), rel=1e-4, abs=1e-6), col
    for run in (out / "runs").iterdir():
        assert len((run / "attempts.jsonl").read_text().splitlines()) == 1  # only the main process writes
        assert json.loads((run / "summary.json").read_text())["status"] == "ok"


def test_online_methods_are_refused_in_a_data_parallel_launch(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(sweep_args(tmp_path / "x", cache_dir, methods="ppo", betas="0.1")) == 2
    assert "'ppo' is online" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(sweep_args(tmp_path / "x", cache_dir, methods="dpo,rloo", betas="0.1")) == 2  # every loop method
    assert "'rloo' is online" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ runs per GPU


def test_gpu_slots_place_workers_round_robin():
    from alignbench.sweep import gpu_slots

    assert gpu_slots(16, 1, 16) == [0] * 16  # one GPU shared by 16 runs
    assert gpu_slots(16, 1, 4) == [0] * 4  # the pool is capped at n_gpu * runs_per_gpu
    assert gpu_slots(4, 1, 1) == [0]  # the default: one run per GPU at a time
    assert gpu_slots(5, 2, 2) == [0, 1, 0, 1]
    assert gpu_slots(3, 2, 4) == [0, 1, 0]  # fewer workers than slots: the GPUs fill evenly
    assert gpu_slots(8, 0, 4) == []  # no GPU: CPU workers
    slots = gpu_slots(100, 3, 5)
    assert len(slots) == 15 and all(slots.count(g) == 5 for g in range(3))


def test_local_pool_is_sized_and_pinned_by_runs_per_gpu(tmp_path, monkeypatch):
    """The worker pool with 2 (pretend) GPUs: min(workers, 2 * runs_per_gpu) processes, each taking one GPU id."""
    import concurrent.futures
    import os

    import torch

    from alignbench import sweep

    seen = {}

    class FakePool:
        def __init__(self, workers, mp_context=None, initializer=None, initargs=()):
            seen["workers"], seen["initializer"] = workers, initializer
            (queue,) = initargs
            seen["gpus"] = sorted(queue.get(timeout=5) for _ in range(workers))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, *iterables):
            seen["threads"] = set(iterables[2])  # each run gets the sweep's thread count (part of its run id)
            return [None for _ in zip(*iterables)]

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", FakePool)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = sweep.SweepConfig(workers=8, runs_per_gpu=3, out=str(tmp_path / "x"))
    specs = [sweep.RunSpec(task="exact", method="dpo", seed=0, method_config=None, task_config=None, train=None,
                           run_id=f"r{i}") for i in range(8)]
    progress = sweep.folder.Progress(len(specs), 0)
    assert sweep._execute_pending(cfg, None, specs, progress) == {f"r{i}": None for i in range(8)}
    assert seen["workers"] == 6 and seen["gpus"] == [0, 0, 0, 1, 1, 1]
    assert seen["threads"] == {torch.get_num_threads()} and seen["initializer"] is sweep._init_worker


def test_bad_runs_per_gpu(tmp_path, cache_dir, capsys):
    for bad in ("0", "-1", "1.5"):
        assert main(sweep_args(tmp_path / "x", cache_dir, extra=["--runs-per-gpu", bad])) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("alignbench: error: runs_per_gpu: "), err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path, cache_dir, capsys):
    assert main(sweep_args(tmp_path / "x", cache_dir, extra=["--device", "cuda"])) == 2
    err = capsys.readouterr().err.strip()
    assert err == "alignbench: error: device: 'cuda' requested but CUDA is not available (use --device cpu)"
    assert not (tmp_path / "x").exists()
