"""Sampled evaluation (alignbench.evaluation): KL estimators, standard errors, win rates."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from alignbench.api import GenerationSpec
from alignbench.evaluation import SampledTaskEnv, batched_sequence_logps, pairwise_win_rate
from alignbench.generation import sample
from alignbench.models import freeze, tiny_gpt2
from alignbench.tokenization import build_word_tokenizer

WORDS = ["a", "b", "x", "y"]
MAX_NEW = 3


class ToyEnv(SampledTaskEnv):
    """Gold reward: the number of 'a' words in the completion (ties are frequent on purpose)."""

    def gold_reward(self, prompts, completions):
        return torch.tensor([float(c.split().count("a")) for c in completions])


def make_env(prompts, n_eval_samples, temperature=1.0, seed=0):
    tok = build_word_tokenizer(WORDS)
    ref = tiny_gpt2(len(tok), n_positions=16, n_layer=1, n_embd=16, n_head=2, pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id, seed=seed)
    with torch.no_grad():  # sharper next-token distributions than the near-uniform init
        ref.transformer.wte.weight.mul_(8.0)
    freeze(ref)
    spec = GenerationSpec(max_new_tokens=MAX_NEW, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          temperature=temperature)
    return ToyEnv(task_name="toy", tokenizer=tok, reference=ref, reference_dir=".", preferences=None,
                  prompts={"train": list(prompts), "eval": list(prompts)}, generation=spec, fingerprint="toy",
                  n_eval_samples=n_eval_samples, eval_batch_size=4096)


def perturbed(model, seed=1, scale=0.6):
    policy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 else 1.0))
    return freeze(policy)


def exact_kl(env, policy, prompt):
    """KL(policy || reference) for one prompt by enumerating every completion (eos-ended or full length)."""
    tok = env.tokenizer
    eos = tok.eos_token_id
    vocab = [i for i in range(len(tok)) if i != eos]
    seqs = []
    for length in range(1, MAX_NEW + 1):
        for body in itertools.product(vocab, repeat=length - 1):
            seqs.append(list(body) + [eos])
    seqs += [list(s) for s in itertools.product(vocab, repeat=MAX_NEW)]
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    t = len(p_ids) + MAX_NEW
    ids = torch.full((len(seqs), t), tok.pad_token_id)
    am = torch.zeros((len(seqs), t), dtype=torch.long)
    cm = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        row = p_ids + s
        ids[i, : len(row)] = torch.tensor(row)
        am[i, : len(row)] = 1
        cm[i, len(p_ids): len(row)] = 1
    lp, _, _ = batched_sequence_logps(policy, ids, am, cm, batch_size=4096)
    lq, _, _ = batched_sequence_logps(env.reference, ids, am, cm, batch_size=4096)
    lp, lq = lp.double(), lq.double()
    assert abs(float(lp.exp().sum()) - 1.0) < 1e-4  # the enumeration covers every completion
    return float((lp.exp() * (lp - lq)).sum())


def test_kl_is_zero_for_the_reference_and_win_rate_is_half():
    env = make_env(["x", "y x", "a b y", "b"] * 4, n_eval_samples=64)
    res = env.evaluate(copy.deepcopy(env.reference), seed=3)
    m = res.metrics
    assert m["kl/ref"] == pytest.approx(0.0, abs=1e-5)
    assert m["kl/ref_k3"] == pytest.approx(0.0, abs=1e-5)
    # the policy's samples and the reference's cached samples are independent draws of one distribution
    assert abs(m["winrate/vs_ref"] - 0.5) < 4 * m["winrate/vs_ref_se"] + 0.02
    assert m["winrate/vs_ref_se"] > 0 and m["reward/gold_se"] > 0
    assert m["policy/entropy"] > 0 and 1 <= m["policy/length"] <= MAX_NEW
    assert len(res.per_prompt["reward"]) == 16 and len(res.per_prompt["prompts"]) == 16


def test_sampled_kl_matches_exact_kl_with_left_padded_prompts():
    kinds = ["x", "y x a", "b"]  # different lengths: sampling left-pads, scoring must realign
    env = make_env(kinds * 8, n_eval_samples=300)
    policy = perturbed(env.reference)
    res = env.evaluate(policy, seed=0)
    per_kl = np.array(res.per_prompt["kl"])
    for i, prompt in enumerate(kinds):
        exact = exact_kl(env, policy, prompt)
        units = per_kl[i::len(kinds)]  # the 8 copies of this prompt: independent estimates
        se = units.std(ddof=1) / math.sqrt(len(units))
        assert exact > 0.02
        assert abs(units.mean() - exact) < 4 * se + 0.01, (prompt, units.mean(), exact, se)
    m = res.metrics
    assert 0 < m["kl/ref_k3_se"] and 0 < m["kl/ref_se"]
    assert m["kl/ref_k3"] == pytest.approx(m["kl/ref"], abs=4 * m["kl/ref_se"])


def tempered_kl(env, policy, prompt, temperature):
    """KL(pi_T || ref_T) for one prompt by enumeration, where pi_T samples each token from softmax(logits / T).

    Computed from a plain forward pass per model (no alignbench scoring code): every completion's
    log-probability is the sum of its tokens' tempered log-softmax."""
    tok = env.tokenizer
    eos = tok.eos_token_id
    vocab = [i for i in range(len(tok)) if i != eos]
    seqs = [list(b) + [eos] for n in range(MAX_NEW) for b in itertools.product(vocab, repeat=n)]
    seqs += [list(s) for s in itertools.product(vocab, repeat=MAX_NEW)]
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    total = {}
    for name, model in (("p", policy), ("q", env.reference)):
        lps = []
        for s in seqs:
            ids = torch.tensor([p_ids + s])
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].double() / temperature
            lps.append(sum(float(logits[len(p_ids) + i - 1].log_softmax(-1)[t]) for i, t in enumerate(s)))
        total[name] = lps
    assert abs(sum(math.exp(x) for x in total["p"]) - 1.0) < 1e-6  # the enumeration covers every completion
    return sum(math.exp(a) * (a - b) for a, b in zip(total["p"], total["q"]))


@pytest.mark.parametrize("temperature", [0.6, 2.0])
def test_sampled_kl_at_a_temperature_matches_enumeration(temperature):
    """At T != 1 samples come from the tempered policy and are scored at T (evaluation.draw): the estimator's
    mean is KL(pi_T || ref_T), the KL of the tempered distributions, computed here by enumeration."""
    kinds = ["x", "y x a"]
    env = make_env(kinds * 8, n_eval_samples=300, temperature=temperature)
    policy = perturbed(env.reference)
    per_kl = np.array(env.evaluate(policy, seed=0).per_prompt["kl"])
    exact, at_one, estimate, var = [], [], [], []
    for i, prompt in enumerate(kinds):
        units = per_kl[i::len(kinds)]  # the 8 copies of this prompt: independent estimates
        se = units.std(ddof=1) / math.sqrt(len(units))
        exact.append(tempered_kl(env, policy, prompt, temperature))
        at_one.append(tempered_kl(env, policy, prompt, 1.0))
        estimate.append(units.mean())
        var.append(se ** 2)
        assert exact[-1] > 0.02
        assert abs(units.mean() - exact[-1]) < 4 * se + 0.005, (prompt, units.mean(), exact[-1], se)
    se_mean = math.sqrt(sum(var)) / len(kinds)
    # the check can tell T from 1: the untempered KL is far outside the estimate's interval
    assert abs(np.mean(at_one) - np.mean(estimate)) > 8 * se_mean, (at_one, estimate, se_mean)


def test_right_padded_scoring_matches_generation():
    """The log-probs used for KL are those generation sampled from (left padding realigned)."""
    env = make_env(["x"], n_eval_samples=1)
    policy = perturbed(env.reference)
    prompts = ["x", "y x a", "b a"]
    s = sample(policy, env.tokenizer, prompts, env.generation, generator_seed=0)
    p = s.input_ids.shape[1] - s.completions.shape[1]
    out = policy.generate(input_ids=s.input_ids[:, :p], attention_mask=s.attention_mask[:, :p], max_new_tokens=1,
                          do_sample=False, output_scores=True, return_dict_in_generate=True,
                          pad_token_id=env.tokenizer.pad_token_id)
    first = out.scores[0].float().log_softmax(-1).gather(1, s.completions[:, :1]).squeeze(1)
    ids, am, cm = s.right_padded(env.tokenizer.pad_token_id)
    _, tok, _ = batched_sequence_logps(policy, ids, am, cm)
    plen = s.attention_mask[:, :p].sum(-1)
    scored_first = tok[torch.arange(len(prompts)), plen - 1]  # first completion token's log-prob
    assert torch.allclose(first, scored_first, atol=1e-5)


def test_standard_errors_shrink_with_more_samples():
    prompts = ["x"] * 12
    ses = []
    for n in (4, 128):
        env = make_env(prompts, n_eval_samples=n)
        m = env.evaluate(perturbed(env.reference), seed=0).metrics
        ses.append((m["reward/gold_se"], m["kl/ref_se"], m["winrate/vs_ref_se"]))
    for small, large in zip(ses[1], ses[0]):
        assert 0 < small < large


def test_reference_samples_are_cached_and_rng_is_untouched():
    env = make_env(["x", "y"], n_eval_samples=8)
    a = env.reference_samples(seed=0)
    state = torch.get_rng_state()
    env.evaluate(perturbed(env.reference), seed=0)
    assert torch.equal(state, torch.get_rng_state())
    assert env.reference_samples(seed=0) is a
    assert env.reference_samples(seed=1) is not a


def test_an_unchanged_reference_copy_is_evaluated_once_per_seed(monkeypatch):
    """Every run's step 0 evaluates a copy of the reference: memoised per (seed, beta), equal to a fresh evaluation,
    and never used for a policy whose weights differ."""
    env = make_env(["x", "y x", "b"], n_eval_samples=4)
    fresh = make_env(["x", "y x", "b"], n_eval_samples=4).evaluate_policy(copy.deepcopy(env.reference), seed=2, beta=0.1)
    calls = []
    real = env.evaluate_policy
    monkeypatch.setattr(env, "evaluate_policy", lambda p, **kw: calls.append(kw) or real(p, **kw))
    a = env.evaluate(copy.deepcopy(env.reference), seed=2, beta=0.1)
    b = env.evaluate(copy.deepcopy(env.reference), seed=2, beta=0.1)
    assert len(calls) == 1 and a.metrics == b.metrics == fresh.metrics and a.per_prompt == fresh.per_prompt
    b.metrics["reward/gold"] = 99.0  # callers get copies
    assert env.evaluate(copy.deepcopy(env.reference), seed=2, beta=0.1).metrics == fresh.metrics
    env.evaluate(copy.deepcopy(env.reference), seed=3, beta=0.1)
    env.evaluate(perturbed(env.reference), seed=2, beta=0.1)
    env.evaluate(perturbed(env.reference), seed=2, beta=0.1)
    assert len(calls) == 4  # a new seed, and a changed policy each time


def test_ties_count_one_half():
    assert pairwise_win_rate(np.array([[1.0, 1.0]]), np.array([[1.0, 1.0, 1.0]]))[0] == 0.5
    assert pairwise_win_rate(np.array([[1.0]]), np.array([[0.0]]))[0] == 1.0
    assert pairwise_win_rate(np.array([[1.0, 0.0]]), np.array([[0.0]]))[0] == 0.75
    assert pairwise_win_rate(np.array([[0.0], [2.0]]), np.array([[1.0], [1.0]])).tolist() == [0.0, 1.0]


class ConstEnv(ToyEnv):
    def gold_reward(self, prompts, completions):
        return torch.zeros(len(completions))


def test_evaluate_samples_best_of_n_style():
    env = make_env(["x", "y"], n_eval_samples=16)
    res = env.evaluate_samples(["x", "x", "y"], ["a a <eos>", "b", "a"], kl=math.log(4) - 0.75, kl_se=0.0,
                               kl_is_bound=True)
    m = res.metrics
    assert m["kl/is_bound"] == 1.0 and m["kl/ref"] == pytest.approx(math.log(4) - 0.75)
    assert res.per_prompt["prompts"] == ["x", "y"]
    assert res.per_prompt["reward"] == [1.0, 1.0]  # "x": mean of 2 and 0 'a's; "y": 1
    assert 0.0 <= m["winrate/vs_ref"] <= 1.0 and m["reward/gold"] == 1.0
    # all rewards tie: win rate exactly one half
    const = ConstEnv(task_name="c", tokenizer=env.tokenizer, reference=env.reference, reference_dir=".",
                     preferences=None, prompts=env.prompts, generation=env.generation, fingerprint="c",
                     n_eval_samples=4)
    assert const.evaluate_samples(["x", "y"], ["a", "b"]).metrics["winrate/vs_ref"] == 0.5
    # prompts outside the eval set get fresh reference samples
    assert "winrate/vs_ref" in env.evaluate_samples(["b a"], ["a"]).metrics


def test_right_pad_keeps_tokens_in_order():
    env = make_env(["x", "y x a"], n_eval_samples=1)
    s = sample(env.reference, env.tokenizer, ["x", "y x a"], env.generation, generator_seed=0)
    ids, am, cm = s.right_padded(env.tokenizer.pad_token_id)
    for i in range(2):
        real = s.input_ids[i][s.attention_mask[i].bool()]
        assert torch.equal(ids[i][am[i].bool()], real)
        assert int(cm[i].sum()) == int(s.completion_mask[i].sum())
        assert am[i, : int(am[i].sum())].all()  # real tokens first
