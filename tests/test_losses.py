"""DPO, IPO and KTO losses against hand-derived numbers, limit cases, config checks and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from alignbench.api import LogpBatch
from alignbench.data import FORMAT_COLUMNS
from alignbench.config import from_mapping
from alignbench.errors import AlignbenchError, ConfigError
from alignbench.registry import get_method
from alignbench.methods.dpo import DPO, DPOConfig, dpo_loss, dpo_losses
from alignbench.methods.ipo import IPO, IPOConfig, ipo_loss
from alignbench.methods.kto import KTO, KTOConfig, kto_loss

T = torch.float64


def t(*xs: float, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=T, requires_grad=requires_grad)


# Two pairs used by the DPO and IPO checks:
#   pair 0: log pi(y_w) = -1, log pi(y_l) = -2, log pi_ref(y_w) = log pi_ref(y_l) = -1.5
#           log-ratios +0.5 and -0.5, h = 0.5 - (-0.5) = 1
#   pair 1: log pi(y_w) = -3, log pi(y_l) = -1, log pi_ref(.) = -2
#           log-ratios -1 and +1, h = -2
PC, PR, RC, RR = (-1.0, -3.0), (-2.0, -1.0), (-1.5, -2.0), (-1.5, -2.0)


# ------------------------------------------------------------------------------------------ DPO


def test_dpo_hand_numbers():
    out = dpo_loss(t(*PC), t(*PR), t(*RC), t(*RR), beta=0.5)
    # pair 0: beta h = 0.5  -> -log sigma(0.5) = log(1 + e^-0.5) = log(1.6065306597) = 0.4740769842
    # pair 1: beta h = -1.0 -> -log sigma(-1)  = log(1 + e^1)    = log(3.7182818285) = 1.3132616875
    # mean = (0.4740769842 + 1.3132616875) / 2 = 0.8936693359
    assert out.loss.item() == pytest.approx(0.8936693359, abs=1e-9)
    # implicit rewards beta * log-ratio: chosen (0.25, -0.5), rejected (-0.25, 0.5)
    torch.testing.assert_close(out.chosen_rewards, t(0.25, -0.5))
    torch.testing.assert_close(out.rejected_rewards, t(-0.25, 0.5))
    # margin = mean(0.5, -1.0) = -0.25; accuracy = 1/2
    assert out.metrics["train/margin"].item() == pytest.approx(-0.25)
    assert out.metrics["train/accuracy"].item() == pytest.approx(0.5)
    assert out.metrics["train/logratio_chosen"].item() == pytest.approx(-0.25)  # mean(0.5, -1)
    assert out.metrics["train/logratio_rejected"].item() == pytest.approx(0.25)  # mean(-0.5, 1)


@pytest.mark.parametrize("beta", [0.03, 0.1, 1.0, 5.0])
def test_dpo_zero_margin_is_log2(beta):
    # h = 0: -log sigma(0) = log 2, for any beta; d/d log pi(y_w) = -beta sigma(0) / B = -beta / (2 B)
    pc = t(-4.0, -7.0, -1.0, requires_grad=True)
    pr = t(-2.0, -9.0, -3.0, requires_grad=True)
    out = dpo_loss(pc, pr, pc.detach().clone(), pr.detach().clone(), beta=beta)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-12)
    out.loss.backward()
    torch.testing.assert_close(pc.grad, torch.full((3,), -beta / 6, dtype=T))
    torch.testing.assert_close(pr.grad, torch.full((3,), beta / 6, dtype=T))


def test_dpo_gradient_sign():
    # raising the chosen log-prob lowers the loss, raising the rejected one raises it, at any margin
    pc = t(-1.0, -3.0, -20.0, requires_grad=True)
    pr = t(-2.0, -1.0, -1.0, requires_grad=True)
    dpo_loss(pc, pr, t(-1.5, -2.0, -2.0), t(-1.5, -2.0, -2.0), beta=0.5).loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    # exact value for pair 0: dL/dpc = -(1/B) beta sigma(-beta h) = -(1/3) 0.5 sigma(-0.5) = -0.0629234439
    assert pc.grad[0].item() == pytest.approx(-0.5 * (1 / (1 + math.exp(0.5))) / 3, abs=1e-12)
    torch.testing.assert_close(pr.grad, -pc.grad)


def test_cdpo_label_smoothing():
    # eps = 0.1, beta h = 0.5: 0.9 log(1 + e^-0.5) + 0.1 log(1 + e^0.5)
    #   = 0.9 * 0.4740769842 + 0.1 * 0.9740769842 = 0.5240769842  (log(1 + e^x) = x + log(1 + e^-x))
    out = dpo_loss(t(PC[0]), t(PR[0]), t(RC[0]), t(RR[0]), beta=0.5, label_smoothing=0.1)
    assert out.loss.item() == pytest.approx(0.5240769842, abs=1e-9)
    # cDPO's per-pair minimum is finite: d/dz [-(1-e) log s(z) - e log s(-z)] = s(z) - (1 - e) = 0 at z = log 9
    z = torch.tensor([math.log(9.0)], dtype=T, requires_grad=True)  # z = beta h with beta = 1
    dpo_losses(z, t(0.0), t(0.0), t(0.0), beta=1.0, label_smoothing=0.1).sum().backward()
    assert abs(z.grad.item()) < 1e-12
    # eps = 0 is plain DPO
    torch.testing.assert_close(dpo_losses(t(*PC), t(*PR), t(*RC), t(*RR), 0.5, 0.0),
                               dpo_losses(t(*PC), t(*PR), t(*RC), t(*RR), 0.5))


def test_dpo_rewards_and_metrics_detached():
    pc, pr = t(*PC, requires_grad=True), t(*PR, requires_grad=True)
    out = dpo_loss(pc, pr, t(*RC), t(*RR), beta=0.5)
    assert out.loss.requires_grad and out.loss.dim() == 0
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert all(not v.requires_grad and v.dim() == 0 for v in out.metrics.values())


# ------------------------------------------------------------------------------------------ IPO


def test_ipo_hand_numbers():
    # beta = 0.25: target 1/(2 beta) = 2. pair 0: h = 1 -> (1 - 2)^2 = 1; pair 1: h = -2 -> (-2 - 2)^2 = 16
    # mean = 8.5
    out = ipo_loss(t(*PC), t(*PR), t(*RC), t(*RR), beta=0.25)
    assert out.loss.item() == pytest.approx(8.5, abs=1e-12)
    assert out.metrics["ipo/h"].item() == pytest.approx(-0.5)  # mean(1, -2)
    torch.testing.assert_close(out.chosen_rewards, t(0.125, -0.25))  # 0.25 * (0.5, -1)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_minimised_at_target_margin(beta):
    # h = 1/(2 beta) exactly: loss 0 and zero gradient (the minimum of the square)
    target = 1 / (2 * beta)
    pc = t(-3.0 + target / 2, requires_grad=True)
    pr = t(-5.0 - target / 2, requires_grad=True)
    out = ipo_loss(pc, pr, t(-3.0), t(-5.0), beta=beta)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-20)
    out.loss.backward()
    assert abs(pc.grad.item()) < 1e-12 and abs(pr.grad.item()) < 1e-12
    # past the target the gradient pulls h back down (unlike DPO, which always pushes h up)
    pc2 = t(-3.0 + target, requires_grad=True)  # h = 1.5 target
    ipo_loss(pc2, pr.detach(), t(-3.0), t(-5.0), beta=beta).loss.backward()
    # dL/dpc = 2 (h - target) = 2 (target / 2) = target
    assert pc2.grad.item() == pytest.approx(target, rel=1e-12)


def test_ipo_length_normalize_divides_by_lengths():
    # pair 0 with |y_w| = 2, |y_l| = 4 tokens: per-token log-ratios 0.5 / 2 = 0.25 and -0.5 / 4 = -0.125
    # h = 0.375; beta = 0.5, target 1: (0.375 - 1)^2 = 0.390625
    lengths = {"chosen": torch.tensor([2]), "rejected": torch.tensor([4])}
    batch = LogpBatch(policy={"chosen": t(PC[0]), "rejected": t(PR[0])},
                      reference={"chosen": t(RC[0]), "rejected": t(RR[0])}, lengths=lengths)
    out = IPO(IPOConfig(beta=0.5, length_normalize=True)).compute_loss(batch)
    assert out.loss.item() == pytest.approx(0.390625, abs=1e-12)
    assert out.metrics["ipo/h"].item() == pytest.approx(0.375)
    # rewards stay the sequence-level beta * log-ratio
    torch.testing.assert_close(out.chosen_rewards, t(0.25))
    # default: the paper's sequence form ignores lengths: h = 1 = target -> loss 0
    assert not IPOConfig().length_normalize
    assert IPO(IPOConfig(beta=0.5)).compute_loss(batch).loss.item() == pytest.approx(0.0, abs=1e-20)
    # zero lengths are clamped to 1 (as in TRL)
    zero = {"chosen": torch.tensor([0]), "rejected": torch.tensor([1])}
    out0 = ipo_loss(t(PC[0]), t(PR[0]), t(RC[0]), t(RR[0]), 0.5, zero["chosen"], zero["rejected"])
    assert out0.loss.item() == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(ValueError):
        ipo_loss(t(PC[0]), t(PR[0]), t(RC[0]), t(RR[0]), 0.5, chosen_lengths=torch.tensor([2]))


# ------------------------------------------------------------------------------------------ KTO

# Three rows, beta = 1:
#   log pi = (-1, -2, -3), log pi_ref = (-2, -2, -2)  ->  r = (1, 0, -1); labels (D, U, U)
#   mismatched rows: log pi - log pi_ref = (0.5, 0.5, 0.5)  ->  z0 = 0.5
KP, KR, KL_P, KL_R = (-1.0, -2.0, -3.0), (-2.0, -2.0, -2.0), (-5.0, -4.0, -6.0), (-5.5, -4.5, -6.5)
KLAB = torch.tensor([True, False, False])


def test_kto_hand_numbers():
    out = kto_loss(t(*KP), t(*KR), t(*KL_P), t(*KL_R), KLAB, beta=1.0, desirable_weight=2.0, undesirable_weight=1.0)
    # row 0 (D, r = 1):  2 * (1 - sigma(1 - 0.5))    = 2 * (1 - 0.6224593312) = 0.7550813375
    # row 1 (U, r = 0):  1 * (1 - sigma(0.5 - 0))    = 0.3775406688
    # row 2 (U, r = -1): 1 * (1 - sigma(0.5 + 1))    = 1 - 0.8175744762 = 0.1824255238
    # mean over all 3 rows = 1.3150475301 / 3 = 0.4383491767
    assert out.loss.item() == pytest.approx(0.4383491767, abs=1e-9)
    assert out.metrics["kto/z0"].item() == pytest.approx(0.5)
    torch.testing.assert_close(out.chosen_rewards, t(1.0))  # beta * r of desirable rows
    torch.testing.assert_close(out.rejected_rewards, t(0.0, -1.0))
    assert out.metrics["train/margin"].item() == pytest.approx(1.0 - (-0.5))


def test_kto_z0_clamped_at_zero_and_detached():
    # mismatched log-ratios (-1, 0.5, -1): mean -0.5 < 0 -> z0 = 0
    kl_p = t(-6.0, -4.0, -7.5, requires_grad=True)
    p = t(*KP, requires_grad=True)
    out = kto_loss(p, t(*KR), kl_p, t(-5.0, -4.5, -6.5), KLAB, beta=1.0)
    assert out.metrics["kto/z0"].item() == 0.0
    # row 0 (D, r = 1): 1 - sigma(1) = 0.2689414214; row 1 (U, r = 0): 1 - sigma(0) = 0.5;
    # row 2 (U, r = -1): 1 - sigma(1) = 0.2689414214; mean = 1.0378828427 / 3 = 0.3459609476
    assert out.loss.item() == pytest.approx(0.3459609476, abs=1e-9)
    out.loss.backward()
    assert kl_p.grad is None  # no gradient flows through z0
    # with z0 constant: dL/dr_D = -(1/3) beta s(1)(1 - s(1)); dL/dr_U = +(1/3) beta s(z0 - r)(1 - s(z0 - r))
    s1, s0 = 1 / (1 + math.exp(-1)), 0.5
    expected = t(-s1 * (1 - s1) / 3, s0 * (1 - s0) / 3, s1 * (1 - s1) / 3)
    torch.testing.assert_close(p.grad, expected)
    # z0 is detached even when it is positive
    kl_p2 = t(*KL_P, requires_grad=True)
    kto_loss(t(*KP, requires_grad=True), t(*KR), kl_p2, t(*KL_R), KLAB, beta=1.0).loss.backward()
    assert kl_p2.grad is None


def test_kto_all_desirable_and_all_undesirable():
    ones = torch.ones(3, dtype=torch.bool)
    out = kto_loss(t(*KP), t(*KR), t(*KL_P), t(*KL_R), ones, beta=1.0)
    # r = (1, 0, -1), z0 = 0.5: mean of 1 - sigma(r - 0.5) = (1 - s(0.5) + 1 - s(-0.5) + 1 - s(-1.5)) / 3
    #   = (0.3775406688 + 0.6224593312 + 0.8175744762) / 3 = 0.6058581587
    assert out.loss.item() == pytest.approx(0.6058581587, abs=1e-9)
    assert out.rejected_rewards.shape == (0,) and out.chosen_rewards.shape == (3,)
    assert "train/margin" not in out.metrics and "train/logratio_rejected" not in out.metrics
    assert all(torch.isfinite(v) for v in out.metrics.values())
    out_u = kto_loss(t(*KP), t(*KR), t(*KL_P), t(*KL_R), ~ones, beta=1.0)
    # mean of 1 - sigma(0.5 - r) = (1 - s(-0.5) + 1 - s(0.5) + 1 - s(1.5)) / 3
    #   = (0.6224593312 + 0.3775406688 + 0.1824255238) / 3 = 1.1824255238 / 3 = 0.3941418413
    assert out_u.loss.item() == pytest.approx(0.3941418413, abs=1e-9)
    assert out_u.chosen_rewards.shape == (0,)


def test_kto_class_unpacks_unpaired_batch():
    assert FORMAT_COLUMNS[KTO.data_format] + tuple(KTO.statistic_columns) == ("completion", "kl_completion")
    batch = LogpBatch(policy={"completion": t(*KP), "kl_completion": t(*KL_P)},
                      reference={"completion": t(*KR), "kl_completion": t(*KL_R)},
                      lengths={"completion": torch.tensor([1, 2, 3]), "kl_completion": torch.tensor([1, 1, 1])},
                      labels=KLAB)
    out = KTO(KTOConfig(beta=1.0, desirable_weight=2.0)).compute_loss(batch)
    assert out.loss.item() == pytest.approx(0.4383491767, abs=1e-9)
    with pytest.raises(AlignbenchError):
        KTO(KTOConfig()).compute_loss(LogpBatch(batch.policy, batch.reference, batch.lengths, None))


def test_dpo_class_unpacks_paired_batch():
    assert FORMAT_COLUMNS[DPO.data_format] == ("chosen", "rejected")
    batch = LogpBatch(policy={"chosen": t(*PC), "rejected": t(*PR)},
                      reference={"chosen": t(*RC), "rejected": t(*RR)},
                      lengths={"chosen": torch.tensor([1, 1]), "rejected": torch.tensor([1, 1])})
    assert DPO(DPOConfig(beta=0.5)).compute_loss(batch).loss.item() == pytest.approx(0.8936693359, abs=1e-9)


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("cfg_cls", [DPOConfig, IPOConfig, KTOConfig])
@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_config_rejects_bad_beta(cfg_cls, beta):
    with pytest.raises(ConfigError, match="beta") as e:
        cfg_cls(beta=beta)
    assert e.value.field == "beta"
    with pytest.raises(ConfigError, match=r"method\.beta"):
        from_mapping(cfg_cls, {"beta": str(beta)}, where="method")


@pytest.mark.parametrize("cfg_cls, field, value", [
    (DPOConfig, "label_smoothing", 0.5),
    (DPOConfig, "label_smoothing", -0.1),
    (DPOConfig, "label_smoothing", float("nan")),
    (KTOConfig, "desirable_weight", 0.0),
    (KTOConfig, "undesirable_weight", -1.0),
    (KTOConfig, "undesirable_weight", float("inf")),
    (IPOConfig, "length_normalize", "yes please"),
])
def test_config_rejects_bad_fields(cfg_cls, field, value):
    with pytest.raises(ConfigError, match=field):
        from_mapping(cfg_cls, {field: value})


def test_config_defaults_and_coercion():
    assert DPOConfig().beta == 0.1 and DPOConfig().label_smoothing == 0.0
    assert IPOConfig().length_normalize is False
    k = KTOConfig()
    assert (k.beta, k.desirable_weight, k.undesirable_weight) == (0.1, 1.0, 1.0)
    assert from_mapping(IPOConfig, {"beta": "0.3", "length_normalize": "true"}) == IPOConfig(0.3, True)


# ------------------------------------------------------------------------------------------ registry


def test_registry_lookup():
    assert get_method("dpo") is DPO and get_method("ipo") is IPO and get_method("kto") is KTO
    with pytest.raises(AlignbenchError, match="did you mean 'dpo'"):
        get_method("dpoo")


@pytest.mark.parametrize("cls, fmt", [(DPO, "paired"), (IPO, "paired"), (KTO, "unpaired")])
def test_method_class_attributes(cls, fmt):
    assert cls.data_format == fmt and cls.needs_reference and cls.description
    assert cls.sweep_param == "beta"
    grid = cls.default_grid
    assert len(grid) >= 4 and all(b > 0 for b in grid) and list(grid) == sorted(grid)
    assert grid[-1] / grid[0] >= 30  # spans from barely moving to far past the best reward
    cls.config_cls(beta=grid[0])  # every grid value is a valid config
    assert cls(cls.config_cls()).sweep_value == 0.1
