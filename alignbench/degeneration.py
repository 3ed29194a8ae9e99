"""Degeneration of sampled text: repetition, diversity, length and fluency under the reference.

Pure functions over token-id sequences grouped by prompt, ``tokens[p][j]`` = the token ids of the
j-th sample for prompt p (the end token and padding excluded). Every metric is computed on the samples
an evaluation has already drawn (:meth:`alignbench.evaluation.SampledTaskEnv.evaluate`), on tokens,
as in the papers that define them:

* ``degen/rep2`` -- seq-rep-n of Welleck et al. 2019, "Neural Text Generation with Unlikelihood
  Training" (ICLR 2020), Sec. 5: within one completion,
  ``seq-rep-n = 1 - |unique n-grams| / |n-grams|`` (n = :data:`REP_N` = 2; one repeated word
  "a a a a" gives 1 - 1/3 = 2/3, no repeated bigram gives 0). A completion with no n-gram (fewer than
  n tokens) has no value and is left out; each prompt's value is the mean over its samples.
* ``degen/distinct1``, ``degen/distinct2`` -- distinct-n of Li et al. 2016, "A Diversity-Promoting
  Objective Function for Neural Conversation Models" (NAACL), Sec. 4.3: the number of distinct
  n-grams divided by the total number of n-grams, over **all** samples of the evaluation (a corpus
  statistic). Its standard error is the delete-one-prompt jackknife (Efron & Stein 1981):
  ``SE^2 = (P-1)/P * sum_p (theta_(-p) - mean theta_(-))^2``, prompts as the unit like every other
  sampled metric.
* ``degen/distinct1_within``, ``degen/distinct2_within`` -- the same ratio within each prompt's own n
  samples (how different the samples for one prompt are), averaged over prompts with the usual SE.
* ``policy/length`` -- mean completion length in tokens (the end token included), as evaluate logs it.
* ``degen/ref_logp_per_token`` -- the reference model's mean per-token log-likelihood of a sample,
  ``log pi_ref(y | x) / |y|`` (|y| counts the end token), averaged over samples and then prompts: a
  fluency proxy (cf. the "perplexity under a reference LM" of Holtzman et al. 2020, "The Curious Case
  of Neural Text Degeneration"). At a temperature T != 1 it is under the temperature-scaled reference,
  like the KL.

Distinct-n depends on the number of samples pooled (fewer samples, fewer repeats across them), so it
compares evaluations of the same size: ``evaluate`` pools ``n_eval_samples`` per prompt; ``evaluate_samples``
(e.g. best-of-N, one kept sample per prompt) pools what it is given, and its reference baseline uses
the same number of the reference's samples per prompt.

No well-kept library computes seq-rep-n or distinct-n on token ids (nltk and torchmetrics provide
n-gram iteration or BLEU, not these ratios), so they are the few lines below. Reference baselines of
every metric (on the reference's cached samples for the same prompts) are logged under
:func:`reference_name`, e.g. ``reference/rep2``.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import chain
from typing import Sequence

import numpy as np

REP_N = 2
REP = f"degen/rep{REP_N}"
DISTINCT1 = "degen/distinct1"
DISTINCT2 = "degen/distinct2"
DISTINCT1_WITHIN = "degen/distinct1_within"
DISTINCT2_WITHIN = "degen/distinct2_within"
LENGTH = "policy/length"
REF_LOGP = "degen/ref_logp_per_token"
METRICS = (REP, DISTINCT1, DISTINCT2, DISTINCT1_WITHIN, DISTINCT2_WITHIN, LENGTH, REF_LOGP)
# the metrics shown in the report's figure and diagnostics column, with their short labels
SHOWN = {REP: f"rep-{REP_N}", DISTINCT2: "distinct-2", REF_LOGP: "log p_ref/token", LENGTH: "length"}

Tokens = Sequence[int]
Grouped = Sequence[Sequence[Tokens]]  # [prompt][sample] -> token ids


def reference_name(metric: str) -> str:
    """Name of the reference's baseline of ``metric``: ``degen/rep2`` -> ``reference/rep2``."""
    return "reference/" + metric.rsplit("/", 1)[-1]


def ngrams(tokens: Tokens, n: int) -> list[tuple[int, ...]]:
    """The n-grams of one sequence, in order (len(tokens) - n + 1 of them, none if shorter)."""
    t = list(tokens)
    return list(zip(*(t[i:] for i in range(n))))


def seq_rep(tokens: Tokens, n: int = REP_N) -> float:
    """seq-rep-n = 1 - |unique n-grams| / |n-grams| of one completion (Welleck et al. 2019, Sec. 5);
    NaN when it has no n-gram."""
    g = ngrams(tokens, n)
    return 1.0 - len(set(g)) / len(g) if g else float("nan")


def _counts(samples: Sequence[Tokens], n: int) -> Counter:
    """n-gram counts over samples (unigrams keyed by the token itself)."""
    if n == 1:
        return Counter(chain.from_iterable(samples))
    return Counter(chain.from_iterable(ngrams(s, n) for s in samples))


def _ratio(c: Counter) -> float:
    total = sum(c.values())
    return len(c) / total if total else float("nan")


def distinct(samples: Sequence[Tokens], n: int) -> float:
    """distinct-n = |distinct n-grams| / |n-grams| over a set of samples (Li et al. 2016, Sec. 4.3);
    NaN when there is no n-gram."""
    return _ratio(_counts(samples, n))


def distinct_jackknife(tokens: Grouped, n: int) -> tuple[float, float]:
    """Pooled distinct-n over all prompts' samples and its delete-one-prompt jackknife SE."""
    return _jackknife([_counts(samples, n) for samples in tokens])


def _jackknife(per: list[Counter]) -> tuple[float, float]:
    """Pooled distinct ratio of per-prompt n-gram counts and its delete-one-prompt jackknife SE.

    Leaving prompt p out removes its n-gram count and the n-grams that occur under no other prompt,
    so every leave-one-out value comes from one table of per-prompt n-gram sets (O(total n-grams)).
    """
    totals = np.array([sum(c.values()) for c in per], dtype=np.float64)
    prompt_freq = Counter(g for c in per for g in c)  # number of prompts in which each n-gram occurs
    total = totals.sum()
    if total == 0:
        return float("nan"), float("nan")
    value = len(prompt_freq) / total
    keep = totals > 0
    if keep.sum() < 2:
        return value, float("nan")
    only_here = np.array([sum(1 for g in c if prompt_freq[g] == 1) for c in per], dtype=np.float64)
    loo = ((len(prompt_freq) - only_here) / (total - totals))[keep]
    m = int(keep.sum())
    return value, float(math.sqrt((m - 1) / m * ((loo - loo.mean()) ** 2).sum()))


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else float("nan")


def compute(tokens: Grouped) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """All n-gram metrics in one pass over the samples' n-grams.

    Returns (per-prompt values (P,) of rep-n and within-prompt distinct-1/2 -- NaN where a prompt's samples
    have no n-gram, for callers to drop -- and the pooled distinct-1/2 with their jackknife SEs).
    """
    c1 = [_counts(samples, 1) for samples in tokens]
    c2 = [_counts(samples, 2) for samples in tokens]
    per = {
        REP: np.array([_nanmean([seq_rep(s) for s in samples]) for samples in tokens], dtype=np.float64),
        DISTINCT1_WITHIN: np.array([_ratio(c) for c in c1], dtype=np.float64),
        DISTINCT2_WITHIN: np.array([_ratio(c) for c in c2], dtype=np.float64),
    }
    return per, {DISTINCT1: _jackknife(c1), DISTINCT2: _jackknife(c2)}


def per_prompt(tokens: Grouped) -> dict[str, np.ndarray]:
    """Per-prompt values (P,) of rep-n and within-prompt distinct-n (see :func:`compute`)."""
    return compute(tokens)[0]


def pooled(tokens: Grouped) -> dict[str, tuple[float, float]]:
    """Corpus-level distinct-1 and distinct-2 over every sample, each with its jackknife SE."""
    return compute(tokens)[1]


def ref_logp_per_token(logp_ref: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(P, n) summed reference log-probs and token counts -> (P,) per-prompt mean of the per-sample
    mean per-token log-likelihood ``log pi_ref(y|x) / |y|``."""
    lp = np.asarray(logp_ref, dtype=np.float64)
    return (lp / np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)).mean(1)


def strip_special(rows: Sequence[Sequence[int]], special: set[int]) -> list[list[int]]:
    """Token rows without special tokens (end token, padding)."""
    return [[int(t) for t in r if int(t) not in special] for r in rows]


def group(rows: Sequence[Tokens], n: int) -> list[list[Tokens]]:
    """Flat rows ordered prompt-major (n per prompt) -> [prompt][sample]."""
    return [list(rows[i * n:(i + 1) * n]) for i in range(len(rows) // n)]
