"""PPO: the pure pieces against hand-computed values, the objective's optimum on exact tables, short runs."""

from __future__ import annotations

import math

import pytest
import torch

from alignbench import exact as X
from alignbench.config import from_mapping
from alignbench.errors import ConfigError
from .conftest import SMALL_EXACT
from .runs import run_method
from alignbench.registry import get_method, get_task
from alignbench.runner import RunSpec, execute
from alignbench.generation import right_pad
from alignbench.methods.ppo import (PPO, AdaptiveKLController, PPOConfig, PPOGoldReward, gae, masked_whiten,
                         ppo_policy_loss, ppo_value_loss, token_rewards)

CPU = torch.device("cpu")


# fixtures `task`, `cache` and `env` (the SMALL_EXACT task, built once per session): tests/conftest.py


# ------------------------------------------------------------------------------------------ pure functions


def test_gae_matches_hand_computation():
    # row 0: three actions, gamma = 1, lam = 0.5
    #   t=2: delta = 1 + 0 - 0.7 = 0.3                 A2 = 0.3
    #   t=1: delta = 0 + 0.7 - 0.6 = 0.1               A1 = 0.1 + 0.5 * 0.3 = 0.25
    #   t=0: delta = 0 + 0.6 - 0.5 = 0.1               A0 = 0.1 + 0.5 * 0.25 = 0.225
    #   returns = A + V = 0.725, 0.85, 1.0
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]),
                   torch.tensor([[1, 1, 1]]), gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.225, 0.25, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.725, 0.85, 1.0]]))
    # row with a prompt position (mask 0) before and a pad after; gamma = 0.9, lam = 0.8.
    # Masked entries (reward 9, values 5 and 7) must not leak in.
    #   t=2 (last action): delta = 1.0 + 0 - 2.0 = -1.0                       A2 = -1.0
    #   t=1:               delta = 0.2 + 0.9 * 2.0 - 1.0 = 1.0                A1 = 1.0 + 0.72 * (-1.0) = 0.28
    #   returns: 0.28 + 1.0 = 1.28 and -1.0 + 2.0 = 1.0
    adv, ret = gae(torch.tensor([[9.0, 0.2, 1.0, 9.0]]), torch.tensor([[5.0, 1.0, 2.0, 7.0]]),
                   torch.tensor([[0, 1, 1, 0]]), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.28, -1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 1.28, 1.0, 0.0]]))


def test_gae_lambda_one_is_monte_carlo_return_minus_value():
    # lam = gamma = 1: A_t = sum_{s >= t} r_s - V_t
    r = torch.tensor([[0.5, -1.0, 2.0]])
    v = torch.tensor([[0.1, 0.2, 0.3]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[1.5 - 0.1, 1.0 - 0.2, 2.0 - 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[1.5, 1.0, 2.0]]))


def test_clipped_policy_loss_matches_hand_computation():
    # ratios 1.5, 0.5, 1.1 (logp_old = 0); advantages 1, 1, -2; eps = 0.2
    #   tok 0: max(-1 * 1.5, -1 * 1.2) = -1.2   (clipped: no gradient)
    #   tok 1: max(-1 * 0.5, -1 * 0.8) = -0.5   (unclipped: d/dlogp = -A ratio = -0.5)
    #   tok 2: max(2 * 1.1, 2 * 1.1)   =  2.2   (inside the range: d/dlogp = 2 * 1.1 = 2.2)
    #   loss = (-1.2 - 0.5 + 2.2) / 3 = 0.5 / 3
    #   clipfrac: |ratio - 1| > 0.2 for tokens 0 and 1 -> 2/3
    #   approx_kl = mean((r - 1) - log r) = (0.094535 + 0.193147 + 0.004690) / 3 = 0.097457
    logp_new = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_(True)
    out = ppo_policy_loss(logp_new, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -2.0]]), torch.ones(1, 3), 0.2)
    assert out.loss.item() == pytest.approx(0.5 / 3, abs=1e-6)
    assert float(out.clipfrac) == pytest.approx(2 / 3, abs=1e-6)
    assert float(out.approx_kl) == pytest.approx(0.097457, abs=1e-5)
    out.loss.backward()
    torch.testing.assert_close(logp_new.grad, torch.tensor([[0.0, -0.5, 2.2]]) / 3)
    # a masked token contributes nothing: only token 2 counts -> loss 2.2
    out = ppo_policy_loss(logp_new, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -2.0]]),
                          torch.tensor([[0, 0, 1]]), 0.2)
    assert out.loss.item() == pytest.approx(2.2, abs=1e-6)


def test_clipped_value_loss_matches_hand_computation():
    # values 1.0, 0.0; old 0.5, 0.5; returns 1.5, 0.0; clip 0.2
    #   tok 0: clipped value 0.7; errors (1.0 - 1.5)^2 = 0.25, (0.7 - 1.5)^2 = 0.64 -> 0.64
    #   tok 1: clipped value 0.3; errors 0, (0.3 - 0)^2 = 0.09 -> 0.09
    #   loss = 0.5 * (0.64 + 0.09) / 2 = 0.1825; the clipped error is the larger one on both tokens
    out = ppo_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[1.5, 0.0]]),
                         torch.ones(1, 2), 0.2)
    assert float(out.loss) == pytest.approx(0.1825, abs=1e-6)
    assert float(out.clipfrac) == pytest.approx(1.0)


def test_token_rewards_put_the_score_on_the_last_completion_token():
    # log-ratios 0 (prompt, masked), 0.5, -1.0; kl_coef 0.5 -> -0.25, +0.5; score 2 added at the last token
    rewards, log_ratio = token_rewards(torch.tensor([2.0]), torch.tensor([[0.0, -1.0, -2.0, 0.0]]),
                                       torch.tensor([[0.0, -1.5, -1.0, 0.0]]), torch.tensor([[0, 1, 1, 0]]), 0.5)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.25, 2.5, 0.0]]))
    torch.testing.assert_close(log_ratio, torch.tensor([[0.0, 0.5, -1.0, 0.0]]))


def test_masked_whiten_and_kl_controller():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    w = masked_whiten(x, m)
    assert float(w[0, :3].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(w[0, :3].pow(2).mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(w[0, 3]) == 0.0
    # KL twice the target: the error is clipped at 0.2, beta *= 1 + 0.2 * 64 / 1000
    ctl = AdaptiveKLController(0.1, target=3.0, horizon=1000)
    assert ctl.update(6.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 1000))
    assert ctl.update(3.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 1000))  # on target: unchanged


def test_right_pad_moves_prompt_padding_to_the_end():
    ids = torch.tensor([[0, 5, 7, 8], [4, 5, 7, 0]])
    am = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    cm = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]])
    p_ids, p_am, p_cm = right_pad(ids, am, cm, 0)
    torch.testing.assert_close(p_ids, torch.tensor([[5, 7, 8], [4, 5, 7]]))
    torch.testing.assert_close(p_am, torch.tensor([[1, 1, 1], [1, 1, 1]]))
    torch.testing.assert_close(p_cm, torch.tensor([[0, 1, 1], [0, 0, 1]]))


# ------------------------------------------------------------------------------------------ the objective's optimum


def _objective(logp, ref, reward, beta):
    return X.expected(logp, reward) - beta * X.kl(logp, ref)


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_gradient_ascent_on_exact_objective_reaches_pi_star(env, beta):
    """A tabular policy maximising E_pi[r] - beta KL(pi || pi_ref) with exact expectations reaches pi*_beta."""
    ref, r = env.ref_logp_table.double(), env.reward_table.double()
    theta = ref.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(1500):
        logp = theta.log_softmax(-1)
        loss = -_objective(logp, ref, r, beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    target = X.optimal_logp(ref, r, beta)
    assert float(X.kl(theta.detach().log_softmax(-1), target)) < 1e-3


def test_ppo_surrogate_with_exact_expectations_reaches_pi_star(env):
    """The PPO pieces (per-token KL reward, clipped surrogate with rollout-constant log pi_old) with exact
    expectations over the response table instead of samples: their fixed point is pi*_beta."""
    beta = 0.5
    ref, r = env.ref_logp_table.double(), env.reward_table.double()
    k, n = ref.shape
    theta = ref.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(150):  # iterations
        logp_old = theta.detach().log_softmax(-1)
        weights = logp_old.exp()  # the rollout distribution, exactly
        # one "token" per response: the score plus the KL penalty, advantage = reward - E_pi_old[reward]
        rewards, _ = token_rewards(r.reshape(-1), logp_old.reshape(-1, 1), ref.reshape(-1, 1),
                                   torch.ones(k * n, 1), beta)
        rewards = rewards.view(k, n)
        adv = rewards - (weights * rewards).sum(-1, keepdim=True)
        for _ in range(4):  # epochs
            out = ppo_policy_loss(theta.log_softmax(-1), logp_old, adv, weights, clip_eps=0.2)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    target = X.optimal_logp(ref, r, beta)
    assert float(X.kl(theta.detach().log_softmax(-1), target)) < 1e-3


# ------------------------------------------------------------------------------------------ runs


_run = run_method  # tests/runs.py


def test_short_ppo_run_raises_gold_reward(task, env, cache, tmp_path):
    summary, rows, made = _run(task, env, cache, tmp_path, "ppo",
                               {"beta": 0.1, "iterations": 20, "rollout_batch": 64, "minibatch_size": 32},
                               {"eval_every": 10})
    assert summary["status"] == "ok", summary
    assert [r["step"] for r in rows] == [0, 10, 20]
    ref_reward = rows[0]["reward/gold"]
    assert summary["reward"] > ref_reward + 0.2, (ref_reward, summary["reward"])
    assert summary["kl"] > 0
    for key in ("ppo/rm_reward", "ppo/gold_reward", "kl/sampled", "policy/entropy_sampled", "ppo/approx_kl",
                "ppo/clipfrac", "ppo/value_loss", "ppo/explained_variance", "ppo/kl_coef"):
        assert key in rows[-1] and math.isfinite(rows[-1][key]), key
    assert summary["rm_accuracy"] > 0.6 and "rm_gold_corr" in summary
    (policy,) = made
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), env.reference.parameters()))


def test_ppo_gt_uses_the_gold_reward_and_adapts_beta(task, env, cache, tmp_path):
    cls = get_method("ppo-gt")
    assert cls is PPOGoldReward and cls.needs_gold_reward and not cls.needs_reward_model and not cls.needs_preferences
    summary, rows, made = _run(task, env, cache, tmp_path, "ppo-gt",
                               {"beta": 0.1, "iterations": 6, "adaptive_kl": True, "target_kl": 1e-4,
                                "horizon": 100, "rollout_batch": 32, "minibatch_size": 32}, {"eval_every": 3})
    assert summary["status"] == "ok", summary
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert "rm_accuracy" not in summary and "ppo/rm_reward" not in rows[-1]
    assert rows[-1]["ppo/gold_reward"] == pytest.approx(rows[-1]["ppo/score"])
    # iteration 1 samples the reference itself (KL 0: beta *= 1 - 0.2 * 32/100); afterwards the sampled
    # KL exceeds the tiny target, so the controller raises beta (x 1.064 per iteration)
    coefs = [r["ppo/kl_coef"] for r in rows]
    assert coefs[0] == 0.1 and coefs[2] > coefs[1]
    assert summary["ppo/final_kl_coef"] == pytest.approx(coefs[2])


def test_non_finite_reward_fails_the_run(task, env, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(env, "gold_reward", lambda prompts, completions: torch.full((len(prompts),), float("nan")))
    monkeypatch.delenv("ALIGNBENCH_RAISE", raising=False)
    summary, _, _ = _run(task, env, cache, tmp_path, "ppo-gt", {"iterations": 2}, {"eval_every": 1})
    assert summary["status"] == "failed" and "non-finite" in summary["reason"], summary


def test_ppo_registration_and_config_errors():
    assert get_method("ppo") is PPO
    assert PPO.data_format == "online" and PPO.needs_reward_model and PPO.sweep_param == "beta"
    with pytest.raises(ConfigError) as e:
        from_mapping(PPOConfig, {"target_kl": 0})
    assert e.value.field == "target_kl"
    with pytest.raises(ConfigError) as e:
        from_mapping(PPOConfig, {"target_kl": -1.0})
    assert e.value.field == "target_kl"
    with pytest.raises(ConfigError) as e:
        from_mapping(PPOConfig, {"rollout_batch": 8, "minibatch_size": 16})
    assert e.value.field == "minibatch_size"
    with pytest.raises(ConfigError) as e:
        from_mapping(PPOConfig, {"lam": 1.5})
    assert e.value.field == "lam"


@pytest.mark.slow
def test_ppo_gt_default_settings_approach_the_frontier(task, env, cache, tmp_path):
    """With the default settings, PPO on the gold reward ends near pi*_beta and near the optimal frontier
    (measured: frontier gap 0.06, KL(pi || pi*_0.3) 0.19 on this task)."""
    summary, rows, _ = _run(task, env, cache, tmp_path, "ppo-gt", {"beta": 0.3}, {"eval_every": 50})
    assert summary["status"] == "ok", summary
    optimal = env.frontier_reward_at(summary["kl"])
    assert summary["frontier_gap"] < 0.25 and summary["reward"] > 0.85 * optimal, (summary, optimal)
    assert summary["kl_to_target"] < 1.0, summary


def test_interrupted_ppo_run_resumes_exactly(task, env, cache, tmp_path, monkeypatch):
    """A run killed mid-way continues from its last checkpoint and ends where an uninterrupted run ends."""
    cfg = {"iterations": 5, "rollout_batch": 16, "minibatch_size": 8, "adaptive_kl": True, "horizon": 200}
    train = {"eval_every": 2, "checkpoint_every": 2}
    full, full_rows, _ = _run(task, env, cache, tmp_path / "full", "ppo-gt", cfg, train)
    assert full["status"] == "ok"

    gold = env.gold_reward
    calls = []

    def dies_in_iteration_4(prompts, completions):
        calls.append(1)
        if len(calls) == 4:  # one gold call per iteration: die after the checkpoint of iteration 2
            raise KeyboardInterrupt
        return gold(prompts, completions)

    monkeypatch.setattr(env, "gold_reward", dies_in_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        _run(task, env, cache, tmp_path / "resumed", "ppo-gt", cfg, train)
    calls.clear()
    monkeypatch.setattr(env, "gold_reward", lambda p, c: calls.append(1) or gold(p, c))
    resumed, rows, _ = _run(task, env, cache, tmp_path / "resumed", "ppo-gt", cfg, train)
    assert resumed["status"] == "ok"
    assert len(calls) == 3  # iterations 3, 4 and 5 only: it continued from the checkpoint of iteration 2
    assert [r["step"] for r in rows] == [r["step"] for r in full_rows] == [0, 2, 4, 5]
    for key in ("reward/gold", "kl/ref", "ppo/kl_coef", "ppo/value_loss"):
        assert rows[-1][key] == pytest.approx(full_rows[-1][key], rel=1e-5, abs=1e-7), key
