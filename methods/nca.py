"""NCA: Noise Contrastive Alignment, pairwise form (Chen et al. 2024, arXiv 2402.05369).

With the implicit reward r = log pi(y|x)/pi_ref(y|x) (as in DPO), NCA's pairwise loss (TRL's ``nca_pair``)

    L = -log sigma(beta r_w) - 1/2 log sigma(-beta r_w) - 1/2 log sigma(-beta r_l)

classifies each completion's own reward against the reference instead of only the margin: it raises the
chosen response's absolute likelihood ratio (DPO can lower both). It is derived from the same KL-regularised
objective as DPO (r = beta log pi/pi_ref), so beta is its KL coefficient and the sweep varies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from alignbench.api import LogpBatch, LossOutput, MethodConfig, OfflineMethod
from alignbench.config import param
from alignbench.paired import paired_output
from alignbench.registry import register_method


@dataclass(frozen=True)
class NCAConfig(MethodConfig):
    beta: float = param(0.1, "KL strength beta of the implicit reward beta log pi/pi_ref (TRL's default 0.1)")


def nca_losses(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
               beta: float) -> Tensor:
    """Per-pair NCA losses.

    policy_chosen, policy_rejected: (B,) sequence log pi(y_w|x), log pi(y_l|x) (with gradients).
    ref_chosen, ref_rejected:       (B,) the same under pi_ref.
    Returns (B,) losses, no reduction.
    """
    rc, rr = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    # -log sigma(beta r_w) - 1/2 log sigma(-beta r_w) - 1/2 log sigma(-beta r_l), NCA pairwise (TRL `nca_pair`)
    return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)


def nca_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> LossOutput:
    """Batch NCA loss: the mean of :func:`nca_losses`; rewards beta * log-ratio (detached)."""
    losses = nca_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return paired_output(losses, policy_chosen - ref_chosen, policy_rejected - ref_rejected, beta)


@register_method("nca")
class NCA(OfflineMethod):
    """NCA (pairwise): each completion's reward classified against the reference."""

    description = "Noise Contrastive Alignment: -log sigma(beta r_w) - (log sigma(-beta r_w) + log sigma(-beta r_l))/2"
    config_cls = NCAConfig
    data_format = "paired"
    needs_reference = True
    no_target_reason = ("no closed form derived: NCA scores each response against the reference on its own, not through the pair margin")
    # beta scales log-ratios inside sigmoids as in DPO: the same log-spaced grid (beta = 3 barely moves, 0.03 moves
    # tens of nats), so the two frontiers are compared at equal betas.
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)

    def compute_loss(self, batch: LogpBatch) -> LossOutput:
        return nca_loss(batch.policy["chosen"], batch.policy["rejected"], batch.reference["chosen"],
                        batch.reference["rejected"], beta=self.config.beta)
