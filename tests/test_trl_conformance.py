"""Our DPO, IPO and KTO losses equal TRL's own code on the same log-probabilities.

TRL 1.16 computes these losses inside ``DPOTrainer._compute_loss`` and ``KTOTrainer._compute_loss``
(trl/trainer/dpo_trainer.py, trl/trainer/kto_trainer.py), which run a model with TRL's fused LM head
(``model(..., labels=..., fused_lm_head=True).log_probs``, per-token log-probs) and read precomputed
reference log-probs from the batch. The harness below calls those unbound methods with:

* a stub ``self`` holding the attributes TRL's ``__init__`` sets, filled from a real ``trl.DPOConfig`` /
  ``trl.KTOConfig`` (so defaults like ``f_divergence_type`` and ``ld_alpha`` are TRL's own);
* :class:`TableLM`, a stand-in model whose per-token log-probs sum, over each row's completion tokens,
  to a sequence log-prob we choose (row ``i`` is looked up by its first token id).

TRL's code then tokenizes nothing and computes the loss from log-probs we control; we compare loss,
gradients with respect to the policy log-probs, and TRL's logged rewards / KL with ours.
"""

from __future__ import annotations

import types
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from .conftest import require

trl = require("trl")
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

from alignbench.methods.dpo import dpo_loss  # noqa: E402
from alignbench.methods.ipo import ipo_loss  # noqa: E402
from alignbench.methods.kto import kto_loss  # noqa: E402

DT = torch.float64
TOL = dict(rtol=0, atol=1e-6)


class TableLM:
    """Stand-in for a TRL fused-LM-head model over rows ``[key, completion tokens..., pad...]``.

    The sequence log-prob of row i is ``table[input_ids[i, 0]]``, spread evenly over the row's completion
    tokens (``labels != -100``, shifted by one as for next-token prediction). Gradients flow into ``table``.
    """

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, input_ids, labels, **kwargs):
        mask = (labels[:, 1:] != -100).to(self.table.dtype)
        n = mask.sum(1, keepdim=True).clamp(min=1)
        log_probs = self.table[input_ids[:, 0]][:, None] * mask / n
        zeros = torch.zeros_like(log_probs).detach()
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(mask, dtype=torch.bool), aux_loss=None)


def rows(keys: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / completion_mask of rows [key, 1 x length, pad] (right padded)."""
    width = 1 + int(lengths.max())
    pos = torch.arange(width)[None, :]
    completion = (pos >= 1) & (pos <= lengths[:, None])
    input_ids = torch.where(completion, torch.ones_like(pos), torch.zeros_like(pos)).clone()
    input_ids[:, 0] = keys
    return {"input_ids": input_ids, "attention_mask": (completion | (pos == 0)).long(),
            "completion_mask": completion.long()}


class Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


def common_stub(args) -> SimpleNamespace:
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=Accelerator(), args=args,
                           aux_loss_enabled=False, precompute_ref_logps=True,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)


@pytest.fixture(scope="module")
def trl_args(tmp_path_factory):
    """Real TRL configs (built once: constructing TrainingArguments takes a few seconds)."""
    out = str(tmp_path_factory.mktemp("trl"))
    kw = dict(output_dir=out, report_to=[], bf16=False, use_cpu=True)
    return {"dpo": trl.DPOConfig(**kw), "kto": trl.KTOConfig(**kw)}


def trl_dpo(args, loss_type: str, beta: float, pc, pr, ref_c, ref_r, len_c, len_r, label_smoothing=None):
    """TRL's DPOTrainer._compute_loss on our log-probs. Returns (loss, grad of (pc, pr), stub).
    ``label_smoothing`` overrides the config's (what ``DPOConfig(label_smoothing=...)`` sets on the trainer)."""
    self = common_stub(args)
    # the attributes DPOTrainer.__init__ sets from its args (dpo_trainer.py, "Training arguments")
    self.beta = beta
    self.loss_types = [loss_type]
    self.loss_weights = [1.0]
    self.ld_alpha = args.ld_alpha
    self.f_divergence_type = args.f_divergence_type
    self.f_alpha_divergence_coef = args.f_alpha_divergence_coef
    self.label_smoothing = args.label_smoothing if label_smoothing is None else label_smoothing
    self.use_weighting = args.use_weighting
    table = torch.cat([pc, pr]).detach().clone().requires_grad_(True)
    b = len(pc)
    inputs = rows(torch.arange(2 * b), torch.cat([len_c, len_r]))  # batch is [chosen; rejected]
    inputs.update(ref_chosen_logps=ref_c, ref_rejected_logps=ref_r)
    loss = DPOTrainer._compute_loss(self, TableLM(table), inputs, False)
    loss.backward()
    return loss.detach(), table.grad, self


def trl_kto(args, beta, wd, wu, p, ref, kl_p, kl_ref, labels, lengths):
    """TRL's KTOTrainer._compute_loss on our log-probs. Returns (loss, grad of p, stub)."""
    self = common_stub(args)
    # the attributes KTOTrainer.__init__ sets from its args (kto_trainer.py, "Training arguments")
    self.beta = beta
    self.loss_type = args.loss_type
    self.desirable_weight, self.undesirable_weight = wd, wu
    self.calculate_KL = args.loss_type not in ["apo_zero_unpaired"]
    self._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, self)
    b = len(p)
    table = torch.cat([p, kl_p]).detach().clone().requires_grad_(True)
    main, kl = rows(torch.arange(b), lengths), rows(torch.arange(b, 2 * b), lengths.flip(0))
    inputs = {**main, **{f"KL_{k}": v for k, v in kl.items()}, "label": labels, "ref_logps": ref,
              "ref_KL_logps": kl_ref}
    loss = KTOTrainer._compute_loss(self, TableLM(table), inputs, False)
    loss.backward()
    return loss.detach(), table.grad[:b], self


def logps(gen, b, scale=8.0):
    return -scale * torch.rand(b, generator=gen, dtype=DT)


@pytest.fixture()
def pairs():
    gen = torch.Generator().manual_seed(0)
    b = 8
    return dict(pc=logps(gen, b), pr=logps(gen, b), ref_c=logps(gen, b), ref_r=logps(gen, b),
                len_c=torch.randint(1, 7, (b,), generator=gen), len_r=torch.randint(1, 7, (b,), generator=gen))


# ------------------------------------------------------------------------------------------ DPO / IPO


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
def test_dpo_sigmoid_matches_trl(trl_args, pairs, beta):
    ref_loss, ref_grad, stub = trl_dpo(trl_args["dpo"], "sigmoid", beta, **pairs)
    pc = pairs["pc"].clone().requires_grad_(True)
    pr = pairs["pr"].clone().requires_grad_(True)
    out = dpo_loss(pc, pr, pairs["ref_c"], pairs["ref_r"], beta=beta)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([pc.grad, pr.grad]), ref_grad, **TOL)
    m = stub._metrics["train"]
    assert out.chosen_rewards.mean().item() == pytest.approx(m["rewards/chosen"][-1], abs=1e-6)
    assert out.rejected_rewards.mean().item() == pytest.approx(m["rewards/rejected"][-1], abs=1e-6)
    assert out.metrics["train/margin"].item() == pytest.approx(m["rewards/margins"][-1], abs=1e-6)
    assert out.metrics["train/accuracy"].item() == pytest.approx(m["rewards/accuracies"][-1], abs=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.25, 0.4])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_cdpo_label_smoothing_matches_trl(trl_args, pairs, beta, eps):
    """cDPO -(1 - eps) log sigma(beta h) - eps log sigma(-beta h) against TRL 1.16.

    TRL 1.16's "sigmoid" loss ignores label_smoothing; the label-smoothed sigmoid lives in its "aot" loss, which
    applies it to delta = sort(policy log-ratios) - sort(reference log-ratios). With the rows ordered so that both
    log-ratio columns are increasing, the sorts are the identity and delta is DPO's margin h row by row: TRL's
    aot loss is then exactly cDPO. (TRL's "robust" loss divides by 1 - 2 eps: a different, unbiased estimator.)"""
    order = torch.argsort(pairs["pc"] - pairs["pr"])
    p = {k: v[order] for k, v in pairs.items()}
    # make the reference log-ratios increase in the same row order (keeping each row's values otherwise random)
    ref_gap = torch.sort(p["ref_c"] - p["ref_r"]).values
    p["ref_r"] = p["ref_c"] - ref_gap
    assert (torch.diff(p["pc"] - p["pr"]) > 0).all() and (torch.diff(p["ref_c"] - p["ref_r"]) >= 0).all()
    ref_loss, ref_grad, _ = trl_dpo(trl_args["dpo"], "aot", beta, **p, label_smoothing=eps)
    pc = p["pc"].clone().requires_grad_(True)
    pr = p["pr"].clone().requires_grad_(True)
    out = dpo_loss(pc, pr, p["ref_c"], p["ref_r"], beta=beta, label_smoothing=eps)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([pc.grad, pr.grad]), ref_grad, **TOL)
    plain = dpo_loss(p["pc"], p["pr"], p["ref_c"], p["ref_r"], beta=beta).loss
    assert abs(plain.item() - ref_loss.item()) > 1e-3  # the smoothing changes the loss: the check can fail


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_ipo_length_normalized_matches_trl(trl_args, pairs, beta):
    ref_loss, ref_grad, _ = trl_dpo(trl_args["dpo"], "ipo", beta, **pairs)
    pc = pairs["pc"].clone().requires_grad_(True)
    pr = pairs["pr"].clone().requires_grad_(True)
    out = ipo_loss(pc, pr, pairs["ref_c"], pairs["ref_r"], beta=beta,
                   chosen_lengths=pairs["len_c"], rejected_lengths=pairs["len_r"])
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([pc.grad, pr.grad]), ref_grad, **TOL)
    # our default (sequence log-ratios) differs from TRL's form unless every completion is one token long
    seq = ipo_loss(pairs["pc"], pairs["pr"], pairs["ref_c"], pairs["ref_r"], beta=beta).loss
    assert abs(seq.item() - ref_loss.item()) > 1e-3


def test_ipo_sequence_form_equals_trl_on_single_token_completions(trl_args, pairs):
    one = torch.ones_like(pairs["len_c"])
    ref_loss, _, _ = trl_dpo(trl_args["dpo"], "ipo", 0.3, **{**pairs, "len_c": one, "len_r": one})
    out = ipo_loss(pairs["pc"], pairs["pr"], pairs["ref_c"], pairs["ref_r"], beta=0.3)
    torch.testing.assert_close(out.loss, ref_loss, **TOL)


# ------------------------------------------------------------------------------------------ KTO

KTO_LABELS = {
    "mixed": [True, False, True, True, False, False, True, False],
    "mostly_desirable": [True, True, True, True, True, True, True, False],
    "all_desirable": [True] * 8,
    "all_undesirable": [False] * 8,
}


@pytest.mark.parametrize("labels", list(KTO_LABELS))
@pytest.mark.parametrize("beta, wd, wu", [(0.1, 1.0, 1.0), (1.0, 1.0, 1.0), (0.5, 1.33, 0.7)])
@pytest.mark.parametrize("kl_sign", [1.0, -1.0], ids=["z0>0", "z0_clamped"])
def test_kto_matches_trl(trl_args, labels, beta, wd, wu, kl_sign):
    gen = torch.Generator().manual_seed(1)
    b = 8
    p, ref = logps(gen, b), logps(gen, b)
    kl_ref = logps(gen, b)
    # mismatched-pair log-ratios of sign kl_sign on average: z0 > 0, or a negative mean clamped to 0
    kl_p = kl_ref + kl_sign * (0.5 + torch.rand(b, generator=gen, dtype=DT))
    lab = torch.tensor(KTO_LABELS[labels])
    lengths = torch.randint(1, 6, (b,), generator=gen)
    ref_loss, ref_grad, stub = trl_kto(trl_args["kto"], beta, wd, wu, p, ref, kl_p, kl_ref, lab, lengths)
    pp = p.clone().requires_grad_(True)
    out = kto_loss(pp, ref, kl_p, kl_ref, lab, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach().to(ref_loss.dtype), ref_loss, **TOL)
    torch.testing.assert_close(pp.grad, ref_grad.to(DT), **TOL)
    m = stub._metrics["train"]
    assert out.metrics["kto/z0"].item() == pytest.approx(m["kl"][-1], abs=1e-6)
    if kl_sign < 0:
        assert out.metrics["kto/z0"].item() == 0.0
    if lab.any():
        assert out.chosen_rewards.mean().item() == pytest.approx(m["rewards/chosen"][-1], abs=1e-6)
    if (~lab).any():
        assert out.rejected_rewards.mean().item() == pytest.approx(m["rewards/rejected"][-1], abs=1e-6)
