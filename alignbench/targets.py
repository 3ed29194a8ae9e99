"""Population targets on an enumerable task: the policy each method's objective is minimised by (pure functions).

Tables are (K, N): K prompts, N responses, normalised log-probs or rewards, as in :mod:`alignbench.exact`.
Pairs are drawn as on the exact task: prompt uniform, (y, y') ~ pi_ref x pi_ref with y != y'. A pair with
y = y' has margin h = 0 whatever the policy, so leaving those pairs out changes no minimiser; it is the same as
giving them the preference probability 1/2, which the functions below do.

The label model of a :class:`~alignbench.api.TabularProblem` gives q(y > y'), the probability that y is labelled
the winner: "bt" sigma(r(y) - r(y')), "deterministic" 1[r(y) > r(y')] (1/2 on ties), each flipped with
probability eps: q = eps + (1 - 2 eps) q_clean. Every logistic-type loss below is linear in the label, so its
population version is the same loss with the label replaced by an effective probability a + b q_clean.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import exact as X
from .api import NoTarget, TabularProblem, Target

TILT = "pi_ref exp({s}/{b})/Z"  # how a tilted reference is written in a Target's formula


def tilted(logp_ref: Tensor, score: Tensor, beta: float, score_name: str = "r", beta_name: str = "beta") -> Target:
    """pi_ref exp(score/beta) / Z, the optimum of max E[score] - beta KL(pi || pi_ref) (DPO paper App. A.1).
    logp_ref, score: (K, N) -> Target with logp (K, N)."""
    return Target(X.optimal_logp(logp_ref.double(), score.double(), float(beta)), TILT.format(s=score_name, b=beta_name))


def clean_preference(reward: Tensor, labels: str) -> Tensor:
    """(N,) rewards of one prompt -> (N, N) q(y > y') before label noise: sigma(r - r') for "bt", 1[r > r'] (1/2 on
    ties) for "deterministic". The diagonal is 1/2 (see the module docstring)."""
    d = reward[:, None] - reward[None, :]
    if labels == "bt":
        return torch.sigmoid(d)
    return (d > 0).double() + 0.5 * (d == 0).double()


def win_probability(problem: TabularProblem) -> Tensor:
    """(K, N) P(y > pi_ref) = sum_y' pi_ref(y') q(y > y'), with q the labels' preference probability including
    label noise (IPO paper Eq. 6 with mu = pi_ref). Per prompt, (N, N) memory."""
    eps = float(problem.label_noise)
    p = problem.ref_logp.double().exp()
    out = torch.empty_like(p)
    for k in range(p.shape[0]):
        q = eps + (1 - 2 * eps) * clean_preference(problem.reward[k].double(), problem.labels)
        out[k] = q @ p[k]
    return out


def ipo_target(problem: TabularProblem, tau: float) -> Target:
    """pi_ref exp(P(y > pi_ref)/tau) / Z: the minimiser of the population IPO loss E[(h - 1/(2 tau))^2] over a
    tabular policy when pairs are drawn from pi_ref (IPO paper Eq. 6 / Prop. 2 with Psi = identity)."""
    return tilted(problem.ref_logp, win_probability(problem), tau, "P(y>pi_ref)", "tau")


def logistic_target(problem: TabularProblem, beta: float, a: float, b: float, score: Tensor | None = None,
                    labels: str | None = None, what: str = "the loss") -> Target | NoTarget:
    """The population optimum of E[-q_eff log sigma(beta h) - (1 - q_eff) log sigma(-beta h)] over a tabular policy,
    where the effective label probability is q_eff = a + b q (q: the labels' clean preference probability of
    ``score``, default the gold reward; label noise folded into a, b by the caller).

    q_eff = sigma(s - s') (a = 0, b = 1, Bradley-Terry labels): h = (s - s')/beta, so pi = pi_ref exp(s/beta)/Z.
    Some q_eff <= 0 or >= 1 (deterministic labels; or a de-biased loss whose q_eff leaves [0, 1]): the loss keeps
    falling as margins grow along s, so there is no finite minimiser. Otherwise a finite minimiser exists but q_eff is
    not Bradley-Terry in any score: no closed form.
    """
    s = problem.reward if score is None else score
    labels = problem.labels if labels is None else labels
    spread = float((s.max(-1).values - s.min(-1).values).max())
    if labels == "bt":
        q_lo = 1.0 / (1.0 + math.exp(spread))  # the smallest sigma(s - s') over pairs
    else:
        q_lo = 0.0 if spread > 0 else 0.5
    lo, hi = min(a + b * q_lo, a + b * (1 - q_lo)), max(a + b * q_lo, a + b * (1 - q_lo))
    if lo <= 1e-12 or hi >= 1 - 1e-12:
        kind = "deterministic labels" if labels == "deterministic" else "its effective label probability"
        return NoTarget(f"no finite minimiser: with {kind} some pairs' effective label probability is "
                        f"{'outside' if lo < -1e-12 or hi > 1 + 1e-12 else 'at the edge of'} (0, 1) "
                        f"(range {lo:.3g} to {hi:.3g}), so {what} keeps falling as the margins grow")
    if labels == "bt" and abs(a) < 1e-12 and abs(b - 1) < 1e-12:
        return tilted(problem.ref_logp, s, beta, "r" if score is None else "r_RM")
    return NoTarget(f"no closed form: the effective label probability {a:.3g} + {b:.3g} q(y > y') is not "
                    "Bradley-Terry in any score, so the finite minimiser is not a tilted reference")


def noisy(problem: TabularProblem) -> tuple[float, float]:
    """(a, b) of the data's label probability q = a + b q_clean: a = eps, b = 1 - 2 eps for flip rate eps."""
    eps = float(problem.label_noise)
    return eps, 1.0 - 2.0 * eps


def equal_length(problem: TabularProblem) -> int | None:
    """The common token count of every response, or None when lengths differ or are unknown."""
    if problem.lengths is None or problem.lengths.numel() == 0:
        return None
    n = problem.lengths.reshape(-1)
    return int(n[0]) if bool((n == n[0]).all()) else None


def reward_tilt(problem: TabularProblem, beta: float, uses_rm: bool) -> Target | NoTarget:
    """The optimum of max E[s] - beta KL(pi || pi_ref) for the score an RL method is trained on: the learned reward
    model's table when ``uses_rm`` (pi_ref exp(r_RM/beta)/Z), else the gold reward (pi*_beta)."""
    if not uses_rm:
        return tilted(problem.ref_logp, problem.reward, beta)
    if problem.rm_reward is None:
        return NoTarget("the reward model's score table is not available")
    return tilted(problem.ref_logp, problem.rm_reward, beta, "r_RM")
