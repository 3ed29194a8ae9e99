"""The window-based convergence test (alignbench/report/convergence.py) on hand-computed series."""

from __future__ import annotations

import math

import pytest

from alignbench.report import names as N
from alignbench.report.convergence import moving, run_convergence, window_size


def test_window_is_the_last_third_with_at_least_two():
    assert [window_size(n) for n in (4, 6, 8, 9, 12)] == [2, 2, 3, 3, 4]


def test_noisy_plateau_is_not_moving():
    # w = 2: last (0.8, 1.0) mean 0.9, previous (1.2, 0.8) mean 1.0: d = -0.1, 10% of the 0.9 travelled = 0.09;
    # successive differences -0.4, 0.4, -0.2: sd 0.4163, sigma 0.2944, se of d 0.2944: 2 se = 0.589 > 0.1
    r = moving([1.0, 1.2, 0.8, 1.2, 0.8, 1.0], start=0.0)
    assert r["diff"] == pytest.approx(-0.1) and r["change"] == pytest.approx(-0.1 / 0.9)
    assert r["se"] == pytest.approx(0.4163 / math.sqrt(2), abs=1e-3)
    assert r["moving"] == 0.0


def test_steady_rise_is_moving_and_too_few_evaluations_give_no_verdict():
    r = moving([1, 2, 3, 4, 5, 6], start=0.0)  # d = 5.5 - 3.5 = 2 > 10% of 5.5, no noise
    assert r["moving"] == 1.0 and r["change"] == pytest.approx(2 / 5.5)
    assert moving([1.0, 2.0, 3.0]) is None
    assert moving([0.0, 0.001, 0.0, 0.001])["moving"] == 0.0  # within 0.02 absolutely


def test_run_is_converged_only_when_reward_and_kl_both_stopped():
    flat = [1.0, 1.2, 0.8, 1.2, 0.8, 1.0]
    rows = [{"step": 0, N.GOLD: 0.0, N.KL: 0.0}] + [
        {"step": 10 * (i + 1), N.GOLD: g, N.KL: float(i + 1)} for i, g in enumerate(flat)]
    out = run_convergence(rows)
    assert out[N.CONVERGED] is False and out[N.KL_CHANGE] == pytest.approx(2 / 5.5)
    for r in rows:
        r[N.KL] = 0.5 if r["step"] else 0.0
    assert run_convergence(rows)[N.CONVERGED] is True
    assert run_convergence(rows[:4]) is None
