"""Numerics of the training loop: gradient accumulation equals a larger batch; bf16 within its precision."""

from __future__ import annotations

import pytest
import torch

from alignbench import trainer
from alignbench.cli import main

from .test_sweep import sweep_args

B, K = 8, 4  # micro-batch size, accumulation steps


def first_step_gradient(tmp_path, cache_dir, monkeypatch, method: str, batch_size: int, grad_accum: int):
    """The accumulated gradient of step 1 (read where the trainer clips it), with the policy in float64."""
    grads = []
    clip, prepare = trainer.clip_gradients, trainer.prepare_policy

    def spy(params, max_norm):
        params = list(params)
        if not grads:
            grads.append([p.grad.detach().clone() for p in params])
        return clip(params, max_norm)

    monkeypatch.setattr(trainer, "clip_gradients", spy)
    monkeypatch.setattr(trainer, "prepare_policy", lambda model, tc: prepare(model, tc).double())
    out = tmp_path / f"{method}-{batch_size}x{grad_accum}"
    extra = ["--train-arg", "steps=1", "--train-arg", f"batch_size={batch_size}",
             "--train-arg", f"grad_accum={grad_accum}", "--train-arg", "eval_every=1"]
    assert main(sweep_args(out, cache_dir, methods=method, betas="0.5", extra=extra)) == 0
    (g,) = grads
    assert all(t.dtype == torch.float64 for t in g)
    return g


@pytest.mark.parametrize("method", ["dpo", "ipo"])
def test_grad_accum_equals_a_k_times_larger_batch(tmp_path, cache_dir, monkeypatch, method):
    """grad_accum = K micro-batches of B rows == one batch of K * B rows (float64, to 1e-9).

    The batch stream draws the same permutation for any batch size, so the K micro-batches of step 1 are
    exactly the rows of the big batch; each micro-batch's mean loss is divided by K, so the accumulated
    gradient is the big batch's mean-loss gradient. (KTO is left out on purpose: its z0 is a statistic of
    each micro-batch, so accumulation is not a larger batch for it, as in TRL.)"""
    big = first_step_gradient(tmp_path, cache_dir, monkeypatch, method, B * K, 1)
    accumulated = first_step_gradient(tmp_path, cache_dir, monkeypatch, method, B, K)
    first_only = first_step_gradient(tmp_path, cache_dir, monkeypatch, method, B, 1)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in big]))
    assert norm > 1e-3
    for a, b in zip(accumulated, big):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(norm))
    # the check can fail: the first micro-batch alone is another gradient
    diff = torch.linalg.vector_norm(torch.stack([(a - b).norm() for a, b in zip(first_only, big)]))
    assert diff > 1e-2 * norm


BF16_UNIT_ROUNDOFF = 2.0 ** -8  # bf16 keeps 8 significant bits (7 stored + 1 implicit): |fl(x) - x| <= 2^-8 |x|


def test_bf16_autocast_log_probs_within_bf16_precision(tiny_exact_env):
    """Sequence log-probs of the exact task's policy under torch.autocast(bf16) vs float32.

    Tolerance from bf16's precision: autocast rounds the two operands of each matmul to bf16 (relative error
    2^-8 each) and its output to bf16 (2^-8 again), so each of the M matmuls on the path to the logits adds at
    most ~3 * 2^-8 relative error; first-order propagation through M matmuls gives |d logit| <= 3 M 2^-8 max|logit|.
    A token log-prob, logit_y - logsumexp(logits), moves by at most 2 max|d logit|; a sequence of L tokens by
    L times that. M = 4 per layer (attention in/out, MLP in/out) + 1 (LM head)."""
    env = tiny_exact_env
    policy = env.make_policy().eval()
    cfg = policy.config
    ids = torch.cat([env.prompt_ids.repeat_interleave(len(env.response_ids))[:, None],
                     env.response_ids.repeat(len(env.prompt_ids), 1)], 1)
    with torch.no_grad():
        logits32 = policy(input_ids=ids).logits.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits16 = policy(input_ids=ids).logits.float()

    def seq_logps(logits):
        lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return lp.sum(-1)

    allowed = torch.tensor(sorted(cfg.allowed_token_ids))
    scale = float(logits32[..., allowed].abs().max())  # the masked tokens' logits are a constant, not computed
    matmuls = 4 * cfg.n_layer + 1
    length = ids.shape[1] - 1
    tol = length * 2 * 3 * matmuls * BF16_UNIT_ROUNDOFF * scale
    diff = (seq_logps(logits16) - seq_logps(logits32)).abs()
    assert float(diff.max()) <= tol, (float(diff.max()), tol)
    # it really ran in bf16: the differences are of bf16's order, far above float32 rounding (2^-24)
    assert float(diff.max()) > 2.0 ** -12 * scale
