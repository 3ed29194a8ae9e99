"""Optimizer, gradient clipping and learning-rate schedule: the one place every training loop gets them.

Every loop (offline methods, PPO's policy and critic, the reward model, the reference SFT) uses AdamW
with global-norm gradient clipping. Two choices here are about speed only:

* AdamW runs torch's *fused* kernel when every parameter is a floating tensor on a CPU or CUDA device
  (one kernel per parameter instead of about ten small ones; also the default optimizer of
  transformers >= 4.55 with torch >= 2.8, i.e. of TRL). It computes the same update up to float
  rounding (``tests/test_optim.py``: 1e-6 after 50 steps on the same gradients of a tiny GPT-2).
* :func:`clip_gradients` computes the global norm exactly as ``torch.nn.utils.clip_grad_norm_`` does,
  but on the CPU skips the in-place rescale when nothing is clipped (the scale would be exactly 1.0,
  so the result is bit-identical; the skipped multiply is about half of the cost on the tiny models).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def make_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over ``params`` (only those that require grad), fused where torch supports it."""
    params = [p for p in params if p.requires_grad]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak lr, then constant (the DPO reference code's schedule)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))


@torch.no_grad()
def clip_gradients(params: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Scale the gradients in place so that their global L2 norm is at most ``max_norm``; return the norm
    before clipping (a 0-d tensor, non-finite if any gradient is). Same arithmetic as
    ``torch.nn.utils.clip_grad_norm_``: norm = ||(||g_1||, ..., ||g_n||)||, scale = min(1, max_norm / (norm + 1e-6)).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # NaN when the norm is NaN: propagates, as in torch
    # on the CPU the comparison costs no device sync: skip the rescale when it would multiply by exactly 1
    if grads[0].device.type == "cpu" and bool(scale == 1.0):
        return norm
    torch._foreach_mul_(grads, scale)
    return norm
