"""Online DPO: the DPO loss on fresh on-policy pairs labelled by the reward model (Guo et al. 2024,
"Direct Language Model Alignment from Online AI Feedback", arXiv 2402.04792; iterative DPO, Xiong et al.
2024, arXiv 2312.11456).

Each iteration the shared online loop samples two completions (y_1, y_2) per prompt from the current
policy (group_size = 2) and scores both with the learned reward model. A label picks the chosen one:

* ``label=argmax`` (TRL OnlineDPOTrainer): y_w = y_1 if r(y_1) >= r(y_2) else y_2;
* ``label=bt``: y_w = y_1 with the Bradley-Terry probability sigma(r(y_1) - r(y_2)) (the reward model's
  own preference probability), drawn from the prompt stream's seeded generator.

Then a DPO step against the fixed reference (DPO paper Eq. 7, sequence log-probs summed over tokens):

    L = -mean log sigma(beta h),  h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).

With BT labels from a reward table r, the population optimum of DPO is pi*_beta = pi_ref exp(r/beta)/Z.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from alignbench.api import NoTarget, TabularProblem, Target
from alignbench.config import check_choice, param
from alignbench.targets import logistic_target
from alignbench.errors import ConfigError
from alignbench.online import Learner, OnlineMethod, StepConfig, RolloutBatch, grouped
from alignbench.registry import register_method


@dataclass(frozen=True)
class OnlineDPOConfig(StepConfig):
    beta: float = param(0.1, "DPO beta (TRL OnlineDPOConfig default 0.1)")
    label: str = param("argmax", "argmax: the higher-scored completion is chosen (TRL); bt: chosen with the "
                                 "Bradley-Terry probability sigma(r_1 - r_2)")
    rollout_batch: int = param(128, "completions per iteration (two per prompt: rollout_batch / 2 pairs)")
    minibatch_size: int = param(64, "pairs per gradient step")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("label", self.label, ("argmax", "bt"))
        if self.rollout_batch % 2:
            raise ConfigError("rollout_batch", f"must be even (two completions per prompt), got {self.rollout_batch}")


def preference_labels(score_1: Tensor, score_2: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """(P,) bool: True where completion 1 is chosen. argmax: score_1 >= score_2 (ties: the first, as TRL);
    bt: Bernoulli(sigma(score_1 - score_2)) from ``generator``. score_1, score_2: (P,)."""
    if mode == "argmax":
        return score_1 >= score_2
    p = torch.sigmoid((score_1 - score_2).double()).cpu()
    return (torch.rand(p.shape, generator=generator, dtype=torch.float64) < p).to(score_1.device)


def online_dpo_loss(logp_1: Tensor, logp_2: Tensor, ref_1: Tensor, ref_2: Tensor, first_chosen: Tensor,
                    beta: float) -> tuple[Tensor, Tensor]:
    """DPO loss on labelled pairs (DPO Eq. 7). logp_1, logp_2: (P,) sequence log pi of the two completions
    (with gradients); ref_1, ref_2: (P,) under pi_ref; first_chosen: (P,) bool. Returns (mean loss, (P,)
    margins h, detached)."""
    sign = first_chosen.to(logp_1.dtype) * 2.0 - 1.0  # +1: y_1 chosen, -1: y_2 chosen
    h = sign * ((logp_1 - ref_1) - (logp_2 - ref_2))
    return -F.logsigmoid(beta * h).mean(), h.detach()


@register_method("online-dpo")
class OnlineDPO(OnlineMethod):
    """DPO on on-policy pairs labelled by the learned reward model, against the fixed reference."""

    description = "online DPO: two on-policy samples per prompt, labelled by the reward model, DPO step (Guo 2024)"
    config_cls = OnlineDPOConfig
    group_size = 2
    needs_reward_model = True
    needs_gold_reward = False
    needs_preferences = True
    sweep_param = "beta"
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)

    def population_target(self, problem: TabularProblem) -> Target | NoTarget:
        """bt labels: pi_ref exp(r_RM/beta)/Z, where the KL-regularised reward beta log(pi/pi_ref) - r_RM is constant
        and every pair's expected DPO gradient (sigma(r_RM - r_RM') - sigma(beta h)) vanishes, whatever policy samples
        the pairs. argmax labels are deterministic: no finite minimiser."""
        if problem.rm_reward is None:
            return NoTarget("the reward model's score table is not available")
        labels = "bt" if self.config.label == "bt" else "deterministic"  # type: ignore[attr-defined]
        return logistic_target(problem, self.config.beta, 0.0, 1.0, score=problem.rm_reward, labels=labels,
                               what="the DPO loss on reward-model labels")

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, learner: Learner) -> None:
        s = grouped(batch.score, 2)
        self.first_chosen = preference_labels(s[:, 0], s[:, 1], self.config.label, learner.stream.generator)
        self.ref = grouped(batch.ref_logp.sum(-1), 2)

    def update(self, batch: RolloutBatch, learner: Learner, it: int) -> dict[str, Any]:
        cfg: OnlineDPOConfig = self.config
        stats: dict[str, list[float]] = {}
        for pairs in learner.minibatches(self.ref.shape[0], cfg.minibatch_size, cfg.epochs):
            rows = torch.stack([2 * pairs, 2 * pairs + 1], 1).reshape(-1)  # both completions of each pair
            logp = grouped(learner.policy_logps(batch, rows).sum(-1), 2)
            loss, h = online_dpo_loss(logp[:, 0], logp[:, 1], self.ref[pairs, 0], self.ref[pairs, 1],
                                      self.first_chosen[pairs], cfg.beta)
            (gn,) = learner.step(loss, it)
            for key, v in (("odpo/loss", loss), ("odpo/margin", h.mean()), ("odpo/accuracy", (h > 0).float().mean()),
                           ("odpo/grad_norm", gn)):
                stats.setdefault(key, []).append(float(v.detach()))
        return stats

    def iteration_stats(self, batch: RolloutBatch) -> dict[str, float]:
        s = grouped(batch.score, 2)
        return {"odpo/score_gap": float((s[:, 0] - s[:, 1]).abs().mean())}
