"""The "gap sources" section (objective vs estimation gap) and the literature checks, on hand-built results."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from alignbench.report import write_report
from alignbench.report.core import ReportContext
from alignbench.report.sections.gaps import section_gaps
from alignbench.report.claims import (CONTRADICTED, NOT_TESTED, SUPPORTED, UNDECIDED, ClaimData, check_frontier_dominates,
                                      check_gao_hump, check_kl_runaway)
from alignbench.report.gaps import gap_table, paired_share
from alignbench.report.schema import RunData

from .test_report_seeds import CLEAR, folder

# (method, beta) -> per seed (objective gap, estimation gap); kto has no target
GAPS = {("dpo", 0.1): [(0.0, 0.50), (0.0, 0.55), (0.0, 0.45)], ("dpo", 1.0): [(0.0, 0.20), (0.0, 0.22), (0.0, 0.18)],
        ("ipo", 0.1): [(0.05, 0.30), (0.05, 0.40), (0.05, 0.35)], ("ipo", 1.0): [(0.01, 0.10), (0.01, 0.12), (0.01, 0.08)]}
TARGET = {"dpo": "pi_ref exp(r/beta)/Z", "ipo": "pi_ref exp(P(y>pi_ref)/tau)/Z", "kto": "none: no closed form derived"}


def with_gaps(out, n_seeds: int):
    """A results folder (tests/test_report_seeds.folder) whose summary carries the own-target columns."""
    folder(out, {k: v[:n_seeds] for k, v in CLEAR.items()})
    s = pd.read_csv(out / "summary.csv")
    obj, est = [], []
    for _, r in s.iterrows():
        o, e = GAPS.get((r["method"], r["beta"]), [(math.nan, math.nan)] * 3)[int(r["seed"])]
        obj.append(o)
        est.append(e)
    s["objective_gap"], s["estimation_gap"] = obj, est
    s["frontier_gap"] = s["objective_gap"] + s["estimation_gap"]
    s["own_target"] = s["method"].map(TARGET)
    s.to_csv(out / "summary.csv", index=False)
    return out


def test_gap_table_means_and_intervals(tmp_path):
    s = pd.read_csv(with_gaps(tmp_path / "g", 3) / "summary.csv")
    t = gap_table(s).set_index(["method", "value"])
    assert set(t.index.get_level_values(0)) == {"dpo", "ipo"}  # kto: no target, no row
    assert t.loc[("dpo", 0.1), "estimation_gap"] == pytest.approx(0.50) and t.loc[("dpo", 0.1), "n"] == 3
    assert t.loc[("ipo", 0.1), "objective_gap"] == pytest.approx(0.05)
    assert t.loc[("dpo", 0.1), "estimation_gap_lo"] < 0.50 < t.loc[("dpo", 0.1), "estimation_gap_hi"]
    # dpo: estimation - objective per seed, averaged over its two betas: (0.35, 0.385, 0.315) -> mean 0.35
    m, lo, hi, n = paired_share(s, "t", "dpo")
    assert m == pytest.approx(0.35) and n == 3 and 0.3 < lo < hi < 0.4


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_gap_section_builds_with_one_seed_and_several(tmp_path, n_seeds):
    out = with_gaps(tmp_path / f"s{n_seeds}", n_seeds)
    text = write_report(out).read_text()
    sec = text[text.index("## Where each method's gap"):text.index("## Win rates")]
    assert (out / "gaps_t.png").exists() and "![gaps t](gaps_t.png)" in sec
    assert "`t` kto: no target: no closed form derived." in sec
    if n_seeds == 1:
        assert "no interval with 1 seed" in sec and "[" not in sec.split("| own target |")[1].split("\n\n")[0]
    else:
        assert "dpo (target pi_ref exp(r/beta)/Z)" in sec and "the estimation gap is the larger part by 0.35" in sec
        assert "(3 seeds)" in sec
    claims = text[text.index("## Claims from the literature"):]
    assert "DPO's reward-KL frontier dominates PPO's" in claims and "not tested in this sweep" in claims


def test_gap_section_without_the_columns_says_not_measured(tmp_path):
    text = section_gaps(ReportContext.load(folder(tmp_path / "old", {k: v[:1] for k, v in CLEAR.items()})))
    assert "Not measured: no completed run on an enumerable task recorded its own population target" in text


# ------------------------------------------------------------------------------------------ literature checks


def runs_data(kl_unbounded: dict[str, list[bool]], labels: str = "deterministic") -> ClaimData:
    """dpo/ipo runs (one per seed) on deterministic labels with the given 'KL not bounded' flags."""
    rows, per_run, runs = [], [], {}
    for method, flags in kl_unbounded.items():
        for seed, unb in enumerate(flags):
            rid = f"{method}-s{seed}"
            rows.append({"run_id": rid, "task": "exact", "method": method, "seed": seed, "status": "ok"})
            per_run.append({"run_id": rid, "task": "exact", "method": method, "seed": seed, "kl_bounded": not unb})
            runs[rid] = RunData(rid, "exact", method, "beta", 0.1, seed, "ok", pd.DataFrame(),
                                {"task_config": {"labels": labels}})
    return ClaimData(pd.DataFrame(rows), per_run=pd.DataFrame(per_run), runs=runs)


def test_kl_runaway_check():
    (v,) = check_kl_runaway(runs_data({"dpo": [True, True, True], "ipo": [False, False, False]}))
    assert v.status == SUPPORTED and "3 of 3 runs of dpo and 0 of 3 runs of ipo" in v.evidence
    (v,) = check_kl_runaway(runs_data({"dpo": [False, False, False], "ipo": [True, True, True]}))
    assert v.status == CONTRADICTED
    (v,) = check_kl_runaway(runs_data({"dpo": [True, False, True], "ipo": [False, True, False]}))
    assert v.status == UNDECIDED and "not distinguishable with 3 seeds" in v.evidence
    (v,) = check_kl_runaway(runs_data({"dpo": [True], "ipo": [False]}))
    assert v.status == UNDECIDED and "one seed: no interval" in v.evidence
    (v,) = check_kl_runaway(runs_data({"dpo": [True, True], "ipo": [False, False]}, labels="bt"))
    assert v.status == NOT_TESTED


def gao_data(b: float, seeds: int = 3) -> ClaimData:
    """A learned-reward method whose gold reward follows R = d (1 - b log d) (+ small noise) at d = sqrt(KL)."""
    rng = np.random.default_rng(1)
    rows, runs = [], {}
    for seed in range(seeds):
        for beta, kl_end in ((1.0, 1.0), (0.3, 9.0), (0.1, 40.0)):
            kl = np.linspace(0, kl_end, 6)
            d = np.sqrt(kl)
            rew = d * (1 - b * np.log(np.maximum(d, 1e-12))) + 0.01 * rng.standard_normal(6)
            rew[0] = 0.0
            rid = f"ppo-{beta}-s{seed}"
            rows.append({"run_id": rid, "task": "exact", "method": "ppo", "seed": seed, "status": "ok"})
            m = pd.DataFrame({"step": np.arange(6) * 10, "kl/ref": kl, "reward/gold": rew})
            runs[rid] = RunData(rid, "exact", "ppo", "beta", beta, seed, "ok", m, {})
    return ClaimData(pd.DataFrame(rows), runs=runs, methods={"ppo": {"needs_reward_model": True}})


def test_gao_hump_check():
    (v,) = check_gao_hump(gao_data(0.5))  # peak at d* = exp(1/0.5 - 1) = e, KL 7.4 < 40: rises then falls
    assert v.status == SUPPORTED and float(v.evidence.split("peak at KL ")[1].split()[0]) == pytest.approx(7.39, abs=0.1)
    (v,) = check_gao_hump(gao_data(-0.3))  # b < 0: still rising at the largest KL
    assert v.status == CONTRADICTED
    (v,) = check_gao_hump(gao_data(0.5, seeds=1))
    assert v.status == UNDECIDED and "one seed: no interval" in v.evidence
    data = gao_data(0.5)
    data.methods = {"ppo": {"needs_reward_model": False}}
    (v,) = check_gao_hump(data)
    assert v.status == NOT_TESTED


def ranking(lo: float, hi: float, n: int = 3) -> pd.DataFrame:
    return pd.DataFrame([{"table": "pairwise", "task": "exact", "method": "dpo", "method_b": "ppo", "n_seeds": n,
                          "n_seeds_b": n, "score": (lo + hi) / 2 if math.isfinite(lo) else 0.1, "ci_low": lo,
                          "ci_high": hi, "prob_improvement": 0.9, "kl_lo": 0.0, "kl_hi": 2.0}])


def test_frontier_dominance_check():
    empty = pd.DataFrame()
    assert check_frontier_dominates(ClaimData(empty, ranking(0.05, 0.2)))[0].status == SUPPORTED
    assert check_frontier_dominates(ClaimData(empty, ranking(-0.2, -0.05)))[0].status == CONTRADICTED
    v = check_frontier_dominates(ClaimData(empty, ranking(-0.1, 0.2)))[0]
    assert v.status == UNDECIDED and "not distinguishable with 3 seeds" in v.evidence
    v = check_frontier_dominates(ClaimData(empty, ranking(math.nan, math.nan, n=1)))[0]
    assert v.status == UNDECIDED and "one seed: no interval" in v.evidence
    other = ranking(0.05, 0.2).assign(method_b="kto")
    assert check_frontier_dominates(ClaimData(empty, other))[0].status == NOT_TESTED
