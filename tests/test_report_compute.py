"""The compute section: spent compute per method and the compute-matched frontier, on hand-built folders with
known answers (one seed and three seeds)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from alignbench.registry import get_method
from alignbench.report import names as N
from alignbench.report import write_report
from alignbench.report.compute_matched import build_compute_matched, point_within, task_budget
from alignbench.report.ranking import reference_rewards
from alignbench.report.schema import load_results, load_runs

# (step, budget, kl, reward) per method: dpo spends 5000 tokens in all; ppo 10000, and 2500 by step 25
TRAJ = {"dpo": [(0, 0, 0.0, 0.0), (25, 2500, 0.5, 0.5), (50, 5000, 1.0, 1.0)],
        "ppo": [(0, 0, 0.0, 0.0), (25, 2500, 1.0, 0.4), (50, 10000, 2.0, 1.6)]}


def folder(out, seeds, *, compute=True):
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method, traj in TRAJ.items():
        for seed in seeds:
            f = 1 + 0.01 * seed  # a little spread over seeds
            rid = f"t-{method}-s{seed}"
            d = out / "runs" / rid
            d.mkdir(parents=True)
            metrics = [{"step": s, N.GOLD: r * f, N.KL: k, **({N.COMPUTE_BUDGET: b} if compute else {})}
                       for s, b, k, r in traj]
            row = {"run_id": rid, "task": "t", "method": method, "sweep_param": "beta", "beta": 0.1, "sweep_value": 0.1,
                   "seed": seed, "status": "ok", "reason": "", "steps": 50, "wall_s": 1.0, "kl": traj[-1][2],
                   "reward": traj[-1][3] * f}
            if compute:
                row.update({N.COMPUTE_BUDGET: traj[-1][1], N.COMPUTE_POLICY_FWD: traj[-1][1] / 3,
                            N.COMPUTE_POLICY_BWD: traj[-1][1] / 3, N.COMPUTE_SAMPLES: 64 if method == "ppo" else 0})
            (d / "config.json").write_text(json.dumps({"task": "t", "method": method, "seed": seed, "train": {}}))
            (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
            (d / "summary.json").write_text(json.dumps(row))
            rows.append(row)
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)
    (out / "sweep.json").write_text(json.dumps({"config": {"seeds": list(seeds)},
                                                "methods": {m: get_method(m).report_info() for m in TRAJ}}))
    return out


def test_budget_is_the_smallest_largest_budget_of_the_methods_that_train():
    assert task_budget({"a": [10, 30], "b": [20, 25], "bon": [0, 0]}) == (25, ["bon"])
    m = pd.DataFrame([{"step": s, N.COMPUTE_BUDGET: b, N.KL: k, N.GOLD: r} for s, b, k, r in TRAJ["ppo"]])
    assert point_within(m, 5000) == (1.0, 0.4, True) and point_within(m, 1e5) == (2.0, 1.6, False)


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_compute_matched_scores_and_section(tmp_path, seeds):
    out = folder(tmp_path / "r", seeds)
    summary, _ = load_results(out)
    runs = load_runs(out, summary)
    cm = build_compute_matched(summary, runs, reference_rewards(runs)).set_index("method")
    assert (cm["budget"] == 5000).all()
    assert cm.loc["ppo", "n_cut"] == len(seeds) and cm.loc["dpo", "n_cut"] == 0
    # with the reference point, cut fronts (0, 0)-(1, 1) and (0, 0)-(1, 0.4); common KL range [0, 1]: mean 0.5 and 0.2 (x ~1.01)
    assert cm.loc["dpo", "score"] == pytest.approx(0.5, rel=0.02) and cm.loc["ppo", "score"] == pytest.approx(0.2, rel=0.02)
    text = write_report(out).read_text()
    assert "## Compute" in text and "budget 5e+03 policy tokens per run" in text
    assert text.index("## Ranking over training runs") < text.index("## Compute") < text.index("## Findings")
    assert "policy tokens per run" in text  # the ranking's compute column
    if len(seeds) == 1:
        assert "One seed per method: no interval" in text and "Top two" not in text
    else:
        assert "Top two at this budget: dpo − ppo" in text and "dpo ahead (3 seeds)" in text


def test_results_without_compute_say_so(tmp_path):
    from alignbench.report.core import ReportContext
    from alignbench.report.sections.compute import section_compute

    text = section_compute(ReportContext.load(folder(tmp_path / "old", (0, 1), compute=False)))
    assert "recorded no compute" in text
