"""Sampling completions from a causal LM with the KV cache (``model.generate``): rollouts and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .api import GenerationSpec


@dataclass
class Samples:
    """Sampled completions, right-aligned after left-padded prompts.

    input_ids:       (B, P + C) prompt (left-padded to P) followed by completion tokens (right-padded).
    attention_mask:  (B, P + C) 1 on real tokens.
    completion_mask: (B, P + C) 1 on completion tokens up to and including the end token.
    completions:     (B, C) completion tokens only (pad after the end token).
    texts:           decoded completions (special tokens dropped).
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    completions: Tensor
    texts: list[str]

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)

    def right_padded(self, pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """(input_ids, attention_mask, completion_mask) re-packed with real tokens first (see right_pad)."""
        return right_pad(self.input_ids, self.attention_mask, self.completion_mask, pad_token_id)


def right_pad(input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor,
              pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Re-pack left-padded prompt + completion rows as right-padded rows, trimmed to the longest one.

    :func:`~alignbench.logprobs.sequence_logps` assumes right padding (default position ids), while
    sampled rows have left-padded prompts; a stable sort moves each row's real tokens to the front
    in order. All (B, T) -> (B, T') with T' the longest real row.
    """
    am = attention_mask.bool()
    t = int(am.sum(-1).max()) if am.shape[0] else 0
    order = torch.sort((~am).long(), dim=-1, stable=True).indices[:, :t]
    attn = torch.gather(am.long(), 1, order)
    ids = torch.where(attn.bool(), torch.gather(input_ids, 1, order), torch.full_like(attn, pad_token_id))
    comp = torch.gather(completion_mask.long(), 1, order) * attn
    return ids, attn, comp


def encode_prompts(tokenizer, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask (left padding so that generation continues every row at the end)."""
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    p = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), p), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), p), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, p - len(r):] = torch.tensor(r)
            mask[i, p - len(r):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample(model: nn.Module, tokenizer, prompts: list[str], spec: GenerationSpec, *,
           temperature: float | None = None, generator_seed: int | None = None,
           max_batch: int = 512) -> Samples:
    """Sample one completion per prompt (repeat prompts for several), with the KV cache.

    On a fixed-length task every completion has exactly ``spec.max_new_tokens`` tokens; otherwise
    generation stops at ``spec.eos_token_id`` (kept as part of the completion) or at the limit.
    """
    device = next(model.parameters()).device
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    t = spec.temperature if temperature is None else temperature
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(prompts), max_batch):
        chunk = prompts[start:start + max_batch]
        ids, mask = encode_prompts(tokenizer, chunk, device)
        kwargs = dict(max_new_tokens=spec.max_new_tokens, pad_token_id=spec.pad_token_id,
                      use_cache=True, top_k=0, top_p=1.0)
        if t > 0:
            kwargs.update(do_sample=True, temperature=t)
        else:
            kwargs.update(do_sample=False)
        if spec.fixed_length:
            kwargs.update(min_new_tokens=spec.max_new_tokens, eos_token_id=None)
        else:
            kwargs.update(eos_token_id=spec.eos_token_id)
        seq = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        outs.append((ids, mask, seq[:, ids.shape[1]:]))
    if was_training:
        model.train()
    # join chunks: pad prompt parts on the left and completion parts on the right to common widths
    p = max(o[0].shape[1] for o in outs)
    c = max(o[2].shape[1] for o in outs)
    pad = spec.pad_token_id
    input_ids, attn, cmask, comps = [], [], [], []
    for ids, mask, comp in outs:
        lp, lc = p - ids.shape[1], c - comp.shape[1]
        ids = torch.nn.functional.pad(ids, (lp, 0), value=pad)
        mask = torch.nn.functional.pad(mask, (lp, 0), value=0)
        comp = torch.nn.functional.pad(comp, (0, lc), value=pad)
        cm = completion_mask_from_tokens(comp, spec)
        comp = torch.where(cm.bool(), comp, torch.full_like(comp, pad))
        input_ids.append(torch.cat([ids, comp], 1))
        attn.append(torch.cat([mask, cm], 1))
        cmask.append(torch.cat([torch.zeros_like(mask), cm], 1))
        comps.append(comp)
    comps_t = torch.cat(comps)
    cm_all = torch.cat(cmask)[:, p:]
    texts = tokenizer.batch_decode([row[m.bool()].tolist() for row, m in zip(comps_t, cm_all)], skip_special_tokens=True)
    return Samples(torch.cat(input_ids), torch.cat(attn), torch.cat(cmask), comps_t, texts)


def completion_mask_from_tokens(comp: Tensor, spec: GenerationSpec) -> Tensor:
    """1 on tokens up to and including the first end token (all tokens on a fixed-length task)."""
    if spec.fixed_length or spec.eos_token_id is None:
        return torch.ones_like(comp)
    is_eos = comp == spec.eos_token_id
    # tokens strictly after the first eos are padding
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after).long()
