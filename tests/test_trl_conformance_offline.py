"""The offline family's losses equal TRL 1.16's own code on the same log-probabilities (to 1e-6).

Pinned TRL paths (TRL 1.16; ``trl.experimental`` may move in any release, and each test skips with the reason
if its path is gone):

* ``trl.trainer.dpo_trainer.DPOTrainer._compute_loss`` with loss types ``hinge``, ``robust``, ``nca_pair`` and
  ``bco_pair``, driven by the harness of ``tests/test_trl_conformance.py`` (stub ``self``, :class:`TableLM`);
* ``trl.experimental.cpo.cpo_trainer.CPOTrainer.cpo_loss`` with ``loss_type="simpo"`` (SimPO);
* ``trl.experimental.orpo.orpo_trainer.ORPOTrainer.odds_ratio_loss`` (ORPO's odds-ratio term).

TRL 1.16 has no BCOTrainer (it was removed from ``trl`` and is not in ``trl.experimental``): BCO is checked
against DPOTrainer's ``bco_pair`` loss, which is BCO's loss on a pair with the reward shift delta = 0.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl", reason="TRL is the reference implementation these tests compare against")

from alignbench.methods.bco import bco_losses  # noqa: E402
from alignbench.methods.nca import nca_loss  # noqa: E402
from alignbench.methods.orpo import orpo_losses  # noqa: E402
from alignbench.methods.rdpo import rdpo_loss  # noqa: E402
from alignbench.methods.simpo import simpo_loss  # noqa: E402
from alignbench.methods.slic import slic_losses  # noqa: E402

from .test_trl_conformance import DT, TOL, Accelerator, pairs, trl_args, trl_dpo  # noqa: E402,F401


def pinned(module: str, attr: str):
    """``module.attr`` from TRL, or skip naming the pinned path that is gone."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        pytest.skip(f"pinned TRL path {module}.{attr} is not in the installed TRL ({type(e).__name__}: {e})")


def with_grad(pairs):
    return pairs["pc"].clone().requires_grad_(True), pairs["pr"].clone().requires_grad_(True)


# ------------------------------------------------------------------------------------------ DPOTrainer loss types


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_slic_hinge_form_matches_trl_hinge(trl_args, pairs, beta):
    ref_loss, ref_grad, _ = trl_dpo(trl_args["dpo"], "hinge", beta, **pairs)
    pc, pr = with_grad(pairs)
    loss = slic_losses(pc, pr, delta=1.0 / beta, lam=0.0, ref_chosen=pairs["ref_c"], ref_rejected=pairs["ref_r"]).mean()
    loss.backward()
    assert ref_loss.item() > 0  # some pairs inside the hinge: the comparison is not 0 == 0
    torch.testing.assert_close(loss.detach(), ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([pc.grad, pr.grad]), ref_grad, **TOL)


@pytest.mark.parametrize("beta, eps", [(0.1, 0.1), (0.5, 0.3), (2.0, 0.0), (1.0, 0.45)])
def test_rdpo_matches_trl_robust(trl_args, pairs, beta, eps):
    args = trl_args["dpo"]
    old = args.label_smoothing
    args.label_smoothing = eps  # TRL's robust loss reads its flip rate from label_smoothing
    try:
        ref_loss, ref_grad, stub = trl_dpo(args, "robust", beta, **pairs)
    finally:
        args.label_smoothing = old
    pc, pr = with_grad(pairs)
    out = rdpo_loss(pc, pr, pairs["ref_c"], pairs["ref_r"], beta=beta, epsilon=eps)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([pc.grad, pr.grad]), ref_grad, **TOL)
    assert out.metrics["train/margin"].item() == pytest.approx(stub._metrics["train"]["rewards/margins"][-1], abs=1e-6)


@pytest.mark.parametrize("beta", [0.05, 0.3, 2.0])
def test_nca_matches_trl_nca_pair(trl_args, pairs, beta):
    ref_loss, ref_grad, stub = trl_dpo(trl_args["dpo"], "nca_pair", beta, **pairs)
    pc, pr = with_grad(pairs)
    out = nca_loss(pc, pr, pairs["ref_c"], pairs["ref_r"], beta=beta)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([pc.grad, pr.grad]), ref_grad, **TOL)
    assert out.chosen_rewards.mean().item() == pytest.approx(stub._metrics["train"]["rewards/chosen"][-1], abs=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_bco_at_zero_shift_matches_trl_bco_pair(trl_args, pairs, beta):
    """bco_pair = -log sigma(beta r_w) - log sigma(-beta r_l) per pair: BCO's two rows with delta = 0. Our loss
    averages over the 2B unpaired rows, so it is half TRL's per-pair mean."""
    ref_loss, ref_grad, _ = trl_dpo(trl_args["dpo"], "bco_pair", beta, **pairs)
    pc, pr = with_grad(pairs)
    b = len(pc)
    labels = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)])
    losses, _ = bco_losses(torch.cat([pc, pr]), torch.cat([pairs["ref_c"], pairs["ref_r"]]), labels, beta, 0.0)
    (2 * losses.mean()).backward()
    torch.testing.assert_close(2 * losses.mean().detach(), ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([pc.grad, pr.grad]), ref_grad, **TOL)


# ------------------------------------------------------------------------------------------ trl.experimental


def experimental_stub(**attrs) -> SimpleNamespace:
    return SimpleNamespace(accelerator=Accelerator(), **attrs)


@pytest.mark.parametrize("beta, ratio", [(2.5, 0.55), (0.5, 0.0), (10.0, 1.2)])
def test_simpo_matches_trl_cpo_simpo(pairs, beta, ratio):
    cpo_trainer = pinned("trl.experimental.cpo.cpo_trainer", "CPOTrainer")
    # the attributes CPOTrainer.__init__ sets from CPOConfig for loss_type="simpo" (alpha 0: no AlphaPO transform)
    stub = experimental_stub(beta=beta, simpo_gamma=ratio * beta, loss_type="simpo", label_smoothing=0.0, alpha=0.0)
    len_c, len_r = pairs["len_c"].to(DT), pairs["len_r"].to(DT)
    avg = pairs["pc"].clone().div(len_c).requires_grad_(True), pairs["pr"].clone().div(len_r).requires_grad_(True)
    ref_losses, ref_rc, ref_rr = cpo_trainer.cpo_loss(stub, *avg)  # TRL takes per-token mean log-probs for simpo
    ref_losses.mean().backward()
    pc, pr = with_grad(pairs)
    out = simpo_loss(pc, pr, pairs["len_c"], pairs["len_r"], beta=beta, gamma=ratio * beta)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), ref_losses.mean().detach(), **TOL)
    # d/d(sum log pi) = d/d(mean log pi) / |y|
    chain = torch.cat([avg[0].grad / len_c, avg[1].grad / len_r])
    torch.testing.assert_close(torch.cat([pc.grad, pr.grad]), chain, **TOL)
    torch.testing.assert_close(out.chosen_rewards, ref_rc, **TOL)
    torch.testing.assert_close(out.rejected_rewards, ref_rr, **TOL)


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_odds_ratio_term_matches_trl(pairs, lam):
    orpo_trainer = pinned("trl.experimental.orpo.orpo_trainer", "ORPOTrainer")
    stub = experimental_stub(beta=lam)  # TRL's ORPO calls lambda "beta"
    len_c, len_r = pairs["len_c"].to(DT), pairs["len_r"].to(DT)
    # TRL computes the odds in float32 (``.float()``); the inputs are mean log-probs in (-8, 0)
    avg = [(pairs["pc"] / len_c).float().requires_grad_(True), (pairs["pr"] / len_r).float().requires_grad_(True)]
    ref_terms, _, _, _, ref_log_odds = orpo_trainer.odds_ratio_loss(stub, *avg)  # lambda * log sigma(log odds ratio)
    (-ref_terms.mean()).backward()
    pc = pairs["pc"].float().clone().requires_grad_(True)
    pr = pairs["pr"].float().clone().requires_grad_(True)
    losses, nll, odds_c, odds_r = orpo_losses(pc, pr, pairs["len_c"], pairs["len_r"], lam=lam)
    (losses - nll).mean().backward()  # the odds-ratio term alone
    torch.testing.assert_close((losses - nll).detach(), -ref_terms.detach(), **TOL)
    assert (odds_c - odds_r).mean().item() == pytest.approx(ref_log_odds.item(), abs=1e-5)
    torch.testing.assert_close(pc.grad, avg[0].grad / len_c.float(), **TOL)
    torch.testing.assert_close(pr.grad, avg[1].grad / len_r.float(), **TOL)
