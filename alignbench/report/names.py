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
KL_TO_TARGET = "kl/to_target"  # KL(pi || pi*_beta), the gold optimum, on exact tasks
KL_TO_OWN_TARGET = "kl/to_own_target"  # KL(pi || the method's own population target) on exact tasks
OBJECTIVE_GAP = "exact/objective_gap"  # F(KL(target || ref)) - E_target[r]: the target's own distance below the frontier
ESTIMATION_GAP = "exact/estimation_gap"  # frontier_gap - objective_gap: the run's shortfall against its own target
OWN_TARGET = "own_target"  # summary column: the target's formula, or "none: <reason>"
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

# compute a run spent (alignbench.compute; summary columns, and COMPUTE_BUDGET also in every evaluation row)
COMPUTE_POLICY_FWD = "compute/policy_forward_tokens"  # positions through the policy's forward in training
COMPUTE_POLICY_BWD = "compute/policy_backward_tokens"  # ... of forwards with gradients (back-propagated)
COMPUTE_REF_FWD = "compute/reference_forward_tokens"  # positions through the reference (cached: one training pass)
COMPUTE_EVAL_FWD = "compute/eval_forward_tokens"  # positions of evaluation forwards (policy and reference)
COMPUTE_SAMPLES = "compute/policy_samples"  # completions sampled from the policy in training (rollouts)
COMPUTE_RM_QUERIES = "compute/rm_queries"  # completions scored by the learned reward model in training
COMPUTE_GOLD_QUERIES = "compute/gold_queries"  # completions scored by the gold reward as the training signal
COMPUTE_BUDGET = "compute/policy_tokens"  # policy forward + 2 x backward tokens: the compute-matched budget

# convergence at the end of training (alignbench.report.convergence; summary columns)
CONVERGED = "converged"
REWARD_CHANGE = "reward_change"  # last-window mean minus previous-window mean, relative to the distance travelled
KL_CHANGE = "kl_change"
ONLINE_RM_REWARD = "online/rm_reward"  # the learned reward model's mean score of an online method's rollouts
ONLINE_GOLD_REWARD = "online/gold_reward"  # the gold reward of the same rollouts
# robustness metrics, measured once on the final policy (``alignbench.robustness``; summary.csv columns)
SPLIT_IN, SPLIT_SHIFT = "in", "shift"  # exact: prompts with / without training pairs; sentiment: eval / shifted set


def at_temperature(metric: str, t: float) -> str:
    """``metric`` of the policy sampled at temperature ``t`` (0: greedy), e.g. ``winrate/vs_ref@T=0.5``."""
    return f"{metric}@T={float(t):g}"


def on_split(metric: str, split: str) -> str:
    """``metric`` on one prompt split (:data:`SPLIT_IN` or :data:`SPLIT_SHIFT`), e.g. ``reward/gold@shift``."""
    return f"{metric}@{split}"
