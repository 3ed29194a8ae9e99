"""The sentiment task's shifted prompt set (distribution shift, DPO paper section 6.3).

The review grammar's opening syntax ("the film was", "honestly this movie", "i loved the story") with other subject
nouns: words that the corpus uses only inside fixed phrases late in a review ("it was a clever *debut*", "a total
*waste* of *time*"), never as a review's subject, so a 2-4 word review prefix (an in-distribution prompt) never holds
one. The words are in the tokenizer's vocabulary (the corpus has them), so the shift is one of context, not of
unknown tokens. Built deterministically from the task's seed.
"""

from __future__ import annotations

import itertools
from typing import Iterable

import numpy as np

# nouns of the grammar's fixed phrases (NOUNS of "it was a <adj> <noun>", and the closers)
SHIFT_NOUNS = ("debut", "masterpiece", "experience", "mess", "disaster", "pleasure", "minute", "waste", "time")


def shifted_prompts(vocabulary: Iterable[str], n: int, seed: int, *, copulas: Iterable[str],
                    openers: Iterable[str], verbs: Iterable[str]) -> list[str]:
    """``n`` distinct prompts "<det> <noun> <copula>", "<opener> <det> <noun>" or "i <verb> the <noun>" with a
    noun of :data:`SHIFT_NOUNS`, in a seeded order; only prompts whose words are all in ``vocabulary``.
    Fewer than ``n`` where fewer exist (the caller checks)."""
    vocab = set(vocabulary)
    nouns = [w for w in SHIFT_NOUNS if w in vocab]
    cands = [f"{d} {w} {c}" for d, w, c in itertools.product(("the", "this"), nouns, copulas)]
    cands += [f"{o} {d} {w}" for o, d, w in itertools.product(openers, ("the", "this"), nouns)]
    cands += [f"i {v} the {w}" for v, w in itertools.product(verbs, nouns)]
    cands = [p for p in dict.fromkeys(cands) if all(x in vocab for x in p.split())]
    order = np.random.default_rng([seed, 18]).permutation(len(cands))
    return [cands[int(i)] for i in order[:n]]
