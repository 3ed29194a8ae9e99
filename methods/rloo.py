"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740),
and ``rloo-gt``: the same estimator on the task's gold reward.

Each iteration the shared online loop (:mod:`alignbench.online`) samples k = ``group_size`` completions
for each of ``rollout_batch / k`` prompts from the current policy and scores them. Then, per sequence:

    R_i = r(x, y_i) - beta sum_t log pi(y_i,t|.)/pi_ref(y_i,t|.)      (sequence-level KL penalty, Sec. 3)
    A_i = R_i - 1/(k-1) sum_{j != i} R_j                              (leave-one-out baseline, Eq. 5)
    L   = -1/B sum_i A_i log pi(y_i | x)                               (REINFORCE, Eq. 4)

implemented, as in TRL's RLOOTrainer, as the sequence-level clipped ratio objective
-min(rho_i A_i, clip(rho_i, 1-eps, 1+eps) A_i) with rho_i = pi(y_i)/pi_old(y_i): on the first (by
default the only) step on a rollout rho = 1 and its gradient is exactly the REINFORCE gradient above;
further epochs are kept near the rollout policy by the clip. R and A are constants (no gradient through
the KL term, as in the paper). E[A_i grad log pi(y_i)] is an unbiased estimate of the gradient of
E_pi[r] - beta KL(pi || pi_ref) (tests/test_online_methods.py checks it on a tabular policy).

Defaults: k = 2 and beta = 0.03 (TRL paper index; the paper uses k = 2 and 4), one update per rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alignbench.api import NoTarget, TabularProblem, Target
from alignbench.config import check_positive, param
from alignbench.online import (Learner, OnlineMethod, StepConfig, RolloutBatch, check_group_size,
                               clipped_surrogate, grouped, kl_penalized_reward)
from alignbench.registry import register_method
from alignbench.targets import reward_tilt
from alignbench.report import names as N


@dataclass(frozen=True)
class RLOOConfig(StepConfig):
    beta: float = param(0.03, "KL coefficient of the sequence reward r - beta KL_seq (TRL paper index: 0.03)")
    group_size: int = param(2, "k completions per prompt; the baseline of each is the mean of the other k-1 "
                               "(Ahmadian et al.: k = 2, 4)")
    clip_eps: float = param(0.2, "clip range of the sequence ratio (only matters when epochs > 1 or "
                                 "minibatch_size < rollout_batch; TRL: 0.2)")

    def __post_init__(self) -> None:
        check_group_size(self.group_size, "the leave-one-out baseline needs another sample of the prompt")
        super().__post_init__()
        check_positive("clip_eps", self.clip_eps)


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    """Leave-one-out advantages A_i = R_i - (sum_j R_j - R_i)/(k-1) over each prompt's k samples (RLOO Eq. 5).

    rewards: (P*k,), rows i*k .. i*k+k-1 are prompt i's samples. Returns (P*k,). Equals k/(k-1) (R_i - mean).
    """
    g = grouped(rewards, k)
    return (g - (g.sum(-1, keepdim=True) - g) / (k - 1)).reshape(-1)


def rloo_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, clip_eps: float) -> Tensor:
    """Sequence-level clipped REINFORCE loss, mean over sequences (TRL RLOOTrainer._compute_loss):

        L = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps)),  rho_i = exp(log pi(y_i) - log pi_old(y_i)).

    logp_new: (B,) sequence log pi(y_i|x) with gradients; logp_old, advantages: (B,) constants.
    """
    return clipped_surrogate(logp_new - logp_old, advantages, clip_eps).mean()


@register_method("rloo")
class RLOO(OnlineMethod):
    """REINFORCE with a leave-one-out baseline against the learned reward model."""

    description = "RLOO: REINFORCE, leave-one-out baseline over k samples, reward r_RM - beta KL_seq (Ahmadian 2024)"
    config_cls = RLOOConfig
    needs_reward_model = True
    needs_gold_reward = False
    needs_preferences = True
    sweep_param = "beta"
    default_grid = (0.01, 0.03, 0.1, 0.3, 1.0)

    def population_target(self, problem: TabularProblem) -> Target | NoTarget:
        """pi_ref exp(s/beta)/Z for its score s (r_RM; rloo-gt: the gold r): REINFORCE on R = s - beta KL_seq
        ascends E[s] - beta KL(pi || pi_ref) (RLOO paper Sec. 3; DPO App. A.1)."""
        return reward_tilt(problem, self.config.beta, self.needs_reward_model)

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, learner: Learner) -> None:
        cfg: RLOOConfig = self.config
        self.rewards = kl_penalized_reward(batch.score, batch.seq_kl, cfg.beta)
        self.advantages = rloo_advantages(self.rewards, cfg.group_size)

    def update(self, batch: RolloutBatch, learner: Learner, it: int) -> dict[str, Any]:
        cfg: RLOOConfig = self.config
        stats: dict[str, list[float]] = {}
        old = batch.logp.sum(-1)
        for i in learner.minibatches(batch.input_ids.shape[0], cfg.minibatch_size, cfg.epochs):
            loss = rloo_loss(learner.policy_logps(batch, i).sum(-1), old[i], self.advantages[i], cfg.clip_eps)
            (gn,) = learner.step(loss, it)
            stats.setdefault("rloo/loss", []).append(float(loss.detach()))
            stats.setdefault("rloo/grad_norm", []).append(float(gn))
        return stats

    def iteration_stats(self, batch: RolloutBatch) -> dict[str, float]:
        return {"rloo/reward_with_kl": float(self.rewards.mean()),
                "rloo/advantage_abs": float(self.advantages.abs().mean())}


@register_method("rloo-gt")
class RLOOGoldReward(RLOO):
    """RLOO with the task's gold reward (mirrors ppo-gt): the loop scores with the gold reward because of
    the declared needs; with exact expectations its optimum is pi*_beta on the frontier."""

    description = "RLOO on the task's gold reward (an oracle reward, like ppo-gt)"
    needs_reward_model = False
    needs_gold_reward = True
    needs_preferences = False
    proxy_metric = None  # optimises the gold reward itself: no proxy
    proxy_curve = None
    early_stop_signal = (N.ONLINE_GOLD_REWARD, "max")  # its training reward is the gold reward: an oracle choice
    early_stop_oracle = True
