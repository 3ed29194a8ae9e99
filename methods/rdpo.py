"""Robust DPO: DPO unbiased under label flips (Chowdhury et al. 2024, "Provably Robust DPO", arXiv 2403.00409).

If each preference label is flipped with a known probability eps < 1/2, the DPO loss l(beta h) = -log sigma(beta h)
(h = the log-ratio margin, DPO Eq. 7) is biased. Robust DPO (the rDPO paper's loss; TRL's ``robust``) de-biases it:

    L = [(1 - eps) l(beta h) - eps l(-beta h)] / (1 - 2 eps),

whose expectation under flipped labels equals the DPO loss on clean labels. Not cDPO (``dpo``'s
``label_smoothing``), which averages the two terms instead and so has a finite optimal margin; rDPO's loss
falls without bound in h (slope -eps beta / (1 - 2 eps) per nat). eps = 0 is DPO exactly.
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
class RDPOConfig(MethodConfig):
    beta: float = param(0.1, "KL strength beta (as in DPO; TRL's default 0.1)")
    epsilon: float = param(0.1, "assumed label-flip rate eps in [0, 0.5) (0 = DPO); 0.1: one label in ten flipped")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite("epsilon", self.epsilon)
        if not 0.0 <= self.epsilon < 0.5:
            raise ConfigError("epsilon", f"must be in [0, 0.5), got {self.epsilon!r}")


def rdpo_losses(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                beta: float, epsilon: float) -> Tensor:
    """Per-pair robust DPO losses.

    policy_chosen, policy_rejected: (B,) sequence log pi(y_w|x), log pi(y_l|x) (with gradients).
    ref_chosen, ref_rejected:       (B,) the same under pi_ref.
    Returns (B,) losses, no reduction.
    """
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))  # beta h, DPO Eq. 7
    # [(1 - eps) l(beta h) - eps l(-beta h)] / (1 - 2 eps), l = -log sigma (rDPO's de-biased loss)
    return (-(1.0 - epsilon) * F.logsigmoid(logits) + epsilon * F.logsigmoid(-logits)) / (1.0 - 2.0 * epsilon)


def rdpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
              beta: float, epsilon: float) -> LossOutput:
    """Batch robust DPO loss: the mean of :func:`rdpo_losses`; rewards beta * log-ratio (detached)."""
    losses = rdpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, epsilon)
    return paired_output(losses, policy_chosen - ref_chosen, policy_rejected - ref_rejected, beta)


@register_method("rdpo")
class RDPO(OfflineMethod):
    """Robust DPO for a known label-flip rate epsilon."""

    description = "Robust DPO: DPO loss de-biased for a known label-flip rate eps"
    config_cls = RDPOConfig
    data_format = "paired"
    needs_reference = True
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)  # DPO's grid (same beta, same KL axis), compared beta for beta

    def population_target(self, problem: TabularProblem) -> Target | NoTarget:
        """The de-biased loss has expectation DPO's loss with q_eff = (q_noisy - eps)/(1 - 2 eps): pi*_beta when the
        assumed eps equals the data's flip rate under BT labels; no finite minimiser where q_eff leaves (0, 1)."""
        a, b = noisy(problem)
        eps = self.config.epsilon  # type: ignore[attr-defined]
        return logistic_target(problem, self.config.beta, (a - eps) / (1 - 2 * eps), b / (1 - 2 * eps),
                               what="the robust DPO loss")

    def compute_loss(self, batch: LogpBatch) -> LossOutput:
        cfg: RDPOConfig = self.config  # type: ignore[assignment]
        return rdpo_loss(batch.policy["chosen"], batch.policy["rejected"], batch.reference["chosen"],
                         batch.reference["rejected"], beta=cfg.beta, epsilon=cfg.epsilon)
