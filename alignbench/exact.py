"""Exact quantities over an enumerable response space (pure tensor functions).

All tables are (K, N): K prompts, N responses per prompt, entries log pi(y|x) (rows normalised:
logsumexp over N = 0) or rewards r(x, y). Prompts are weighted uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def optimal_logp(logp_ref: Tensor, reward: Tensor, beta: float) -> Tensor:
    """log pi*_beta = log pi_ref + r/beta - log Z (DPO paper, App. A.1, Eq. 4). (K, N) -> (K, N)."""
    unnorm = logp_ref + reward / beta
    return unnorm - torch.logsumexp(unnorm, dim=-1, keepdim=True)


def kl(logp: Tensor, logp_other: Tensor) -> Tensor:
    """Mean over prompts of KL(p || q) = sum_y p(y) (log p(y) - log q(y)). Returns a scalar."""
    p = logp.exp()
    # terms with p = 0 contribute 0 even where log q = -inf
    terms = torch.where(p > 0, p * (logp - logp_other), torch.zeros_like(p))
    return terms.sum(-1).mean()


def expected(logp: Tensor, values: Tensor) -> Tensor:
    """Mean over prompts of E_{y~p}[values(x, y)]."""
    return (logp.exp() * values).sum(-1).mean()


def entropy(logp: Tensor) -> Tensor:
    p = logp.exp()
    return -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1).mean()


def bt_win_rate(logp_a: Tensor, logp_b: Tensor, reward: Tensor) -> Tensor:
    """Mean over prompts of sum_{y,y'} a(y) b(y') sigma(r(y) - r(y')): Bradley-Terry win probability of a over b."""
    pa, pb = logp_a.exp(), logp_b.exp()
    out = []
    for k in range(reward.shape[0]):  # (N, N) per prompt keeps memory at N^2
        s = torch.sigmoid(reward[k][:, None] - reward[k][None, :])
        out.append(pa[k] @ s @ pb[k])
    return torch.stack(out).mean()


@dataclass
class Frontier:
    """The optimal reward-vs-KL frontier: one point per beta (KL increasing as beta falls)."""

    beta: np.ndarray
    kl: np.ndarray
    reward: np.ndarray

    def reward_at(self, kl_value: float) -> float:
        """Optimal expected reward at a KL budget (linear interpolation; flat past the last point)."""
        return float(np.interp(kl_value, self.kl, self.reward))


def frontier(logp_ref: Tensor, reward: Tensor, betas: np.ndarray | None = None) -> Frontier:
    """Exact (KL, reward) of pi*_beta over a fine log-spaced beta grid."""
    if betas is None:
        betas = np.concatenate([np.geomspace(1e3, 1e-3, 300)])
    kls, rews = [], []
    for b in betas:
        lp = optimal_logp(logp_ref, reward, float(b))
        kls.append(float(kl(lp, logp_ref)))
        rews.append(float(expected(lp, reward)))
    kls_a, rews_a = np.array(kls), np.array(rews)
    order = np.argsort(kls_a)
    return Frontier(beta=np.asarray(betas)[order], kl=kls_a[order], reward=rews_a[order])


def best_of_n_logp(logp_ref: Tensor, scores: Tensor, n: int) -> Tensor:
    """Exact log-probabilities of best-of-n sampling from pi_ref, keeping the highest ``scores``.

    With responses sorted by score, P(best = y) = F(y)^n - F_<(y)^n where F is the reference CDF.
    Ties in score are split evenly within each tie group. (K, N) -> (K, N).
    """
    out = torch.empty_like(logp_ref)
    p = logp_ref.double().exp()
    for k in range(p.shape[0]):
        s = scores[k].double()
        uniq, inverse = torch.unique(s, sorted=True, return_inverse=True)
        group_mass = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, p[k])
        cdf = group_mass.cumsum(0)
        below = cdf - group_mass
        group_best = cdf.pow(n) - below.pow(n)
        # split a group's probability in proportion to reference mass within the group
        share = p[k] / group_mass[inverse].clamp_min(1e-300)
        out[k] = (group_best[inverse] * share).clamp_min(1e-300).log().to(out.dtype)
    return out
