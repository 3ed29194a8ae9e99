"""IPO: Identity Preference Optimization (Azar et al. 2023, arXiv 2310.12036).

IPO regresses the log-ratio margin h onto the fixed target 1/(2 tau) instead of pushing it to
infinity (Eq. 17), so it does not become deterministic on deterministic preferences. Its population
optimum is pi(y) ∝ pi_ref(y) exp(p(y > mu) / tau): RLHF with a reward bounded in [0, 1], the win
probability against the data policy (the Psi = identity case of PsiPO). ``beta`` here is the paper's tau.

Sequence vs per-token log-ratios: the paper writes h on sequence log-probabilities and does not
discuss lengths; TRL divides each log-ratio by the completion's token count ("confirmed with the IPO
authors", TRL PR #1265). The default here is the paper's sequence form (``length_normalize=False``):
the exact task's theory (pi* above, the KL axis) is on sequence log-probs, and the DPO reference repo
sums token log-probs. ``length_normalize=True`` gives TRL's form.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from alignbench.api import LogpBatch, LossOutput, MethodConfig, NoTarget, OfflineMethod, TabularProblem, Target
from alignbench.config import param
from alignbench.errors import ConfigError
from alignbench.paired import paired_output, per_token
from alignbench.registry import register_method
from alignbench.targets import equal_length, ipo_target


@dataclass(frozen=True)
class IPOConfig(MethodConfig):
    beta: float = param(0.1, "IPO regulariser tau (the target log-ratio margin is 1/(2 tau)); TRL's default 0.1")
    length_normalize: bool = param(
        False,
        "divide each log-ratio by its completion's token count (TRL's per-token form); "
        "default False = the paper's sequence log-ratios",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.length_normalize, bool):
            raise ConfigError("length_normalize", f"must be true or false, got {self.length_normalize!r}")


def ipo_losses(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-pair IPO losses and margins.

    policy_chosen, policy_rejected: (B,) sequence log pi(y_w|x), log pi(y_l|x) (with gradients).
    ref_chosen, ref_rejected:       (B,) the same under pi_ref.
    chosen_lengths, rejected_lengths: optional (B,) completion token counts; when given, each log-ratio
        is divided by its count (clamped at >= 1), TRL's length-normalised form.
    Returns ((B,) losses, (B,) margins h), no reduction.
    """
    logratio_c = policy_chosen - ref_chosen
    logratio_r = policy_rejected - ref_rejected
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_losses: pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None and rejected_lengths is not None:
        logratio_c = per_token(logratio_c, chosen_lengths)  # per-token log-ratio (TRL PR #1265)
        logratio_r = per_token(logratio_r, rejected_lengths)
    h = logratio_c - logratio_r  # h_pi(y_w, y_l), IPO paper Eq. 17
    return (h - 1.0 / (2.0 * beta)) ** 2, h  # (h - 1/(2 tau))^2, IPO paper Eq. 17


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> LossOutput:
    """Batch IPO loss: the mean of :func:`ipo_losses` over pairs. Inputs (B,); loss scalar.

    chosen_rewards / rejected_rewards: (B,) implicit rewards beta * (log pi - log pi_ref) of the
    sequences (never length-normalised), detached.
    """
    losses, h = ipo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                           chosen_lengths, rejected_lengths)
    return paired_output(losses, policy_chosen - ref_chosen, policy_rejected - ref_rejected, beta,
                         metrics={"ipo/h": h.detach().mean()})  # h is regressed onto 1 / (2 beta)


@register_method("ipo")
class IPO(OfflineMethod):
    """IPO, squared loss (h - 1/(2 beta))^2. Default: sequence log-ratios as in the paper (see module doc)."""

    description = "Identity Preference Optimization: regress the log-ratio margin onto 1/(2 beta)"
    config_cls = IPOConfig
    data_format = "paired"
    needs_reference = True
    # IPO's optimum tilts pi_ref by exp(p(y > mu) / tau), a reward in [0, 1] whose spread is < 1, while DPO tilts
    # by exp(r / beta) with r an unbounded Bradley-Terry logit. So the same movement needs a ~3-10x smaller tau
    # than DPO's beta: tau = 1 (target margin 0.5 nat) hardly moves, tau = 0.01 (target 50 nats) is far past the
    # best reward. For sequence log-ratios (the default); with length_normalize the per-token target 1/(2 tau)
    # is multiplied by the length, so useful taus are larger by about the completion length.
    default_grid = (0.01, 0.03, 0.1, 0.3, 1.0)

    def population_target(self, problem: TabularProblem) -> Target | NoTarget:
        """pi_ref exp(P(y > pi_ref)/tau)/Z (IPO paper Eq. 6, Psi = identity; not pi*_tau), P with the data's label
        noise. Per-token log-ratios over responses of one length L regress h onto L/(2 tau): tau becomes tau / L."""
        cfg: IPOConfig = self.config  # type: ignore[assignment]
        if not cfg.length_normalize:
            return ipo_target(problem, cfg.beta)
        length = equal_length(problem)
        if length is None:
            return NoTarget("per-token log-ratios over responses of different lengths: no closed form")
        return ipo_target(problem, cfg.beta / length)

    def compute_loss(self, batch: LogpBatch) -> LossOutput:
        cfg: IPOConfig = self.config  # type: ignore[assignment]
        lengths = (batch.lengths["chosen"], batch.lengths["rejected"]) if cfg.length_normalize else (None, None)
        return ipo_loss(
            batch.policy["chosen"],
            batch.policy["rejected"],
            batch.reference["chosen"],
            batch.reference["rejected"],
            beta=cfg.beta,
            chosen_lengths=lengths[0],
            rejected_lengths=lengths[1],
        )
