"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290).

The RLHF objective max E[r] - beta KL(pi || pi_ref) has the closed-form optimum
pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x) (DPO paper, App. A.1). Substituting
r = beta log(pi/pi_ref) + beta log Z into the Bradley-Terry likelihood, Z cancels and the
reward-model fit becomes a classification loss on the policy itself (Eq. 7).
Optional label smoothing gives conservative DPO (cDPO; Mitchell 2023, "A note on DPO with
noisy preferences"): the preference label is flipped with probability eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from alignbench.api import LogpBatch, LossOutput, MethodConfig, NoTarget, OfflineMethod, TabularProblem, Target
from alignbench.targets import logistic_target, noisy
from alignbench.config import check_finite, param
from alignbench.errors import ConfigError
from alignbench.paired import paired_output
from alignbench.registry import register_method


@dataclass(frozen=True)
class DPOConfig(MethodConfig):
    beta: float = param(0.1, "KL strength beta (DPO paper default 0.1; §6.1 sweeps 0.05, 0.1, 1, 5)")
    label_smoothing: float = param(
        0.0, "conservative DPO: assumed probability eps in [0, 0.5) that a preference label is flipped (0 = DPO)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite("label_smoothing", self.label_smoothing)
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError("label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing!r}")


def dpo_losses(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Per-pair DPO losses.

    policy_chosen, policy_rejected: (B,) sequence log pi(y_w|x), log pi(y_l|x) (with gradients).
    ref_chosen, ref_rejected:       (B,) the same under pi_ref.
    Returns (B,) losses (no reduction).
    """
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))  # beta * h, DPO Eq. 7
    if label_smoothing == 0.0:
        return -F.logsigmoid(logits)  # -log sigma(beta h), DPO paper Eq. 7
    eps = label_smoothing
    return -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)  # cDPO (Mitchell 2023)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Batch DPO loss: the mean of :func:`dpo_losses` over pairs. Inputs (B,); loss scalar.

    chosen_rewards / rejected_rewards: (B,) implicit rewards beta * (log pi - log pi_ref), detached.
    """
    losses = dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing)
    return paired_output(losses, policy_chosen - ref_chosen, policy_rejected - ref_rejected, beta)


@register_method("dpo")
class DPO(OfflineMethod):
    """DPO (sigmoid loss on the implicit-reward margin), optionally conservative (label smoothing)."""

    description = "Direct Preference Optimization: -log sigma(beta * log-ratio margin) on preference pairs"
    config_cls = DPOConfig
    data_format = "paired"
    needs_reference = True
    # beta = 3 barely leaves pi_ref (log-ratios ~ reward gaps / 3); beta = 0.03 drives log-ratios to tens of
    # nats, well past the best gold reward. Log-spaced, ~3x apart, bracketing the paper's default 0.1.
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)

    def population_target(self, problem: TabularProblem) -> Target | NoTarget:
        """BT labels: pi_ref exp(r/beta)/Z (DPO App. A.1). cDPO's label smoothing eps_s and label noise eps mix the
        label probability: q_eff = eps_s + (1 - 2 eps_s)(eps + (1 - 2 eps) q), Bradley-Terry only when both are 0."""
        a, b = noisy(problem)
        eps = self.config.label_smoothing  # type: ignore[attr-defined]
        return logistic_target(problem, self.config.beta, eps + (1 - 2 * eps) * a, (1 - 2 * eps) * b, what="DPO's loss")

    def compute_loss(self, batch: LogpBatch) -> LossOutput:
        cfg: DPOConfig = self.config  # type: ignore[assignment]
        return dpo_loss(
            batch.policy["chosen"],
            batch.policy["rejected"],
            batch.reference["chosen"],
            batch.reference["rejected"],
            beta=cfg.beta,
            label_smoothing=cfg.label_smoothing,
        )
