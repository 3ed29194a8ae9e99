"""The report builds from a results folder alone (synthetic files, and a real smoke sweep), contains every
section, tolerates missing optional files and metrics, and writes an antisymmetric winrates.csv."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alignbench import report as R
from alignbench.cli import main
from alignbench.registry import get_method


SECTIONS = ["## What was run", "## Reward vs KL frontier", "## Win rates", "### Against the reference policy",
            "### Head to head, each method at its best sweep value", "### Head to head at matched KL budgets",
            "### Against the preference data's chosen responses", "## Diagnostics over training",
            "### Per-run diagnostics", "### Gao et al. fit", "### KL growth over training", "## Findings",
            "## Failed runs", "## All runs"]

K, N, STEPS = 4, 8, (0, 10, 20, 30, 40, 50)


def _write_run(out, run_id, row, metrics, eval_final=None, task_config=None):
    d = out / "runs" / run_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"task": row["task"], "method": row["method"], "seed": row["seed"],
                                               "task_config": task_config or {}, "train": {"eval_every": 10}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if eval_final is not None:
        (d / "eval_final.json").write_text(json.dumps(eval_final))
    (d / "summary.json").write_text(json.dumps(row))


def synth_results(out, *, methods=("dpo", "ipo", "ppo", "bon"), sampled=True, failed=True, frontier=True,
                  labels="bt", seed=0):
    """A small results folder in the sweep's layout: an exact task (K=4 prompts, N=8 responses) with
    offline runs over 6 evaluation steps, PPO with a proxy that keeps rising while gold falls, a
    best-of-N single row, a sampled task with per-prompt data, a failed run."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    reward = rng.standard_normal((K, N))
    ref = np.log(np.full((K, N), 1.0 / N))
    np.savez(out / "task_exact.npz", reward=reward, eval_chosen_count=rng.integers(0, 4, (K, N)))
    if frontier:
        betas = np.geomspace(100, 0.01, 50)
        rows = []
        for b in betas:
            lp = ref + reward / b
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            p = np.exp(lp)
            rows.append({"beta": b, "kl": float((p * (lp - ref)).sum(1).mean()), "reward": float((p * reward).sum(1).mean())})
        pd.DataFrame(rows).sort_values("kl").to_csv(out / "frontier_exact.csv", index=False)
    summary = []
    grids = {"beta": (0.1, 1.0), "n": (1, 4, 16)}
    for method in methods:
        param = "n" if method == "bon" else "beta"
        for v in grids[param]:
            rid = f"exact-{method}-{param}{v:g}-s0-abc"
            metrics, lp = [], ref
            strength = (2.0 / v if param == "beta" else math.log(v)) * (1.5 if method == "dpo" else 1.0)
            steps = (0,) if method == "bon" else STEPS
            for i, s in enumerate(steps):
                t = (s / STEPS[-1] if method != "bon" else 1.0) * strength * 0.5
                lp = ref + t * reward
                lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
                p = np.exp(lp)
                kl = float((p * (lp - ref)).sum(1).mean())
                gold = float((p * reward).sum(1).mean())
                if method == "ppo" and s >= 30:  # overoptimization: gold falls while the proxy rises
                    gold -= 0.3 * (s - 20) / 30
                m = {"step": s, "reward/gold": gold, "kl/ref": kl, "winrate/vs_ref": 0.5 + 0.4 * (1 - math.exp(-t)),
                     "policy/entropy": float(-(p * lp).sum(1).mean()), "policy/length": 3.0,
                     "exact/unseen_mass": 0.1 * t, "exact/frontier_gap": 0.01}
                if method in ("dpo", "ipo"):
                    m.update({"eval/loss": 0.69 - 0.05 * i + (0.08 * max(0, i - 3) if method == "dpo" else 0),
                              "train/loss": 0.69 - 0.07 * i, "eval/implicit_acc": 0.5 + 0.04 * i,
                              "train/implicit_acc": 0.5 + 0.07 * i, "logratio/chosen": -0.3 * i,
                              "logratio/rejected": -1.0 * i, "logratio/margin": 0.7 * i})
                if method == "ppo" and s > 0:
                    m.update({"online/rm_reward": 0.1 * i, "ppo/approx_kl": 0.01, "ppo/clipfrac": 0.1,
                              "ppo/explained_variance": 0.5, "kl/sampled": kl})
                metrics.append(m)
            row = {"run_id": rid, "task": "exact", "method": method, "sweep_param": param,
                   "beta": v if param == "beta" else float("nan"), "sweep_value": float(v), "seed": 0,
                   "status": "ok", "reason": "", "steps": steps[-1], "wall_s": 1.0, "kl": metrics[-1]["kl/ref"],
                   "reward": metrics[-1]["reward/gold"], "win_rate_vs_ref": metrics[-1]["winrate/vs_ref"],
                   "frontier_gap": 0.01, "unseen_mass": metrics[-1]["exact/unseen_mass"]}
            summary.append(row)
            _write_run(out, rid, row, metrics, {"prompts": [f"<p{k}>" for k in range(K)], "logp": lp.tolist(),
                                                "reward": (np.exp(lp) * reward).sum(1).tolist()},
                       {"labels": labels})
    if sampled:
        P, n = 12, 4
        for method, shift in (("dpo", 0.3), ("kto", 0.0)):
            rid = f"sent-{method}-beta0.1-s0-xyz"
            rewards = rng.standard_normal((P, n)) * 0.3 + shift
            refr = rng.standard_normal((P, n)) * 0.3
            win = ((rewards[:, :, None] > refr[:, None, :]).mean((1, 2)))
            metrics = [{"step": s, "reward/gold": shift * s / 50, "reward/gold_se": 0.05, "kl/ref": 0.05 * s,
                        "kl/ref_se": 0.01, "winrate/vs_ref": 0.5 + shift * s / 100, "winrate/vs_ref_se": 0.03,
                        "policy/entropy": 5.0, "policy/length": 8.0 + s / 10} for s in STEPS]
            row = {"run_id": rid, "task": "sent", "method": method, "sweep_param": "beta", "beta": 0.1,
                   "sweep_value": 0.1, "seed": 0, "status": "ok", "reason": "", "steps": 50, "wall_s": 2.0,
                   "kl": 2.5, "kl_se": 0.1, "reward": shift, "reward_se": 0.05, "win_rate_vs_ref": float(win.mean()),
                   "win_rate_vs_ref_se": 0.03}
            summary.append(row)
            _write_run(out, rid, row, metrics, {"prompts": [f"q{i}" for i in range(P)], "rewards": rewards.tolist(),
                                                "reward": rewards.mean(1).tolist(), "winrate": win.tolist()})
    if failed:
        row = {"run_id": "exact-kto-beta0.1-s0-bad", "task": "exact", "method": "kto", "sweep_param": "beta",
               "beta": 0.1, "sweep_value": 0.1, "seed": 0, "status": "failed", "reason": "non-finite loss at step 7",
               "steps": 0, "wall_s": 0.1}
        summary.append(row)
        _write_run(out, row["run_id"], row, [])
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    (out / "sweep.json").write_text(json.dumps({
        "config": {"seeds": [0]},
        "grids": {"exact": {(f"{m} (n)" if m == "bon" else f"{m} (beta)"): ([1, 4, 16] if m == "bon" else [0.1, 1.0])
                            for m in methods}},
        "tasks": {"exact": {"kl_estimator": "exact"}},
        # what a sweep records: each method's declarations, each task's notes
        "methods": {m: get_method(m).report_info() for m in methods},
        "notes": {"exact": ["Deterministic preference labels (the stress preset)."] if labels == "deterministic" else []},
        "environment": {"python": "3.11", "platform": "linux", "device": "cpu", "cpu_count": 2,
                        "versions": {"torch": "2.13"}}, "wall_s": 12.0}))
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = synth_results(tmp_path_factory.mktemp("synth"))
    R.write_report(out)
    return out


def test_report_from_synthetic_results_has_every_section_in_order(synth):
    text = (synth / "report.md").read_text()
    pos = [text.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in pos), [s for s, p in zip(SECTIONS, pos) if p < 0]
    assert pos == sorted(pos)
    for name in ("frontier.png", "diag_exact_dpo.png", "diag_exact_ipo.png", "diag_exact_ppo.png", "proxy_exact.png",
                 "klgrowth_exact.png", "diag_sent_dpo.png"):
        assert (synth / name).exists(), name
        assert f"]({name})" in text, name
    assert not (synth / "diag_exact_bon.png").exists()  # one evaluation: nothing over training
    assert "non-finite loss at step 7" in text
    assert sum(p.stat().st_size for p in synth.glob("*.png")) < 2_000_000


def test_findings_are_written_from_the_numbers(synth):
    text = (synth / "report.md").read_text()
    findings = text[text.index("## Findings"):text.index("## Failed runs")]
    # the numbers come from synth_results' formulas:
    # ppo's proxy is 0.1 * i at evaluation i: from its gold peak (step 20, i = 2) to the end (i = 5) it rises by 0.3
    assert ("- Overoptimization detected in 2 run(s): `exact` ppo β=0.1 (seed 0): gold reward peaked at step 20 "
            "(0.786) and fell by 0.193 by the end while online/rm_reward rose by 0.300; `exact` ppo β=1 (seed 0): ") \
        in findings
    # dpo's held-out loss 0.69 - 0.05 i + 0.08 max(0, i - 3): 0.54 at step 30, 0.60 at step 50 (+0.06); accuracy
    # gap at the end (0.5 + 0.07 * 5) - (0.5 + 0.04 * 5) = 0.15; ipo (no rise) is not flagged
    assert ("- Overfitting in 2 of 4 offline runs (held-out loss rose while the training-subset loss fell), e.g. "
            "`exact` dpo β=0.1 (seed 0): held-out loss +0.06 after step 30, train−held-out accuracy gap 0.150; "
            "`exact` dpo β=1 (seed 0): held-out loss +0.06 after step 30") in findings
    # chosen / rejected log-ratios -0.3 i and -1.0 i: -1.50 and -5.00 at i = 5, below 0 from the first step after 0
    assert ("- `exact` dpo: the held-out chosen log-ratio ended below 0 in 2 of 2 runs (the chosen likelihood fell "
            "too); lowest at β=0.1: chosen -1.50, rejected -5.00 nats, below 0 from step 10.") in findings
    assert "frontier scores not compared (one seed: no interval over training runs); the point scores are in the ranking section." in findings
    assert "- 1 of 12 runs failed (see below)." in findings
    per_run = text[text.index("### Per-run diagnostics"):text.index("### Gao et al.")]
    assert "**yes**" in per_run


def test_winrates_csv_is_antisymmetric_with_mirrored_intervals(synth):
    wr = pd.read_csv(synth / "winrates.csv")
    assert {"vs_ref", "best", "kl1", "vs_chosen"} <= set(wr["table"])
    h2h = wr[~wr["table"].isin(["vs_ref", "vs_chosen"])]
    assert len(h2h) > 0
    key = lambda r: (r["table"], r["task"], r["method_a"], r["method_b"])  # noqa: E731
    idx = {key(r): r for _, r in h2h.iterrows()}
    for (table, task, a, b), r in idx.items():
        o = idx[(table, task, b, a)]
        assert r["win_rate"] + o["win_rate"] == pytest.approx(1.0, abs=1e-9)
        assert r["ci_low"] == pytest.approx(1.0 - o["ci_high"], abs=1e-9, nan_ok=True)
    # one seed per cell: no interval over training runs, whatever the task (tests/test_report_seeds.py: several)
    ref = wr[wr["table"] == "vs_ref"]
    assert ref["ci_low"].isna().all() and (ref["n_seeds"] == 1).all()
    # the sampled task is judged on sample pairs
    assert set(h2h[h2h["task"] == "sent"]["judge"]) == {"gold reward, sample pairs"}


def test_report_tolerates_missing_optional_inputs(tmp_path):
    out = synth_results(tmp_path / "r", methods=("dpo",), sampled=False, failed=False, frontier=False)
    (out / "sweep.json").unlink()
    (out / "task_exact.npz").unlink()
    for f in (out / "runs").glob("*/eval_final.json"):
        f.unlink()
    text = R.write_report(out).read_text()
    assert all(s in text for s in SECTIONS)
    assert "No run failed." in text


def test_report_with_only_failed_runs(tmp_path):
    out = tmp_path / "f"
    out.mkdir()
    pd.DataFrame([{"run_id": "x", "task": "exact", "method": "dpo", "sweep_param": "beta", "beta": 0.1,
                   "sweep_value": 0.1, "seed": 0, "status": "failed", "reason": "boom", "steps": 0, "wall_s": 0.1}]
                 ).to_csv(out / "summary.csv", index=False)
    text = R.write_report(out).read_text()
    assert "boom" in text and "## Findings" in text and "## Win rates" in text


def test_stress_runs_are_called_out(tmp_path):
    out = synth_results(tmp_path / "s", methods=("dpo", "ipo"), sampled=False, failed=False, labels="deterministic")
    text = R.write_report(out).read_text()
    growth = text[text.index("### KL growth over training"):text.index("## Findings")]
    assert "`exact`: Deterministic preference labels (the stress preset)." in growth  # the task's own note
    # KL along lp = ref + t r with t = (s / 50) * strength / 2, strength = 2 / beta (x 1.5 for dpo): at beta = 0.1
    # dpo's t reaches 15 and its KL has saturated by the last third (bounded), every other run still climbs
    assert "- **`exact`: KL bounded in every run: none; not bounded in at least one run: dpo, ipo.**" in growth
    assert "- `exact` / dpo: KL **not bounded** in 1 of 2 runs (still growing over the last third, by up to +47%, " \
           "at β=1; k of n seeds per value: β=1: 1 of 1 seed)." in growth
    assert "- `exact` / ipo: KL **not bounded** in 2 of 2 runs" in growth


def test_stress_preset_config_plans():
    from alignbench.sweep import load_sweep_config, plan

    cfg = load_sweep_config(str(Path(__file__).resolve().parents[1] / "configs" / "stress.yaml"), {})
    p = plan(cfg)
    assert cfg.out == "results/stress" and set(cfg.methods) == {"dpo", "ipo", "kto"}
    assert {s.task_config.labels for s in p.specs} == {"deterministic"}
    assert {(s.train.steps, s.train.eval_every) for s in p.specs} == {(600, 50)}


# ------------------------------------------------------------------------------------------ a real smoke sweep


@pytest.fixture
def smoke(dpo_kto_sweep):
    return dpo_kto_sweep  # the session's DPO + KTO smoke sweep (conftest.py)


def test_report_from_a_smoke_sweep_contains_every_section(smoke):
    (smoke / "report.md").unlink()
    assert main(["report", str(smoke)]) == 0
    text = (smoke / "report.md").read_text()
    missing = [s for s in SECTIONS if s not in text]
    assert not missing, missing
    for name in ("frontier.png", "diag_exact_dpo.png", "diag_exact_kto.png", "klgrowth_exact.png"):
        assert (smoke / name).exists(), name
    wr = pd.read_csv(smoke / "winrates.csv")
    assert set(wr[wr["table"] == "vs_ref"]["method_a"]) == {"dpo", "kto"}


def test_a_registered_section_is_included_in_order(tmp_path):
    """Adding a section is one function and one registration line (alignbench.report.core)."""
    from alignbench.report.core import register_section, sections, unregister_section

    out = synth_results(tmp_path / "r", methods=("dpo",), sampled=False, failed=False)

    @register_section("throwaway", order=45)
    def throwaway(ctx):
        n = int((ctx.summary["status"] == "ok").sum())
        return f"## Throwaway\n\n{n} completed runs of {', '.join(sorted(ctx.method_info('dpo')))}\n"

    try:
        assert "throwaway" in [s.name for s in sections()]
        text = R.write_report(out).read_text()
    finally:
        unregister_section("throwaway")
    n_ok = int((pd.read_csv(out / "summary.csv")["status"] == "ok").sum())
    assert (f"## Throwaway\n\n{n_ok} completed runs of data_format, early_stop_oracle, early_stop_signal, "
            "needs_reward_model, panels, proxy_curve, proxy_metric, sweep_param") in text
    assert text.index("## Diagnostics over training") < text.index("## Throwaway") < text.index("## Findings")
    assert "## Throwaway" not in R.write_report(out).read_text()  # unregistered again
