"""ORPO: Monolithic preference optimisation without a reference model (Hong et al. 2024, arXiv 2403.07691).

With p(y|x) = exp(mean over y's tokens of log pi(y_t|x, y_<t)) the average per-token probability (ORPO Eq. 3)
and odds(y|x) = p / (1 - p) (Eq. 4), ORPO adds an odds-ratio term to supervised fine-tuning on the chosen
completion (Eqs. 6-7):

    L = NLL(y_w) + lambda * (-log sigma(log odds(y_w|x) - log odds(y_l|x))),

NLL(y_w) = -mean_t log pi(y_w,t | x, y_w,<t) (per-token mean of the chosen completion, as in the paper and TRL).
log odds = log p - log(1 - p) is computed stably as log p - log1mexp(log p) (never forming p near 1).

Reference-free (``needs_reference = False``). Its strength is lambda, not a KL coefficient: the sweep axis is
``lam`` and summary.csv leaves the ``beta`` column empty. TRL (``trl.experimental.orpo``) calls lambda ``beta``
and averages the NLL over all chosen tokens of the batch; here it is averaged per pair and then over pairs (the
same on equal-length completions, such as the exact task's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from alignbench.api import LogpBatch, LossOutput, OfflineMethod
from alignbench.config import check_positive, param
from alignbench.paired import paired_output, per_token
from alignbench.registry import register_method


@dataclass(frozen=True)
class ORPOConfig:
    """ORPO settings (no beta: the strength of the odds-ratio term is lambda, the sweep axis)."""

    lam: float = param(0.1, "lambda, weight of the odds-ratio term against the NLL of y_w (ORPO paper and TRL: 0.1)")

    def __post_init__(self) -> None:
        check_positive("lam", self.lam)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere (Maechler 2012: log(-expm1(x)) near 0, log1p(-exp(x)) below)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(mean_logp: Tensor) -> Tensor:
    """(B,) log odds(y) = log p - log(1 - p) from (B,) mean per-token log-probs log p (ORPO Eq. 4)."""
    return mean_logp - log1mexp(mean_logp)


def orpo_losses(policy_chosen: Tensor, policy_rejected: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                lam: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-pair ORPO losses.

    policy_chosen, policy_rejected:   (B,) sequence log pi(y_w|x), log pi(y_l|x) (with gradients).
    chosen_lengths, rejected_lengths: (B,) completion token counts (clamped at >= 1).
    Returns ((B,) losses, (B,) NLL(y_w), (B,) log odds(y_w), (B,) log odds(y_l)), no reduction.
    """
    mean_c, mean_r = per_token(policy_chosen, chosen_lengths), per_token(policy_rejected, rejected_lengths)
    odds_c, odds_r = log_odds(mean_c), log_odds(mean_r)
    nll = -mean_c  # L_SFT, per-token mean NLL of the chosen completion (ORPO Eq. 6)
    # L_OR = -log sigma(log odds(y_w) - log odds(y_l)) (ORPO Eq. 7); L = L_SFT + lambda L_OR (Eq. 6)
    return nll - lam * F.logsigmoid(odds_c - odds_r), nll, odds_c, odds_r


def orpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
              lam: float) -> LossOutput:
    """Batch ORPO loss: the mean of :func:`orpo_losses`; the implicit rewards are the log odds (detached)."""
    losses, nll, odds_c, odds_r = orpo_losses(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, lam)
    return paired_output(losses, rewards=(odds_c, odds_r), metrics={"orpo/nll": nll.detach().mean()})


@register_method("orpo")
class ORPO(OfflineMethod):
    """ORPO: NLL on the chosen completion plus lambda times an odds-ratio preference term; no reference."""

    description = "Odds Ratio Preference Optimization: NLL(y_w) - lambda log sigma(log odds(y_w) - log odds(y_l))"
    config_cls = ORPOConfig  # type: ignore[assignment]  (no beta: swept over lambda)
    data_format = "paired"
    needs_reference = False
    no_target_reason = ("reference-free: the NLL of the chosen response plus an odds-ratio term; no closed form derived")
    beta_is_kl_coef = False
    sweep_param = "lam"
    # The NLL term alone (lambda -> 0) already moves pi towards the chosen completions; lambda sets how much the
    # odds-ratio term adds. Measured on the exact task (300 steps), lambda 0.03, 0.1, 0.3, 1, 3, 10, 30 give KL 0.32,
    # 0.35, 0.45, 0.72, 1.2, 2.4, 3.1 nats (0.03 is SFT on y_w as much as 0.1 is). So the grid starts at the paper's
    # 0.1 and goes up to 30, about 3x apart; on sentiment's longer completions the NLL term weighs the same per token.
    default_grid = (0.1, 1.0, 3.0, 10.0, 30.0)

    def compute_loss(self, batch: LogpBatch) -> LossOutput:
        cfg: ORPOConfig = self.config  # type: ignore[assignment]
        return orpo_loss(batch.policy["chosen"], batch.policy["rejected"], batch.lengths["chosen"],
                         batch.lengths["rejected"], lam=cfg.lam)
