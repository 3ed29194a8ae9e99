"""The speed choices of alignbench/optim.py and models.fast_kernels change nothing but rounding."""

import copy

import pytest
import torch
from transformers.activations import GELUTanh, NewGELUActivation

from alignbench.models import fast_kernels, tiny_gpt2
from alignbench.optim import clip_gradients, make_optimizer


def _stock_gpt2(seed: int = 0):
    """tiny_gpt2 as transformers builds GPT-2 by default (gelu_new, the six-op formula)."""
    from transformers import GPT2LMHeadModel

    cfg = tiny_gpt2(50, n_positions=16, seed=seed).config
    cfg.activation_function = "gelu_new"
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


def _with_grads(scale: float, seed: int = 0) -> torch.nn.Module:
    model = tiny_gpt2(40, n_positions=8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = scale * torch.randn(p.shape, generator=g)
    return model


@pytest.mark.parametrize("max_norm", [1e9, 1.0, 0.01])
def test_clip_gradients_bit_identical_to_torch(max_norm):
    a, b = _with_grads(0.1), _with_grads(0.1)
    norm_a = clip_gradients(a.parameters(), max_norm)
    norm_b = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    assert torch.equal(norm_a, norm_b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
    if max_norm < float(norm_b):  # clipping did happen: the new norm is max_norm
        assert float(torch.nn.utils.get_total_norm([p.grad for p in a.parameters()])) == pytest.approx(max_norm, rel=1e-4)


def test_clip_gradients_reports_non_finite():
    model = _with_grads(1.0)
    next(model.parameters()).grad[0] = float("nan")
    assert not torch.isfinite(clip_gradients(model.parameters(), 1.0))
    assert clip_gradients([torch.nn.Parameter(torch.ones(2))], 1.0).item() == 0.0  # no gradients at all


def test_make_optimizer_fused_on_cpu_and_skips_frozen():
    model = tiny_gpt2(40, n_positions=8)
    model.transformer.wte.weight.requires_grad_(False)
    opt = make_optimizer(model.parameters(), 1e-3, 0.01)
    assert opt.defaults["fused"] is True
    params = [p for g in opt.param_groups for p in g["params"]]
    assert all(p.requires_grad for p in params) and len(params) == sum(p.requires_grad for p in model.parameters())


def test_fused_adamw_tracks_the_reference_adamw():
    """50 AdamW steps on the same gradient sequence: fused kernel vs torch's default (for-loop) AdamW.
    (Feeding the same gradients isolates the optimizer's arithmetic from the training dynamics.)"""
    a = tiny_gpt2(40, n_positions=8, seed=1)
    b = copy.deepcopy(a)
    opt_a = make_optimizer(a.parameters(), 3e-3, 0.01)
    opt_b = torch.optim.AdamW(b.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    with torch.no_grad():
        diff = max(float((pa - pb).abs().max()) for pa, pb in zip(a.parameters(), b.parameters()))
        start = tiny_gpt2(40, n_positions=8, seed=1).parameters()
        moved = min(float((pa - pc).abs().max()) for pa, pc in zip(a.parameters(), start))
    assert diff < 1e-6 and moved > 0.01  # every tensor moved by ~lr * steps; the two optimizers agree to 1e-6


def test_fast_kernels_same_function_as_gelu_new(tmp_path):
    stock = _stock_gpt2()
    fast = fast_kernels(copy.deepcopy(stock))
    assert any(isinstance(m, NewGELUActivation) for m in stock.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fast.modules())
    assert sum(isinstance(m, GELUTanh) for m in fast.modules()) == stock.config.n_layer
    assert fast.config.activation_function == "gelu_pytorch_tanh"
    ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = (stock(input_ids=ids).logits - fast(input_ids=ids).logits).abs().max()
    assert 0 <= float(d) < 1e-5
    # a saved copy reloads with the fused kernel (the config says so)
    from transformers import AutoModelForCausalLM

    fast.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert any(isinstance(m, GELUTanh) for m in again.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in again.modules())
