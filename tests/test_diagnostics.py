"""Diagnostics from evaluation rows: the Gao et al. fits recover known coefficients, peaks, overoptimization,
overfitting, log-ratio and KL-growth flags behave on synthetic runs, and missing metrics give None."""

import math

import numpy as np
import pytest

from alignbench.report import diagnostics as D


def rows_from(steps, **series):
    return [{"step": s, **{k.replace("__", "/"): v[i] for k, v in series.items()}} for i, s in enumerate(steps)]


@pytest.mark.parametrize("alpha,b,r0", [(1.0, 0.5, 0.0), (0.6, 0.2, -0.3), (2.0, 1.5, 0.1)])
def test_gao_rl_fit_recovers_known_coefficients(alpha, b, r0):
    rng = np.random.default_rng(0)
    d = np.linspace(0.05, 4.0, 60)
    r = r0 + d * (alpha - b * np.log(d)) + rng.normal(0, 0.005, d.size)
    fit = D.fit_gao_rl(np.concatenate([[0.0], d ** 2]), np.concatenate([[r0], r]))
    assert fit.alpha == pytest.approx(alpha, abs=0.02)
    assert fit.b == pytest.approx(b, abs=0.02)
    assert fit.r0 == pytest.approx(r0)
    d_star = math.exp(alpha / b - 1)
    assert fit.d_star == pytest.approx(d_star, rel=0.1)
    assert fit.kl_star == pytest.approx(fit.d_star ** 2)
    assert fit.r_star == pytest.approx(r0 + b * d_star, rel=0.05, abs=0.02)
    assert fit.has_peak and fit.r2 > 0.99
    assert fit.predict([0.0])[0] == pytest.approx(r0)


def test_gao_rl_fit_without_reference_point_fits_the_intercept():
    d = np.linspace(0.2, 3.0, 30)
    fit = D.fit_gao_rl(d ** 2, 0.4 + d * (1.0 - 0.5 * np.log(d)))
    assert (fit.alpha, fit.b, fit.r0) == pytest.approx((1.0, 0.5, 0.4), abs=1e-6)


def test_gao_bon_fit_and_no_peak_case():
    d = np.linspace(0.1, 2.5, 20)
    fit = D.fit_gao_bon(d ** 2, d * (1.2 - 0.3 * d), r0=0.0)
    assert (fit.alpha, fit.b) == pytest.approx((1.2, 0.3), abs=1e-6)
    assert fit.d_star == pytest.approx(2.0) and fit.r_star == pytest.approx(1.2 ** 2 / 1.2)
    rising = D.fit_gao_rl(d ** 2, d * (1.0 + 0.2 * np.log(d)), r0=0.0)
    assert not rising.has_peak and math.isinf(rising.kl_star)
    with pytest.raises(ValueError):
        D.fit_gao_rl([0.0, 1.0], [0.0, 1.0])


def test_peak_step_and_overoptimization_flag():
    steps = [0, 10, 20, 30, 40]
    rows = rows_from(steps, reward__gold=[0.0, 0.5, 0.8, 0.6, 0.4], kl__ref=[0, 1, 2, 3, 4],
                     ppo__rm_reward=[np.nan, 0.1, 0.2, 0.3, 0.5])
    pk = D.peak_step(rows)
    assert pk["step"] == 20 and pk["reward"] == 0.8 and pk["kl"] == 2
    oo = D.overoptimization_flags(rows, proxies=("ppo/rm_reward",))
    assert oo["flag"] and oo["gold_falls"] and oo["proxy"] == "ppo/rm_reward"
    no_proxy = D.overoptimization_flags(rows)  # a method that declares no proxy: the gold drop alone is no flag
    assert no_proxy["gold_falls"] and not no_proxy["flag"] and no_proxy["proxy"] is None
    assert oo["drop"] == pytest.approx(0.4) and oo["proxy_change"] == pytest.approx(0.3)
    # the same drop inside the noise is not flagged
    noisy = [dict(r, **{"reward/gold_se": 0.3}) for r in rows]
    assert not D.overoptimization_flags(noisy, proxies=("ppo/rm_reward",))["flag"]
    # gold still rising at the end: nothing to flag
    up = rows_from(steps, reward__gold=[0, 1, 2, 3, 4], logratio__margin=[0, 1, 2, 3, 4])
    assert not D.overoptimization_flags(up, proxies=("logratio/margin",))["flag"]
    # gold falls but the proxy falls too: gold_falls without the overoptimization flag
    both = rows_from(steps, reward__gold=[0.0, 0.5, 0.8, 0.6, 0.4], logratio__margin=[0, 1, 2, 1, 0])
    res = D.overoptimization_flags(both, proxies=("logratio/margin",))
    assert res["gold_falls"] and not res["flag"]


def test_overfitting_and_likelihood_displacement():
    steps = [0, 10, 20, 30, 40]
    rows = rows_from(steps, eval__loss=[0.69, 0.6, 0.55, 0.6, 0.7], train__loss=[0.69, 0.5, 0.4, 0.3, 0.2],
                     eval__implicit_acc=[0.5, 0.6, 0.65, 0.64, 0.62], train__implicit_acc=[0.5, 0.7, 0.8, 0.9, 0.95],
                     logratio__chosen=[0, 0.1, -0.5, -1.0, -2.0], logratio__rejected=[0, -1, -3, -6, -10])
    of = D.overfitting_flags(rows)
    assert of["flag"] and of["min_eval_loss_step"] == 20 and of["eval_loss_rise"] == pytest.approx(0.15)
    assert of["acc_gap"] == pytest.approx(0.33)
    ld = D.likelihood_displacement(rows)
    assert ld["chosen_falls"] and ld["first_step_chosen_below_ref"] == 20 and ld["final_rejected"] == -10
    healthy = rows_from(steps, eval__loss=[0.69, 0.6, 0.5, 0.45, 0.44], train__loss=[0.69, 0.6, 0.5, 0.45, 0.43])
    assert not D.overfitting_flags(healthy)["flag"]


def test_kl_bounded():
    steps = list(range(0, 601, 50))
    growing = rows_from(steps, kl__ref=[0.02 * s for s in steps])
    plateau = rows_from(steps, kl__ref=[3 * (1 - math.exp(-s / 60)) for s in steps])
    g, p = D.kl_bounded(growing), D.kl_bounded(plateau)
    assert not g["bounded"] and g["rel_growth"] > 0.3
    assert p["bounded"] and abs(p["rel_growth"]) < 0.05
    assert D.kl_bounded(rows_from([0, 1], kl__ref=[0, 1])) is None


def test_missing_metrics_give_none_and_run_diagnostics_is_partial():
    rows = rows_from([0], reward__gold=[0.1])
    assert D.overoptimization_flags(rows) is None
    assert D.overfitting_flags(rows) is None and D.likelihood_displacement(rows) is None
    assert D.peak_step([{"step": 0}]) is None
    d = D.run_diagnostics(rows)
    assert d["peak_step"] == 0 and "overfit" not in d and "kl_bounded" not in d
    assert D.run_diagnostics([])["n_evals"] == 0
    # None (JSON null for a non-finite value) is read as missing
    rows = [{"step": 0, "reward/gold": None}, {"step": 1, "reward/gold": 0.3}]
    assert D.peak_step(rows)["step"] == 1


def test_pareto_front_and_frontier_leaders():
    k, r = D.pareto_front([1, 2, 3, 2.5], [0.5, 0.4, 0.9, 1.0])
    assert list(k) == [1, 2.5] and list(r) == [0.5, 1.0]
    fronts = {"a": (np.array([0.0, 4.0]), np.array([0.0, 4.0])),  # reward = KL
              "b": (np.array([0.0, 4.0]), np.array([1.0, 3.0]))}  # reward = 1 + KL/2
    seg = D.frontier_leaders(fronts, n_grid=401)
    assert list(seg["leader"]) == ["b", "a"]
    assert seg["kl_hi"].iloc[0] == pytest.approx(2.0, abs=0.02)
    assert seg["max_lead"].iloc[0] == pytest.approx(1.0)
    assert D.frontier_leaders({"a": fronts["a"]}).empty
