"""Degeneration metrics (alignbench.degeneration): hand-derived values, and their wiring into evaluate."""

import math

import numpy as np
import pytest
import torch

from alignbench import degeneration as DG
from alignbench.evaluation import batched_sequence_logps, derive_seed

from .test_evaluation import make_env, perturbed


VOCAB: dict[str, int] = {}


def ids(text: str) -> list[int]:
    """Word -> integer id, one vocabulary for the whole file (a stand-in tokenizer for hand-written strings)."""
    return [VOCAB.setdefault(w, len(VOCAB)) for w in text.split()]


def test_seq_rep_on_one_repeated_word_and_on_no_repeats():
    # "real real real real real": 4 bigrams, 1 unique -> 1 - 1/4
    assert DG.seq_rep(ids("real real real real real")) == pytest.approx(0.75)
    assert DG.seq_rep(ids("a fun and delightful script")) == 0.0
    # "a b a b": bigrams ab, ba, ab -> 1 - 2/3
    assert DG.seq_rep(ids("a b a b")) == pytest.approx(1 / 3)
    assert DG.seq_rep(ids("a b a b"), n=1) == pytest.approx(0.5)
    assert math.isnan(DG.seq_rep(ids("single")))  # no bigram: no value


def test_distinct_n_on_hand_written_strings():
    same = [ids("real real real real")] * 2  # 8 unigrams, 1 distinct; 6 bigrams, 1 distinct
    assert DG.distinct(same, 1) == pytest.approx(1 / 8)
    assert DG.distinct(same, 2) == pytest.approx(1 / 6)
    diff = [ids("a fun and delightful"), ids("script good acting")]
    assert DG.distinct(diff, 1) == 1.0 and DG.distinct(diff, 2) == 1.0
    # corpus level: a bigram shared by two samples counts once
    assert DG.distinct([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)


def test_pooled_distinct_jackknife_matches_brute_force():
    rng = np.random.default_rng(0)
    tokens = [[list(rng.integers(0, 6, rng.integers(1, 7))) for _ in range(3)] for _ in range(7)]
    value, se = DG.distinct_jackknife(tokens, 2)
    assert value == pytest.approx(DG.distinct([s for p in tokens for s in p], 2))
    loo = np.array([DG.distinct([s for q, p in enumerate(tokens) if q != i for s in p], 2) for i in range(7)])
    assert se == pytest.approx(math.sqrt(6 / 7 * ((loo - loo.mean()) ** 2).sum()))
    assert se > 0


def test_per_prompt_and_ref_logp_per_token():
    tokens = [[ids("x x x"), ids("a b c")], [ids("z"), ids("p q")]]
    per = DG.per_prompt(tokens)
    assert per[DG.REP] == pytest.approx([0.25, 0.0])  # (1/2 + 0)/2; the one-token sample has no value
    assert per[DG.DISTINCT1_WITHIN] == pytest.approx([4 / 6, 1.0])
    lp = np.array([[-4.0, -2.0], [-3.0, -9.0]])
    lengths = np.array([[4.0, 2.0], [1.0, 3.0]])
    assert DG.ref_logp_per_token(lp, lengths) == pytest.approx([-1.0, -3.0])
    assert DG.reference_name(DG.REP) == "reference/rep2"


def test_evaluate_logs_degeneration_matching_the_samples():
    env = make_env(["x", "y x", "a b y", "b"], n_eval_samples=6)
    policy = perturbed(env.reference, seed=2)
    res = env.evaluate(policy, seed=1)
    m = res.metrics
    for key in DG.METRICS:
        assert key in m and key + "_se" in m and math.isfinite(m[key]), key
        assert DG.reference_name(key) in m, key
    pol = env.draw(policy, env.prompts["eval"], 6, seed=derive_seed(1, "policy"), score_logps=True)
    # tokens are the sampled ids without special tokens: exactly the ids of the decoded text
    for texts, toks, lens in zip(pol.texts, pol.tokens, pol.lengths):
        for t, k, n in zip(texts, toks, lens):
            assert env.tokenizer(t, add_special_tokens=False)["input_ids"] == k and len(k) <= n
    assert m[DG.REF_LOGP] == pytest.approx(float(DG.ref_logp_per_token(pol.logp_ref, pol.lengths).mean()))
    assert m[DG.DISTINCT2] == pytest.approx(DG.distinct([s for p in pol.tokens for s in p], 2))
    # the reference's own samples score higher under the reference than a perturbed policy's on average
    assert m[DG.reference_name(DG.REF_LOGP)] > m[DG.REF_LOGP]
    ref = env.reference_samples(1)
    assert res.per_prompt["ref_completions"] == [t[:env.n_example_completions] for t in ref.texts]


def test_evaluate_samples_logs_the_same_metrics_from_texts():
    env = make_env(["x", "y x"], n_eval_samples=4)
    tok, eos = env.tokenizer, env.tokenizer.eos_token_id
    prompts = ["x", "x", "y x", "y x"]
    texts = ["a b", "x x x", "y", "b b b"]  # the 3-word ones hit max_new_tokens: no end token
    res = env.evaluate_samples(prompts, texts, kl=0.0, seed=0)
    m = res.metrics
    # reference log-likelihood per token, from hand-built rows
    per_sample = []
    for p, t in zip(prompts, texts):
        pi, ci = tok(p, add_special_tokens=False)["input_ids"], tok(t, add_special_tokens=False)["input_ids"]
        ci = ci + ([eos] if len(ci) < 3 else [])
        row = torch.tensor([pi + ci])
        cm = torch.tensor([[0] * len(pi) + [1] * len(ci)])
        lp, _, _ = batched_sequence_logps(env.reference, row, torch.ones_like(row), cm)
        per_sample.append(float(lp[0]) / len(ci))
    assert m[DG.REF_LOGP] == pytest.approx((per_sample[0] + per_sample[1]) / 4 + (per_sample[2] + per_sample[3]) / 4,
                                           rel=1e-5)
    assert m["policy/length"] == pytest.approx((3 + 3 + 2 + 3) / 4)
    # bigrams: "a b" | "x x" "x x" | none | "b b" "b b": prompt values 0 (only "a b" ... and 1/2) etc.
    assert m[DG.REP] == pytest.approx(((0.0 + 0.5) / 2 + 0.5) / 2)
    assert m[DG.DISTINCT1] == pytest.approx(4 / 9)  # a b x y: 4 distinct of 2 + 3 + 1 + 3 words
    assert m[DG.DISTINCT2] == pytest.approx(3 / 5)  # ab, xx, bb of ab xx xx bb bb
    assert len(res.per_prompt["ref_completions"]) == 2
    # the reference's baseline pools as many of its samples per prompt as the policy has (2 here)
    ref = env.reference_samples(0)
    assert m[DG.reference_name(DG.DISTINCT2)] == pytest.approx(DG.distinct([s for p in ref.tokens for s in p[:2]], 2))
    assert m[DG.reference_name(DG.LENGTH)] == pytest.approx(float(ref.lengths[:, :2].mean()))
