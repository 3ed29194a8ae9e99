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
ONLINE_RM_REWARD = "online/rm_reward"  # the learned reward model's mean score of an online method's rollouts
ONLINE_GOLD_REWARD = "online/gold_reward"  # the gold reward of the same rollouts
