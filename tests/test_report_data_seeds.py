"""Training versus data spread (alignbench/report/variance.py and its section) on synthetic values with known
components, and reports built from folders with one and with several data seeds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alignbench.registry import get_method
from alignbench.report import names as N
from alignbench.report import write_report
from alignbench.report.variance import components, decompose


def test_components_by_hand():
    # data seed A: 1, 3 (var 2); B: 5, 7 (var 2): within 2; means 2, 6: var 8; data 8 - 2 / 2 = 7
    train, data, means = components([[1, 3], [5, 7]])
    assert train == pytest.approx(2 ** 0.5) and data == pytest.approx(7 ** 0.5) and means == pytest.approx(8 ** 0.5)
    assert components([[1, 1], [1, 1]])[1] == 0.0
    assert np.isnan(components([[1, 2, 3]])[1])  # one data seed: no data spread


def test_known_components_are_recovered():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1.0, 200)  # data effects, sd 1
    groups = [list(ad + rng.normal(0, 0.3, 4)) for ad in a]  # training noise, sd 0.3
    d = decompose(groups, n_boot=100)
    assert d["sd_train"] == pytest.approx(0.3, rel=0.1) and d["sd_data"] == pytest.approx(1.0, rel=0.15)
    assert d["sd_data_lo"] < d["sd_data"] < d["sd_data_hi"] and d["n_data"] == 200 and d["n_runs"] == 800


def folder(out, data_seeds, seeds=(0, 1)):
    """Two methods, one beta, each run a reward shifted by its data seed (+0.2 d) and its run seed (+0.01 s)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method, base in (("dpo", 1.0), ("ipo", 0.8)):
        for d in data_seeds:
            for s in seeds:
                rw, kl = base + 0.2 * d + 0.01 * s, 1.0
                rid = f"t-{method}-s{s}-d{d}"
                (out / "runs" / rid).mkdir(parents=True)
                metrics = [{"step": st, N.GOLD: rw * st / 50, N.KL: kl * st / 50} for st in (0, 25, 50)]
                row = {"run_id": rid, "task": "t", "method": method, "sweep_param": "beta", "beta": 0.1,
                       "sweep_value": 0.1, "seed": s, "data_seed": d, "status": "ok", "reason": "", "steps": 50,
                       "wall_s": 1.0, "kl": kl, "reward": rw}
                (out / "runs" / rid / "config.json").write_text(json.dumps({"task": "t", "method": method, "seed": s}))
                (out / "runs" / rid / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
                (out / "runs" / rid / "summary.json").write_text(json.dumps(row))
                rows.append(row)
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)
    (out / "sweep.json").write_text(json.dumps({"config": {"seeds": list(seeds)},
                                                "methods": {m: get_method(m).report_info() for m in ("dpo", "ipo")}}))
    return out


def test_report_with_several_data_seeds_separates_the_sources(tmp_path):
    out = folder(tmp_path / "r", data_seeds=(0, 1, 2))
    text = write_report(out).read_text()
    assert "## Training versus data spread" in text
    sec = text[text.index("## Training versus data spread"):text.index("## Diagnostics")]
    assert "| dpo | reward | 3 × 2 |" in sec
    # reward: within sd 0.01 / sqrt 2 = 0.0071; data-seed means 0.205, 0.405, 0.605 + base: sd 0.2
    row = next(line for line in sec.splitlines() if line.startswith("| dpo | reward"))
    assert "0.007" in row.split("|")[4] and row.split("|")[5].strip().startswith("0.20")
    rk = pd.read_csv(out / "ranking.csv")
    assert (rk[rk["table"] == "score"]["n_seeds"] == 6).all()  # the other tables: each (seed, data seed) pair a unit


def test_report_with_one_data_seed_says_so(tmp_path):
    from alignbench.report.core import ReportContext
    from alignbench.report.sections.data_seeds import section_data_seeds

    text = section_data_seeds(ReportContext.load(folder(tmp_path / "one", data_seeds=(3,))))
    assert "One data seed (1): no spread from data can be measured." in text
