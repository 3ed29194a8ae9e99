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
    t = tuple(tokens)
    return [t[i:i + n] for i in range(len(t) - n + 1)]


def seq_rep(tokens: Tokens, n: int = REP_N) -> float:
    """seq-rep-n = 1 - |unique n-grams| / |n-grams| of one completion (Welleck et al. 2019, Sec. 5);
    NaN when it has no n-gram."""
    g = ngrams(tokens, n)
    return 1.0 - len(set(g)) / len(g) if g else float("nan")


def distinct(samples: Sequence[Tokens], n: int) -> float:
    """distinct-n = |distinct n-grams| / |n-grams| over a set of samples (Li et al. 2016, Sec. 4.3);
    NaN when there is no n-gram."""
    counts = Counter(g for s in samples for g in ngrams(s, n))
    total = sum(counts.values())
    return len(counts) / total if total else float("nan")


def distinct_jackknife(tokens: Grouped, n: int) -> tuple[float, float]:
    """Pooled distinct-n over all prompts' samples and its delete-one-prompt jackknife SE.

    Leaving prompt p out removes its n-gram count and the n-grams that occur under no other prompt,
    so every leave-one-out value comes from one table of per-prompt n-gram sets (O(total n-grams)).
    """
    per = [Counter(g for s in samples for g in ngrams(s, n)) for samples in tokens]
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


def _nanmean_rows(rows: list[list[float]]) -> np.ndarray:
    out = []
    for r in rows:
        a = np.asarray(r, dtype=np.float64)
        a = a[np.isfinite(a)]
        out.append(a.mean() if a.size else float("nan"))
    return np.asarray(out, dtype=np.float64)


def per_prompt(tokens: Grouped) -> dict[str, np.ndarray]:
    """Per-prompt values (P,) of the metrics averaged over prompts: rep-n and within-prompt distinct-n.
    NaN where a prompt's samples have no n-gram (callers drop those prompts from the mean and SE)."""
    return {
        REP: _nanmean_rows([[seq_rep(s) for s in samples] for samples in tokens]),
        DISTINCT1_WITHIN: np.array([distinct(samples, 1) for samples in tokens], dtype=np.float64),
        DISTINCT2_WITHIN: np.array([distinct(samples, 2) for samples in tokens], dtype=np.float64),
    }


def pooled(tokens: Grouped) -> dict[str, tuple[float, float]]:
    """Corpus-level distinct-1 and distinct-2 over every sample, each with its jackknife SE."""
    return {DISTINCT1: distinct_jackknife(tokens, 1), DISTINCT2: distinct_jackknife(tokens, 2)}


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
