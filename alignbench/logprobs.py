"""Per-token log-probabilities: the one place they are computed (policy, reference, PPO, evaluation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(labels) under logits.

    logits: (B, T, V) next-token logits aligned with labels (already shifted); labels: (B, T) int64.
    Returns (B, T). Uses log_softmax + gather, which is exact and memory-light for small vocabularies.
    """
    return torch.gather(log_softmax(logits), 2, labels.unsqueeze(-1)).squeeze(-1)


def log_softmax(logits: Tensor) -> Tensor:
    """log_softmax over the last axis in at least float32 (bf16/fp16 logits are upcast, float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


@dataclass
class SequenceLogps:
    """sum: (B,) summed completion log-probs; count: (B,) completion tokens; tokens: (B, T-1) per token."""

    sum: Tensor
    count: Tensor
    tokens: Tensor


def sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, temperature: float = 1.0
) -> SequenceLogps:
    """Log-probability of the completion part of each sequence.

    input_ids, attention_mask, completion_mask: (B, T); completion_mask is 1 on completion tokens.
    Sequences are right-padded, so position ids are the default 0..T-1 for real tokens.
    Token t is predicted from position t-1, hence the shift by one. With ``temperature`` != 1 (or 0,
    which means greedy and scores at 1) the logits are divided by it: the distribution samples came from.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    if temperature not in (0, 1.0):
        logits = logits / temperature
    logps = token_logps(logits[:, :-1], input_ids[:, 1:])
    mask = completion_mask[:, 1:].to(logps.dtype)
    per_token = logps * mask
    return SequenceLogps(sum=per_token.sum(-1), count=mask.sum(-1), tokens=per_token)
