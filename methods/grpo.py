"""GRPO: group relative policy optimisation (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300), with the
Dr. GRPO options (Liu et al. 2025, arXiv 2503.20783).

Each iteration the shared online loop samples k = ``group_size`` completions per prompt and scores them
with the learned reward model. Then (outcome supervision, Sec. 4.1.2):

    A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-4)       group-normalised advantage, the same at every token
                                                       (std: unbiased, eps 1e-4, as TRL's GRPOTrainer)
    l_i,t = -min(rho_i,t A_i, clip(rho_i,t, 1-eps, 1+eps) A_i) + beta k3_i,t          (Eq. 3, negated)
    k3_i,t = pi_ref/pi - log(pi_ref/pi) - 1            (Eq. 4: Schulman's k3, an unbiased, >= 0 KL estimate)
    L = 1/G sum_i 1/|o_i| sum_t l_i,t                 (Eq. 3's aggregation, ``loss_agg="seq_mean"``)

Options:

* ``kl_mode``: ``loss`` (paper, default): beta k3 in the per-token loss and R_i = r_i;
  ``reward``: no KL term in the loss, R_i = r_i - beta KL_seq(y_i) (as RLOO and PPO do).
* ``scale_rewards=false``: Dr. GRPO's A_i = R_i - mean_j R_j (no division by the group std).
* ``loss_agg``: ``seq_mean`` (paper: per-sequence token mean, then mean over sequences);
  ``token_mean`` (sum over all tokens / number of tokens: DAPO, TRL's ``bnpo``);
  ``token_sum`` (sum over all tokens / (B x max_new_tokens), a constant: Dr. GRPO, TRL's ``dr_grpo``).
  Dr. GRPO is ``scale_rewards=false, loss_agg=token_sum``. On a fixed-length task the three coincide.

What it optimises (checked on a tabular policy in tests/test_online_methods.py).
* Advantages: without std scaling the expected update is (k-1)/k times the gradient of E_pi[R] (the
  group mean includes the sample itself). With the std division it is not the gradient of that
  objective: prompts whose k rewards vary little get their updates scaled up (Liu et al. 2025, Sec. 3.1,
  "question-level difficulty bias"), and within a prompt the reward is replaced by its standardised
  value; for k = 2 the advantage is +-1/sqrt(2) (up to the 1e-4), so only the sign of R_1 - R_2 counts and
  the update follows the probability of winning a pairwise comparison, not the expected reward.
* The k3 term: its gradient on samples from pi is (1 - pi_ref/pi) grad log pi, whose expectation under pi
  is -sum_y pi_ref grad log pi = grad KL(pi_ref || pi), the *reverse* KL, not grad KL(pi || pi_ref) (Tang and
  Munos 2025, "On a few pitfalls in KL divergence gradient estimation for RL"). Per token, along pi's own trajectories. So kl_mode=loss without std
  scaling ascends E_pi[r] - beta KL(pi_ref || pi) (per token), whose optimum pi = beta pi_ref / (lambda - r)
  is not pi*_beta = pi_ref exp(r/beta)/Z; kl_mode=reward targets pi*_beta.

Paper defaults: eps = 0.2, beta = 0.04, one update per rollout (mu = 1); k = 4 here (paper 64, TRL 8) to
keep a run's cost near PPO's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alignbench.api import NoTarget, TabularProblem, Target
from alignbench.config import check_choice, check_positive, param
from alignbench.online import (Learner, OnlineMethod, StepConfig, RolloutBatch, check_group_size,
                               clipped_surrogate, grouped, kl_penalized_reward)
from alignbench.registry import register_method
from alignbench.targets import reward_tilt

STD_EPS = 1e-4  # TRL GRPOTrainer: advantages / (std + 1e-4)


@dataclass(frozen=True)
class GRPOConfig(StepConfig):
    beta: float = param(0.04, "KL coefficient (GRPO paper: 0.04): of the k3 loss term, or of the reward penalty")
    group_size: int = param(4, "k completions per prompt (GRPO paper: 64; TRL: 8); advantages are normalised "
                               "within each prompt's group")
    kl_mode: str = param("loss", "loss: beta x k3 per token in the loss (paper); reward: R = r - beta KL_seq")
    scale_rewards: bool = param(True, "divide advantages by the group's std (false: Dr. GRPO)")
    loss_agg: str = param("seq_mean", "seq_mean (paper) | token_mean (DAPO) | token_sum (Dr. GRPO: "
                                      "/ (B x max_new_tokens))")
    clip_eps: float = param(0.2, "clip range of the per-token ratio (paper: 0.2)")

    def __post_init__(self) -> None:
        check_group_size(self.group_size, "the group's mean and std need several samples of the prompt")
        super().__post_init__()
        check_choice("kl_mode", self.kl_mode, ("loss", "reward"))
        check_choice("loss_agg", self.loss_agg, ("seq_mean", "token_mean", "token_sum"))
        check_positive("clip_eps", self.clip_eps)


def grpo_advantages(rewards: Tensor, k: int, scale: bool = True, eps: float = STD_EPS) -> Tensor:
    """Group-normalised advantages (GRPO Sec. 4.1.2): (R - mean_g) / (std_g + eps), std unbiased; without
    ``scale`` (Dr. GRPO) R - mean_g. rewards: (P*k,) with prompt i at rows i*k .. i*k+k-1. Returns (P*k,)."""
    g = grouped(rewards, k)
    adv = g - g.mean(-1, keepdim=True)
    if scale:
        adv = adv / (g.std(-1, keepdim=True) + eps)
    return adv.reshape(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) (GRPO Eq. 4): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return d.exp() - d - 1.0


def aggregate(per_token: Tensor, mask: Tensor, how: str, max_len: int) -> Tensor:
    """Reduce (B, T) per-token losses over the masked tokens: seq_mean | token_mean | token_sum (see module)."""
    m = mask.to(per_token.dtype)
    if how == "seq_mean":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if how == "token_mean":
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    return (per_token * m).sum() / (per_token.shape[0] * max_len)


def grpo_loss(logp: Tensor, logp_old: Tensor, ref_logp: Tensor, advantages: Tensor, mask: Tensor, beta: float,
              clip_eps: float, kl_in_loss: bool = True, loss_agg: str = "seq_mean", max_len: int = 1) -> tuple[Tensor, Tensor]:
    """GRPO loss (Eq. 3 negated, with the chosen aggregation) and the mean k3 KL over masked tokens.

    logp: (B, T) per-token log pi with gradients; logp_old, ref_logp: (B, T) constants; advantages: (B,);
    mask: (B, T) completion tokens. Returns (loss scalar, mean k3 (detached)).
    """
    per_token = clipped_surrogate(logp - logp_old, advantages.unsqueeze(1), clip_eps)
    kl = k3_kl(logp, ref_logp)
    if kl_in_loss and beta != 0.0:
        per_token = per_token + beta * kl
    m = mask.to(kl.dtype)
    return aggregate(per_token, mask, loss_agg, max_len), ((kl * m).sum() / m.sum().clamp(min=1.0)).detach()


@register_method("grpo")
class GRPO(OnlineMethod):
    """GRPO against the learned reward model (KL as a k3 loss term by default)."""

    description = "GRPO: group-normalised advantages over k samples, clipped ratio, k3 KL loss (Shao 2024; Dr. GRPO option)"
    config_cls = GRPOConfig
    needs_reward_model = True
    needs_gold_reward = False
    needs_preferences = True
    sweep_param = "beta"
    # advantages are standardised (|A| ~ 1 whatever the reward's scale), so the KL term needs larger beta than
    # RLOO's: at beta = 0.1 on the exact task GRPO reached KL 7.5 nats (RLOO 2.2)
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)

    def population_target(self, problem: TabularProblem) -> Target | NoTarget:
        """kl_mode=reward without std scaling (Dr. GRPO advantages): the gradient of E[r_RM - beta KL_seq], optimum
        pi_ref exp(r_RM/beta)/Z. Otherwise none (module docstring: k3 in the loss, std scaling)."""
        cfg = self.config
        if cfg.kl_mode != "reward":  # type: ignore[attr-defined]
            return NoTarget("kl_mode=loss: the k3 term's gradient along pi's own samples is that of the reverse "
                            "KL(pi_ref || pi) per token, whose optimum over sequences has no closed form here")
        if cfg.scale_rewards:  # type: ignore[attr-defined]
            return NoTarget("advantages divided by the group's std: the update is not the gradient of one objective "
                            "(pi_ref exp(r_RM/beta)/Z is a fixed point, not shown to be its limit)")
        return reward_tilt(problem, cfg.beta, self.needs_reward_model)

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, learner: Learner) -> None:
        cfg: GRPOConfig = self.config
        r = batch.score if cfg.kl_mode == "loss" else kl_penalized_reward(batch.score, batch.seq_kl, cfg.beta)
        self.advantages = grpo_advantages(r, cfg.group_size, cfg.scale_rewards)
        self.max_len = learner.ctx.env.generation.max_new_tokens

    def update(self, batch: RolloutBatch, learner: Learner, it: int) -> dict[str, Any]:
        cfg: GRPOConfig = self.config
        stats: dict[str, list[float]] = {}
        for i in learner.minibatches(batch.input_ids.shape[0], cfg.minibatch_size, cfg.epochs):
            loss, k3 = grpo_loss(learner.policy_logps(batch, i), batch.logp[i], batch.ref_logp[i], self.advantages[i],
                                 batch.mask[i], cfg.beta, cfg.clip_eps, cfg.kl_mode == "loss", cfg.loss_agg,
                                 self.max_len)
            (gn,) = learner.step(loss, it)
            for key, v in (("grpo/loss", loss), ("grpo/k3_kl", k3), ("grpo/grad_norm", gn)):
                stats.setdefault(key, []).append(float(v.detach()))
        return stats

    def iteration_stats(self, batch: RolloutBatch) -> dict[str, float]:
        return {"grpo/advantage_abs": float(self.advantages.abs().mean()),
                "grpo/zero_std_share": float((grouped(batch.score, self.config.group_size).std(-1) == 0).float().mean())}
