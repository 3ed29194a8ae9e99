"""KTO: Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv 2402.01306).

Unpaired: each row is one (prompt, completion) labelled desirable or undesirable. With the implied
reward r = log pi(y|x)/pi_ref(y|x) and the reference point z0 (an estimate of KL(pi || pi_ref)),
the value is v = sigma(beta (r - z0)) for desirable and sigma(beta (z0 - r)) for undesirable rows,
and the loss is w(y) (1 - v) (the KTO paper's L_KTO = E[lambda_y - v(x, y)]; TRL cites it as Eq. 7).

z0 is estimated from mismatched pairs (x_i, y_j, j != i) of the same batch ("kl_completion"), as the
batch mean of log pi - log pi_ref, detached and clamped at >= 0 (as in the KTO paper and TRL's KTOTrainer).
The loss reduction matches TRL 1.16 (``KTOTrainer._compute_loss``): the weighted desirable and
undesirable per-row losses are concatenated and averaged over all rows of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignbench.api import LogpBatch, LossOutput, MethodConfig, OfflineMethod
from alignbench.config import check_positive, param
from alignbench.errors import DataError
from alignbench.registry import register_method


@dataclass(frozen=True)
class KTOConfig(MethodConfig):
    beta: float = param(0.1, "KL strength beta (KTO paper and TRL default 0.1)")
    desirable_weight: float = param(1.0, "lambda_D, weight of desirable rows' losses (> 0)")
    undesirable_weight: float = param(
        1.0, "lambda_U, weight of undesirable rows' losses (> 0); keep w_D n_D : w_U n_U within 1:1 to 4:3"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("desirable_weight", self.desirable_weight)
        check_positive("undesirable_weight", self.undesirable_weight)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    policy_kl_logps: Tensor,
    ref_kl_logps: Tensor,
    labels: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """Batch KTO loss.

    policy_logps, ref_logps:       (B,) sequence log-probs of the (prompt, completion) rows under pi / pi_ref.
    policy_kl_logps, ref_kl_logps: (B,) the same for the mismatched (prompt, kl_completion) rows (no gradient
                                   flows through them: z0 is detached).
    labels:                        (B,) bool, True = desirable.
    Returns the scalar mean over all B rows of the weighted per-row losses; chosen_rewards (B_D,) and
    rejected_rewards (B_U,) are beta * r of the desirable / undesirable rows, detached.
    """
    labels = labels.to(device=policy_logps.device).bool()
    # z0: batch estimate of KL(pi || pi_ref) from mismatched pairs, detached, clamped >= 0 (KTO paper, z0)
    z0 = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    r = policy_logps - ref_logps  # implied reward r_theta(x, y) = log pi / pi_ref (KTO paper)
    r_d, r_u = r[labels], r[~labels]
    losses_d = desirable_weight * (1 - torch.sigmoid(beta * (r_d - z0)))  # lambda_D - v, KTO paper L_KTO
    losses_u = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r_u)))  # lambda_U - v, KTO paper L_KTO
    # TRL 1.16 reduction: cat(desirable, undesirable).mean() over the batch. (TRL uses nanmean; a plain mean keeps
    # a non-finite loss visible to the trainer's check.) An all-desirable or all-undesirable batch just has one
    # empty part.
    loss = torch.cat((losses_d, losses_u)).mean()
    chosen_rewards, rejected_rewards = beta * r_d.detach(), beta * r_u.detach()
    metrics = {"kto/z0": z0, "kto/desirable_fraction": labels.float().mean()}
    if r_d.numel():
        metrics["train/logratio_chosen"] = r_d.detach().mean()
    if r_u.numel():
        metrics["train/logratio_rejected"] = r_u.detach().mean()
    if r_d.numel() and r_u.numel():
        metrics["train/margin"] = chosen_rewards.mean() - rejected_rewards.mean()
    return LossOutput(loss, chosen_rewards, rejected_rewards, metrics)


@register_method("kto")
class KTO(OfflineMethod):
    """KTO on unpaired desirable / undesirable completions, z0 from mismatched in-batch pairs."""

    description = "Kahneman-Tversky Optimization: unpaired desirable/undesirable rows against a KL reference point"
    config_cls = KTOConfig
    data_format = "unpaired"
    # z0's mismatched pairs: each row's prompt with the completion of a row of another prompt (a seeded shuffle,
    # fixed per dataset, so its reference log-probs are cached); z0 is detached: no gradient flows through these rows
    statistic_columns = {"kl_completion": "mismatched"}
    needs_reference = True
    no_target_reason = ("no closed form derived: the value sigma(beta (r - z0)) uses z0, a clamped batch estimate of KL(pi || pi_ref), on unpaired rows")
    # As for DPO, beta scales the implied reward inside a sigmoid: the loss saturates once |r - z0| >> 1/beta, so
    # beta = 3 barely moves from pi_ref and beta = 0.03 moves tens of nats, past the best reward.
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)

    def compute_loss(self, batch: LogpBatch) -> LossOutput:
        cfg: KTOConfig = self.config  # type: ignore[assignment]
        if batch.labels is None:
            raise DataError("kto: the batch has no desirable/undesirable labels (unpaired data required)")
        return kto_loss(
            batch.policy["completion"],
            batch.reference["completion"],
            batch.policy["kl_completion"],
            batch.reference["kl_completion"],
            batch.labels,
            beta=cfg.beta,
            desirable_weight=cfg.desirable_weight,
            undesirable_weight=cfg.undesirable_weight,
        )
