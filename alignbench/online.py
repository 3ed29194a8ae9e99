"""The shared online loop: rollouts from the current policy, scoring, per-token log-probs, a method's update.

An online method (:class:`OnlineMethod`) provides only its update given a :class:`RolloutBatch` (a pure
loss over explicit tensors, plus where needed its own extra model, e.g. PPO's critic). The loop owns:

* the prompt stream (:class:`PromptStream`: shuffled passes, seeded, checkpointed);
* rollouts with the KV cache (:func:`alignbench.generation.sample`): ``rollout_batch // group_size``
  prompts per iteration, each sampled ``group_size`` times (the k of RLOO / GRPO; 1 for PPO);
* scoring through the reward source the method declares: ``needs_reward_model`` -> the learned reward
  model of the run context, ``needs_gold_reward`` -> the task's gold reward (:func:`make_scorer`);
* per-token log-probs of the policy at the rollout (``logp``) and of the reference (``ref_logp``), and the
  sampled sequence KL sum_t log pi/pi_ref;
* evaluation every ``eval_every`` iterations; checkpoints with RNG and stream state every
  ``checkpoint_every``; progress, timing shares (generate / score / update) and rollout tokens/s.

Metric names logged for every online method (per iteration, averaged between evaluations):
``online/score`` (the training reward), ``online/rm_reward`` (the proxy, when it is a learned RM),
``online/gold_reward`` (when the task has one), ``kl/sampled``, ``policy/entropy_sampled``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from .api import Method, MethodConfig, Panel
from .config import check_int, check_positive, param
from .errors import AlignbenchError, ConfigError
from .generation import sample
from .logprobs import sequence_logps
from .models import prepare_policy
from .optim import clip_gradients, make_optimizer, warmup_schedule
from .report import names as N

if TYPE_CHECKING:  # pragma: no cover
    from .api import RunContext


@dataclass(frozen=True)
class OnlineConfig(MethodConfig):
    """Fields every method on the online loop has (subclasses override the defaults)."""

    iterations: int | None = param(100, "iterations (rollout + update); None: the run's train.steps")
    rollout_batch: int = param(128, "completions sampled per iteration (rollout_batch / group_size prompts)")
    temperature: float | None = param(None, "sampling temperature of the rollouts (None: the task's generation "
                                            "temperature); log-probs use the same temperature")
    lr: float | None = param(3e-4, "policy learning rate (None: the run's train.lr)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations is not None:
            check_int("iterations", self.iterations, 1)
        check_int("rollout_batch", self.rollout_batch, 1)
        if self.temperature is not None:
            check_positive("temperature", self.temperature)
        if self.lr is not None:
            check_positive("lr", self.lr)
        k = getattr(self, "group_size", 1)
        if isinstance(k, int) and k >= 1 and self.rollout_batch % k:
            raise ConfigError("rollout_batch", f"must be a multiple of group_size={k}, got {self.rollout_batch}")


@dataclass(frozen=True)
class StepConfig(OnlineConfig):
    """Methods that take few gradient steps per rollout (RLOO, GRPO, online DPO): their shared fields."""

    iterations: int | None = param(300, "iterations (rollout + update); None: the run's train.steps. One gradient "
                                        "step per iteration: 300 cost about what PPO's 100 cost on the exact task")
    epochs: int = param(1, "passes over each rollout (1: every sample is used once, at ratio pi/pi_old = 1)")
    minibatch_size: int = param(128, "completions per gradient step")
    lr: float | None = param(1e-3, "policy learning rate (None: the run's train.lr). One gradient step per rollout "
                                   "by default, so the offline methods' 1e-3 (PPO takes 8 correlated steps per "
                                   "rollout at 3e-4)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("epochs", self.epochs, 1)
        check_int("minibatch_size", self.minibatch_size, 1)


def check_group_size(k: Any, why: str) -> None:
    """group_size k >= 2 (a one-line ConfigError naming the field otherwise)."""
    check_int("group_size", k)
    if k < 2:
        raise ConfigError("group_size", f"must be >= 2 ({why}), got {k}")


# ------------------------------------------------------------------------------------------ prompts, rollouts


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


@dataclass
class Rollout:
    """A packed batch of rollouts: sequences start at column 0 and are right-padded.

    input_ids, attention_mask, completion_mask: (B, T) (completion_mask 1 on completion tokens);
    mask: (B, T-1) float completion-token mask in the shifted (next-token) coordinates of per-token
    log-probs and values. Rows ``i*k .. i*k + k-1`` are the k samples of prompt i (k = group_size).
    """

    input_ids: Tensor
    attention_mask: Tensor
    mask: Tensor
    prompts: list[str]
    texts: list[str]
    completion_mask: Tensor | None = None
    group_size: int = 1


@dataclass
class RolloutBatch(Rollout):
    """A scored rollout with the log-probs every online method needs (all detached constants).

    score:    (B,) the training reward (reward model or gold reward, per the method's needs);
    gold:     (B,) the task's gold reward, or None when the task has none;
    logp:     (B, T-1) per-token log pi(y_t | .) at the rollout (0 off the mask);
    ref_logp: (B, T-1) per-token log pi_ref(y_t | .) (0 off the mask).
    """

    score: Tensor | None = None
    gold: Tensor | None = None
    logp: Tensor | None = None
    ref_logp: Tensor | None = None

    @property
    def log_ratio(self) -> Tensor:
        """(B, T-1) per-token log pi/pi_ref on the completion tokens."""
        return (self.logp - self.ref_logp) * self.mask

    @property
    def seq_kl(self) -> Tensor:
        """(B,) sampled sequence KL: sum_t log pi/pi_ref (an unbiased estimate of KL(pi || pi_ref))."""
        return self.log_ratio.sum(-1)


Scorer = Callable[[Rollout], Tensor]


def make_scorer(method: "OnlineMethod", ctx: "RunContext") -> tuple[Scorer, Any]:
    """(score function of a rollout, the reward model or None), from the method's DECLARED needs."""
    env = ctx.env
    if method.needs_reward_model:
        rm = ctx.reward_model()
        ctx.extra_summary.update(rm.summary())

        def score_rm(r: Rollout) -> Tensor:
            ctx.compute.add(N.COMPUTE_RM_QUERIES, r.input_ids.shape[0])
            return rm.score(r.input_ids, r.attention_mask)

        return score_rm, rm
    if method.needs_gold_reward:
        if not getattr(env, "has_gold_reward", False):
            raise AlignbenchError(f"gold_reward: task '{env.task_name}' has no gold reward, which {method.name} needs")

        def score_gold(r: Rollout) -> Tensor:
            ctx.compute.add(N.COMPUTE_GOLD_QUERIES, len(r.texts))
            return env.gold_reward(r.prompts, r.texts)

        return score_gold, None
    raise AlignbenchError(f"method '{method.name}': an online method declares needs_reward_model or needs_gold_reward")


# ------------------------------------------------------------------------------------------ shared pure pieces


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, clip_eps: float) -> Tensor:
    """Elementwise clipped surrogate loss (PPO paper, Eq. 7, negated to minimise):

        l = max(-A rho, -A clip(rho, 1 - eps, 1 + eps)),  rho = exp(log_ratio) = pi_new / pi_old.

    log_ratio, advantages: the same shape ((B, T) per token for PPO/GRPO, (B,) per sequence for RLOO).
    At rho = 1 (the first step on a rollout) its gradient is -A grad log pi: REINFORCE with advantage A.
    """
    ratio = log_ratio.exp()
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps))


def kl_penalized_reward(score: Tensor, seq_kl: Tensor, beta: float) -> Tensor:
    """R = r(x, y) - beta sum_t log pi(y_t|.)/pi_ref(y_t|.): the sequence reward of KL-regularised RL
    (Ziegler et al. 2019 Eq. 2; RLOO, Ahmadian et al. 2024 Sec. 3). score, seq_kl: (B,) -> (B,)."""
    return score - beta * seq_kl


def grouped(x: Tensor, k: int) -> Tensor:
    """(P*k,) -> (P, k): rows i*k .. i*k+k-1 of a rollout are the k samples of prompt i."""
    return x.view(-1, k)


# ------------------------------------------------------------------------------------------ the contract


@dataclass
class Learner:
    """The policy side of the loop, handed to a method's update: the policy, its optimizer and schedule,
    the reference, the prompt stream (for seeded minibatch permutations) and the sampling temperature.

    ``groups``: (parameters, optimizer, scheduler) of every trained network, the policy first, then those a
    method added in :meth:`OnlineMethod.init_models` (PPO's critic). :meth:`step` is one optimizer step on all.
    """

    ctx: "RunContext"
    policy: nn.Module
    reference: nn.Module
    stream: PromptStream
    temperature: float
    groups: list[tuple[list[nn.Parameter], torch.optim.Optimizer, Any]]

    def policy_logps(self, batch: Rollout, rows: Tensor | None = None) -> Tensor:
        """(b, T-1) per-token log pi(y_t | .) of the rollout's rows (all when None), with gradients."""
        ids, am, cm = batch.input_ids, batch.attention_mask, batch.completion_mask
        if rows is not None:
            ids, am, cm = ids[rows], am[rows], cm[rows]
        return sequence_logps(self.policy, ids, am, cm, self.temperature).tokens

    def minibatches(self, n: int, size: int, epochs: int) -> "Iterator[Tensor]":
        """``epochs`` passes over n rollout rows in seeded random minibatches of ``size`` (index tensors);
        the permutations come from the prompt stream's generator (checkpointed)."""
        size = min(size, n)
        for _ in range(epochs):
            perm = self.stream.permutation(n).to(self.ctx.device)
            for lo in range(0, n - size + 1, size):
                yield perm[lo:lo + size]

    def step(self, loss: Tensor, it: int) -> list[Tensor]:
        """zero_grad, backward, clip each group to train.max_grad_norm, check finite, optimizer and schedule
        steps; returns each group's gradient norm before clipping."""
        ctx = self.ctx
        ctx.check_finite(loss, "loss", it)
        for _, opt, _ in self.groups:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        norms = [clip_gradients(params, ctx.train.max_grad_norm) for params, _, _ in self.groups]
        for norm, what in zip(norms, ("policy", "critic", "extra", "extra")):
            ctx.check_finite(norm, f"{what} gradient norm", it)
        for _, opt, _ in self.groups:
            opt.step()
        for _, _, sched in self.groups:
            sched.step()
        return norms


class OnlineMethod(Method):
    """A method trained by the shared online loop (:func:`train_online`). The contract:

    * class attributes: ``group_size`` (k samples per prompt; a config field ``group_size`` wins),
      ``needs_reward_model`` / ``needs_gold_reward`` (the reward source), ``data_format = "online"``;
    * ``init_models(ctx, reward_model) -> dict`` (optional): build extra networks (PPO's critic) and their
      optimizers, register them with ``self.extra_groups``; returns the modules to checkpoint. Called
      before the policy is built (reward_model is None unless the method needs one);
    * ``prepare(batch, learner)`` (optional): per-rollout constants under no_grad (PPO: values, GAE);
    * ``update(batch, learner, it) -> dict[str, list[float] | float]``: the gradient steps on one rollout
      batch through the method's pure loss, returning its diagnostics;
    * ``iteration_stats(batch) -> dict`` (optional): more diagnostics once the update is done (and any
      per-iteration state change, e.g. PPO's adaptive KL controller);
    * ``eval_stats()`` / ``summary_stats(iterations)`` (optional): scalars logged at every evaluation /
      added to the run summary.
    """

    data_format = "online"
    config_cls: ClassVar[type[MethodConfig]] = OnlineConfig
    group_size: ClassVar[int] = 1
    # what the report reads: the loop logs the reward model's score of the rollouts as online/rm_reward (the proxy
    # the method optimises) and the gold reward of the same rollouts as online/gold_reward; a variant trained on
    # the gold reward itself declares no proxy (proxy_metric = proxy_curve = None)
    proxy_metric: ClassVar[str | None] = "online/rm_reward"
    proxy_curve: ClassVar[str | None] = "online/rm_reward"
    # the checkpoint kept without the gold reward: the reward model's mean score of the rollouts since the last
    # evaluation (methods on the gold reward override it with online/gold_reward, an oracle signal)
    early_stop_signal: ClassVar[tuple[str, str] | None] = (N.ONLINE_RM_REWARD, "max")
    diagnostic_panels = (Panel("proxy and gold reward (rollouts)", (("online/rm_reward", "RM (proxy)", "-"),
                                                                    ("online/gold_reward", "gold", "--")), "reward"),)

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        self.extra_groups: list[tuple[list[nn.Parameter], torch.optim.Optimizer, Any]] = []

    @property
    def k(self) -> int:
        return int(getattr(self.config, "group_size", type(self).group_size))

    def policy_lr(self, ctx: "RunContext") -> float:
        lr = getattr(self.config, "lr", None)
        return float(lr if lr is not None else ctx.train.lr)

    def init_models(self, ctx: "RunContext", reward_model: Any) -> dict[str, Any]:
        return {}

    def prepare(self, batch: RolloutBatch, learner: Learner) -> None:
        return None

    def update(self, batch: RolloutBatch, learner: Learner, it: int) -> dict[str, Any]:
        raise NotImplementedError

    def iteration_stats(self, batch: RolloutBatch) -> dict[str, float]:
        return {}

    def eval_stats(self) -> dict[str, float]:
        return {}

    def summary_stats(self, iterations: int) -> dict[str, Any]:
        return {}

    def run(self, ctx: "RunContext") -> None:
        train_online(self, ctx)


# ------------------------------------------------------------------------------------------ the loop


def _share(timing: dict[str, float], key: str) -> float:
    total = timing["generate"] + timing["score"] + timing["update"]
    return timing[key] / total if total > 0 else float("nan")


def train_online(method: OnlineMethod, ctx: "RunContext") -> None:
    """Run ``method`` on the online loop (see the module docstring)."""
    cfg = method.config
    env, tc, device = ctx.env, ctx.train, ctx.device
    t_setup = time.perf_counter()
    scorer, rm = make_scorer(method, ctx)
    extra_modules = method.init_models(ctx, rm)
    policy = prepare_policy(env.make_policy(), tc).to(device)
    reference = env.reference.to(device)
    policy.eval()  # dropout off (TRL's PPO does the same); gradients still flow
    for p in policy.parameters():
        p.requires_grad_(True)
    ctx.compute.watch(policy)  # rollouts, log-probs and updates: every forward through the policy is counted
    ctx.compute.watch(reference, "reference")
    opt = make_optimizer(policy.parameters(), method.policy_lr(ctx), tc.weight_decay)
    sched = warmup_schedule(opt, tc.warmup_steps)  # linear warmup, then constant
    iterations = cfg.iterations if cfg.iterations is not None else tc.steps
    temperature = float(cfg.temperature if cfg.temperature is not None else env.generation.temperature)
    stream = PromptStream(env.prompts["train"], ctx.seed)
    learner = Learner(ctx, policy, reference, stream, temperature,
                      [(list(policy.parameters()), opt, sched), *method.extra_groups])
    k = method.k
    n_prompts = cfg.rollout_batch // k
    has_gold = bool(getattr(env, "has_gold_reward", False))
    gold_is_score = rm is None

    running: dict[str, list[float]] = {}  # per-iteration diagnostics since the last evaluation, plus "_perf/..."
    modules = {"policy": policy, "opt_policy": opt, "sched_policy": sched, "stream": stream, **extra_modules}
    start = ctx.resume(modules, running)  # 0 on a fresh run; else the iteration of the last checkpoint
    ctx.extra_summary["online/setup_seconds"] = round(time.perf_counter() - t_setup, 2)
    if start == 0:
        ctx.evaluate(policy, 0, method.eval_stats())
    timing = {key: running.pop(f"_perf/{key}", [0.0])[0] for key in ("generate", "score", "update", "tokens")}
    bar = ctx.progress(iterations, f"{method.name} {method.sweep_param}={method.sweep_value:g}")
    bar.update(start)
    for it in range(start + 1, iterations + 1):
        # ---- 1. rollouts from the current policy: k samples of each prompt, adjacent rows
        t0 = time.perf_counter()
        prompts = [p for p in stream.take(n_prompts) for _ in range(k)]
        s = sample(policy, env.tokenizer, prompts, env.generation, temperature=temperature)
        ctx.compute.add(N.COMPUTE_SAMPLES, len(prompts))
        ids, am, cm = s.right_padded(env.generation.pad_token_id)
        batch = RolloutBatch(ids.to(device), am.to(device), cm[:, 1:].to(device).float(), prompts, s.texts,
                             cm.to(device), k)
        t1 = time.perf_counter()
        timing["generate"] += t1 - t0
        timing["tokens"] += float(batch.mask.sum())
        # ---- 2. score, log-probs of policy and reference, the method's per-rollout constants
        with torch.no_grad():
            batch.score = scorer(batch).float().to(device)
            batch.logp = sequence_logps(policy, batch.input_ids, batch.attention_mask, batch.completion_mask,
                                        temperature).tokens
            batch.ref_logp = sequence_logps(reference, batch.input_ids, batch.attention_mask, batch.completion_mask,
                                            temperature).tokens
            if gold_is_score:
                batch.gold = batch.score
            elif has_gold:
                batch.gold = env.gold_reward(prompts, s.texts).float().to(device)
        ctx.check_finite(batch.score, "reward score", it)
        method.prepare(batch, learner)
        t2 = time.perf_counter()
        timing["score"] += t2 - t1
        # ---- 3. the method's update
        stats = method.update(batch, learner, it)
        timing["update"] += time.perf_counter() - t2
        # ---- 4. diagnostics, evaluation, checkpoint
        row = {key: (sum(v) / len(v) if isinstance(v, list) else float(v)) for key, v in stats.items()}
        row.update({"online/score": float(batch.score.mean()), "kl/sampled": float(batch.seq_kl.mean()),
                    "policy/entropy_sampled": float(-(batch.logp.sum(-1)).mean())})
        if not gold_is_score:
            row["online/rm_reward"] = float(batch.score.mean())
        if batch.gold is not None:
            row["online/gold_reward"] = float(batch.gold.mean())
        row.update(method.iteration_stats(batch))
        for key, v in row.items():
            running.setdefault(key, []).append(v)
        bar.update(1)
        if it % tc.eval_every == 0 or it == iterations:
            extra = {key: sum(v) / len(v) for key, v in running.items() if v and all(map(math.isfinite, v))}
            extra.update(method.eval_stats())
            extra["perf/generate_share"] = _share(timing, "generate")
            extra["perf/rollout_tokens_per_s"] = timing["tokens"] / max(timing["generate"], 1e-9)
            ctx.evaluate(policy, it, extra)
            running.clear()
            bar.set_postfix({key: f"{v:.3g}" for key, v in ctx.logger.rows[-1].items() if key in (N.GOLD, N.KL)})
        if tc.checkpoint_every and it % tc.checkpoint_every == 0 and it < iterations:
            ctx.save_checkpoint(it, modules, {**running, **{f"_perf/{key}": [v] for key, v in timing.items()}})
    bar.close()
    total = timing["generate"] + timing["score"] + timing["update"]
    ctx.extra_summary.update({
        "online/iterations": iterations,
        "perf/generate_share": round(_share(timing, "generate"), 4) if total > 0 else None,
        "perf/score_share": round(_share(timing, "score"), 4) if total > 0 else None,
        "perf/update_share": round(_share(timing, "update"), 4) if total > 0 else None,
        "perf/rollout_tokens_per_s": round(timing["tokens"] / max(timing["generate"], 1e-9), 1),
        "perf/seconds_per_iteration": round(total / iterations, 4),
        **method.summary_stats(iterations),
    })
