"""Compute per run (alignbench/compute.py): the counter's rules, and the counts of short real runs, derived by hand."""

from __future__ import annotations

import torch
from torch import nn

from alignbench.compute import Compute, budget
from alignbench.report import names as N

from .runs import run_method


class Echo(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, input_ids=None, attention_mask=None):
        return input_ids.float() * self.w


def test_counter_rules_forward_backward_eval_reference_and_state():
    c, pol, ref = Compute(), Echo(), Echo()
    c.watch(pol)
    c.watch(ref, "reference")
    ids = torch.zeros(3, 5, dtype=torch.long)
    pol(input_ids=ids)  # with gradients: forward and backward
    with torch.no_grad():
        pol(ids)  # positional, no gradient: forward only
        ref(input_ids=ids)
    with c.evaluating():
        pol(input_ids=ids)
        ref(input_ids=ids)
        c.add(N.COMPUTE_SAMPLES, 99)  # ignored while evaluating
    c.add(N.COMPUTE_SAMPLES, 4)
    assert c.counts[N.COMPUTE_POLICY_FWD] == 30 and c.counts[N.COMPUTE_POLICY_BWD] == 15
    assert c.counts[N.COMPUTE_REF_FWD] == 15 and c.counts[N.COMPUTE_EVAL_FWD] == 30
    assert c.counts[N.COMPUTE_SAMPLES] == 4
    assert c.summary()[N.COMPUTE_BUDGET] == 30 + 2 * 15 == budget(c.counts)
    d = Compute()
    d.load_state_dict(c.state_dict())
    assert d.summary() == c.summary()
    c.close()
    pol(input_ids=ids)
    assert c.counts[N.COMPUTE_POLICY_FWD] == 30  # hooks removed


def _sizes(env):
    """(prompt length, completion length) of the exact task's sequences."""
    ids = env.tokenizer(env.prompts["train"][:1], add_special_tokens=False)["input_ids"][0]
    return len(ids), int(env.response_ids.shape[1])


def test_offline_run_counts_its_positions_and_packing_computes_fewer(task, env, cache, tmp_path):
    steps, b = 3, 4
    train = {"steps": steps, "batch_size": b, "eval_every": 3, "warmup_steps": 0, "share_prompt": False}
    plain, rows, _ = run_method(task, env, cache, tmp_path, "dpo", {"beta": 0.3}, train=train, name="plain")
    p, l_ = _sizes(env)
    t = p + l_  # every exact-task sequence: prompt then a fixed-length completion
    # one forward of chosen and rejected stacked per step, all with gradients
    assert plain[N.COMPUTE_POLICY_FWD] == steps * 2 * b * t
    assert plain[N.COMPUTE_POLICY_BWD] == steps * 2 * b * t
    assert plain[N.COMPUTE_REF_FWD] == len(env.preferences["train"]) * 2 * t  # one pass over the training pairs
    assert plain[N.COMPUTE_SAMPLES] == plain[N.COMPUTE_RM_QUERIES] == plain[N.COMPUTE_GOLD_QUERIES] == 0
    assert plain[N.COMPUTE_EVAL_FWD] > 0
    assert plain[N.COMPUTE_BUDGET] == 3 * steps * 2 * b * t
    assert [r[N.COMPUTE_BUDGET] for r in rows] == [0, plain[N.COMPUTE_BUDGET]]  # cumulative, in every evaluation
    packed, _, _ = run_method(task, env, cache, tmp_path, "dpo", {"beta": 0.3}, train={**train, "share_prompt": True},
                              name="packed")
    assert 0 < packed[N.COMPUTE_POLICY_FWD] < plain[N.COMPUTE_POLICY_FWD]  # the shared prompts computed once
    assert packed[N.COMPUTE_POLICY_BWD] == packed[N.COMPUTE_POLICY_FWD]


def test_online_run_counts_rollouts_gold_queries_and_the_reference(task, env, cache, tmp_path):
    its, n = 2, 8
    s, _, _ = run_method(task, env, cache, tmp_path, "rloo-gt",
                         {"beta": 0.3, "iterations": its, "rollout_batch": n, "group_size": 2}, name="rloo")
    p, l_ = _sizes(env)
    t = p + l_
    assert s[N.COMPUTE_SAMPLES] == its * n and s[N.COMPUTE_GOLD_QUERIES] == its * n and s[N.COMPUTE_RM_QUERIES] == 0
    assert s[N.COMPUTE_REF_FWD] == its * n * t  # the reference log-probs of each rollout
    assert s[N.COMPUTE_POLICY_BWD] == its * n * t  # one epoch, one minibatch of all n rollouts per iteration
    # generation (prompt, then one position per new token: the last token is never fed back) + rollout log-probs
    generate = n * p + n * (l_ - 1)
    assert s[N.COMPUTE_POLICY_FWD] == its * (generate + n * t + n * t)
