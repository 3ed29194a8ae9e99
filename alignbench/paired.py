"""The paired-loss helper: a paired method gives its per-pair losses and implicit rewards, the harness the rest.

A paired loss (DPO, IPO, SimPO, ...) is a formula mapping the log-probs of B (chosen, rejected) pairs to B
losses. What every such method then does the same way lives here: the batch reduction (mean over pairs),
detaching the implicit rewards, and the standard batch diagnostics (``train/margin``, ``train/accuracy`` and,
for methods with a reference, the mean log-ratios; :func:`alignbench.api.pair_diagnostics`). A method file
is then only its formula::

    losses = my_formula(pc, pr, rc, rr, beta)                         # (B,)
    return paired_output(losses, pc - rc, pr - rr, beta)             # log-ratios -> rewards beta * log-ratio

or, for a reference-free method whose implicit reward is not a log-ratio (SimPO's beta/|y| log pi(y)),
``paired_output(losses, rewards=(reward_chosen, reward_rejected))``.
"""

from __future__ import annotations

from torch import Tensor

from .api import LossOutput, pair_diagnostics


def paired_output(
    losses: Tensor,
    logratio_chosen: Tensor | None = None,
    logratio_rejected: Tensor | None = None,
    beta: float = 1.0,
    *,
    rewards: tuple[Tensor, Tensor] | None = None,
    metrics: dict[str, Tensor] | None = None,
) -> LossOutput:
    """The batch :class:`LossOutput` of a paired loss.

    losses:                              (B,) per-pair losses (with gradients); the batch loss is their mean.
    logratio_chosen, logratio_rejected:  (B,) log pi/pi_ref of chosen and rejected (methods with a reference):
                                         implicit rewards are beta * log-ratio; all of ``pair_diagnostics``.
    rewards:                             ((B,), (B,)) implicit rewards of a reference-free method instead: only
                                         ``train/margin`` and ``train/accuracy`` (there is no log-ratio to report).
    metrics:                             the method's own scalar diagnostics (detached), added as they are.
    With neither log-ratios nor rewards the rewards are empty and only ``metrics`` are reported.
    """
    if (logratio_chosen is None) != (logratio_rejected is None):
        raise ValueError("paired_output: pass both log-ratios or neither")
    if logratio_chosen is not None and rewards is not None:
        raise ValueError("paired_output: pass log-ratios or rewards, not both")
    if logratio_chosen is not None and logratio_rejected is not None:
        lc, lr = logratio_chosen.detach(), logratio_rejected.detach()
        chosen, rejected = beta * lc, beta * lr
        diagnostics = pair_diagnostics(lc, lr, beta)
    elif rewards is not None:
        chosen, rejected = rewards[0].detach(), rewards[1].detach()
        full = pair_diagnostics(chosen, rejected, 1.0)  # margin and accuracy of the rewards themselves
        diagnostics = {k: full[k] for k in ("train/margin", "train/accuracy")}
    else:
        chosen = rejected = losses.new_zeros(0).detach()
        diagnostics = {}
    return LossOutput(losses.mean(), chosen, rejected, {**diagnostics, **(metrics or {})})


def per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    """(B,) summed log-probs (or log-ratios) divided by the (B,) completion token counts, clamped at >= 1."""
    return logps / lengths.clamp(min=1)
