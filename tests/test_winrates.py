"""Win rates: bootstrap intervals cover a known value at about the nominal rate; head-to-head judges are
antisymmetric (A vs B = 1 - B vs A, ties 1/2) and agree with brute force; selections pick the right runs."""

import numpy as np
import pandas as pd
import pytest

from alignbench.report import winrates as W


def test_bootstrap_ci_covers_the_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    true_mean, trials, cover = 0.3, 300, 0
    for t in range(trials):
        x = rng.exponential(true_mean, size=60)  # skewed, like per-prompt rewards
        _, lo, hi = W.bootstrap_ci(x, n_boot=1000, seed=t)
        cover += lo <= true_mean <= hi
    assert 0.89 <= cover / trials <= 0.98, cover / trials


def test_bootstrap_ci_covers_a_win_rate_and_is_reproducible():
    rng = np.random.default_rng(2)
    p, trials, cover = 0.65, 300, 0
    for t in range(trials):
        a = rng.normal(0.55, 1, (40, 8))  # P(a > b) = Phi(0.55 / sqrt 2) ~ 0.651
        b = rng.normal(0.0, 1, (40, 8))
        _, lo, hi = W.bootstrap_ci(W.sampled_head_to_head(a, b), n_boot=1000, seed=t)
        cover += lo <= p <= hi
    assert 0.88 <= cover / trials <= 0.99, cover / trials
    x = rng.random(30)
    assert W.bootstrap_ci(x, seed=5) == W.bootstrap_ci(x, seed=5)
    assert W.bootstrap_ci(x, stat=np.median)[0] == pytest.approx(np.median(x))
    assert np.isnan(W.bootstrap_ci([0.4])[1]) and np.isnan(W.bootstrap_ci([])[0])


def test_exact_head_to_head_is_antisymmetric_and_matches_brute_force():
    rng = np.random.default_rng(3)
    k, n = 3, 5
    la, lb, r = rng.standard_normal((k, n)), rng.standard_normal((k, n)), rng.standard_normal((k, n))
    ab, ba = W.exact_head_to_head(la, lb, r), W.exact_head_to_head(lb, la, r)
    np.testing.assert_allclose(ab + ba, 1.0, atol=1e-12)
    pa = np.exp(la) / np.exp(la).sum(1, keepdims=True)
    pb = np.exp(lb) / np.exp(lb).sum(1, keepdims=True)
    brute = [sum(pa[i, y] * pb[i, z] / (1 + np.exp(-(r[i, y] - r[i, z]))) for y in range(n) for z in range(n))
             for i in range(k)]
    np.testing.assert_allclose(ab, brute, atol=1e-12)
    np.testing.assert_allclose(W.exact_head_to_head(la, la, r), 0.5, atol=1e-12)  # a policy against itself
    # against a point mass on one response per prompt
    counts = np.zeros((k, n))
    counts[:, 2] = 3
    counts[1] = 0
    vs = W.exact_vs_distribution(la, counts, r)
    assert np.isnan(vs[1])
    assert vs[0] == pytest.approx(sum(pa[0, y] / (1 + np.exp(-(r[0, y] - r[0, 2]))) for y in range(n)))


def test_sampled_head_to_head_counts_ties_as_half_and_is_antisymmetric():
    a = np.array([[1.0, 2.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    ab = W.sampled_head_to_head(a, b)
    # prompt 0: pairs (1,1)=.5 (1,0)=1 (1,3)=0 (2,1)=1 (2,0)=1 (2,3)=0 -> 3.5/6; prompt 1: all ties
    np.testing.assert_allclose(ab, [3.5 / 6, 0.5])
    np.testing.assert_allclose(ab + W.sampled_head_to_head(b, a), 1.0)
    np.testing.assert_allclose(W.mean_head_to_head([1, 0, 2], [0, 0, 3]), [1, 0.5, 0])


def _summary():
    return pd.DataFrame([
        {"run_id": "a1", "task": "t", "method": "a", "sweep_param": "beta", "sweep_value": 0.1, "seed": 0,
         "status": "ok", "kl": 5.0, "reward": 0.9},
        {"run_id": "a2", "task": "t", "method": "a", "sweep_param": "beta", "sweep_value": 1.0, "seed": 0,
         "status": "ok", "kl": 1.2, "reward": 0.6},
        {"run_id": "b1", "task": "t", "method": "b", "sweep_param": "n", "sweep_value": 4, "seed": 0,
         "status": "ok", "kl": 0.9, "reward": 0.7, "kl_is_bound": 1.0},
        {"run_id": "b2", "task": "t", "method": "b", "sweep_param": "n", "sweep_value": 64, "seed": 0,
         "status": "ok", "kl": 3.2, "reward": 0.65, "kl_is_bound": 1.0},
        {"run_id": "c", "task": "t", "method": "c", "sweep_param": "beta", "sweep_value": 0.1, "seed": 0,
         "status": "failed", "kl": float("nan"), "reward": float("nan")},
    ])


def test_unit_selection_best_and_matched_kl():
    us = W.units(_summary())
    assert {u.label for u in us} == {"a β=0.1", "a β=1", "b n=4", "b n=64"}
    best = W.select_best(us)
    assert best[("t", "a")].value == 0.1 and best[("t", "b")].value == 4
    m1, m3 = W.select_matched_kl(us, 1.0), W.select_matched_kl(us, 3.0)
    assert m1[("t", "a")].value == 1.0 and m1[("t", "b")].value == 4
    assert m3[("t", "a")].value == 0.1 and m3[("t", "b")].value == 64  # |log 5 - log 3| < |log 1.2 - log 3|
    assert best[("t", "b")].kl_is_bound


def test_build_winrates_from_files_is_antisymmetric(tmp_path):
    import json

    rng = np.random.default_rng(4)
    s = _summary()
    np.savez(tmp_path / "task_t.npz", reward=rng.standard_normal((4, 6)))
    for rid in s["run_id"]:
        (tmp_path / "runs" / rid).mkdir(parents=True)
        if rid != "c":
            (tmp_path / "runs" / rid / "eval_final.json").write_text(json.dumps(
                {"prompts": ["p0", "p1", "p2", "p3"], "logp": rng.standard_normal((4, 6)).tolist()}))
    wr = W.build_winrates(tmp_path, s, budgets=(1.0, 3.0), n_boot=500)
    assert set(wr["table"]) == {"best", "kl1", "kl3"}
    for table, g in wr.groupby("table"):
        assert len(g) == 2
        ab, ba = g.iloc[0], g.iloc[1]
        assert (ab["method_a"], ab["method_b"]) == (ba["method_b"], ba["method_a"])
        assert ab["win_rate"] + ba["win_rate"] == pytest.approx(1.0)
        # one seed per cell: no interval over training runs (tests/test_report_seeds.py mirrors intervals over seeds)
        assert np.isnan(ab["ci_low"]) and np.isnan(ba["ci_high"]) and ab["n_seeds"] == 1
        assert ab["judge"] == "exact BT on gold reward" and ab["n_prompts"] == 4
    md = W.matrix_markdown(wr[wr["table"] == "best"])
    assert "| A \\ B |" in md and "a β=0.1 (KL 5)" in md
