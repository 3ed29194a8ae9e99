"""Each method's own population target (``Method.population_target``) and the exact env's gap decomposition."""

from __future__ import annotations

import math

import pytest
import torch

from alignbench import exact as X
from alignbench.api import NoTarget, TabularProblem, Target
from alignbench.config import from_mapping
from alignbench.registry import get_method
from alignbench.report import names as N
from alignbench.targets import clean_preference, win_probability


def method(name: str, **overrides):
    cls = get_method(name)
    return cls(from_mapping(cls.config_cls, overrides))


@pytest.fixture(scope="module")
def problem() -> TabularProblem:
    """2 prompts x 5 responses, a non-uniform reference, distinct rewards (float64)."""
    g = torch.Generator().manual_seed(3)
    ref = torch.log_softmax(torch.randn(2, 5, generator=g, dtype=torch.float64), -1)
    r = torch.randn(2, 5, generator=g, dtype=torch.float64)
    rm = r + 0.3 * torch.randn(2, 5, generator=g, dtype=torch.float64)
    return TabularProblem(ref, r, "bt", 0.0, rm_reward=rm, lengths=torch.full((5,), 3))


@pytest.mark.parametrize("name", ["dpo", "ppo-gt", "rloo-gt"])
def test_bt_dpo_and_gold_rl_target_is_pi_star(problem, name):
    t = method(name, beta=0.3).population_target(problem)
    assert isinstance(t, Target)
    assert torch.allclose(t.logp, X.optimal_logp(problem.ref_logp, problem.reward, 0.3), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["ppo", "rloo"])
def test_rl_with_a_reward_model_tilts_by_its_scores(problem, name):
    t = method(name, beta=0.5).population_target(problem)
    assert isinstance(t, Target) and "r_RM" in t.formula
    assert torch.allclose(t.logp, X.optimal_logp(problem.ref_logp, problem.rm_reward, 0.5), atol=1e-10, rtol=0)
    assert isinstance(method("ppo", adaptive_kl=True).population_target(problem), NoTarget)


def ipo_population_minimiser(problem: TabularProblem, tau: float) -> torch.Tensor:
    """Direct minimisation (LBFGS, float64) of the population IPO loss over free logits, pairs (y, y') ~ pi_ref x pi_ref
    with y != y', y labelled the winner with probability q(y > y'): sum_{y != y'} ref(y) ref(y') q (h - 1/(2 tau))^2."""
    out = []
    for k in range(problem.ref_logp.shape[0]):
        ref = problem.ref_logp[k]
        q = problem.label_noise + (1 - 2 * problem.label_noise) * clean_preference(problem.reward[k], problem.labels)
        w = ref.exp()[:, None] * ref.exp()[None, :] * q * (1 - torch.eye(ref.numel(), dtype=torch.float64))
        theta = torch.zeros_like(ref, requires_grad=True)
        opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            g = torch.log_softmax(theta, -1) - ref  # log pi / pi_ref
            loss = (w * (g[:, None] - g[None, :] - 1 / (2 * tau)) ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        out.append(torch.log_softmax(theta.detach(), -1))
    return torch.stack(out)


@pytest.mark.parametrize("labels,noise", [("bt", 0.0), ("deterministic", 0.0), ("bt", 0.2)])
def test_ipo_target_is_the_closed_form_and_minimises_the_population_loss(problem, labels, noise):
    p = TabularProblem(problem.ref_logp, problem.reward, labels, noise)
    t = method("ipo", beta=0.2).population_target(p)
    assert isinstance(t, Target)
    closed = X.optimal_logp(p.ref_logp, win_probability(p), 0.2)
    assert torch.allclose(t.logp, closed, atol=1e-12, rtol=0)
    assert torch.allclose(t.logp, ipo_population_minimiser(p, 0.2), atol=1e-6, rtol=0)
    assert X.kl(t.logp, X.optimal_logp(p.ref_logp, p.reward, 0.2)) > 1e-3  # not pi*_tau


def test_ipo_two_actions_deterministic_preference_is_sigmoid_of_half_inverse_tau():
    """IPO paper: y1 always preferred, uniform reference: pi(y1) = sigma(1/(2 tau)). P(y1 > ref) = 1/2 * 1/2 + 1/2 = 3/4,
    P(y2 > ref) = 1/4, so pi(y1) = e^{3/(4 tau)} / (e^{3/(4 tau)} + e^{1/(4 tau)}) = sigma(1/(2 tau))."""
    p = TabularProblem(torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64)),
                       torch.tensor([[1.0, 0.0]], dtype=torch.float64), "deterministic")
    for tau in (0.1, 0.5, 2.0):
        t = method("ipo", beta=tau).population_target(p)
        assert math.isclose(float(t.logp[0, 0].exp()), 1 / (1 + math.exp(-1 / (2 * tau))), abs_tol=1e-12)


def test_ipo_length_normalised_divides_tau_by_the_length(problem):
    t = method("ipo", beta=0.6, length_normalize=True).population_target(problem)
    assert torch.allclose(t.logp, method("ipo", beta=0.2).population_target(problem).logp, atol=1e-12)


def test_deterministic_labels_and_label_noise(problem):
    det = TabularProblem(problem.ref_logp, problem.reward, "deterministic", 0.0)
    for name in ("dpo", "rdpo"):
        t = method(name, beta=0.1).population_target(det)
        assert isinstance(t, NoTarget) and "no finite minimiser" in t.reason
    noisy = TabularProblem(problem.ref_logp, problem.reward, "bt", 0.1)
    t = method("dpo", beta=0.1).population_target(noisy)
    assert isinstance(t, NoTarget) and "no closed form" in t.reason  # flipped BT labels are not BT
    t = method("rdpo", beta=0.1, epsilon=0.1).population_target(noisy)  # rDPO's de-biasing undoes a known flip rate
    assert torch.allclose(t.logp, X.optimal_logp(problem.ref_logp, problem.reward, 0.1), atol=1e-10, rtol=0)
    wide = TabularProblem(problem.ref_logp, 10 * problem.reward, "bt", 0.0)  # q_eff = (q - 0.1)/0.8 < 0 somewhere
    assert "no finite minimiser" in method("rdpo", beta=0.1, epsilon=0.1).population_target(wide).reason


def test_online_dpo_bt_fixed_point_found_numerically(problem):
    """On-policy pairs (weights pi(y) pi(y'), not differentiated), BT labels on r_RM: gradient descent on the DPO loss
    converges to pi_ref exp(r_RM/beta)/Z; argmax labels have no target."""
    beta = 0.5
    t = method("online-dpo", beta=beta, label="bt").population_target(problem)
    assert isinstance(t, Target)
    ref, rm = problem.ref_logp[0], problem.rm_reward[0]
    q = torch.sigmoid(rm[:, None] - rm[None, :])
    theta = ref.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        lp = torch.log_softmax(theta, -1)
        w = (lp.exp()[:, None] * lp.exp()[None, :]).detach()
        h = (lp - ref)[:, None] - (lp - ref)[None, :]
        (w * q * -torch.nn.functional.logsigmoid(beta * h)).sum().backward()
        opt.step()
    assert torch.allclose(torch.log_softmax(theta.detach(), -1), t.logp[0], atol=1e-4)
    assert isinstance(method("online-dpo", beta=beta, label="argmax").population_target(problem), NoTarget)


BUILT_IN = ("dpo", "ipo", "kto", "simpo", "orpo", "slic", "nca", "bco", "rdpo", "ppo", "ppo-gt", "rloo", "rloo-gt",
            "grpo", "online-dpo", "bon")


def test_every_method_declares_a_target_or_a_reason(problem):
    for name in BUILT_IN:
        t = method(name).population_target(problem)
        assert isinstance(t, (Target, NoTarget))
        if isinstance(t, NoTarget):
            assert t.reason and t.reason != "not declared", name
        else:
            assert torch.allclose(t.logp.exp().sum(-1), torch.ones(2, dtype=torch.float64)), name


def test_exact_env_gap_decomposition(tiny_exact_env):
    env = tiny_exact_env
    problem = env.tabular_problem()
    dpo = method("dpo", beta=0.3).population_target(problem)
    ipo = method("ipo", beta=0.1).population_target(problem)
    policy = torch.log_softmax(env.ref_logp_table + 0.5 * env.reward_table.sin(), -1)  # some policy off the frontier
    for target in (dpo, ipo):
        res = env.evaluate_table(policy, beta=0.3)
        m = env.target_metrics(res, target)
        assert math.isclose(m[N.OBJECTIVE_GAP] + m[N.ESTIMATION_GAP], res.metrics[N.FRONTIER_GAP], abs_tol=1e-12)
        assert m[N.KL_TO_OWN_TARGET] > 1e-3
        at = env.evaluate_table(target.logp, beta=0.3)  # the target itself: no estimation gap, KL 0 to itself
        mt = env.target_metrics(at, target)
        assert abs(mt[N.KL_TO_OWN_TARGET]) < 1e-5 and abs(mt[N.ESTIMATION_GAP]) < 1e-5
    assert abs(env.target_metrics(res, dpo)[N.OBJECTIVE_GAP]) < 1e-6  # pi*_beta lies on the frontier
    assert env.target_metrics(res, ipo)[N.OBJECTIVE_GAP] > 1e-4  # IPO's target lies below it


def test_runs_record_their_own_target(dpo_kto_sweep):
    """Through the runner (the session's DPO + KTO smoke sweep): the summary names each run's target or the reason
    for none, and DPO's two parts add up to its frontier gap."""
    import pandas as pd

    s = pd.read_csv(dpo_kto_sweep / "summary.csv")
    dpo, kto = s[s["method"] == "dpo"], s[s["method"] == "kto"]
    assert (dpo["own_target"] == "pi_ref exp(r/beta)/Z").all()
    assert kto["own_target"].str.startswith("none: no closed form derived").all()
    assert kto["objective_gap"].isna().all() and kto["kl_to_own_target"].isna().all()
    assert (dpo["objective_gap"] + dpo["estimation_gap"] - dpo["frontier_gap"]).abs().max() < 1e-12
    assert (dpo["kl_to_own_target"] - dpo["kl_to_target"]).abs().max() < 1e-4  # its own target is pi*_beta


def test_best_of_n_run_has_no_estimation_gap(task, env, cache, reward_model, tmp_path):
    """Best-of-n's policy is computed exactly from the reward model's table: it is its own target."""
    from .runs import run_method

    summary, _, _ = run_method(task, env, cache, tmp_path, "bon", {"n": 4})
    assert summary["own_target"] == "best-of-n of pi_ref by r_RM"
    assert abs(summary["estimation_gap"]) < 1e-6 and summary["kl_to_own_target"] < 1e-6
    assert summary["objective_gap"] == pytest.approx(summary["frontier_gap"], abs=1e-6)
