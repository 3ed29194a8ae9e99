"""Prefix-sharing packing: every distinct prefix of a batch's sequences goes through the model once.

The concatenated forward (``trainer.concat_forward``) runs ``prompt + chosen`` and ``prompt + rejected`` as
two padded rows, so every prompt token is computed twice and every row is padded to the longest
sequence of the batch. Packing builds the batch's *prefix tree* instead: each distinct prefix of its
sequences is one node, one position. A prompt shared by chosen and rejected is computed once, and so is
a prompt shared by several examples and the first tokens that two completions have in common; a
sequence that occurs twice costs nothing the second time. For one pair whose completions share no
first token the tree is the segment ``[prompt | chosen | rejected]``.

Layout. The sequences are sorted lexicographically; in that order each one adds the nodes its
predecessor does not have, which numbers the nodes in tree preorder (a node before its descendants, each
subtree contiguous). The nodes are cut into *segments*, one per first token, split further when a segment
would outgrow a row, and the segments are laid into rows about ``MIN_ROW_WIDTH`` wide (first-fit
decreasing). A 4D boolean attention mask lets a node attend to its ancestors and itself only, and its
position id is its depth, so a causal LM computes for every node exactly the hidden state that the
unpacked row computes at that position: the log-probs are the same up to float rounding (tested against
the concatenated forward, values and gradients), and so is the gradient, since a shared node collects
the gradient of every sequence through it. The log-softmax runs on the packed positions only.

The model must take ``position_ids`` and a custom 4D boolean ``attention_mask`` (transformers' causal LMs
do); ``trainer.PolicyForward`` checks this on a probe batch and falls back to the concatenated forward when
the two disagree. A model with dropout sees one dropout draw per shared prefix instead of one per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .data import TokenizedColumns
from .logprobs import log_softmax

PACK_IF_AT_MOST = 0.8  # pack a batch when it needs at most this share of the concatenated positions
# rows at least this wide, so that short segments share them: fewer, longer attention rows (on the synthetic bench
# workload, 8-44 slots per example, 64 measured 15% faster per step than rows as wide as the longest example)
MIN_ROW_WIDTH = 64
CHECK_TOLERANCE = 1e-3  # first-batch check: max |packed - concatenated| / max(1, |concatenated|), summed log-probs


@dataclass
class PackedBatch:
    """Packed rows of prefix-tree nodes.

    input_ids, position_ids: (R, W) int64; attention_mask: (R, 1, W, W) bool, True where a query may attend.
    source[col]: (B, T_col) flat index into the (R * W) packed positions of the node that predicts token t of
    ``col`` (0 where t is not a completion token); target[col]: (B, T_col) those tokens; weight[col]: (B, T_col)
    1.0 on the completion tokens that are scored.
    """

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor
    source: dict[str, Tensor]
    target: dict[str, Tensor]
    weight: dict[str, Tensor]


@dataclass
class PackPlan:
    """The batch's prefix tree and where its nodes go (numpy arrays on the CPU).

    Node n holds ``token[n]`` at depth ``depth[n]`` and goes to slot ``slot[n]`` (row * width + column);
    ``ancestors[n, d]`` is the slot of its prefix node at depth d <= depth[n] (itself at its own depth), -1
    deeper. ``source`` and ``scored`` are in the columns' stacked order (M = K * B sequences, padded to T).
    """

    token: np.ndarray  # (N,)
    depth: np.ndarray  # (N,)
    slot: np.ndarray  # (N,)
    ancestors: np.ndarray  # (N, T)
    rows: int
    width: int
    source: np.ndarray  # (M, T): slot of the node that predicts each scored token, else 0
    scored: np.ndarray  # (M, T): the completion tokens that are scored

    @property
    def positions(self) -> int:
        return self.rows * self.width

    @property
    def nodes(self) -> int:
        return len(self.token)


def _sequences(batch: TokenizedColumns, cols: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The columns' right-padded sequences stacked on the batch axis: (M, T) token ids, (M,) lengths and
    (M, T) completion masks."""
    t = max(batch.input_ids[c].shape[1] for c in cols)
    ids = np.zeros((len(cols) * len(batch), t), dtype=np.int64)
    completion = np.zeros((len(cols) * len(batch), t), dtype=bool)
    for k, c in enumerate(cols):
        rows = slice(k * len(batch), (k + 1) * len(batch))
        ids[rows, :batch.input_ids[c].shape[1]] = batch.input_ids[c].cpu().numpy()
        completion[rows, :batch.input_ids[c].shape[1]] = batch.completion_mask[c].cpu().numpy()
    return ids, np.concatenate([batch.row_lengths[c].cpu().numpy() for c in cols]), completion


def plan_packing(batch: TokenizedColumns, cols: list[str]) -> PackPlan:
    """Build the prefix tree of the columns' sequences and lay its segments into rows (module docstring)."""
    ids, length, completion = _sequences(batch, cols)
    m, t = ids.shape
    # rows hold at least one example's tree: its longest prompt, then each column's completion
    completed = completion.sum(1).reshape(len(cols), -1)
    cap = max(MIN_ROW_WIDTH, int(((length.reshape(len(cols), -1) - completed).max(0) + completed.sum(0)).max()))
    depth = np.arange(t)
    valid = depth < length[:, None]
    key = np.where(valid, ids + 1, 0)  # 0 sorts a sequence before its extensions
    order = np.lexsort(key.T[::-1])  # lexicographic: column 0 first
    key, valid, length = key[order], valid[order], length[order]
    # sorted sequence i makes a new node at depth d iff its prefix [0..d] differs from that of sequence i - 1
    differs = np.ones_like(valid)
    differs[1:] = key[1:] != key[:-1]
    new = np.logical_or.accumulate(differs, axis=1) & valid

    # segments of consecutive sequences: a new first token starts one, and so does a sequence whose new nodes
    # would make the segment wider than a row; that sequence then repeats its whole prefix in the new segment
    fresh = new.sum(1)
    seg_of_seq = np.maximum(np.cumsum(new[:, 0]) - 1, 0)
    sizes = np.bincount(seg_of_seq, weights=fresh).astype(np.int64).tolist() if m else []
    if max(sizes, default=0) > cap:  # rare (many sequences behind one first token): cut greedily
        seg_of_seq, sizes = np.zeros(m, dtype=np.int64), []
        for i in range(m):
            if not sizes or new[i, 0] or sizes[-1] + fresh[i] > cap:
                if sizes and not new[i, 0]:
                    new[i] = valid[i]
                    fresh[i] = length[i]
                sizes.append(0)
            sizes[-1] += int(fresh[i])
            seg_of_seq[i] = len(sizes) - 1

    # node ids in row-major order of the new flags (= tree preorder); a prefix that is not new belongs to the
    # node that the last sequence with a new node at that depth made
    made = np.cumsum(new.ravel()).reshape(m, t) - 1
    last = np.maximum.accumulate(np.where(new, np.arange(m)[:, None], -1), axis=0)
    node = np.where(valid, made[np.maximum(last, 0), depth], -1)
    seq_of_node, depth_of_node = np.nonzero(new)
    segment = seg_of_seq[seq_of_node]
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    row, start, rows, width = _place(sizes)
    base = np.asarray(row) * width + np.asarray(start)
    slot = base[segment] + np.arange(len(segment)) - first[segment]
    # a node's maker (the sequence that made it) runs through all of its ancestors
    ancestors = np.where(depth <= depth_of_node[:, None], slot[np.maximum(node[seq_of_node], 0)], -1)
    # token t of a sequence is predicted by the node of its prefix of length t (the slot of node[., t - 1]);
    # the first token has no predictor (the concatenated forward does not score it either)
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m)
    prefix = node[rank]  # (M, T) in stacked (column after column) order
    scored = completion.copy()
    scored[:, 0] = False
    source = np.zeros_like(prefix)
    source[:, 1:] = np.where(scored[:, 1:], slot[np.maximum(prefix[:, :-1], 0)], 0)
    return PackPlan(key[new] - 1, depth_of_node, slot, ancestors, rows, width, source, scored)


def _place(sizes: list[int]) -> tuple[list[int], list[int], int, int]:
    """Rows for segments of ``sizes`` slots: (row of each, its first slot, rows, width), as few positions as found.

    Rows are at least as wide as the largest segment. When there are slots enough, they are about
    ``MIN_ROW_WIDTH`` wide, evened out so that the last row is not mostly padding; since first-fit can need
    one row more than the slots do, a width 10% larger and the largest segment's width are tried too.
    """
    total, longest = sum(sizes), max(sizes)
    even = -(-total // -(-total // MIN_ROW_WIDTH))  # total / (rows that MIN_ROW_WIDTH-wide rows would take)
    best = None
    for width in sorted({max(longest, even), max(longest, -(-11 * even // 10)), longest}):
        row, start, rows = _first_fit(sizes, width)
        if best is None or rows * width <= best[2] * best[3]:  # ties: the wider, fewer rows
            best = (row, start, rows, width)
    return best


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
    """The packing plan of this batch if it needs at most ``PACK_IF_AT_MOST`` of the concatenated positions, else
    None (too few positions saved to pay for the masked attention and the gathers).

    One pair per example with 1-token prompts and 4-token completions that share no first token needs 9 of
    10 positions, and measured no faster; prompts as long as their completions need about half.
    """
    plan = plan_packing(batch, cols)
    concatenated = len(cols) * len(batch) * max(batch.input_ids[c].shape[1] for c in cols)
    return plan if plan.positions <= PACK_IF_AT_MOST * concatenated else None


def pack_prefix_tree(batch: TokenizedColumns, cols: list[str], plan: PackPlan | None = None) -> PackedBatch:
    """The model inputs and the log-prob gathers of ``plan`` (built here when not given)."""
    plan = plan or plan_packing(batch, cols)
    n, w = plan.positions, plan.width
    ids, pos = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    ids[plan.slot], pos[plan.slot] = plan.token, plan.depth

    # a node attends to the nodes on its own path up to its depth (its ancestors and itself); a padding slot
    # attends to itself, so that no query row is empty
    of, at = np.nonzero(plan.ancestors >= 0)  # node `of` sees its prefix node at depth `at`
    q, k = plan.slot[of], plan.ancestors[of, at]
    mask = np.zeros(plan.rows * w * w, dtype=bool)  # flat (row, query column, key column): q and k share a row
    mask[q * w + k % w] = True
    every = np.arange(n)
    mask[every * w + every % w] = True

    device = batch.input_ids[cols[0]].device
    source_all = torch.from_numpy(plan.source).to(device)
    weight_all = torch.from_numpy(plan.scored.astype(np.float32)).to(device)
    source, target, weight = {}, {}, {}
    for k_col, c in enumerate(cols):
        rows, t = slice(k_col * len(batch), (k_col + 1) * len(batch)), batch.input_ids[c].shape[1]
        source[c], target[c], weight[c] = source_all[rows, :t], batch.input_ids[c], weight_all[rows, :t]
    shape = (plan.rows, w)
    return PackedBatch(torch.from_numpy(ids).view(shape).to(device), torch.from_numpy(pos).view(shape).to(device),
                       torch.from_numpy(mask).view(plan.rows, 1, w, w).to(device), source, target, weight)


def packed_forward(model: nn.Module, batch: TokenizedColumns, cols: list[str] | None = None,
                   plan: PackPlan | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Summed completion log-probs per column from ONE forward over packed rows (same result as ``concat_forward``).

    Returns (logps[col] (B,), lengths[col] (B,)).
    """
    cols = list(batch.input_ids) if cols is None else cols
    packed = pack_prefix_tree(batch, cols, plan)
    logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                   position_ids=packed.position_ids, use_cache=False).logits
    logp = log_softmax(logits.flatten(0, 1))  # the positions of the packed rows only
    logps, lengths = {}, {}
    for col in cols:
        per_token = logp[packed.source[col], packed.target[col]] * packed.weight[col]
        logps[col], lengths[col] = per_token.sum(-1), packed.weight[col].sum(-1)
    return logps, lengths
