"""The report's findings on hand-built results folders, checked for their numbers: win rates whose interval over
seeds includes 0.5 are not findings, one seed gives no comparison at all, the KL-bounded verdict follows the KL
series, and the vs-reference normal interval comes from the summary's SE. (Frontier scores over several seeds:
tests/test_report_seeds.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from alignbench.report import write_report

STEPS = (0, 10, 20, 30)


def build(out: Path, runs: list[dict]) -> Path:
    """A results folder in the sweep's layout: summary.csv, sweep.json, runs/<id>/{config.json, metrics.jsonl,
    summary.json, eval_final.json}. Each run: method, beta, kl series (one per step), final reward, and
    optionally per-prompt sample rewards and the summary's win_rate_vs_ref (+ SE)."""
    out.mkdir(parents=True)
    summary = []
    for r in runs:
        seed = r.get("seed", 0)
        rid = f"sent-{r['method']}-beta{r['beta']:g}-s{seed}"
        row = {"run_id": rid, "task": "sent", "method": r["method"], "sweep_param": "beta", "beta": r["beta"],
               "sweep_value": r["beta"], "seed": seed, "status": "ok", "reason": "", "steps": STEPS[-1], "wall_s": 1.0,
               "kl": r["kl"][-1], "kl_se": 0.01, "reward": r["reward"], "reward_se": r.get("reward_se", 0.001),
               "win_rate_vs_ref": r.get("win", 0.6), "win_rate_vs_ref_se": r.get("win_se", 0.02)}
        summary.append(row)
        d = out / "runs" / rid
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"task": "sent", "method": r["method"], "seed": seed,
                                                   "task_config": {}, "train": {"eval_every": 10}}))
        rows = [{"step": s, "kl/ref": k, "reward/gold": r["reward"] * s / STEPS[-1], "policy/length": 8.0}
                for s, k in zip(STEPS, r["kl"])]
        (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in rows))
        if "rewards" in r:
            rewards = np.asarray(r["rewards"], float)
            (d / "eval_final.json").write_text(json.dumps({"prompts": [f"q{i}" for i in range(len(rewards))],
                                                           "rewards": rewards.tolist(),
                                                           "reward": rewards.mean(1).tolist()}))
        (d / "summary.json").write_text(json.dumps(row))
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    meta = {"config": {"seeds": [0]}, "tasks": {"sent": {"kl_estimator": "sampled"}}}
    (out / "sweep.json").write_text(json.dumps(meta))
    write_report(out)
    return out


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end, text.index(start))]


def findings(out: Path) -> str:
    return section((out / "report.md").read_text(), "## Findings", "## Failed runs")


# ------------------------------------------------------------------------------ frontier: lead, tie, best reward

# dpo: Pareto points (KL 0.5, reward 0.4) and (2.0, 0.9); ipo: (0.4, 0.38) and (1.0, 0.6). Both cover KL 0.5-1.0,
# where ipo's interpolated frontier is above dpo's by 0.0167 (at KL 0.5) to 0.0333 (at KL 1.0).
# dpo's KL keeps rising over the last third of training (beta 0.1: 1.0 -> 2.0); ipo's is flat.
FRONTIER = [
    {"method": "dpo", "beta": 0.1, "kl": [0.0, 0.5, 1.0, 2.0], "reward": 0.9},
    {"method": "dpo", "beta": 1.0, "kl": [0.0, 0.5, 0.5, 0.5], "reward": 0.4},
    {"method": "ipo", "beta": 0.1, "kl": [0.0, 1.0, 1.0, 1.0], "reward": 0.6},
    {"method": "ipo", "beta": 1.0, "kl": [0.0, 0.4, 0.4, 0.4], "reward": 0.38},
]


def test_one_seed_states_the_best_rewards_and_withholds_the_frontier_comparison(tmp_path):
    text = findings(build(tmp_path / "lead", FRONTIER))
    assert ("- **sent**: highest mean gold reward per method: dpo 0.900 at β=0.1 (KL 2.00 nats, n=1); "
            "ipo 0.600 at β=0.1 (KL 1.00 nats, n=1).") in text
    # ipo's front is above dpo's over the common KL range, but one seed has no interval over training runs
    assert ("- **sent**: frontier scores not compared (one seed: no interval over training runs); the point "
            "scores are in the ranking section.") in text
    assert "ipo over dpo" not in text and "dpo over ipo" not in text


def test_a_lead_that_reverses_between_seeds_is_not_distinguishable(tmp_path):
    # seed 0 and 2: ipo's front above dpo's (as in FRONTIER); seed 1: dpo's above ipo's by more
    runs = [{**r, "seed": s} for s in (0, 2) for r in FRONTIER]
    runs += [{**r, "seed": 1, "reward": r["reward"] + (0.3 if r["method"] == "dpo" else 0.0)} for r in FRONTIER]
    text = findings(build(tmp_path / "tie", runs))
    assert ("- **sent**: frontier scores not distinguishable: dpo vs ipo (n=3, 3).") in text
    assert "ipo over dpo" not in text and "dpo over ipo" not in text


def test_kl_bounded_verdict_follows_the_kl_series(tmp_path):
    report = (build(tmp_path / "kl", FRONTIER) / "report.md").read_text()
    growth = section(report, "### KL growth over training", "## Findings")
    # last third = steps 20 and 30: dpo beta 0.1 rises 1.0 -> 2.0 (+100%); ipo stays flat (+0%)
    assert "- **`sent`: KL bounded in every run: ipo; not bounded in at least one run: dpo.**" in growth
    assert "- `sent` / dpo: KL **not bounded** in 1 of 2 runs (still growing over the last third, by up to +100%, " \
           "at β=0.1; k of n seeds per value: β=0.1: 1 of 1 seed)." in growth
    assert "- `sent` / ipo: KL bounded in all 2 runs (largest change over the last third +0%, at β=" in growth


# ------------------------------------------------------------------------------ win rates

P, N = 30, 4


def winrate_runs(methods=("dpo", "ipo", "kto"), seeds=(0, 1, 2)) -> list[dict]:
    """In every seed dpo's samples beat every ipo and kto sample (win rate 1, interval [1, 1]); kto beats ipo on
    half the prompts and loses on the other half (win rate 0.5, an interval around it)."""
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        ipo = rng.uniform(0.0, 1.0, (P, N))
        kto = ipo + np.where((np.arange(P)[:, None] + seed) % 2 == 0, 5.0, -5.0)
        rewards = {"dpo": ipo + 10.0, "ipo": ipo, "kto": kto}
        out += [{"method": m, "beta": 0.1, "kl": [0.0, 0.5, 0.9, 1.0], "reward": float(rewards[m].mean()),
                 "rewards": rewards[m], "win": 0.6, "win_se": 0.02, "seed": seed} for m in methods]
    return out


def test_only_win_rates_whose_interval_excludes_one_half_are_findings(tmp_path):
    out = build(tmp_path / "wr", winrate_runs())
    wr = pd.read_csv(out / "winrates.csv")
    best = wr[wr["table"] == "best"].set_index(["method_a", "method_b"])
    assert best.loc[("kto", "ipo"), "win_rate"] == 0.5
    assert best.loc[("kto", "ipo"), "ci_low"] < 0.5 < best.loc[("kto", "ipo"), "ci_high"]
    text = findings(out)
    assert ("- **sent**: at each method's best sweep value, win rates whose 95% interval over seeds lies above 0.5 "
            "(3 seeds): dpo over ipo 1.000 [1.000, 1.000]; dpo over kto 1.000 [1.000, 1.000].") in text
    assert "- **sent**: not distinguishable head to head with 3 seeds: ipo vs kto." in text
    assert "kto over ipo" not in text and "ipo over kto" not in text


def test_no_win_rate_finding_when_every_interval_includes_one_half(tmp_path):
    text = findings(build(tmp_path / "none", winrate_runs(("ipo", "kto"))))
    assert "- **sent**: not distinguishable head to head with 3 seeds: ipo vs kto." in text
    assert "lies above 0.5" not in text and "kto over ipo" not in text and "ipo over kto" not in text
    one = findings(build(tmp_path / "one", winrate_runs(("dpo", "ipo"), seeds=(0,))))
    assert ("- **sent**: head-to-head win rates at each method's best sweep value are not compared: with 1 seed "
            "per cell there is no interval over training runs.") in one and "dpo over ipo" not in one


def test_win_rate_vs_reference_from_the_summary_se_is_a_normal_interval(tmp_path):
    """No per-prompt win rates against the reference: 0.6 +- 1.96 * 0.02 = [0.5608, 0.6392]."""
    out = build(tmp_path / "se", winrate_runs(("ipo",), seeds=(0,)))
    wr = pd.read_csv(out / "winrates.csv")
    (row,) = wr[wr["table"] == "vs_ref"].to_dict("records")
    assert row["judge"] == "normal interval from the run's SE (no per-prompt data)"
    assert (row["win_rate"], row["ci_low"], row["ci_high"]) == (0.6, 0.6 - 1.96 * 0.02, 0.6 + 1.96 * 0.02)
    report = (out / "report.md").read_text()
    assert "0.60 [0.56, 0.64]" in section(report, "### Against the reference policy", "### Head to head")
