"""benchmarks/bench.py cannot rot: its step comparisons run at tiny sizes and give finite numbers and agreeing
loss curves. Timings are never asserted (they depend on the machine and its load)."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from .conftest import require

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("alignbench_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("data", ["synthetic", "exact"])
def test_bench_step_comparisons_tiny(bench, tmp_path, data):
    require("trl")
    sizes = replace(bench.QUICK, pairs=48, eval_pairs=8, batch_size=8, steps=6, warmup=1, repeats=1, words=24,
                    prompt_words=(2, 4), completion_words=(2, 5), trl_defaults=False, threads=1)
    import torch

    threads = torch.get_num_threads()
    try:
        bench.apply_threads(sizes)
        res = bench.bench_steps(sizes, tmp_path, data=data, with_trl=True, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    for name in ("plain", "unpacked", "alignbench", "trl"):
        r = res[name]
        assert len(r["losses"]) == sizes.steps
        assert all(math.isfinite(x) for x in r["losses"])
        assert math.isfinite(r["median_ms_per_step"]) and r["median_ms_per_step"] > 0
    assert math.isfinite(res["overhead_ratio"]) and math.isfinite(res["trl_speedup"])
    # the same batches, model, optimizer: alignbench's loop and the plain loop agree exactly, TRL to ~1e-4
    assert res["plain_vs_alignbench_max_abs_loss_diff"] == 0.0
    assert res["alignbench_repeat_max_abs_loss_diff"] == 0.0
    # the default step packs each distinct prefix once where that saves positions (the synthetic prompts here are
    # about as long as the completions; the exact task's 32 pairs share a few prompts and many completion
    # prefixes): the same curve to rounding
    assert res["packed_share"] > 0.5
    assert res["default_vs_plain_max_abs_loss_diff_early"] <= bench.GOAL_TRL_LOSS_AGREEMENT
    # over the whole run in float64 the packed and the plain loop are the same computation
    assert res["rounding"]["packed64"] <= bench.GOAL_FP64_LOSS_REL_AGREEMENT
    assert 0 < res["rounding"]["packed32"] < 1e-3 and 0 <= res["rounding"]["plain32"] < 1e-3
    assert res["trl_vs_alignbench_max_abs_loss_diff_early"] <= bench.GOAL_TRL_LOSS_AGREEMENT
    text = bench.table({"steps": {data: res}}, sizes)
    assert "harness overhead" in text and "TRL" in text


def test_bench_ppo_tiny(bench, tmp_path):
    sizes = replace(bench.QUICK, ppo_iterations=2, threads=1)
    res = bench.bench_ppo(sizes, tmp_path, log=lambda _: None)
    assert res["iterations"] == 2
    for k in ("tokens_per_s", "generate_share", "s_per_iteration"):
        assert math.isfinite(res[k]) and res[k] > 0, k
    assert 0 < res["generate_share"] < 1
    assert "ppo" in bench.table({"ppo": res}, sizes)


def test_bench_kernels_tiny(bench, tmp_path):
    sizes = replace(bench.QUICK, pairs=48, eval_pairs=8, batch_size=8, steps=6, warmup=1, repeats=1, words=24,
                    prompt_words=(2, 4), completion_words=(2, 5), threads=1)
    res = bench.bench_kernels(sizes, tmp_path, data="synthetic", log=lambda _: None)
    assert math.isfinite(res["speedup"]) and res["speedup"] > 0
    # stock and fused kernels compute the same losses up to float rounding
    assert res["max_abs_loss_diff"] < 1e-5
    assert "stock kernels" in bench.table({"kernels": {"synthetic": res}}, sizes)


def test_bench_sweep_default_quick(bench, tmp_path):
    """The sweep-default part runs `alignbench sweep --config` in a fresh process (here one tiny run) and reads back
    what the sweep recorded: runs, workers, sum of run times."""
    res = bench.bench_sweep_default("configs/default.yaml", tmp_path, quick=True, log=lambda _: None)
    assert res["runs"] == res["ok"] == 1 and res["tasks"] == ["exact"] and res["seeds"] == [0]
    assert res["workers"] == 1  # never more workers than pending runs
    assert math.isfinite(res["wall_s"]) and res["wall_s"] > 0 and res["sum_run_s"] > 0
    assert "configs/default.yaml" in bench.table({"sweep_default": res}, bench.QUICK)
