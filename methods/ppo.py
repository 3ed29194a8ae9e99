"""RLHF with PPO (InstructGPT, arXiv 2203.02155; PPO, arXiv 1707.06347), and PPO on the gold reward (``ppo-gt``).

Runs on the shared online loop (:mod:`alignbench.online`), which does steps 1-2 and the bookkeeping;
this file holds the pure pieces (GAE, clipped surrogate, clipped value loss, per-token KL rewards, the
adaptive KL controller) and the update. Each iteration:

1. sample one completion per prompt for ``rollout_batch`` training prompts from the current policy
   (:func:`alignbench.generation.sample`, KV cache; fixed length on the exact task);
2. score each sequence: the learned reward model (``ppo``) or the task's gold reward (``ppo-gt``);
3. per-token reward ``r_t = -beta (log pi(y_t|.) - log pi_ref(y_t|.))`` at every completion token, plus
   the score at the last completion token (InstructGPT Eq. 2, per token as in Ziegler et al. 2019);
4. advantages by GAE (gamma, lambda) on a token-level critic, whitened over the batch's tokens;
5. ``ppo_epochs`` passes of shuffled minibatches: clipped surrogate for the policy, clipped value
   loss for the critic, gradient clipping, AdamW.

The critic is a separate network: a scalar head applied at every token of a copy of the reward
model (``ppo``), or of the reference model with a fresh zero head (``ppo-gt``). Dropout is disabled
in both networks during PPO (as in TRL), so log pi_old and log pi_new agree at the first minibatch.

Rollouts are re-packed to start at column 0 (generation left-pads prompts) so that the shared
:func:`alignbench.logprobs.sequence_logps` (default position ids) gives the log-probs generation used.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alignbench.api import NoTarget, Panel, TabularProblem, Target
from alignbench.config import check_int, check_nonnegative, check_positive, check_range, param
from alignbench.errors import ConfigError
from alignbench.online import Learner, OnlineConfig, OnlineMethod, RolloutBatch, clipped_surrogate
from alignbench.optim import make_optimizer, warmup_schedule
from alignbench.registry import register_method
from alignbench.targets import reward_tilt
from alignbench.report import names as N

if TYPE_CHECKING:  # pragma: no cover
    from alignbench.api import RunContext


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class PPOConfig(OnlineConfig):
    """PPO settings. Defaults follow Ziegler et al. (2019) / InstructGPT where they exist; the sizes
    (rollout_batch, minibatch_size, iterations) are chosen so that a default run on the exact task
    takes well under a minute on 2 CPU cores."""

    beta: float = param(0.1, "KL coefficient beta of the per-token penalty -beta log(pi/pi_ref) (the swept value; "
                             "the initial value when adaptive_kl)")
    adaptive_kl: bool = param(False, "adapt beta towards target_kl with the proportional controller of Ziegler et al. (2019)")
    target_kl: float = param(6.0, "target sequence KL (nats) of the adaptive controller (DPO paper's PPO: 3, 6, 9, 12)")
    horizon: int = param(10000, "horizon of the adaptive KL controller, in rollout samples (Ziegler et al.: 10000)")
    iterations: int | None = param(100, "PPO iterations (rollout + update); None: the run's train.steps. Its own "
                                        "default because one iteration (rollout_batch samples, ppo_epochs passes) "
                                        "is much more work than an offline step: 100 iterations take ~40 s on the "
                                        "exact task on 2 CPU cores, and the curves have flattened by then")
    rollout_batch: int = param(128, "prompts (one completion each: group_size 1) per iteration")
    ppo_epochs: int = param(4, "passes over each rollout batch (Ziegler et al., InstructGPT: 4)")
    minibatch_size: int = param(64, "rollouts per gradient step")
    clip_eps: float = param(0.2, "clipping range epsilon of the surrogate (PPO paper: 0.2)")
    vf_coef: float = param(0.1, "weight of the value loss (Ziegler et al.: 0.1); with the separate critic and its own "
                                "AdamW it mainly matters through gradient clipping")
    value_clip: float = param(0.2, "clipping range of the value prediction around the rollout's values (0.2)")
    gamma: float = param(1.0, "discount (1.0: undiscounted episodes, Ziegler et al.)")
    lam: float = param(0.95, "GAE lambda (Ziegler et al.: 0.95)")
    whiten_advantages: bool = param(True, "normalise advantages to mean 0, std 1 over the batch's completion tokens")
    lr: float | None = param(3e-4, "policy learning rate (None: the run's train.lr). PPO takes ppo_epochs x "
                                   "rollout_batch / minibatch_size correlated steps per rollout; at the offline "
                                   "methods' 1e-3 it collapses early onto a few responses (exact task: frontier "
                                   "gap 1.1 vs 0.3 at 3e-4)")
    critic_lr: float | None = param(None, "critic learning rate (None: the policy's)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("target_kl", self.target_kl)
        check_int("horizon", self.horizon, 1)
        check_int("ppo_epochs", self.ppo_epochs, 1)
        check_int("minibatch_size", self.minibatch_size, 1)
        if self.minibatch_size > self.rollout_batch:
            raise ConfigError("minibatch_size", f"must be <= rollout_batch={self.rollout_batch}, got {self.minibatch_size}")
        check_positive("clip_eps", self.clip_eps)
        check_nonnegative("vf_coef", self.vf_coef)
        check_positive("value_clip", self.value_clip)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("lam", self.lam, 0.0, 1.0)
        if self.critic_lr is not None:
            check_positive("critic_lr", self.critic_lr)


# ------------------------------------------------------------------------------------------ pure functions


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """sum(x * mask) / sum(mask); ``mask`` may hold weights (0/1 for tokens)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1e-8)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries (mean and biased variance over the mask); 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask.to(x.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438, Eqs. 11-16).

    rewards, values, mask: (B, T); mask is 1 on the actions (completion tokens), which are contiguous
    in each row. With delta_t = r_t + gamma V(s_{t+1}) - V(s_t), the advantage is
    A_t = sum_l (gamma lam)^l delta_{t+l}, computed backwards as A_t = delta_t + gamma lam A_{t+1}.
    The episode ends after the last masked token: there V(s_{t+1}) = 0 and A_{t+1} = 0.
    Returns (advantages, returns), both (B, T) and 0 off the mask; returns R_t = A_t + V(s_t) are the
    TD(lambda) targets of the value function.
    """
    mask = mask.to(values.dtype)
    rewards = rewards * mask
    values = values * mask
    b, t_len = rewards.shape
    adv = torch.zeros_like(values)
    last = torch.zeros(b, dtype=values.dtype, device=values.device)
    for t in reversed(range(t_len)):
        if t + 1 < t_len:
            m_next, v_next = mask[:, t + 1], values[:, t + 1]
        else:
            m_next = v_next = torch.zeros_like(last)
        delta = rewards[:, t] + gamma * v_next * m_next - values[:, t]
        last = delta + gamma * lam * m_next * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


@dataclass(frozen=True)
class PolicyLoss:
    """loss: clipped surrogate to minimise; clipfrac: share of tokens with |ratio - 1| > eps;
    approx_kl: mean of (ratio - 1) - log ratio (an unbiased, non-negative estimate of KL(pi_old || pi_new))."""

    loss: Tensor
    clipfrac: Tensor
    approx_kl: Tensor


def ppo_policy_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor,
                    clip_eps: float) -> PolicyLoss:
    """Clipped surrogate objective (PPO paper, Eq. 7), as a loss averaged over masked tokens:

        L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)),  rho_t = exp(logp_new - logp_old).

    All inputs are (B, T); ``logp_old`` and ``advantages`` are constants of the rollout.
    """
    log_ratio = logp_new - logp_old
    loss = masked_mean(clipped_surrogate(log_ratio, advantages, clip_eps), mask)
    with torch.no_grad():
        ratio = log_ratio.exp()
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_eps).to(ratio.dtype), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return PolicyLoss(loss=loss, clipfrac=clipfrac, approx_kl=approx_kl)


@dataclass(frozen=True)
class ValueLoss:
    """loss: clipped value loss; clipfrac: share of tokens where the clipped error was the larger one."""

    loss: Tensor
    clipfrac: Tensor


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float) -> ValueLoss:
    """Clipped value loss (PPO2 baselines; Ziegler et al. 2019):

        L_V = 1/2 mean_t max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - R_t)^2).
    """
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    err = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err).to(values.dtype), mask)
    return ValueLoss(loss=loss, clipfrac=clipfrac)


def token_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float) -> tuple[Tensor, Tensor]:
    """Per-token rewards -kl_coef (log pi - log pi_ref) on completion tokens, plus ``score`` at the last one.

    score (B,); logp, ref_logp, mask (B, T). Returns (rewards (B, T), per-token log-ratios (B, T)).
    """
    mask_f = mask.to(logp.dtype)
    log_ratio = (logp - ref_logp) * mask_f
    rewards = -kl_coef * log_ratio
    last = last_index(mask)
    rewards = rewards.scatter_add(1, last.unsqueeze(1), score.to(rewards.dtype).unsqueeze(1))
    return rewards, log_ratio


def last_index(mask: Tensor) -> Tensor:
    """(B,) index of the last nonzero entry of each row of a (B, T) mask."""
    t = mask.shape[1]
    return (t - 1) - (mask > 0).flip(-1).long().argmax(-1)


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """1 - Var[target - pred] / Var[target] over the mask (cleanrl's diagnostic; nan if Var[target] = 0)."""
    m = mask.bool()
    y, p = target[m].double(), pred[m].double()
    var_y = y.var(unbiased=False)
    return float(1.0 - (y - p).var(unbiased=False) / var_y) if var_y > 0 else float("nan")


class AdaptiveKLController:
    """Proportional control of beta towards a target KL (Ziegler et al. 2019, Sec. 2.2):

    e = clip(KL / KL_target - 1, -0.2, 0.2);  beta <- beta (1 + e n / horizon), n = samples this iteration.
    """

    def __init__(self, init: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        err = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@register_method("ppo")
class PPO(OnlineMethod):
    """RLHF: a reward model trained on the task's pairs, then PPO against it with a per-token KL penalty."""

    description = "RLHF: Bradley-Terry reward model + PPO with a per-token KL penalty (InstructGPT)"
    config_cls = PPOConfig
    needs_reward_model = True
    needs_gold_reward = False
    needs_preferences = True
    sweep_param = "beta"
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)
    diagnostic_panels = OnlineMethod.diagnostic_panels + (
        Panel("PPO updates", (("ppo/approx_kl", "approx KL", "-"), ("ppo/clipfrac", "clip fraction", "--"),
                              ("ppo/explained_variance", "explained variance", ":")), "value"),
    )

    def population_target(self, problem: TabularProblem) -> Target | NoTarget:
        """pi_ref exp(s/beta)/Z for the score s it is trained on (r_RM; ppo-gt: the gold r), the optimum of
        E[s] - beta KL (InstructGPT Eq. 2; DPO App. A.1). The adaptive controller moves beta: no fixed target."""
        if self.config.adaptive_kl:  # type: ignore[attr-defined]
            return NoTarget("adaptive_kl changes beta during training, so the objective has no fixed optimum")
        return reward_tilt(problem, self.config.beta, self.needs_reward_model)

    def init_models(self, ctx: "RunContext", reward_model: Any) -> dict[str, Any]:
        """The critic: a copy of the reward model (``ppo``), or of the reference with a zero head (no reward
        model: ``ppo-gt``); its AdamW and schedule; the KL controller."""
        from alignbench.reward_model import scalar_model_from

        cfg: PPOConfig = self.config
        env = ctx.env
        if reward_model is not None:
            critic = copy.deepcopy(reward_model.model)
        else:
            critic = scalar_model_from(env.reference_dir, env.tokenizer.pad_token_id, zero_head=True)
        critic = critic.to(ctx.device)
        critic.eval()  # dropout off (as TRL); gradients still flow
        for p in critic.parameters():
            p.requires_grad_(True)
        lr = self.policy_lr(ctx)
        opt_v = make_optimizer(critic.parameters(), cfg.critic_lr if cfg.critic_lr is not None else lr,
                               ctx.train.weight_decay)
        sched_v = warmup_schedule(opt_v, ctx.train.warmup_steps)
        self.critic = critic
        self.extra_groups = [(list(critic.parameters()), opt_v, sched_v)]
        self.kl_ctl = AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.horizon)
        return {"critic": critic, "opt_critic": opt_v, "sched_critic": sched_v, "kl_ctl": self.kl_ctl}

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, learner: Learner) -> None:
        """Values at the rollout, per-token rewards with the current KL coefficient, GAE, whitening."""
        from alignbench.reward_model import token_values

        cfg: PPOConfig = self.config
        self.old_values = token_values(self.critic, batch.input_ids, batch.attention_mask)[:, :-1] * batch.mask
        rewards, _ = token_rewards(batch.score, batch.logp, batch.ref_logp, batch.mask, self.kl_ctl.value)
        self.advantages, self.returns = gae(rewards, self.old_values, batch.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            self.advantages = masked_whiten(self.advantages, batch.mask)

    def update(self, batch: RolloutBatch, learner: Learner, it: int) -> dict[str, list[float]]:
        """ppo_epochs passes of shuffled minibatches: clipped surrogate + vf_coef x clipped value loss."""
        from alignbench.reward_model import token_values

        cfg: PPOConfig = self.config
        stats: dict[str, list[float]] = {}
        for i in learner.minibatches(batch.input_ids.shape[0], cfg.minibatch_size, cfg.ppo_epochs):
            m_i = batch.mask[i]
            pl = ppo_policy_loss(learner.policy_logps(batch, i), batch.logp[i], self.advantages[i], m_i,
                                 cfg.clip_eps)
            values = token_values(self.critic, batch.input_ids[i], batch.attention_mask[i])[:, :-1]
            vl = ppo_value_loss(values, self.old_values[i], self.returns[i], m_i, cfg.value_clip)
            gn_pi, gn_v = learner.step(pl.loss + cfg.vf_coef * vl.loss, it)
            for key, v in (("ppo/policy_loss", pl.loss), ("ppo/value_loss", vl.loss),
                           ("ppo/approx_kl", pl.approx_kl), ("ppo/clipfrac", pl.clipfrac),
                           ("ppo/value_clipfrac", vl.clipfrac), ("ppo/grad_norm", gn_pi),
                           ("ppo/critic_grad_norm", gn_v)):
                stats.setdefault(key, []).append(float(v.detach()))
        return stats

    def iteration_stats(self, batch: RolloutBatch) -> dict[str, float]:
        """PPO's diagnostics (and the old ppo/* names of the loop's metrics), then the KL controller's step."""
        row = {"ppo/score": float(batch.score.mean()),
               "ppo/explained_variance": explained_variance(self.old_values, self.returns, batch.mask),
               "ppo/kl_coef": self.kl_ctl.value,
               "ppo/return_mean": float(masked_mean(self.returns, batch.mask))}
        if self.needs_reward_model:
            row["ppo/rm_reward"] = float(batch.score.mean())
        if batch.gold is not None:
            row["ppo/gold_reward"] = float(batch.gold.mean())
        if self.config.adaptive_kl:
            self.kl_ctl.update(float(batch.seq_kl.mean()), batch.input_ids.shape[0])
        return row

    def eval_stats(self) -> dict[str, float]:
        return {"ppo/kl_coef": self.kl_ctl.value}

    def summary_stats(self, iterations: int) -> dict[str, Any]:
        return {"ppo/final_kl_coef": self.kl_ctl.value, "ppo/iterations": iterations}


@register_method("ppo-gt")
class PPOGoldReward(PPO):
    """PPO with the task's gold reward as the score (the DPO paper's PPO-GT): no reward model; the loop
    scores with the gold reward because of the declared needs, and the critic starts from the reference."""

    description = "PPO on the task's gold reward (PPO-GT, an oracle reward; the critic starts from the reference)"
    needs_reward_model = False
    needs_gold_reward = True
    needs_preferences = False
    proxy_metric = None  # optimises the gold reward itself: no proxy
    proxy_curve = None
    early_stop_signal = (N.ONLINE_GOLD_REWARD, "max")  # its training reward is the gold reward: an oracle choice
    early_stop_oracle = True
