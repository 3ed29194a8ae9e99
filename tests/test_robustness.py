"""Robustness at the final evaluation: per-token temperature on the exact task (T = 1 is the standard table, T -> 0
the greedy chain), held-out prompts (no pairs, no rollouts, splits that average back), the sentiment task's shifted
prompts, bad field values, and the temperature / distribution-shift report sections with one seed and several."""


import numpy as np
import pandas as pd
import pytest
import torch

from alignbench import robustness as R
from alignbench.config import TrainConfig, from_mapping
from alignbench.errors import ConfigError
from alignbench.generation import sample
from alignbench.registry import get_task
from alignbench.report import names as N
from tests.conftest import TINY_EXACT
from tests.test_exact_task import _perturbed


@pytest.fixture(scope="module")
def held_env(cache_dir):
    """TINY_EXACT with its last prompt held out (the reference is the cached one: held_out_prompts is no part of it)."""
    cls = get_task("exact")
    return cls(from_mapping(cls.config_cls, {**TINY_EXACT, "held_out_prompts": 1})).setup(cache_dir, torch.device("cpu"))


# ------------------------------------------------------------------------------------------ temperature, exact task


def test_greedy_chain_follows_the_argmax_prefix_row():
    # K=1, V=2, L=2: rows are the first token (0 or 1). Position 0 prefers t1; then row 1 at position 1 prefers t0,
    # while row 0 (not on the chain) would prefer t1: the chain is (1, 0) = response 1*2 + 0 = 2.
    logits = torch.tensor([[[[0.0, 1.0], [0.0, 5.0]], [[0.0, 1.0], [3.0, 2.0]]]])
    chain = R.greedy_chain(logits)
    assert chain.tolist() == [2]
    assert R.greedy_logp(chain, 4).exp().tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_temperature_one_is_the_standard_evaluation(tiny_exact_env):
    env = tiny_exact_env
    pol = _perturbed(env)
    std = env.evaluate(pol).metrics
    rob = env.evaluate_robustness(pol, temperatures=(1.0,))
    for name in (N.GOLD, N.KL, N.WIN_VS_REF, N.WIN_VS_CHOSEN):
        assert rob[N.at_temperature(name, 1.0)] == pytest.approx(std[name], abs=1e-9)


def test_temperature_zero_is_greedy_decoding(tiny_exact_env):
    env = tiny_exact_env
    pol = _perturbed(env, seed=1)
    logits = env.prefix_logits(pol)
    greedy = env.table_from_logits(logits, 0.0).exp()
    # exactly one response per prompt: the one greedy generation gives
    assert torch.equal(greedy.sum(-1), torch.ones(env.num_prompts)) and ((greedy == 1).sum(-1) == 1).all()
    s = sample(pol, env.tokenizer, list(env.prompt_strings), env.generation, temperature=0)
    assert greedy.argmax(-1).tolist() == env.response_index(s.texts).tolist()
    # T -> 0 converges to it
    cold = env.table_from_logits(logits, 1e-3)
    cold = (cold - torch.logsumexp(cold, -1, keepdim=True)).exp()
    assert (cold * greedy).sum(-1).min() > 0.999
    # KL(pi_0 || pi_ref) = -log pi_ref(greedy chain), averaged over prompts: finite
    rob = env.evaluate_robustness(pol, temperatures=(0.0,))
    chain = greedy.argmax(-1)
    expected = -env.ref_logp_table[torch.arange(env.num_prompts), chain].mean()
    assert rob[N.at_temperature(N.KL, 0)] == pytest.approx(float(expected), rel=1e-9)
    assert rob[N.at_temperature(N.GOLD, 0)] == pytest.approx(
        float(env.reward_table[torch.arange(env.num_prompts), chain].mean()), rel=1e-9)


# ------------------------------------------------------------------------------------------ held-out prompts


def test_held_out_prompts_get_no_pairs_and_no_rollouts(held_env, tmp_path, cache_dir):
    from tests.runs import run_method

    env = held_env
    k_train, _, _ = env.pair_index["train"]
    assert set(k_train.tolist()) == {0, 1, 2} and env.prompts["train"] == ["<p0>", "<p1>", "<p2>"]
    assert 3 in set(env.pair_index["eval"][0].tolist()) and env.prompts["eval"][-1] == "<p3>"
    assert not env.seen_in_train[3].any()
    asked = []
    gold = env.gold_reward

    def recording(prompts, completions):
        asked.extend(prompts)
        return gold(prompts, completions)

    env.gold_reward = recording
    try:
        task = get_task("exact")(env.config)
        summary, _, _ = run_method(task, env, cache_dir, tmp_path, "ppo-gt",
                                   {"beta": 0.1, "iterations": 2, "rollout_batch": 16, "ppo_epochs": 1, "minibatch_size": 16},
                                   train={"eval_every": 2, "eval_temperatures": ()})
    finally:
        del env.gold_reward
    assert summary["status"] == "ok", summary.get("reason")
    assert asked and "<p3>" not in asked and set(asked) <= {"<p0>", "<p1>", "<p2>"}
    assert N.on_split(N.GOLD, N.SPLIT_SHIFT) in summary and not any("@T=" in k for k in summary)


def test_splits_average_back_to_the_all_prompt_metrics(held_env):
    env = held_env
    pol = _perturbed(env, seed=2)
    std = env.evaluate(pol).metrics
    rob = env.evaluate_robustness(pol, temperatures=())
    for name in (N.GOLD, N.KL, N.WIN_VS_REF):  # 3 prompts in, 1 held out
        both = (3 * rob[N.on_split(name, N.SPLIT_IN)] + rob[N.on_split(name, N.SPLIT_SHIFT)]) / 4
        assert both == pytest.approx(std[name], abs=1e-12)
    # unseen mass counts the prompts with pairs only
    p = env.logp_table(pol)
    p = (p - torch.logsumexp(p, -1, keepdim=True)).exp()
    assert std[N.UNSEEN_MASS] == pytest.approx(float((p * ~env.seen_in_train).sum(-1)[:3].mean()), abs=1e-12)


def test_split_means_by_hand():
    out = R.split_means({"m": np.array([1.0, 2.0, 3.0, 10.0])}, np.array([False, False, False, True]))
    assert out == {"m@in": 2.0, "m@shift": 10.0}


@pytest.mark.parametrize("cls_name, field, value, where", [
    ("exact", "held_out_prompts", 4, "held_out_prompts"), ("exact", "held_out_prompts", -1, "held_out_prompts"),
    ("sentiment", "shift_prompts", -2, "shift_prompts"), (None, "eval_temperatures", [0.5, -1], "eval_temperatures[1]"),
])
def test_bad_values_name_the_field(cls_name, field, value, where):
    cls = TrainConfig if cls_name is None else get_task(cls_name).config_cls
    base = TINY_EXACT if cls_name == "exact" else {}
    with pytest.raises(ConfigError) as e:
        from_mapping(cls, {**base, field: value})
    assert e.value.field == where and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ sentiment shifted prompts


def test_shifted_prompts_are_seeded_and_disjoint_in_nouns():
    from alignbench.tasks import sentiment as S
    from alignbench.tasks._sentiment_shift import SHIFT_NOUNS, shifted_prompts

    vocab = S.grammar_vocabulary()
    kw = dict(copulas=S.COPULAS, openers=S.OPENERS, verbs=sum(S.VERBS.values(), ()))
    a, b = shifted_prompts(vocab, 40, 0, **kw), shifted_prompts(vocab, 40, 0, **kw)
    assert a == b and len(set(a)) == 40 and shifted_prompts(vocab, 40, 1, **kw) != a
    in_nouns = {w for s in S.SUBJECTS for w in s.split()[1:]} | set(S.ASPECTS) | set(S.PLURAL_ASPECTS)
    for p in a:
        words = p.split()
        assert sum(w in SHIFT_NOUNS for w in words) == 1 and not in_nouns & set(words)
    # the in-distribution prompts (2-4 word review prefixes) never hold a shifted noun
    reviews = S.generate_corpus(3000, 0, (0.3, 0.3, 0.4), 17)
    eval_prompts = S.eval_prompts_from(reviews, 200, 0)
    assert not {w for p in eval_prompts for w in p.split()} & set(SHIFT_NOUNS)


# ------------------------------------------------------------------------------------------ report sections


def _folder(tmp_path, seeds):
    from tests.test_report_seeds import folder

    cells = {("dpo", 0.1): [(2.0, 1.0), (2.1, 1.1), (1.9, 0.9)][:seeds],
             ("ppo", 0.1): [(1.0, 0.8), (1.1, 0.85), (0.9, 0.75)][:seeds]}
    out = folder(tmp_path / f"s{seeds}", cells)
    s = pd.read_csv(out / "summary.csv")
    for i, r in s.iterrows():  # dpo loses 0.1 of win rate from T=0 to T=1 in every seed; ppo nothing
        drop = 0.1 if r["method"] == "dpo" else 0.0
        for t in (0.0, 0.5, 1.0):
            s.loc[i, N.at_temperature(N.WIN_VS_REF, t)] = 0.7 + 0.01 * r["seed"] + drop * (1 - t)
            s.loc[i, N.at_temperature(N.KL, t)] = r["kl"]
        s.loc[i, N.on_split(N.GOLD, N.SPLIT_IN)] = r["reward"]
        s.loc[i, N.on_split(N.GOLD, N.SPLIT_SHIFT)] = r["reward"] - (0.5 if r["method"] == "dpo" else 0.01 * r["seed"] - 0.01)
    s.to_csv(out / "summary.csv", index=False)
    return out


def _render(out, name):
    from alignbench.report.core import ReportContext, sections

    sec = {s.name: s for s in sections()}[name]
    return sec.render(ReportContext.load(out))


def test_sections_with_several_seeds(tmp_path):
    out = _folder(tmp_path, 3)
    text = _render(out, "temperature")
    assert "dpo β=0.1 (best sweep value): the win rate at T=0 is higher than at T=1 by 0.100" in text
    assert "ppo β=0.1 (best sweep value): T=0 vs T=1 not distinguishable with 3 seeds" in text
    assert "| 0.810 [0.800, 0.820] |" in text and (out / "temperature.png").exists()
    text = _render(out, "distribution shift")
    assert "dpo β=0.1: gold reward in − shift = 0.500 [0.500, 0.500] (n = 3 seeds)" in text
    assert "ppo β=0.1: in vs shift not distinguishable with 3 seeds" in text  # differences 0.01, 0, -0.01


def test_sections_with_one_seed_and_without_data(tmp_path):
    out = _folder(tmp_path, 1)
    text = _render(out, "temperature")
    assert "Only one seed" in text and "not distinguishable with 1 seed (no interval" in text and "[" not in \
        text[text.index("| dpo"):text.index("| dpo") + 60]
    assert "Only one seed" in _render(out, "distribution shift")
    s = pd.read_csv(out / "summary.csv")
    s.drop(columns=[c for c in s.columns if "@" in c]).to_csv(out / "summary.csv", index=False)
    for run in (out / "runs").iterdir():  # no unseen_mass in the metrics either
        assert "unseen" not in (run / "metrics.jsonl").read_text()
    assert "No run measured" in _render(out, "temperature")
    assert "No shift data in this folder" in _render(out, "distribution shift")
