"""SLiC-HF: Sequence Likelihood Calibration with Human Feedback (Zhao et al. 2023, arXiv 2305.10425).

SLiC-HF's calibration loss with its regulariser (SLiC-HF Eq. 1, with the chosen completion as the
regularisation target, the paper's "SLiC-HF-direct" on preference pairs):

    L = max(0, delta - log pi(y_w|x) + log pi(y_l|x)) + lambda * NLL(y_w),   NLL(y_w) = -log pi(y_w|x),

on sequence log-probabilities. Reference-free: the hinge stops pushing once the policy's own log-likelihood margin
exceeds delta, so delta (not a KL coefficient) sets how far the policy moves; it is the sweep axis.

``form = "hinge"`` gives TRL's ``hinge`` loss (RSO, Liu et al. 2023, arXiv 2309.06657) instead of the first term:
relu(1 - beta h) with h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l) the reference log-ratio margin and
beta = 1/delta, i.e. relu(1 - h/delta) = max(0, delta - h)/delta: the same hinge at margin delta, on log-ratios
instead of log-probabilities and scaled by 1/delta. That form reads the reference (the method instance declares
``needs_reference`` from its config), and lambda = 0 reproduces TRL exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignbench.api import LogpBatch, LossOutput, OfflineMethod
from alignbench.config import check_choice, check_nonnegative, check_positive, param
from alignbench.paired import paired_output
from alignbench.registry import register_method

FORMS = ("slic", "hinge")


@dataclass(frozen=True)
class SLiCConfig:
    """SLiC-HF settings (no beta: the sweep varies the hinge margin delta)."""

    delta: float = param(1.0, "hinge margin delta in nats (> 0; 1 = the margin of TRL's hinge and RSO)")
    lam: float = param(0.1, "lambda, weight of the NLL(y_w) regulariser (>= 0; the paper tunes it per setup)")
    form: str = param("slic", "'slic': hinge on log pi margins (reference-free); 'hinge': TRL's relu(1 - h/delta) "
                              "on reference log-ratio margins h")

    def __post_init__(self) -> None:
        check_positive("delta", self.delta)
        check_nonnegative("lam", self.lam)
        check_choice("form", self.form, FORMS)


def slic_losses(policy_chosen: Tensor, policy_rejected: Tensor, delta: float, lam: float,
                ref_chosen: Tensor | None = None, ref_rejected: Tensor | None = None) -> Tensor:
    """Per-pair SLiC-HF losses.

    policy_chosen, policy_rejected: (B,) sequence log pi(y_w|x), log pi(y_l|x) (with gradients).
    ref_chosen, ref_rejected:       optional (B,) the same under pi_ref: given, the hinge is TRL's
                                    relu(1 - h/delta) on the log-ratio margin h (form "hinge").
    Returns (B,) losses, no reduction.
    """
    nll = -policy_chosen  # NLL(y_w) = -log pi(y_w|x), the regulariser of SLiC-HF Eq. 1
    if (ref_chosen is None) != (ref_rejected is None):
        raise ValueError("slic_losses: pass both reference log-probs or neither")
    if ref_chosen is None or ref_rejected is None:
        hinge = torch.relu(delta - policy_chosen + policy_rejected)  # max(0, delta - log pi(y_w) + log pi(y_l))
    else:
        h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
        hinge = torch.relu(1.0 - h / delta)  # TRL `hinge`: relu(1 - beta h), beta = 1/delta
    return hinge + lam * nll


@register_method("slic")
class SLiC(OfflineMethod):
    """SLiC-HF: hinge on the log-likelihood margin plus lambda NLL(y_w); optionally TRL's reference hinge."""

    description = "SLiC-HF: max(0, delta - log pi(y_w) + log pi(y_l)) + lambda NLL(y_w); form=hinge: TRL hinge"
    config_cls = SLiCConfig  # type: ignore[assignment]  (no beta: swept over delta)
    data_format = "paired"
    needs_reference = False  # the default form; an instance with form "hinge" declares True (see __init__)
    no_target_reason = ("hinge loss: every policy whose margins exceed delta minimises its pairwise term (no unique optimum)")
    beta_is_kl_coef = False
    sweep_param = "delta"
    # delta is the log-likelihood margin (nats per sequence) past which a pair stops pushing. Pairs of the embedded
    # tasks are two samples of one reference, whose margins spread over a few nats (4 tokens on exact, <= 16 on
    # sentiment): delta = 0.3 leaves most pairs nearly untouched, delta = 30 pushes every pair far past the reward's
    # spread. 1 (RSO's margin) in the middle. Measured on the exact task (300 steps): KL 2.4, 2.2, 2.4, 3.4, 4.0 nats and
    # gold reward 0.23, 0.46, 0.78, 1.15, 1.15 along the grid; the KL floor of ~2 nats is the lambda NLL(y_w) term
    # (SFT towards the chosen samples), which a smaller lambda lowers.
    default_grid = (0.3, 1.0, 3.0, 10.0, 30.0)

    def __init__(self, config: SLiCConfig):  # type: ignore[override]
        super().__init__(config)  # type: ignore[arg-type]
        self.needs_reference = config.form == "hinge"  # type: ignore[misc]  (what the trainer reads)

    def compute_loss(self, batch: LogpBatch) -> LossOutput:
        cfg: SLiCConfig = self.config  # type: ignore[assignment]
        pc, pr = batch.policy["chosen"], batch.policy["rejected"]
        if cfg.form == "hinge":
            rc, rr = batch.reference["chosen"], batch.reference["rejected"]
            losses = slic_losses(pc, pr, cfg.delta, cfg.lam, rc, rr)
            return paired_output(losses, pc - rc, pr - rr, 1.0 / cfg.delta)  # rewards beta log-ratio, beta = 1/delta
        return paired_output(slic_losses(pc, pr, cfg.delta, cfg.lam), rewards=(pc, pr))  # margin = log pi margin
