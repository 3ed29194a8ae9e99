"""Metric names: the keys of ``metrics.jsonl`` rows and of ``EvalResult.metrics`` that more than one module reads.

Writers (task envs, training loops) and readers (summary columns, report sections) use these constants, so a
metric is named in one place. Grouped by prefix: ``reward/``, ``kl/``, ``winrate/``, ``policy/``, ``exact/``,
``eval/`` and ``train/`` (the offline loop's preference diagnostics), ``logratio/``.
"""

from __future__ import annotations

GOLD = "reward/gold"  # mean gold reward of the policy
GOLD_SE = GOLD + "_se"
REF_REWARD = "reward/ref"  # the reference's gold reward on the same prompts (sampled tasks)
KL = "kl/ref"  # KL(pi || pi_ref) [nats]
KL_SE = KL + "_se"
KL_K3 = "kl/ref_k3"
KL_IS_BOUND = "kl/is_bound"  # 1 when kl/ref is only an upper bound (analytic best-of-N)
KL_TO_TARGET = "kl/to_target"  # KL(pi || pi*_beta) on exact tasks
WIN_VS_REF = "winrate/vs_ref"
WIN_VS_REF_SE = WIN_VS_REF + "_se"
WIN_VS_CHOSEN = "winrate/vs_chosen"
WIN_VS_CHOSEN_SE = WIN_VS_CHOSEN + "_se"
ENTROPY = "policy/entropy"
LENGTH = "policy/length"
FRONTIER_GAP = "exact/frontier_gap"
UNSEEN_MASS = "exact/unseen_mass"
EVAL_LOSS = "eval/loss"  # the method's own loss on held-out rows
TRAIN_LOSS = "train/loss"  # ... on a fixed training subset of the same size
EVAL_ACC = "eval/implicit_acc"
TRAIN_ACC = "train/implicit_acc"
LOGRATIO_CHOSEN = "logratio/chosen"
LOGRATIO_REJECTED = "logratio/rejected"
LOGRATIO_MARGIN = "logratio/margin"

# robustness metrics, measured once on the final policy (``alignbench.robustness``; summary.csv columns)
SPLIT_IN, SPLIT_SHIFT = "in", "shift"  # exact: prompts with / without training pairs; sentiment: eval / shifted set


def at_temperature(metric: str, t: float) -> str:
    """``metric`` of the policy sampled at temperature ``t`` (0: greedy), e.g. ``winrate/vs_ref@T=0.5``."""
    return f"{metric}@T={float(t):g}"


def on_split(metric: str, split: str) -> str:
    """``metric`` on one prompt split (:data:`SPLIT_IN` or :data:`SPLIT_SHIFT`), e.g. ``reward/gold@shift``."""
    return f"{metric}@{split}"
