"""GPU evidence (issue 19): one prepared check that runs the suite's CUDA paths on a GPU machine and measures them.

``benchmarks/gpu_check.sh OUT`` (or ``make bench-gpu``) installs the carried wheels and runs this driver, which writes
``OUT/gpu_check.json`` (every figure), ``OUT/gpu_check.md`` (the table), ``OUT/summary_exact_gpu.csv`` (part b's
summary) and ``OUT/gpu_check.log``. Five parts, each in its own process, killed at its time limit, so that the whole
check ends inside ``--total-s`` (default 465 s, counted from the shell script's start: the GPU machine's time is short,
counts start-up, and must leave room for one rerun):

a. the CUDA-marked tests (``pytest -m cuda tests/test_cuda.py``);
b. the default exact-task sweep (``configs/default.yaml``, task exact: 32 runs) on the GPU, cold cache, runs sharing the
   GPU (16 workers, ``runs_per_gpu`` 16), timed; its ``summary.csv`` against the committed CPU one (largest differences
   per column);
c. DPO on a GPT-2-small-sized policy (124M parameters, randomly initialised: ``GPT2Config`` 12 layers, 768 wide, 12
   heads, vocabulary 50257) on ``make bench``'s synthetic workload with 256-512-token sequences: ms/step, tokens/s and
   peak GPU memory of alignbench fp32, alignbench bf16 and TRL's ``DPOTrainer`` (bf16) on the same batches with the same
   precomputed reference log-probs; fp32 against bf16 losses over 64 steps;
d. PPO on the exact task: rollout tokens/s and seconds per iteration (``bench.bench_ppo``);
e. the exact sweep of ``configs/exact.yaml`` (dpo, ipo, kto: 15 runs; warm cache after b) with ``runs_per_gpu`` 16, 4
   and 1 (in that order: whatever the time limit cuts is the slowest).

``--dry-run`` runs every part at toy size on the CPU (the CUDA tests then skip): it proves the script end to end.
Timings of a dry run mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "benchmarks")) if p not in sys.path]

PARTS = ("a", "b", "c", "d", "e")
TITLES = {"a": "CUDA-marked tests", "b": "default exact-task sweep, cold cache, runs sharing the GPU",
          "c": "DPO on a 124M GPT-2: alignbench fp32 / bf16 vs TRL bf16", "d": "PPO on the exact task",
          "e": "exact sweep (configs/exact.yaml) with runs_per_gpu 16, 4, 1"}
# Seconds per part on the H200, estimated on the CPU (no GPU has run this yet): a, pytest start-up ~10 s, the tiny exact
# reference, a reward model and one 2-worker sweep; b, the cold reference build (~10 s), then 32 runs over 16 workers
# whose longest is a 100-iteration PPO run (~20 s on 2 CPU cores); c, three 64-step loops of a few hundred ms at most
# plus TRL's construction; d, 20 PPO iterations (reference and reward model from b's cache); e, three sweeps of 15 runs
# (R=1 runs them one at a time: ~5 s each), given all the time left (at least 445 - 335 = 110 s). The install takes ~20 s.
BUDGET_S = {"a": 70, "b": 130, "c": 95, "d": 40, "e": 110}
DRY_BUDGET_S = {"a": 120, "b": 240, "c": 240, "d": 180, "e": 300}
TOTAL_S = 465
# goals of issue 19 (written down whether met or not)
GOAL_BF16_SPEEDUP = 1.5  # alignbench bf16 tokens/s / fp32 tokens/s, at least
GOAL_BF16_LOSS_REL = 1e-2  # max |loss_bf16 - loss_fp32| / loss_fp32 over 64 steps
GOAL_TRL_SPEEDUP = 1.5  # alignbench bf16 tokens/s / TRL bf16 tokens/s, at least
GOAL_SWEEP_FRACTION = 0.25  # GPU sweep wall / the 2-core CPU time of the same runs, at most
TINY_TASK = {"num_prompts": 4, "vocab_size": 4, "length": 3, "n_layer": 1, "n_embd": 32, "n_head": 2,
             "pretrain_steps": 60, "num_train_pairs": 256, "num_eval_pairs": 64}
COMMITTED = ROOT / "results" / "default" / "summary.csv"


def log(part: str, msg: str) -> None:
    print(f"[{part}] {msg}", flush=True)


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------ parts (child processes)


def part_a(work: Path, dry: bool, budget: float, save: Callable[[dict], None]) -> dict[str, Any]:
    """pytest -m cuda: each test's outcome and duration (from its junit XML)."""
    import xml.etree.ElementTree as ET

    xml = work / "a.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    log("a", " ".join(cmd[2:]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(budget - 5, 10))
    except subprocess.TimeoutExpired as e:  # pytest writes its junit XML only at the end: keep its output
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(out[-4000:], flush=True)
        return {"returncode": None, "timed_out": True, "wall_s": time.perf_counter() - t0, "tests": [],
                "counts": {"passed": 0, "failure": 0, "error": 1, "skipped": 0}, "output_tail": out[-2000:]}
    wall = time.perf_counter() - t0
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", flush=True)
    tests = []
    if xml.exists():
        for case in ET.parse(xml).iter("testcase"):
            outcome, detail = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome, detail = tag, (el.get("message") or "")[:300]
            tests.append({"name": case.get("name"), "outcome": outcome, "time_s": float(case.get("time") or 0),
                          "detail": detail})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failure", "error", "skipped")}
    return {"returncode": proc.returncode, "wall_s": wall, "tests": tests, "counts": counts}


def sweep_cmd(out: Path, cache: Path, *, config: str, runs_per_gpu: int, dry: bool) -> list[str]:
    cmd = [sys.executable, "-m", "alignbench", "sweep", "--config", config, "--task", "exact", "--out", str(out),
           "--cache-dir", str(cache), "--no-progress"]
    if dry:  # toy size on the CPU: the tiny exact task, few steps, 2 methods; CPU workers stand in for GPU slots
        cmd += ["--methods", "dpo,ppo", "--betas", "0.1,1", "--steps", "4", "--method-arg", "ppo.iterations=4",
                "--device", "cpu",
                "--workers", str(runs_per_gpu)] + [f"--task-arg=exact.{k}={v}" for k, v in TINY_TASK.items()]
    else:
        cmd += ["--device", "cuda", "--workers", "16", "--runs-per-gpu", str(runs_per_gpu)]
    return cmd


def timed_sweep(part: str, cmd: list[str], timeout: float) -> dict[str, Any]:
    log(part, " ".join(cmd[2:]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": time.perf_counter() - t0, "timeout_s": timeout}
    wall = time.perf_counter() - t0
    out = Path(cmd[cmd.index("--out") + 1])
    res = {"status": "ok" if proc.returncode == 0 else "failed", "returncode": proc.returncode, "wall_s": wall,
           "stdout": proc.stdout[-500:], "stderr": proc.stderr[-1500:]}
    if (out / "sweep.json").exists():
        sj = json.loads((out / "sweep.json").read_text())
        res.update(sweep_wall_s=sj.get("wall_s"), environment=sj.get("environment"))
    if (out / "summary.csv").exists():
        import pandas as pd

        s = pd.read_csv(out / "summary.csv")
        res.update(runs=len(s), runs_ok=int((s["status"] == "ok").sum()), run_wall_s_sum=float(s["wall_s"].sum()))
    log(part, f"{res['status']} in {wall:.1f} s ({res.get('runs_ok', 0)}/{res.get('runs', 0)} runs ok)")
    return res


def compare_summaries(gpu_csv: Path, cpu_csv: Path, top: int = 8) -> dict[str, Any]:
    """Per numeric column, the largest absolute and relative difference between two summary.csv files (rows
    matched by run id, else by method, sweep value and seed); the columns sorted by their largest relative one."""
    import numpy as np
    import pandas as pd

    g, c = pd.read_csv(gpu_csv), pd.read_csv(cpu_csv)
    c = c[c["task"].isin(g["task"].unique())]
    key = ["run_id"] if set(g["run_id"]) & set(c["run_id"]) else ["method", "sweep_value", "seed"]
    m = g.merge(c, on=key, suffixes=("_gpu", "_cpu"))
    skip = {"seed", "steps", "wall_s", "beta", "sweep_value", "ppo/setup_seconds", "ppo/iterations"}
    cols = []
    for col in g.columns:
        if col in skip or col in key or col.startswith("perf/") or f"{col}_cpu" not in m:
            continue
        a, b = pd.to_numeric(m[f"{col}_gpu"], errors="coerce"), pd.to_numeric(m[f"{col}_cpu"], errors="coerce")
        ok = a.notna() & b.notna()
        if not ok.any():
            continue
        diff = (a - b).abs()[ok]
        scale = b.abs()[ok]
        rel = (diff / scale.where(scale > 1e-6)).fillna(0.0)  # relative only where the CPU value is not ~0
        i = int(np.argmax(rel.to_numpy()))
        cols.append({"column": col, "max_abs": float(diff.max()), "max_rel": float(rel.max()),
                     "at": " ".join(str(m.loc[rel.index[i], k]) for k in (["run_id"] if "run_id" in m else key)),
                     "cpu": float(b[ok].iloc[i]), "gpu": float(a[ok].iloc[i]), "rows": int(ok.sum())})
    cols.sort(key=lambda r: -r["max_rel"])
    return {"matched_rows": len(m), "matched_on": key, "gpu_rows": len(g), "cpu_rows": len(c), "columns": cols[:top]}


def part_b(work: Path, dry: bool, budget: float, save: Callable[[dict], None]) -> dict[str, Any]:
    import pandas as pd

    cpu = pd.read_csv(COMMITTED)
    cpu_runs_s = float(cpu.loc[cpu["task"] == "exact", "wall_s"].sum())
    res: dict[str, Any] = {"cpu_runs_s": cpu_runs_s, "runs_per_gpu": 2 if dry else 16}
    res["sweep"] = timed_sweep("b", sweep_cmd(work / "b", work / "cache", config="configs/default.yaml",
                                              runs_per_gpu=res["runs_per_gpu"], dry=dry), budget - 10)
    if (work / "b" / "summary.csv").exists():
        res["compare"] = compare_summaries(work / "b" / "summary.csv", COMMITTED)
        for r in res["compare"]["columns"]:
            log("b", f"{r['column']}: max rel diff {r['max_rel']:.2e} (abs {r['max_abs']:.2e}) at {r['at']}")
    if res["sweep"]["status"] == "ok":
        res["fraction_of_cpu"] = res["sweep"]["wall_s"] / cpu_runs_s
    return res


def part_e(work: Path, dry: bool, budget: float, save: Callable[[dict], None]) -> dict[str, Any]:
    res: dict[str, Any] = {"warm_cache": (work / "cache").exists(), "sweeps": {}}
    deadline = time.monotonic() + budget - 5
    for r in ((2, 1) if dry else (16, 4, 1)):
        left = deadline - time.monotonic()
        if left < 10:
            res["sweeps"][str(r)] = {"status": "skipped", "reason": "no time left in the part's budget"}
            continue
        res["sweeps"][str(r)] = timed_sweep("e", sweep_cmd(work / f"e{r}", work / "cache", config="configs/exact.yaml",
                                                           runs_per_gpu=r, dry=dry), left)
        save(res)
    return res


def gpt2_small_sizes(dry: bool):
    """GPT-2 small (124M: 12 x 768, 12 heads, vocabulary 50257, 1024 positions) on 256-512-token synthetic pairs,
    8 pairs per step, 64 steps, lr 1e-5 (a fine-tuning rate: the loss stays far from 0, so relative loss
    differences mean something); the dry run: bench.py's tiny GPT-2 on short sequences."""
    from bench import Sizes

    if dry:
        return Sizes(pairs=64, eval_pairs=8, batch_size=8, steps=8, warmup=2, repeats=1, words=64,
                     prompt_words=(4, 12), completion_words=(4, 12), lr=1e-5)
    return Sizes(pairs=512, eval_pairs=16, batch_size=8, steps=64, warmup=4, repeats=1, n_layer=12, n_embd=768,
                 n_head=12, words=50000, vocab_size=50257, n_positions=1024, prompt_words=(128, 256),
                 completion_words=(128, 256), lr=1e-5)


def part_c(work: Path, dry: bool, budget: float, save: Callable[[dict], None]) -> dict[str, Any]:
    import torch
    from bench import alignbench_batches, make_bench_env, max_rel_diff, run_alignbench, run_trl, trl_dataset

    device = torch.device(device_name())
    sizes = gpt2_small_sizes(dry)
    t0 = time.perf_counter()
    env = make_bench_env(sizes, "synthetic", work)
    train, batches = alignbench_batches(env, sizes, work, device)  # reference log-probs computed on the device
    ds = trl_dataset(train, batches)
    tokens = [int(b[2].sum()) for b in batches]  # real (unpadded) tokens per step: chosen + rejected sequences
    lengths = [int(n) for b in batches for n in b[2].sum(1).tolist()]
    res: dict[str, Any] = {
        "device": device.type, "params": sum(p.numel() for p in env.reference.parameters()),
        "sizes": {k: getattr(sizes, k) for k in ("pairs", "batch_size", "steps", "warmup", "n_layer", "n_embd", "n_head",
                                                 "vocab_size", "n_positions", "prompt_words", "completion_words", "lr")},
        "seq_tokens": [min(lengths), max(lengths)], "tokens_per_step": statistics.mean(tokens),
        "setup_s": time.perf_counter() - t0, "loops": {}}
    log("c", f"{res['params'] / 1e6:.1f}M parameters, sequences of {min(lengths)}-{max(lengths)} tokens, "
             f"{res['tokens_per_step']:.0f} tokens/step, setup {res['setup_s']:.1f} s")
    loops = [("alignbench_fp32", lambda: run_alignbench(env, sizes, work, device=device)),
             ("alignbench_bf16", lambda: run_alignbench(env, sizes, work, precision="bf16", device=device)),
             ("trl_bf16", lambda: run_trl(env, ds, sizes, work, bf16=True, device=device))]
    for name, fn in loops:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        r = fn()
        ms = r.median_ms(sizes.warmup)
        timed = r.step_s[sizes.warmup:]
        res["loops"][name] = {
            "ms_per_step": ms, "p10_ms_per_step": 1000 * sorted(timed)[len(timed) // 10],
            "tokens_per_s": res["tokens_per_step"] / (ms / 1000), "loop_s": r.total_s, "losses": r.losses,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            **{k: v for k, v in r.extra.items() if isinstance(v, (int, float))}}
        log("c", f"{name}: {ms:.1f} ms/step, {res['loops'][name]['tokens_per_s']:,.0f} tokens/s"
                 + (f", peak {res['loops'][name]['peak_gib']:.2f} GiB" if device.type == "cuda" else ""))
        save(res)
    lp = res["loops"]
    res["bf16_speedup"] = lp["alignbench_bf16"]["tokens_per_s"] / lp["alignbench_fp32"]["tokens_per_s"]
    res["bf16_loss_max_rel"] = max_rel_diff(lp["alignbench_fp32"]["losses"], lp["alignbench_bf16"]["losses"])
    res["trl_speedup_bf16"] = lp["alignbench_bf16"]["tokens_per_s"] / lp["trl_bf16"]["tokens_per_s"]
    res["trl_vs_alignbench_bf16_loss_max_rel"] = max_rel_diff(lp["alignbench_bf16"]["losses"], lp["trl_bf16"]["losses"])
    return res


def part_d(work: Path, dry: bool, budget: float, save: Callable[[dict], None]) -> dict[str, Any]:
    import torch
    from bench import QUICK, Sizes, bench_ppo

    sizes = QUICK if dry else replace(Sizes(), ppo_iterations=20)
    # bench_ppo keeps the task under tmp/exact-cache and the reward model under tmp/cache: both point at part b's
    # sweep cache, which holds the same reference and the same seed-0 reward model (warm when b ran)
    tmp = work / "d"
    tmp.mkdir(exist_ok=True)
    (work / "cache").mkdir(exist_ok=True)
    warm = any((work / "cache").iterdir())
    for name in ("cache", "exact-cache"):
        (tmp / name).symlink_to(work / "cache", target_is_directory=True)
    res = bench_ppo(sizes, tmp, log=lambda m: log("d", m.strip()), device=torch.device(device_name()))
    return {"warm_cache": warm, **{k: v for k, v in res.items() if k != "loadavg"}}


PART_FN = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}


def run_part(part: str, work: Path, dry: bool, budget: float) -> int:
    """Child process: run one part, writing its JSON after every step that adds figures (kept if it is killed)."""
    from alignbench.models import quiet_transformers

    quiet_transformers()
    path = work / f"part_{part}.json"

    def save(res: dict) -> None:
        path.write_text(json.dumps({"status": "partial", **res}, indent=1, default=str))

    res = PART_FN[part](work, dry, budget, save)
    path.write_text(json.dumps({"status": "ok", **res}, indent=1, default=str))
    return 0


# ------------------------------------------------------------------------------------------ the driver


def part_limit(part: str, parts: list[str], budgets: dict[str, float], left: float) -> float:
    """A part's time limit: its own budget (the last part: all the time left, so that time saved by the parts before
    it goes to the open-ended one), never more than the time left."""
    return left if part == parts[-1] else min(budgets[part], left)


def environment() -> dict[str, Any]:
    import importlib.metadata as md
    import platform

    import torch

    versions = {}
    for pkg in ("torch", "transformers", "trl", "datasets", "accelerate", "vaderSentiment", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    gpu = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
               "cuda": torch.version.cuda}
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "python": sys.version.split()[0],
            "platform": platform.platform(), "cpus": os.cpu_count(), "gpu": gpu, "versions": versions}


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "**missed**")


def table(results: dict[str, Any]) -> str:
    """The markdown table: one row per figure, with the issue's goal where it sets one."""
    rows = ["| part | figure | value | goal | met? |", "|---|---|---|---|---|"]

    def row(part: str, what: str, value: str, goal: str = "", ok: bool | None = None) -> None:
        rows.append(f"| {part} | {what} | {value} | {goal} | {verdict(ok)} |")

    parts = results["parts"]
    for p in PARTS:
        r = parts.get(p, {})
        if r.get("status") not in ("ok", "partial"):
            row(p, TITLES[p], r.get("status", "not run") + (f": {r['reason']}" if r.get("reason") else ""))
            continue
        tag = "" if r["status"] == "ok" else " (partial: the part hit its time limit)"
        if p == "a":
            c = r["counts"]
            row("a", "CUDA-marked tests" + tag, f"{c['passed']} passed, {c['failure'] + c['error']} failed, "
                f"{c['skipped']} skipped in {r['wall_s']:.0f} s", "all pass", c["failure"] + c["error"] == 0
                and c["passed"] > 0 if results["mode"] == "gpu" else None)
            for t in r["tests"]:
                if t["outcome"] != "passed":
                    row("a", t["name"], f"{t['outcome']}: {t['detail'][:120]}")
        elif p == "b":
            s = r["sweep"]
            wall = f"{s['wall_s']:.1f} s" if s["status"] == "ok" else f"{s['status']} after {s['wall_s']:.0f} s"
            row("b", f"default exact sweep ({s.get('runs_ok', 0)}/{s.get('runs', 0)} runs ok, runs_per_gpu "
                f"{r['runs_per_gpu']}, cold cache){tag}", wall)
            if "fraction_of_cpu" in r:
                row("b", "... / the committed 2-core CPU runs' time", f"{r['fraction_of_cpu']:.3f} "
                    f"(of {r['cpu_runs_s']:.0f} s)", f"<= {GOAL_SWEEP_FRACTION}",
                    r["fraction_of_cpu"] <= GOAL_SWEEP_FRACTION if results["mode"] == "gpu" else None)
            for col in r.get("compare", {}).get("columns", [])[:5]:
                row("b", f"summary vs CPU: {col['column']} (largest relative difference)",
                    f"{col['max_rel']:.1e} (abs {col['max_abs']:.1e}; {col['at']})", "(informative: float order, sampling)")
        elif p == "c":
            for name, x in r.get("loops", {}).items():
                mem = f", peak {x['peak_gib']:.2f} GiB" if x.get("peak_gib") is not None else ""
                row("c", f"{name} ({r['params'] / 1e6:.1f}M params, {r['seq_tokens'][0]}-{r['seq_tokens'][1]} "
                    f"tokens/sequence){tag}", f"{x['ms_per_step']:.1f} ms/step, {x['tokens_per_s']:,.0f} tokens/s{mem}")
            if "bf16_speedup" in r:
                gpu = results["mode"] == "gpu"
                row("c", "alignbench bf16 / fp32 tokens/s", f"{r['bf16_speedup']:.2f}x", f">= {GOAL_BF16_SPEEDUP}x",
                    r["bf16_speedup"] >= GOAL_BF16_SPEEDUP if gpu else None)
                row("c", f"bf16 vs fp32 losses over {len(r['loops']['alignbench_fp32']['losses'])} steps, max relative",
                    f"{r['bf16_loss_max_rel']:.1e}", f"<= {GOAL_BF16_LOSS_REL:.0e}",
                    r["bf16_loss_max_rel"] <= GOAL_BF16_LOSS_REL if gpu else None)
                row("c", "alignbench bf16 / TRL bf16 tokens/s", f"{r['trl_speedup_bf16']:.2f}x",
                    f">= {GOAL_TRL_SPEEDUP}x", r["trl_speedup_bf16"] >= GOAL_TRL_SPEEDUP if gpu else None)
                row("c", "alignbench bf16 vs TRL bf16 losses, max relative", f"{r['trl_vs_alignbench_bf16_loss_max_rel']:.1e}",
                    "(informative)")
        elif p == "d":
            row("d", f"PPO rollouts ({r.get('iterations')} iterations, {r.get('rollout_batch')} rollouts each; "
                f"{'warm' if r.get('warm_cache') else 'cold'} cache){tag}",
                f"{r['tokens_per_s']:,.0f} rollout tokens/s; {r['s_per_iteration']:.3f} s/iteration "
                f"({100 * r['generate_share']:.1f}% generating)")
        elif p == "e":
            for k, s in r.get("sweeps", {}).items():
                value = (f"{s['wall_s']:.1f} s ({s.get('runs_ok', 0)}/{s.get('runs', 0)} runs ok)" if s["status"] == "ok"
                         else f"{s['status']}" + (f" after {s['wall_s']:.0f} s" if "wall_s" in s else ""))
                row("e", f"exact sweep, runs_per_gpu {k} ({'warm' if r['warm_cache'] else 'cold'} cache){tag}", value)
    return "\n".join(rows)


def drive(out: Path, args: argparse.Namespace) -> int:
    started = args.started or time.time()
    dry = args.dry_run
    skip = {p.strip() for p in (args.skip or "").split(",") if p.strip()}
    bad = skip - set(PARTS)
    if bad:
        print(f"gpu_check: error: --skip: unknown part(s) {sorted(bad)} (parts: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    if not dry and device_name() != "cuda":
        print("gpu_check: error: no CUDA device (use --dry-run for the toy-size CPU run)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    parts = [p for p in PARTS if p not in skip]
    budgets = DRY_BUDGET_S if dry else BUDGET_S
    total = args.total_s or (sum(DRY_BUDGET_S.values()) if dry else TOTAL_S)
    results: dict[str, Any] = {"mode": "dry-run (CPU, toy sizes: timings mean nothing)" if dry else "gpu",
                               "environment": environment(), "budgets_s": {}, "parts": {p: {"status": "skipped",
                                                                                          "reason": "--skip"} for p in skip}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "ALIGNBENCH_QUIET": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    print(f"gpu_check: {results['mode']}; parts {', '.join(parts)}; {total - (time.time() - started):.0f} s left of "
          f"{total:.0f}; work folder {work}", flush=True)
    for p in parts:
        left = total - (time.time() - started)
        budget = part_limit(p, parts, budgets, left)
        results["budgets_s"][p] = round(budget)
        if budget < 15:
            results["parts"][p] = {"status": "skipped", "reason": f"no time left ({left:.0f} s)"}
            log(p, f"skipped: {left:.0f} s left")
            continue
        log(p, f"{TITLES[p]}: start (limit {budget:.0f} s, {left:.0f} s left)")
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, __file__, str(out), "--part", p, "--work", str(work),
                                 "--budget", str(budget)] + (["--dry-run"] if dry else []),
                                cwd=ROOT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and every process it started (sweep workers)
            proc.wait()
            rc = None
        wall = time.time() - t0
        path = work / f"part_{p}.json"
        res = json.loads(path.read_text()) if path.exists() else {}
        if rc is None:
            res.update(status="partial" if res else "timeout", reason=f"killed at its {budget:.0f} s limit")
        elif rc != 0:
            res.update(status="failed", reason=f"exit code {rc} (see gpu_check.log)")
        res["part_wall_s"] = round(wall, 1)
        results["parts"][p] = res
        log(p, f"{res.get('status')} in {wall:.1f} s")
        write_outputs(out, results, work)
    results["total_s"] = round(time.time() - started, 1)
    write_outputs(out, results, work)
    print("\n" + table(results) + "\n", flush=True)
    print(f"gpu_check: {results['total_s']:.0f} s in all; wrote {out}/gpu_check.json and {out}/gpu_check.md", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    failed = [p for p, r in results["parts"].items() if r.get("status") in ("failed", "timeout")]
    return 1 if failed else 0


def write_outputs(out: Path, results: dict[str, Any], work: Path) -> None:
    from alignbench import io

    io.write_text(out / "gpu_check.json", json.dumps(results, indent=1, default=str) + "\n")
    env = results["environment"]
    gpu = env["gpu"] or {"name": "no GPU (dry run)"}
    head = (f"# GPU check ({results['mode']})\n\n{gpu['name']}, {env['cpus']} CPUs, Python {env['python']}, "
            + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + f"; {env['date_utc']} UTC.\n\n")
    io.write_text(out / "gpu_check.md", head + table(results) + "\n")
    if (work / "b" / "summary.csv").exists():
        shutil.copyfile(work / "b" / "summary.csv", out / "summary_exact_gpu.csv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for gpu_check.json, gpu_check.md, summary_exact_gpu.csv")
    ap.add_argument("--dry-run", action="store_true", help="every part at toy size on the CPU (proves the script)")
    ap.add_argument("--skip", help=f"comma-separated parts to skip ({', '.join(PARTS)})")
    ap.add_argument("--total-s", type=float, default=None, help=f"time limit of the whole check (default {TOTAL_S} s)")
    ap.add_argument("--started", type=float, default=None, help="epoch seconds the check started (gpu_check.sh's)")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.part:
        return run_part(args.part, Path(args.work), args.dry_run, args.budget)
    return drive(Path(args.out), args)


if __name__ == "__main__":
    raise SystemExit(main())
