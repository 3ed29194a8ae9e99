"""The report over several seeds: intervals over training runs, the ranking, findings withheld where the data do
not support them, k-of-n flags. Hand-built results folders with known answers."""

import json

import numpy as np
import pandas as pd
import pytest

from alignbench.registry import get_method
from alignbench.report import write_report

STEPS = (0, 25, 50)


def folder(out, cells, *, sampled_prompts=0):
    """cells: {(method, beta): [(kl, reward) per seed]}; an exact-style task unless ``sampled_prompts`` > 0, then
    each run saves per-prompt rewards around its reward (a win rate against a reference at reward 0)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for (method, beta), per_seed in cells.items():
        for seed, (kl, rw) in enumerate(per_seed):
            rid = f"t-{method}-beta{beta:g}-s{seed}"
            d = out / "runs" / rid
            d.mkdir(parents=True)
            row = {"run_id": rid, "task": "t", "method": method, "sweep_param": "beta", "beta": beta,
                   "sweep_value": beta, "seed": seed, "status": "ok", "reason": "", "steps": 50, "wall_s": 1.0,
                   "kl": kl, "reward": rw}
            metrics = [{"step": s, "reward/gold": rw * s / 50, "kl/ref": kl * s / 50} for s in STEPS]
            if sampled_prompts:
                rewards = rw + 0.05 * rng.standard_normal((sampled_prompts, 4))
                ref = 0.05 * rng.standard_normal((sampled_prompts, 4))
                win = ((rewards[:, :, None] > ref[:, None, :]).mean((1, 2)))
                np.savez(d / "eval_final.npz", prompts=np.array([f"q{i}" for i in range(sampled_prompts)]),
                         rewards=rewards, ref_rewards=ref, winrate=win, reward=rewards.mean(1))
            (d / "config.json").write_text(json.dumps({"task": "t", "method": method, "seed": seed, "train": {}}))
            (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
            (d / "summary.json").write_text(json.dumps(row))
            rows.append(row)
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)
    names = sorted({m for m, _ in cells})
    (out / "sweep.json").write_text(json.dumps({"config": {"seeds": [0, 1, 2]},
                                                "methods": {m: get_method(m).report_info() for m in names}}))
    return out


# dpo's front is clearly above kto's in every seed; ipo's overlaps dpo's
CLEAR = {("dpo", 0.1): [(2.0, 1.00), (2.1, 1.05), (1.9, 0.95)], ("dpo", 1.0): [(0.5, 0.60), (0.6, 0.62), (0.4, 0.58)],
         ("kto", 0.1): [(2.0, 0.50), (2.2, 0.55), (1.8, 0.45)], ("kto", 1.0): [(0.5, 0.20), (0.6, 0.25), (0.4, 0.15)],
         ("ipo", 0.1): [(2.0, 1.30), (2.1, 0.70), (1.9, 1.05)], ("ipo", 1.0): [(0.5, 0.90), (0.6, 0.30), (0.4, 0.60)]}


def test_ranking_scores_and_pairwise_verdicts(tmp_path):
    out = folder(tmp_path / "r", CLEAR)
    text = write_report(out).read_text()
    rk = pd.read_csv(out / "ranking.csv")
    score = rk[rk["table"] == "score"].set_index("method")
    assert (score["n_seeds"] == 3).all()
    # every front starts at the reference (KL 0, reward 0 at step 0); common range: 0 to the smallest largest KL
    assert score["kl_lo"].iloc[0] == pytest.approx(0.0) and score["kl_hi"].iloc[0] == pytest.approx(1.8)
    # kto, seed 0: (0, 0) -> (0.5, 0.2) -> (2.0, 0.5); the area over [0, 1.8] is 0.05 + 1.3 * 0.33 = 0.479.
    # seed 1: (0, 0) -> (0.6, 0.25) -> (2.2, 0.55): 0.075 + 1.2 * 0.3625 = 0.51; seed 2: (0.4, 0.15) -> (1.8, 0.45):
    # 0.03 + 1.4 * 0.3 = 0.45. Mean over seeds of area / 1.8:
    assert rk[(rk["table"] == "score") & (rk["method"] == "kto")]["score"].iloc[0] == pytest.approx(
        np.mean([0.479, 0.51, 0.45]) / 1.8, abs=2e-3)
    pw = rk[rk["table"] == "pairwise"].set_index(["method", "method_b"])
    assert pw.loc[("dpo", "kto"), "ci_low"] > 0 and pw.loc[("dpo", "kto"), "prob_improvement"] == 1.0
    assert pw.loc[("dpo", "ipo"), "ci_low"] < 0 < pw.loc[("dpo", "ipo"), "ci_high"]
    assert pw.loc[("kto", "dpo"), "score"] == pytest.approx(-pw.loc[("dpo", "kto"), "score"])
    findings = text[text.index("## Findings"):text.index("## Failed runs")]
    assert "dpo over kto by" in findings and "n=3 and 3 seeds, P(A > B) = 1.00" in findings
    assert "frontier scores not distinguishable: dpo vs ipo (n=3, 3)" in findings
    assert "ipo over dpo" not in findings and "dpo over ipo" not in findings
    assert "| dpo | kto |" in text and "dpo ahead (3 seeds)" in text


def test_one_seed_gives_no_interval_and_no_claim(tmp_path):
    out = folder(tmp_path / "one", {k: v[:1] for k, v in CLEAR.items()})
    text = write_report(out).read_text()
    rk = pd.read_csv(out / "ranking.csv")
    assert rk[rk["table"] == "score"]["ci_low"].isna().all()
    findings = text[text.index("## Findings"):text.index("## Failed runs")]
    assert "not compared (one seed: no interval over training runs)" in findings
    assert " over kto by" not in findings
    assert "Stability over seeds: not measured (one seed per sweep value)." in text


def test_win_rate_intervals_resample_seeds(tmp_path):
    # two methods whose per-prompt rewards barely differ within a seed but whose seeds disagree
    cells = {("dpo", 0.1): [(1.0, 0.30), (1.0, -0.30), (1.0, 0.35)], ("kto", 0.1): [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0)]}
    out = folder(tmp_path / "w", cells, sampled_prompts=16)
    text = write_report(out).read_text()
    wr = pd.read_csv(out / "winrates.csv")
    best = wr[(wr["table"] == "best")].set_index(["method_a", "method_b"])
    row = best.loc[("dpo", "kto")]
    assert row["n_seeds"] == 3
    # within each seed dpo wins (0.30, 0.35) or loses (-0.30) on almost every prompt: the interval over seeds spans 0.5
    assert row["ci_low"] < 0.5 < row["ci_high"]
    assert best.loc[("kto", "dpo"), "ci_low"] == pytest.approx(1 - row["ci_high"])
    findings = text[text.index("## Findings"):text.index("## Failed runs")]
    assert "not distinguishable head to head with 3 seeds: dpo vs kto" in findings
    assert "win rates whose 95% interval over seeds lies above 0.5" not in findings
