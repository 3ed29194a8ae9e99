"""Shared-prompt packing: the completions of one prompt (chosen and rejected) behind ONE copy of the prompt.

The concatenated forward (``trainer.concat_forward``) runs ``prompt + chosen`` and ``prompt + rejected`` as
two padded rows, so every prompt token is computed twice and every row is padded to the longest
sequence of the batch. Packing writes each example once, as one segment::

    [ prompt | chosen completion | rejected completion ]

and lays the segments into rows as wide as the longest segment, several short ones to a row (first-fit
decreasing), with a 4D attention mask under which a completion token sees its own prompt and the earlier
tokens of its own completion only (never the other completion, never another example), and position ids
that restart each completion where the prompt ends. A causal LM then computes, for every completion
token, exactly the hidden state it computes in the unpacked row, so the log-probs are the same up to float
rounding (tested against the concatenated forward, values and gradients). What is saved is the duplicate
prompt and most of the padding: on prompts as long as their completions, about half the positions.

The model must take ``position_ids`` and a custom 4D boolean ``attention_mask`` (transformers' causal LMs
do); ``trainer.train_offline`` checks this on its first batch and falls back to the concatenated
forward when the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .data import TokenizedColumns
from .logprobs import token_logps

PACK_IF_AT_MOST = 0.8  # pack a batch when it needs at most this share of the concatenated positions
# rows at least this wide, so that short examples share them: fewer, longer attention rows (on the synthetic bench
# workload, 8-44 slots per example, 64 measured 15% faster per step than rows as wide as the longest example)
MIN_ROW_WIDTH = 64
CHECK_TOLERANCE = 1e-3  # first-batch check: max |packed - concatenated| / max(1, |concatenated|), summed log-probs


@dataclass
class PackedBatch:
    """Packed rows: each example is one segment ``[prompt | completions]``; short examples share a row.

    input_ids, position_ids: (R, T) int64; attention_mask: (R, 1, T, T) bool, True where a query may attend.
    source[col]: (B, T_col) flat index into the (R * T) positions of the logits that predict token t of ``col``
    (0 where not a completion token); target[col]: (B, T_col) those tokens; weight[col]: (B, T_col) 1.0 on
    completion tokens.
    """

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor
    source: dict[str, Tensor]
    target: dict[str, Tensor]
    weight: dict[str, Tensor]


@dataclass
class PackPlan:
    """Where each example goes: row[i], start[i] (its first slot), rows x width positions in all."""

    prompt: Tensor  # (B,) prompt tokens
    completion: Tensor  # (K, B) completion tokens per column
    row: list[int]
    start: list[int]
    rows: int
    width: int

    @property
    def positions(self) -> int:
        return self.rows * self.width


def prompts_shared(tokens: TokenizedColumns, cols: list[str]) -> bool:
    """True when every row has the same prompt tokens in all columns ``cols`` (and there are at least two)."""
    if len(cols) < 2:
        return False
    first = cols[0]
    plen = tokens.row_lengths[first] - tokens.completion_mask[first].sum(-1)
    for col in cols[1:]:
        if not torch.equal(plen, tokens.row_lengths[col] - tokens.completion_mask[col].sum(-1)):
            return False
        t = min(tokens.input_ids[first].shape[1], tokens.input_ids[col].shape[1])
        in_prompt = torch.arange(t).unsqueeze(0) < plen.unsqueeze(1)
        if not torch.equal(tokens.input_ids[first][:, :t] * in_prompt, tokens.input_ids[col][:, :t] * in_prompt):
            return False
    return True


def _lengths(batch: TokenizedColumns, cols: list[str]) -> tuple[Tensor, Tensor]:
    """(B,) prompt tokens and (K, B) completion tokens per column of each example."""
    completion = torch.stack([batch.completion_mask[c].sum(-1) for c in cols])
    return batch.attention_mask[cols[0]].sum(-1) - completion[0], completion


def plan_packing(batch: TokenizedColumns, cols: list[str],
                 lengths: tuple[Tensor, Tensor] | None = None) -> PackPlan:
    """Lay the examples into rows, first-fit by decreasing length, as few positions (rows x width) as found.

    Rows are at least as wide as the longest example. When there are tokens enough, they are about
    ``MIN_ROW_WIDTH`` wide, evened out so that the last row is not mostly padding; since first-fit can need
    one row more than the tokens do, a width 10% larger and the longest example's width are tried too.
    """
    prompt, completion = lengths or _lengths(batch, cols)
    need = (prompt + completion.sum(0)).tolist()
    total, longest = sum(need), max(need)
    even = -(-total // -(-total // MIN_ROW_WIDTH))  # total / (rows that MIN_ROW_WIDTH-wide rows would take)
    best = None
    for width in sorted({max(longest, even), max(longest, -(-11 * even // 10)), longest}):
        row, start, rows = _first_fit(need, width)
        if best is None or rows * width <= best[2] * best[3]:  # ties: the wider, fewer rows
            best = (row, start, rows, width)
    return PackPlan(prompt, completion, *best)


def _first_fit(need: list[int], width: int) -> tuple[list[int], list[int], int]:
    """First-fit decreasing: (row of each item, its first slot, rows used); ties keep the input order."""
    free: list[int] = []  # free slots left in each row
    row, start = [0] * len(need), [0] * len(need)
    for i in sorted(range(len(need)), key=lambda j: (-need[j], j)):
        r = next((r for r, f in enumerate(free) if f >= need[i]), len(free))
        if r == len(free):
            free.append(width)
        row[i], start[i] = r, width - free[r]
        free[r] -= need[i]
    return row, start, len(free)


def worth_packing(batch: TokenizedColumns, cols: list[str]) -> PackPlan | None:
    """The packing plan of this batch if it saves enough positions to pay for its masked attention
    (``PACK_IF_AT_MOST``), else None.

    On the exact task (1-token prompts, 4-token completions) packing needs at least 9 of 10 positions and
    measured no faster, so it is left unpacked; on prompts as long as their completions it needs about 1/2.
    """
    budget = PACK_IF_AT_MOST * len(cols) * len(batch) * max(batch.input_ids[c].shape[1] for c in cols)
    prompt, completion = lengths = _lengths(batch, cols)
    # cheap bound first: the packed batch holds at least every real token once
    if int(prompt.sum() + completion.sum()) > budget:
        return None
    plan = plan_packing(batch, cols, lengths)
    return plan if plan.positions <= budget else None


def pack_shared_prompt(batch: TokenizedColumns, cols: list[str], plan: PackPlan | None = None) -> PackedBatch:
    """Lay out ``[prompt | cols[0] completion | cols[1] completion | ...]`` per example (module docstring).

    The rows' prompts must be identical across ``cols`` (``prompts_shared``); the prompt is read from ``cols[0]``.
    """
    plan = plan or plan_packing(batch, cols)
    prompt = plan.prompt.unsqueeze(1)
    device, k, n = prompt.device, len(cols), plan.positions
    base = (torch.tensor(plan.row, device=device) * plan.width + torch.tensor(plan.start, device=device)).unsqueeze(1)
    # flat buffers over all rows x width slots, plus one spare slot (index n) that takes the writes of padding
    ids = torch.zeros(n + 1, dtype=torch.long, device=device)
    pos = torch.zeros(n + 1, dtype=torch.long, device=device)
    owner = torch.full((n + 1,), -1, dtype=torch.long, device=device)  # example index; -1 = padding
    part = torch.full((n + 1,), k, dtype=torch.long, device=device)  # -1 = prompt, i = completion of cols[i]
    example = torch.arange(prompt.shape[0], device=device).unsqueeze(1)

    def write(dest: Tensor, tokens: Tensor, positions: Tensor, which: int) -> None:
        ids.scatter_(0, dest.flatten(), tokens.flatten())
        pos.scatter_(0, dest.flatten(), positions.flatten())  # the position the token has in its own sequence
        owner.scatter_(0, dest.flatten(), example.expand_as(dest).flatten())
        part.scatter_(0, dest.flatten(), torch.full_like(dest, which).flatten())

    first = batch.input_ids[cols[0]]
    steps = torch.arange(first.shape[1], device=device).expand_as(first)
    write(torch.where(steps < prompt, base + steps, n), first, steps, -1)

    source, target, weight = {}, {}, {}
    offset = base + prompt  # where the next completion of each example starts
    for i, col in enumerate(cols):
        col_ids, mask = batch.input_ids[col], batch.completion_mask[col].bool()
        steps = torch.arange(col_ids.shape[1], device=device).expand_as(col_ids)
        dest = torch.where(mask, offset + steps - prompt, n)
        write(dest, col_ids, steps, i)
        # token t is predicted from the token before it in its own sequence: the previous slot, except for the
        # first completion token, which is predicted from the last prompt token
        prev = torch.where(steps == prompt, base + prompt - 1, dest - 1)
        source[col] = torch.where(mask, prev, 0)
        target[col], weight[col] = col_ids, mask.float()
        offset = offset + plan.completion[i].unsqueeze(1)

    shape = (plan.rows, plan.width)
    ids, pos, owner, part = (x[:n].view(shape) for x in (ids, pos, owner, part))
    q = torch.arange(plan.width, device=device)
    causal = q.unsqueeze(1) >= q.unsqueeze(0)  # (T, T): key slot <= query slot
    same = owner.unsqueeze(2) == owner.unsqueeze(1)  # the same example (or both padding)
    visible = (part.unsqueeze(2) == part.unsqueeze(1)) | (part.unsqueeze(1) == -1)  # its own part, or the prompt
    return PackedBatch(ids, pos, (causal & same & visible).unsqueeze(1), source, target, weight)


def packed_forward(model: nn.Module, batch: TokenizedColumns, cols: list[str] | None = None,
                   plan: PackPlan | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Summed completion log-probs per column from ONE forward over packed rows (same result as ``concat_forward``).

    Returns (logps[col] (B,), lengths[col] (B,)). Only the positions that predict a completion token go
    through the log-softmax.
    """
    cols = list(batch.input_ids) if cols is None else cols
    packed = pack_shared_prompt(batch, cols, plan)
    logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                   position_ids=packed.position_ids, use_cache=False).logits.flatten(0, 1)
    logps, lengths = {}, {}
    for col in cols:
        per_token = token_logps(logits[packed.source[col]], packed.target[col]) * packed.weight[col]
        logps[col], lengths[col] = per_token.sum(-1), packed.weight[col].sum(-1)
    return logps, lengths
