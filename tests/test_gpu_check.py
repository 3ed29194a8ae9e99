"""benchmarks/gpu_check.py's own logic, without a GPU: the summary comparison, the time limits and the table's
verdicts (the script itself is dry-run with ``benchmarks/gpu_check.sh OUT --dry-run``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("alignbench_gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_compare_summaries_by_hand(gc, tmp_path):
    cpu = pd.DataFrame({"run_id": ["a", "b", "c"], "task": ["exact", "exact", "sentiment"],
                        "method": ["dpo", "ipo", "dpo"], "sweep_value": [0.1, 0.1, 0.1], "seed": [0, 0, 0],
                        "wall_s": [10.0, 20.0, 30.0], "kl": [2.0, 0.0, 5.0], "reward": [1.0, 0.5, 9.0],
                        "perf/rollout_tokens_per_s": [1.0, 1.0, 1.0]})
    gpu = cpu[cpu["task"] == "exact"].copy()
    gpu["wall_s"] = [1.0, 2.0]  # never compared
    gpu["kl"] = [2.002, 1e-9]  # rel 1e-3 on run a; run b's CPU value is 0: absolute only
    gpu["reward"] = [1.0, 0.55]  # rel 0.1 on run b
    cpu.to_csv(tmp_path / "cpu.csv", index=False)
    gpu.to_csv(tmp_path / "gpu.csv", index=False)
    res = gc.compare_summaries(tmp_path / "gpu.csv", tmp_path / "cpu.csv")
    assert res["matched_on"] == ["run_id"] and res["matched_rows"] == 2 and res["cpu_rows"] == 2
    cols = {c["column"]: c for c in res["columns"]}
    assert list(cols) == ["reward", "kl"]  # sorted by the largest relative difference; wall_s and perf/* left out
    assert cols["reward"]["max_rel"] == pytest.approx(0.1) and cols["reward"]["at"] == "b"
    assert cols["kl"]["max_rel"] == pytest.approx(1e-3) and cols["kl"]["at"] == "a"
    assert cols["kl"]["max_abs"] == pytest.approx(0.002)
    # other run ids (another config): rows matched by method, sweep value and seed
    gpu["run_id"] = ["x", "y"]
    gpu.to_csv(tmp_path / "gpu.csv", index=False)
    assert gc.compare_summaries(tmp_path / "gpu.csv", tmp_path / "cpu.csv")["matched_on"] == ["method", "sweep_value", "seed"]


def test_part_limits(gc):
    budgets = {"a": 70, "b": 130, "e": 110}
    assert gc.part_limit("a", ["a", "b", "e"], budgets, 400) == 70
    assert gc.part_limit("b", ["a", "b", "e"], budgets, 100) == 100  # never more than the time left
    assert gc.part_limit("e", ["a", "b", "e"], budgets, 300) == 300  # the last part gets all that is left
    assert sum(gc.BUDGET_S[p] for p in "abcd") + 110 <= gc.TOTAL_S - 20  # e keeps >= 110 s after a ~20 s install


def test_table_verdicts(gc):
    loops = {name: {"ms_per_step": ms, "tokens_per_s": 6000 / (ms / 1000), "peak_gib": 3.0, "losses": [0.69] * 64}
             for name, ms in (("alignbench_fp32", 90.0), ("alignbench_bf16", 30.0), ("trl_bf16", 40.0))}
    results = {"mode": "gpu", "parts": {
        "a": {"status": "ok", "wall_s": 40, "counts": {"passed": 5, "failure": 1, "error": 0, "skipped": 0},
              "tests": [{"name": "test_x", "outcome": "failure", "detail": "boom"}]},
        "b": {"status": "ok", "runs_per_gpu": 16, "cpu_runs_s": 327.0, "fraction_of_cpu": 0.2,
              "sweep": {"status": "ok", "wall_s": 65.4, "runs": 32, "runs_ok": 32}, "compare": {"columns": []}},
        "c": {"status": "ok", "params": 124_439_808, "seq_tokens": [256, 512], "loops": loops, "bf16_speedup": 3.0,
              "bf16_loss_max_rel": 2e-2, "trl_speedup_bf16": 40 / 30, "trl_vs_alignbench_bf16_loss_max_rel": 1e-3},
        "d": {"status": "timeout", "reason": "killed at its 40 s limit"},
        "e": {"status": "partial", "warm_cache": True, "sweeps": {"16": {"status": "ok", "wall_s": 20.0, "runs": 15,
                                                                          "runs_ok": 15},
                                                                   "1": {"status": "timeout", "wall_s": 80.0}}}}}
    t = gc.table(results)
    line = {row.split(" | ")[1]: row for row in t.splitlines()[2:]}
    assert line["CUDA-marked tests"].endswith("**missed** |") and "5 passed, 1 failed" in line["CUDA-marked tests"]
    assert line["... / the committed 2-core CPU runs' time"].endswith("| met |")
    assert line["alignbench bf16 / fp32 tokens/s"].endswith("| met |")
    assert line["bf16 vs fp32 losses over 64 steps, max relative"].endswith("**missed** |")
    assert line["alignbench bf16 / TRL bf16 tokens/s"].endswith("**missed** |")  # 1.33x < 1.5x
    assert "timeout: killed at its 40 s limit" in t and "timeout after 80 s" in t
