"""BCO: Binary Classifier Optimization (Jung et al. 2024, arXiv 2404.04656).

Unpaired, like KTO (chosen -> desirable, rejected -> undesirable rows). The implicit reward r_theta = beta log
pi(y|x)/pi_ref(y|x) is the logit of a binary classifier of desirable rows, shifted by delta, a
running mean of the rewards that the paper shows lowers the gap to the DPO loss:

    L = -log sigma(r_theta(x, y) - delta)       for desirable rows,
        -log sigma(-(r_theta(x, y) - delta))    for undesirable rows.

delta follows TRL's BCOTrainer (``bco_loss`` with ``RunningMoments``): before each training batch's loss, the
running mean absorbs the batch's rewards (desirable and undesirable, detached; a count-weighted mean over every
reward seen in training), and the loss uses the updated mean; evaluation reads it without updating. The mean and
its count are the method's state, saved in checkpoints so that a resumed run continues exactly. The loss is the
mean over all rows of the batch (TRL: ``losses.nanmean()`` of the concatenated rows). Not done here: BCO's
underlying-distribution matching (UDM, a prompt classifier reweighting undesirable rows; off by default in TRL),
and, under data parallelism, gathering the rewards across processes (each process updates its own mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from alignbench.api import LogpBatch, LossOutput, MethodConfig, OfflineMethod
from alignbench.config import param
from alignbench.errors import DataError
from alignbench.registry import register_method


@dataclass(frozen=True)
class BCOConfig(MethodConfig):
    beta: float = param(0.1, "KL strength beta of the reward beta log pi/pi_ref (TRL's BCO default 0.1)")


def bco_losses(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, beta: float,
               delta: float | Tensor) -> tuple[Tensor, Tensor]:
    """Per-row BCO losses.

    policy_logps, ref_logps: (B,) sequence log-probs of the (prompt, completion) rows under pi / pi_ref.
    labels:                  (B,) bool, True = desirable.
    delta:                   the reward shift (a float or a 0-d tensor, no gradient).
    Returns ((B,) losses, (B,) rewards beta * log pi/pi_ref with gradients), no reduction.
    """
    rewards = beta * (policy_logps - ref_logps)  # r_theta = beta log pi/pi_ref (BCO paper)
    logits = rewards - delta
    labels = labels.to(device=logits.device).bool()
    # -log sigma(r - delta) for desirable rows, -log sigma(-(r - delta)) for undesirable rows (BCO paper)
    return -F.logsigmoid(torch.where(labels, logits, -logits)), rewards


class RunningMean:
    """Count-weighted running mean of every value seen (TRL's ``RunningMoments.mean``, starting at 0)."""

    def __init__(self) -> None:
        self.mean, self.count = 0.0, 0.0

    def update(self, xs: Tensor) -> None:
        n = xs.numel()
        if n:
            total = self.count + n
            self.mean += (float(xs.detach().double().mean()) - self.mean) * n / total
            self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.count = float(state["mean"]), float(state["count"])


@register_method("bco")
class BCO(OfflineMethod):
    """BCO on unpaired rows: a binary classifier whose logit is the implicit reward, shifted by a running mean."""

    description = "Binary Classifier Optimization: -log sigma(+-(beta log pi/pi_ref - delta)), delta a running mean"
    config_cls = BCOConfig
    data_format = "unpaired"
    needs_reference = True
    no_target_reason = ("no closed form derived: a classifier loss on unpaired rows with a running reward shift delta")
    default_grid = (0.03, 0.1, 0.3, 1.0, 3.0)  # beta scales a log-ratio in a sigmoid, as in DPO and KTO

    def __init__(self, config: BCOConfig):
        super().__init__(config)
        self.delta = RunningMean()

    def state_dict(self) -> dict[str, Any]:
        return self.delta.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.delta.load_state_dict(state)

    def compute_loss(self, batch: LogpBatch) -> LossOutput:
        if batch.labels is None:
            raise DataError("bco: the batch has no desirable/undesirable labels (unpaired data required)")
        beta, labels = self.config.beta, batch.labels.bool()
        with torch.no_grad():
            rewards = beta * (batch.policy["completion"] - batch.reference["completion"])
        if torch.is_grad_enabled():  # a training step (evaluation runs under no_grad and leaves delta alone)
            self.delta.update(rewards)
        losses, rewards = bco_losses(batch.policy["completion"], batch.reference["completion"], labels, beta,
                                     self.delta.mean)
        rewards, labels = rewards.detach(), labels.to(rewards.device)
        r_d, r_u = rewards[labels], rewards[~labels]
        metrics = {"bco/delta": torch.tensor(self.delta.mean)}
        if r_d.numel() and r_u.numel():
            metrics["train/margin"] = r_d.mean() - r_u.mean()
        return LossOutput(losses.mean(), r_d, r_u, metrics)
