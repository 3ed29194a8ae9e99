"""RLHF with PPO (InstructGPT, arXiv 2203.02155; PPO, arXiv 1707.06347), and PPO on the gold reward (``ppo-gt``).

Each iteration:

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
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from alignbench.api import Method, MethodConfig, Panel
from alignbench.config import check_int, check_nonnegative, check_positive, check_range, param
from alignbench.errors import ConfigError
from alignbench.generation import sample
from alignbench.logprobs import sequence_logps
from alignbench.models import prepare_policy
from alignbench.optim import clip_gradients, make_optimizer, warmup_schedule
from alignbench.registry import register_method

if TYPE_CHECKING:  # pragma: no cover
    from alignbench.api import RunContext


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class PPOConfig(MethodConfig):
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
    rollout_batch: int = param(128, "prompts (one completion each) per iteration")
    ppo_epochs: int = param(4, "passes over each rollout batch (Ziegler et al., InstructGPT: 4)")
    minibatch_size: int = param(64, "rollouts per gradient step")
    clip_eps: float = param(0.2, "clipping range epsilon of the surrogate (PPO paper: 0.2)")
    vf_coef: float = param(0.1, "weight of the value loss (Ziegler et al.: 0.1); with the separate critic and its own "
                                "AdamW it mainly matters through gradient clipping")
    value_clip: float = param(0.2, "clipping range of the value prediction around the rollout's values (0.2)")
    gamma: float = param(1.0, "discount (1.0: undiscounted episodes, Ziegler et al.)")
    lam: float = param(0.95, "GAE lambda (Ziegler et al.: 0.95)")
    whiten_advantages: bool = param(True, "normalise advantages to mean 0, std 1 over the batch's completion tokens")
    temperature: float | None = param(None, "sampling temperature of the rollouts (None: the task's generation "
                                            "temperature); log-probs use the same temperature")
    lr: float | None = param(3e-4, "policy learning rate (None: the run's train.lr). PPO takes ppo_epochs x "
                                   "rollout_batch / minibatch_size correlated steps per rollout; at the offline "
                                   "methods' 1e-3 it collapses early onto a few responses (exact task: frontier "
                                   "gap 1.1 vs 0.3 at 3e-4)")
    critic_lr: float | None = param(None, "critic learning rate (None: the policy's)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("target_kl", self.target_kl)
        check_int("horizon", self.horizon, 1)
        if self.iterations is not None:
            check_int("iterations", self.iterations, 1)
        check_int("rollout_batch", self.rollout_batch, 1)
        check_int("ppo_epochs", self.ppo_epochs, 1)
        check_int("minibatch_size", self.minibatch_size, 1)
        if self.minibatch_size > self.rollout_batch:
            raise ConfigError("minibatch_size", f"must be <= rollout_batch={self.rollout_batch}, got {self.minibatch_size}")
        check_positive("clip_eps", self.clip_eps)
        check_nonnegative("vf_coef", self.vf_coef)
        check_positive("value_clip", self.value_clip)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("lam", self.lam, 0.0, 1.0)
        if self.temperature is not None:
            check_positive("temperature", self.temperature)
        if self.lr is not None:
            check_positive("lr", self.lr)
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
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
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


class PromptStream:
    """Shuffled passes over the training prompts, and the minibatch permutations (one seeded generator).

    Its state is saved in checkpoints so that a resumed run draws what an uninterrupted one would.
    """

    def __init__(self, prompts: list[str], seed: int):
        self.prompts = list(prompts)
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def take(self, n: int) -> list[str]:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = torch.randperm(len(self.prompts), generator=self.generator).tolist()
            out.append(self.prompts[self.order.pop()])
        return out

    def permutation(self, n: int) -> Tensor:
        return torch.randperm(n, generator=self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": torch.tensor(self.order, dtype=torch.long)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = [int(i) for i in state["order"].tolist()]


# ------------------------------------------------------------------------------------------ rollouts


@dataclass
class Rollout:
    """A packed batch of rollouts: sequences start at column 0 and are right-padded.

    input_ids, attention_mask: (B, T); mask: (B, T-1) completion-token mask in the shifted
    (next-token) coordinates of per-token log-probs and values.
    """

    input_ids: Tensor
    attention_mask: Tensor
    mask: Tensor
    prompts: list[str]
    texts: list[str]


# ------------------------------------------------------------------------------------------ the method


Scorer = Callable[[Rollout], Tensor]


@register_method("ppo")
class PPO(Method):
    """RLHF: a reward model trained on the task's pairs, then PPO against it with a per-token KL penalty."""

    description = "RLHF: Bradley-Terry reward model + PPO with a per-token KL penalty (InstructGPT)"
    config_cls = PPOConfig
    data_format = "online"
    needs_reward_model = True
    needs_gold_reward = False
    needs_preferences = True
    sweep_param = "beta"
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)
    proxy_metric = "ppo/rm_reward"  # the reward model's score of the rollouts
    proxy_curve = "ppo/rm_reward"
    diagnostic_panels = (
        Panel("PPO proxy and gold reward (rollouts)", (("ppo/rm_reward", "RM (proxy)", "-"),
                                                       ("ppo/gold_reward", "gold", "--")), "reward"),
        Panel("PPO updates", (("ppo/approx_kl", "approx KL", "-"), ("ppo/clipfrac", "clip fraction", "--"),
                              ("ppo/explained_variance", "explained variance", ":")), "value"),
    )

    # ---------------------------------------------------------------- what differs between ppo and ppo-gt

    def make_scorer(self, ctx: "RunContext") -> tuple[Scorer, nn.Module]:
        """(score function of a rollout, the critic's initial network). PPO: the learned reward model."""
        rm = ctx.reward_model()
        m = rm.metrics
        ctx.extra_summary.update({"rm_accuracy": m.get("eval_accuracy"), "rm_eval_loss": m.get("eval_loss")})
        if "gold_corr" in m:
            ctx.extra_summary["rm_gold_corr"] = m["gold_corr"]

        def score(r: Rollout) -> Tensor:
            return rm.score(r.input_ids, r.attention_mask)

        return score, copy.deepcopy(rm.model)

    # ---------------------------------------------------------------- the loop

    def run(self, ctx: "RunContext") -> None:
        from alignbench.reward_model import token_values

        cfg: PPOConfig = self.config
        env, tc, device = ctx.env, ctx.train, ctx.device
        t_setup = time.perf_counter()
        scorer, critic = self.make_scorer(ctx)
        critic = critic.to(device)
        policy = prepare_policy(env.make_policy(), ctx.train).to(device)
        reference = env.reference.to(device)
        for net in (policy, critic):
            net.eval()  # dropout off (TRL's PPO does the same); gradients still flow
            for p in net.parameters():
                p.requires_grad_(True)
        lr = cfg.lr if cfg.lr is not None else tc.lr
        critic_lr = cfg.critic_lr if cfg.critic_lr is not None else lr
        opt_pi = make_optimizer(policy.parameters(), lr, tc.weight_decay)
        opt_v = make_optimizer(critic.parameters(), critic_lr, tc.weight_decay)
        scheds = [warmup_schedule(o, tc.warmup_steps) for o in (opt_pi, opt_v)]  # linear warmup, then constant
        kl_ctl = AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.horizon)
        iterations = cfg.iterations if cfg.iterations is not None else tc.steps
        temperature = float(cfg.temperature if cfg.temperature is not None else env.generation.temperature)
        stream = PromptStream(env.prompts["train"], ctx.seed)
        has_gold = bool(getattr(env, "has_gold_reward", False))
        uses_gold_as_score = bool(self.needs_gold_reward)

        # running: per-iteration diagnostics since the last evaluation, plus timing ("_perf/...")
        running: dict[str, list[float]] = {}
        modules = {"policy": policy, "critic": critic, "opt_policy": opt_pi, "opt_critic": opt_v,
                   "sched_policy": scheds[0], "sched_critic": scheds[1], "kl_ctl": kl_ctl, "stream": stream}
        start = ctx.resume(modules, running)  # 0 on a fresh run; else the iteration of the last checkpoint
        kl_coef = kl_ctl.value
        ctx.extra_summary["ppo/setup_seconds"] = round(time.perf_counter() - t_setup, 2)
        if start == 0:
            ctx.evaluate(policy, 0, {"ppo/kl_coef": kl_coef})
        timing = {k: running.pop(f"_perf/{k}", [0.0])[0] for k in ("generate", "score", "update", "tokens")}
        bar = ctx.progress(iterations, f"{self.name} beta={cfg.beta:g}")
        bar.update(start)
        for it in range(start + 1, iterations + 1):
            # ---- 1. rollouts from the current policy
            t0 = time.perf_counter()
            prompts = stream.take(cfg.rollout_batch)
            s = sample(policy, env.tokenizer, prompts, env.generation, temperature=temperature)
            ids, am, cm = s.right_padded(env.generation.pad_token_id)
            roll = Rollout(ids.to(device), am.to(device), cm[:, 1:].to(device).float(), prompts, s.texts)
            t1 = time.perf_counter()
            timing["generate"] += t1 - t0
            timing["tokens"] += float(roll.mask.sum())
            # ---- 2. score, old log-probs, reference log-probs, values
            with torch.no_grad():
                score = scorer(roll).float().to(device)
                cm_dev = cm.to(device)
                old_logp = sequence_logps(policy, roll.input_ids, roll.attention_mask, cm_dev, temperature).tokens
                ref_logp = sequence_logps(reference, roll.input_ids, roll.attention_mask, cm_dev, temperature).tokens
                old_values = token_values(critic, roll.input_ids, roll.attention_mask)[:, :-1] * roll.mask
                if uses_gold_as_score:
                    gold = score
                elif has_gold:
                    gold = env.gold_reward(prompts, s.texts).float().to(device)
                else:
                    gold = None
            ctx.check_finite(score, "reward score", it)
            rewards, log_ratio = token_rewards(score, old_logp, ref_logp, roll.mask, kl_coef)
            advantages, returns = gae(rewards, old_values, roll.mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, roll.mask)
            t2 = time.perf_counter()
            timing["score"] += t2 - t1
            # ---- 3. PPO epochs over minibatches
            stats: dict[str, list[float]] = {}
            b = roll.input_ids.shape[0]
            mb = min(cfg.minibatch_size, b)
            for _ in range(cfg.ppo_epochs):
                perm = stream.permutation(b).to(device)
                for lo in range(0, b - mb + 1, mb):
                    i = perm[lo:lo + mb]
                    ids_i, am_i, m_i = roll.input_ids[i], roll.attention_mask[i], roll.mask[i]
                    new_logp = sequence_logps(policy, ids_i, am_i, cm_dev[i], temperature).tokens
                    pl = ppo_policy_loss(new_logp, old_logp[i], advantages[i], m_i, cfg.clip_eps)
                    values = token_values(critic, ids_i, am_i)[:, :-1]
                    vl = ppo_value_loss(values, old_values[i], returns[i], m_i, cfg.value_clip)
                    loss = pl.loss + cfg.vf_coef * vl.loss
                    ctx.check_finite(loss, "loss", it)
                    opt_pi.zero_grad(set_to_none=True)
                    opt_v.zero_grad(set_to_none=True)
                    loss.backward()
                    gn_pi = clip_gradients(policy.parameters(), tc.max_grad_norm)
                    gn_v = clip_gradients(critic.parameters(), tc.max_grad_norm)
                    ctx.check_finite(gn_pi, "policy gradient norm", it)
                    ctx.check_finite(gn_v, "critic gradient norm", it)
                    opt_pi.step()
                    opt_v.step()
                    for sc in scheds:
                        sc.step()
                    for k, v in (("ppo/policy_loss", pl.loss), ("ppo/value_loss", vl.loss), ("ppo/approx_kl", pl.approx_kl),
                                 ("ppo/clipfrac", pl.clipfrac), ("ppo/value_clipfrac", vl.clipfrac),
                                 ("ppo/grad_norm", gn_pi), ("ppo/critic_grad_norm", gn_v)):
                        stats.setdefault(k, []).append(float(v.detach()))
            timing["update"] += time.perf_counter() - t2
            # ---- 4. diagnostics, the KL controller, evaluation
            seq_kl = log_ratio.sum(-1)
            row = {k: sum(v) / len(v) for k, v in stats.items()}
            row.update({
                "ppo/score": float(score.mean()),
                "kl/sampled": float(seq_kl.mean()),
                "policy/entropy_sampled": float(-(old_logp.sum(-1)).mean()),
                "ppo/explained_variance": explained_variance(old_values, returns, roll.mask),
                "ppo/kl_coef": kl_coef,
                "ppo/return_mean": float(masked_mean(returns, roll.mask)),
            })
            if not uses_gold_as_score:
                row["ppo/rm_reward"] = float(score.mean())
            if gold is not None:
                row["ppo/gold_reward"] = float(gold.mean())
            for k, v in row.items():
                running.setdefault(k, []).append(v)
            if cfg.adaptive_kl:
                kl_coef = kl_ctl.update(float(seq_kl.mean()), b)
            bar.update(1)
            if it % tc.eval_every == 0 or it == iterations:
                extra = {k: sum(v) / len(v) for k, v in running.items() if v and all(map(math.isfinite, v))}
                extra["ppo/kl_coef"] = kl_coef
                total = timing["generate"] + timing["score"] + timing["update"]
                extra["perf/generate_share"] = timing["generate"] / total if total > 0 else float("nan")
                extra["perf/rollout_tokens_per_s"] = timing["tokens"] / max(timing["generate"], 1e-9)
                ctx.evaluate(policy, it, extra)
                running.clear()
                bar.set_postfix({k: f"{v:.3g}" for k, v in ctx.logger.rows[-1].items() if k in ("reward/gold", "kl/ref")})
            if tc.checkpoint_every and it % tc.checkpoint_every == 0 and it < iterations:
                ctx.save_checkpoint(it, modules, {**running, **{f"_perf/{k}": [v] for k, v in timing.items()}})
        bar.close()
        total = timing["generate"] + timing["score"] + timing["update"]
        ctx.extra_summary.update({
            "ppo/final_kl_coef": kl_coef,
            "ppo/iterations": iterations,
            "perf/generate_share": round(timing["generate"] / total, 4) if total > 0 else None,
            "perf/score_share": round(timing["score"] / total, 4) if total > 0 else None,
            "perf/update_share": round(timing["update"] / total, 4) if total > 0 else None,
            "perf/rollout_tokens_per_s": round(timing["tokens"] / max(timing["generate"], 1e-9), 1),
            "perf/seconds_per_iteration": round(total / iterations, 4),
        })


@register_method("ppo-gt")
class PPOGoldReward(PPO):
    """PPO with the task's gold reward as the score (the DPO paper's PPO-GT): no reward model."""

    description = "PPO on the task's gold reward (PPO-GT, an oracle reward; the critic starts from the reference)"
    needs_reward_model = False
    needs_gold_reward = True
    needs_preferences = False
    proxy_metric = None  # optimises the gold reward itself: no proxy
    proxy_curve = None

    def make_scorer(self, ctx: "RunContext") -> tuple[Scorer, nn.Module]:
        from alignbench.reward_model import scalar_model_from

        env = ctx.env
        if not getattr(env, "has_gold_reward", False):
            from alignbench.errors import AlignbenchError

            raise AlignbenchError(f"gold_reward: task '{env.task_name}' has no gold reward, which ppo-gt needs")
        critic = scalar_model_from(env.reference_dir, env.tokenizer.pad_token_id, zero_head=True)

        def score(r: Rollout) -> Tensor:
            return env.gold_reward(r.prompts, r.texts)

        return score, critic
