"""The embedded sentiment task: grammar, VADER reward, tokenizer, cached reference, prompts, data, evaluation."""

import numpy as np
import pytest
import torch

from alignbench.config import from_mapping
from alignbench.data import tokenize, validate_rows
from alignbench.generation import sample
from alignbench.registry import get_task

# a small build: a 1-layer reference trained briefly on a small corpus (a few seconds)
SMALL = {"n_reviews": 3000, "n_layer": 1, "n_embd": 32, "n_head": 2, "ref_steps": 150, "ref_batch_size": 64,
         "n_train_pairs": 256, "n_eval_pairs": 64, "n_eval_prompts": 24, "n_eval_samples": 16}


def _task(overrides=None):
    cls = get_task("sentiment")
    return cls(from_mapping(cls.config_cls, {**SMALL, **(overrides or {})}))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("sentiment-cache")
    e = _task().setup(cache, torch.device("cpu"))
    e.test_cache = cache
    return e


def test_sentiment_words_are_in_vaders_lexicon():
    from vaderSentiment.vaderSentiment import BOOSTER_DICT, NEGATE, SentimentIntensityAnalyzer

    from alignbench.tasks import sentiment as s

    lex = SentimentIntensityAnalyzer().lexicon
    words = s.sentiment_words()
    for w in words["positive"]:
        assert lex.get(w, 0) > 0, w
    for w in words["negative"]:
        assert lex.get(w, 0) < 0, w
    for w in s.NEUTRAL:
        assert abs(lex.get(w, 0)) <= 1.2, w
    for w in s.BOOSTERS:
        assert w in BOOSTER_DICT, w
    assert "not" in NEGATE
    # every grammar word is in the tokenizer's vocabulary source
    vocab = set(s.grammar_vocabulary())
    corpus = s.generate_corpus(500, 0, (1, 1, 1), 17)
    assert {w for r in corpus for w in r.split()} <= vocab
    assert s.vader_compound("the film was really great") > 0.5 > s.vader_compound("it was a terrible mess")


def test_corpus_is_seeded_and_mixed():
    from alignbench.tasks import sentiment as s

    a = s.generate_corpus(2000, 1, (0.3, 0.3, 0.4), 17)
    assert a == s.generate_corpus(2000, 1, (0.3, 0.3, 0.4), 17)
    assert a != s.generate_corpus(2000, 2, (0.3, 0.3, 0.4), 17)
    scores = np.array([s.vader_compound(r) for r in a])
    assert (scores > 0.3).mean() > 0.2 and (scores < -0.3).mean() > 0.2
    assert max(len(r.split()) for r in a) <= 17 and len(set(a)) > 1500


def test_tokenizer_round_trips(env, tmp_path):
    from transformers import AutoTokenizer

    tok = env.tokenizer
    tok.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    text = "the film was really great <eos>"
    assert tok(text, add_special_tokens=False)["input_ids"] == again(text, add_special_tokens=False)["input_ids"]
    ids = again(text, add_special_tokens=False)["input_ids"]
    assert ids[-1] == again.eos_token_id == tok.eos_token_id
    assert again.decode(ids, skip_special_tokens=True) == "the film was really great"
    assert env.generation.eos_token_id == tok.eos_token_id and env.generation.pad_token_id == tok.pad_token_id


def test_reference_is_cached(env, monkeypatch):
    import alignbench.tasks.sentiment as s

    def no_training(*a, **k):
        raise AssertionError("the reference was retrained")

    monkeypatch.setattr(s, "train_causal_lm", no_training)
    again = _task({"n_eval_samples": 4}).setup(env.test_cache, torch.device("cpu"))  # eval-only change: same build
    assert again.reference_dir == env.reference_dir
    for a, b in zip(again.reference.parameters(), env.reference.parameters()):
        assert torch.equal(a, b)
    assert (env.reference_dir / "model.safetensors").exists()


def test_prompts_and_completions(env):
    for p in env.prompts["train"][:500] + env.prompts["eval"]:
        assert 2 <= len(p.split()) <= 4, p
    assert len(env.prompts["eval"]) == len(set(env.prompts["eval"])) == SMALL["n_eval_prompts"]
    s = sample(env.reference, env.tokenizer, env.prompts["eval"] * 4, env.generation, generator_seed=0)
    comp_mask = s.completion_mask[:, -s.completions.shape[1]:]
    ended = 0
    for row, m in zip(s.completions, comp_mask):
        toks = row[m.bool()].tolist()
        assert 1 <= len(toks) <= env.generation.max_new_tokens
        assert env.generation.eos_token_id not in toks[:-1]  # nothing after the end token
        ended += toks[-1] == env.generation.eos_token_id
    assert ended / len(s.completions) > 0.8  # most completions stop by themselves


def test_preference_data(env):
    from alignbench.tasks.sentiment import vader_compound

    for split in ("train", "eval"):
        validate_rows(env.preferences[split], "paired", split=split)
    train = env.preferences["train"]
    assert len(train) == SMALL["n_train_pairs"] and len(env.preferences["eval"]) == SMALL["n_eval_pairs"]
    assert all(c != r for c, r in zip(train["chosen"], train["rejected"]))
    assert np.mean([c.endswith("<eos>") for c in train["chosen"]]) > 0.8
    # the end-token text tokenizes to the eos id, so training teaches the policy to stop
    batch = tokenize(train.select(range(32)), "paired", env.tokenizer)
    ids, cm = batch.input_ids["chosen"], batch.completion_mask["chosen"]
    last = [int(r[m.bool()][-1]) for r, m in zip(ids, cm)]
    assert np.mean([t == env.tokenizer.eos_token_id for t in last]) > 0.8
    # labels agree with the gold reward well above chance
    rc = np.array([vader_compound(c.replace("<eos>", "")) for c in train["chosen"]])
    rr = np.array([vader_compound(r.replace("<eos>", "")) for r in train["rejected"]])
    decided = rc != rr
    assert (rc[decided] > rr[decided]).mean() > 0.75


def test_evaluate_reference(env):
    res = env.evaluate(env.make_policy(), seed=0)
    m = res.metrics
    assert m["kl/ref"] == pytest.approx(0.0, abs=1e-5) and m["kl/ref_k3"] == pytest.approx(0.0, abs=1e-5)
    assert abs(m["winrate/vs_ref"] - 0.5) < 4 * m["winrate/vs_ref_se"] + 0.03
    assert m["reward/gold_se"] > 0 and -1 <= m["reward/gold"] <= 1
    assert m["reward/ref"] < 0.5  # room to improve towards 1
    assert 1 <= m["policy/length"] <= env.generation.max_new_tokens
    assert len(res.per_prompt["completions"]) == len(env.prompts["eval"])
    d = env.describe()
    assert d["n_eval_samples"] == SMALL["n_eval_samples"] and "k1" in d["kl_estimator"]
    assert env.gold_reward(["the film"], ["was great <eos>"])[0] > 0.5


def test_train_defaults_are_valid():
    tc = get_task("sentiment")(get_task("sentiment").config_cls()).train_config()
    assert tc.steps >= 50 and tc.eval_every <= tc.steps


def test_robustness_at_temperature_one_is_the_standard_evaluation(env):
    from alignbench.report import names as N
    from alignbench.robustness import sampled_metrics

    pol = env.make_policy()
    std = env.evaluate(pol, seed=3).metrics
    fresh = sampled_metrics(env, pol, env.prompts["eval"], 3, 1.0)  # the same seeds: identical numbers
    assert fresh == {k: std[k] for k in fresh}
    env.prompts["shift"] = ["the debut was", "i loved the mess", "honestly the experience"]
    try:
        rob = env.evaluate_robustness(pol, temperatures=(0.0, 1.0), seed=3)
    finally:
        del env.prompts["shift"]
    assert rob[N.at_temperature(N.GOLD, 1.0)] == std[N.GOLD] and rob[N.on_split(N.KL, N.SPLIT_IN)] == std[N.KL]
    assert rob[N.on_split(N.KL, N.SPLIT_SHIFT)] == pytest.approx(0.0, abs=1e-5)  # the reference against itself
    assert rob[N.at_temperature(N.KL, 0.0)] > 0  # greedy: -log pi_ref of the one completion per prompt
