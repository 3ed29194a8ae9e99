"""The theory behind DPO and IPO, checked numerically with our loss functions on tabular policies.

1. DPO (arXiv 2305.18290, §4 and App. A.1): minimising the *population* DPO loss, the expectation over
   reference pairs (y, y') ~ pi_ref x pi_ref with Bradley-Terry labels P(y > y') = sigma(r(y) - r(y')),
   recovers the KL-regularised optimum pi*_beta = pi_ref exp(r / beta) / Z.
2. IPO (arXiv 2310.12036, the two-action example): with one deterministic preference y1 > y2 and a uniform
   reference, IPO's minimiser is pi(y1) = sigma(1 / (2 tau)), while DPO keeps pushing pi(y1) towards 1 at any beta.
"""

from __future__ import annotations

import pytest
import torch

from alignbench.exact import kl, optimal_logp
from alignbench.methods.dpo import dpo_losses
from alignbench.methods.ipo import ipo_losses

DT = torch.float64
K, N = 4, 16


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    logp_ref = torch.log_softmax(1.5 * torch.randn(K, N, generator=gen, dtype=DT), dim=-1)
    reward = torch.randn(K, N, generator=gen, dtype=DT)
    return logp_ref, reward


def population_dpo_loss(theta: torch.Tensor, logp_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over prompts of sum_{y, y'} pi_ref(y) pi_ref(y') sigma(r(y) - r(y')) dpo_loss(y wins over y').

    Summing over *ordered* pairs covers both labellings of each unordered pair, so this is the expected
    DPO loss of a pair drawn from pi_ref x pi_ref and labelled by the Bradley-Terry model.
    """
    logp = torch.log_softmax(theta, dim=-1)
    # (K, N, N): entry [k, i, j] is the pair (winner y_i, loser y_j) for prompt k
    pc = logp[:, :, None].expand(K, N, N)
    pr = logp[:, None, :].expand(K, N, N)
    rc = logp_ref[:, :, None].expand(K, N, N)
    rr = logp_ref[:, None, :].expand(K, N, N)
    losses = dpo_losses(pc.reshape(-1), pr.reshape(-1), rc.reshape(-1), rr.reshape(-1), beta).view(K, N, N)
    weight = logp_ref.exp()[:, :, None] * logp_ref.exp()[:, None, :]
    p_win = torch.sigmoid(reward[:, :, None] - reward[:, None, :])
    return (weight * p_win * losses).sum((1, 2)).mean()


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_population_dpo_recovers_optimal_policy(problem, beta):
    logp_ref, reward = problem
    theta = logp_ref.clone().requires_grad_(True)  # tabular policy initialised at pi_ref
    # the loss is convex in theta (logistic loss of differences theta_y - theta_y'), so L-BFGS converges fast
    # (about 50 iterations reach KL ~ 1e-6, 100 reach ~ 1e-12)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = population_dpo_loss(theta, logp_ref, reward, beta)
        loss.backward()
        return loss

    opt.step(closure)
    logp = torch.log_softmax(theta.detach(), dim=-1)
    target = optimal_logp(logp_ref, reward, beta)
    assert kl(logp, target).item() < 1e-3
    # non-trivial: the optimum is far from the reference, and the fit is much closer than that
    assert kl(logp_ref, target).item() > 0.05
    assert kl(logp, target).item() < 1e-3 * kl(logp_ref, target).item()


def two_action_pi_y1(losses_fn, steps: int, lr: float) -> float:
    """pi(y1) after gradient descent on a two-action tabular policy (uniform init = uniform reference)
    with the single observed preference y1 > y2."""
    theta = torch.zeros(2, dtype=DT, requires_grad=True)
    ref = torch.full((1,), -torch.log(torch.tensor(2.0, dtype=DT)).item(), dtype=DT)
    opt = torch.optim.SGD([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        logp = torch.log_softmax(theta, dim=-1)
        losses_fn(logp[0:1], logp[1:2], ref, ref).mean().backward()
        opt.step()
    return torch.softmax(theta.detach(), dim=-1)[0].item()


@pytest.mark.parametrize("tau", [0.25, 0.5, 1.0])
def test_ipo_two_action_optimum_is_sigmoid_of_half_inverse_tau(tau):
    # (log pi(y1)/pi(y2) - 1/(2 tau))^2 is minimised at log-odds 1/(2 tau): pi(y1) = sigma(1/(2 tau)).
    # In theta the loss is (theta1 - theta2 - c)^2 with curvature 4 along (1, -1): SGD with lr 0.1 contracts the
    # error by 0.6 per step.
    ipo = lambda pc, pr, rc, rr: ipo_losses(pc, pr, rc, rr, tau)[0]  # noqa: E731
    pi_ipo = two_action_pi_y1(ipo, steps=60, lr=0.1)  # error * 0.6^60 ~ 5e-14
    expected = torch.sigmoid(torch.tensor(1 / (2 * tau))).item()
    assert pi_ipo == pytest.approx(expected, abs=1e-3)
    # twice as many steps: it stays there (a minimum, not a transient)
    assert two_action_pi_y1(ipo, steps=120, lr=0.1) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("beta", [0.25, 0.5, 1.0])
def test_dpo_two_action_keeps_growing_towards_one(beta):
    # -log sigma(beta (theta1 - theta2)) has no minimiser: its infimum is at pi(y1) = 1 for every beta.
    # Same optimiser as IPO's test above. With x = beta (theta1 - theta2), each step adds 2 lr beta^2 sigma(-x)
    # ~ 2 lr beta^2 e^-x to x, so e^x ~ 2 lr beta^2 t: the margin grows like log(t) / beta without bound.
    # (The curvature is at most beta^2 / 2, so lr = 10 is stable; after 300 steps x >= 5.9 for these betas.)
    dpo = lambda pc, pr, rc, rr: dpo_losses(pc, pr, rc, rr, beta)  # noqa: E731
    early = two_action_pi_y1(dpo, steps=100, lr=10.0)
    late = two_action_pi_y1(dpo, steps=300, lr=10.0)
    assert late > early  # still growing
    assert late > 0.99
    # beyond IPO's fixed point at the same regulariser
    assert late > torch.sigmoid(torch.tensor(1 / (2 * beta))).item()
