"""The exact task: exact metrics, the optimal frontier, gold reward, preference data, caching, config."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from alignbench import exact as X
from alignbench.config import from_mapping
from alignbench.errors import ConfigError, DataError
from alignbench.tasks.exact import ExactConfig, ExactTask, reference_folder

# small enough to build in about a second: K=3 prompts, N=3**3=27 responses
SMALL = dict(num_prompts=3, vocab_size=3, length=3, n_layer=1, n_embd=32, n_head=2, pretrain_samples=3000,
             pretrain_steps=60, pretrain_batch_size=64, num_train_pairs=1024, num_eval_pairs=256)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("exact_cache")


@pytest.fixture(scope="module")
def env(cache):
    cfg = ExactConfig(**SMALL)
    e = ExactTask(cfg).setup(cache, CPU)
    assert not e.loaded_from_cache  # the first setup builds the reference
    return e


def _variant(env, cache, **changes):
    """Another env sharing the fixture's reference (only data / reward fields change)."""
    return ExactTask(dataclasses.replace(env.config, **changes)).setup(cache, CPU)


# ------------------------------------------------------------------------------------------ exact metrics


def test_shapes_and_tables(env):
    K, N, L = 3, 27, 3
    assert env.reward_table.shape == env.ref_logp_table.shape == (K, N)
    assert env.response_ids.shape == (N, L) and env.response_ids.dtype == torch.long
    assert env.prompt_ids.shape == (K,)
    assert len(env.responses) == N and len(set(env.responses)) == N
    assert env.responses[0] == "t0 t0 t0" and env.responses[-1] == "t2 t2 t2"
    assert env.prompts == {"train": ["<p0>", "<p1>", "<p2>"], "eval": ["<p0>", "<p1>", "<p2>"]}
    assert torch.allclose(torch.logsumexp(env.ref_logp_table, -1), torch.zeros(K, dtype=torch.float64), atol=1e-12)
    assert env.generation.max_new_tokens == L and env.generation.fixed_length and env.generation.pad_token_id == 0
    # the tokenizer maps the response strings to exactly the response_ids rows
    enc = env.tokenizer(env.responses, add_special_tokens=False)["input_ids"]
    assert torch.equal(torch.tensor(enc), env.response_ids)
    d = env.describe()
    assert d["kl_estimator"] == "exact" and d["num_responses"] == N and d["labels"] == "bt"


def test_reference_is_exactly_the_reference(env):
    res = env.evaluate(env.reference, beta=0.5)
    m = res.metrics
    assert abs(m["kl/ref"]) < 1e-6
    assert abs(m["winrate/vs_ref"] - 0.5) < 1e-6
    assert abs(m["exact/frontier_gap"]) < 1e-6
    assert abs(m["reward/gold"]) < 1e-6  # standardised reward has mean 0 under pi_ref
    assert m["policy/length"] == 3.0
    assert 0.0 <= m["exact/invalid_mass"] < 1e-6  # the masked model puts no mass outside the responses
    assert 0.0 <= m["exact/unseen_mass"] <= 1.0
    assert m["policy/entropy"] == pytest.approx(brute_force(env, env.reference)["entropy"], rel=1e-5)
    assert m["policy/entropy"] > 0.1  # the reference is not a point mass
    # KL(pi_ref || pi*_beta) is what the reference still lacks
    target = env.optimal_logp(0.5)
    assert m["kl/to_target"] == pytest.approx(float(X.kl(env.ref_logp_table, target)), rel=1e-9)
    assert m["exact/target_kl"] > 0 and m["exact/target_reward"] > 0
    assert torch.equal(env.logp_table(env.reference), env.ref_logp_raw)
    assert res.per_prompt["prompts"] == env.prompts["eval"]
    assert np.allclose(np.array(res.per_prompt["logp"]), env.ref_logp_table.numpy(), atol=1e-5)
    arts = env.artifacts()
    assert np.allclose(np.asarray(arts["reward"]), env.reward_table.numpy(), atol=1e-6)
    # the reference table and response strings, for the report's pi*_beta next to each policy
    assert np.allclose(np.asarray(arts["ref_logp"]), env.ref_logp_table.numpy(), atol=1e-6)
    assert arts["responses"][5] == env.responses[5] and env.response_index([arts["responses"][5]]).item() == 5
    # the data's chosen responses were preferred under BT on the gold reward, so the reference loses to them
    assert 0.0 < res.metrics["winrate/vs_chosen"] < 0.5


def test_logp_table_matches_training_logps(env):
    """The table scores exactly the sequence log-probs that the offline trainer computes on the pairs."""
    from alignbench.data import tokenize
    from alignbench.logprobs import sequence_logps

    ds = env.preferences["train"].select(range(64))
    tok = tokenize(ds, "paired", env.tokenizer)
    k = env.prompt_index(ds["prompt"])
    for col in ("chosen", "rejected"):
        with torch.no_grad():
            lp = sequence_logps(env.reference, tok.input_ids[col], tok.attention_mask[col], tok.completion_mask[col]).sum
        y = env.response_index(ds[col])
        assert torch.allclose(lp.double(), env.ref_logp_raw[k, y], atol=1e-5)


def _perturbed(env, scale=0.3, seed=0):
    policy = env.make_policy()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return policy


def brute_force(env, policy) -> dict[str, float]:
    """KL(pi || pi_ref), entropy, E[r] and the BT win rate vs pi_ref by plain Python loops over every (prompt,
    response): one forward per sequence, log-softmax at each response position, float arithmetic. Independent
    of the task's tables (only the gold reward table and the models are shared)."""

    def seq_logp(model, k, n):
        ids = torch.cat([env.prompt_ids[k:k + 1], env.response_ids[n]])[None]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].double()
        return sum(float(logits[t].log_softmax(-1)[ids[0, t + 1]]) for t in range(ids.shape[1] - 1))

    K, N = env.reward_table.shape
    r = env.reward_table.tolist()
    out = {"kl": 0.0, "entropy": 0.0, "reward": 0.0, "win": 0.0}
    for k in range(K):
        lp = [seq_logp(policy, k, n) for n in range(N)]
        lq = [seq_logp(env.reference, k, n) for n in range(N)]
        zp, zq = sum(map(math.exp, lp)), sum(map(math.exp, lq))  # 1 up to rounding (masked model)
        assert abs(zp - 1) < 1e-4 and abs(zq - 1) < 1e-4
        lp = [x - math.log(zp) for x in lp]
        lq = [x - math.log(zq) for x in lq]
        for n in range(N):
            p = math.exp(lp[n])
            out["kl"] += p * (lp[n] - lq[n]) / K
            out["entropy"] -= p * lp[n] / K
            out["reward"] += p * r[k][n] / K
            for m in range(N):
                out["win"] += p * math.exp(lq[m]) / (1 + math.exp(r[k][m] - r[k][n])) / K
    return out


def test_exact_metrics_equal_a_brute_force_loop(env):
    policy = _perturbed(env, seed=5)
    m = env.evaluate(policy, beta=1.0).metrics
    bf = brute_force(env, policy)
    assert bf["kl"] > 0.05  # the perturbed policy is far enough from the reference for the check to bite
    assert m["kl/ref"] == pytest.approx(bf["kl"], rel=1e-4, abs=1e-7)
    assert m["policy/entropy"] == pytest.approx(bf["entropy"], rel=1e-5)
    assert m["reward/gold"] == pytest.approx(bf["reward"], rel=1e-5, abs=1e-7)
    assert m["winrate/vs_ref"] == pytest.approx(bf["win"], rel=1e-5)


def test_prefix_shared_table_equals_full_scoring(env):
    """logp_table (one forward over the prefixes) == sequence_logps on every full sequence."""
    for policy in (env.reference, _perturbed(env, seed=3)):
        fast, full = env.logp_table(policy), env.logp_table_full(policy)
        assert fast.dtype == torch.float64 and fast.shape == (3, 27)
        assert torch.allclose(fast, full, atol=1e-5, rtol=0)
        assert torch.allclose(torch.logsumexp(fast, -1), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    policy = env.make_policy()
    env.logp_table(policy)
    assert policy.training  # the mode is restored


def test_perturbed_policy_metrics(env):
    policy = _perturbed(env)
    m = env.evaluate(policy, beta=1.0).metrics
    assert all(math.isfinite(v) for v in m.values())
    assert m["kl/ref"] > 1e-3
    assert m["exact/frontier_gap"] >= -1e-9  # nothing beats the frontier at its own KL
    assert 0.0 <= m["winrate/vs_ref"] <= 1.0
    # the win rate against pi_ref equals the generic pairwise formula
    lp = env.logp_table(policy)
    lp = lp - torch.logsumexp(lp, -1, keepdim=True)
    assert m["winrate/vs_ref"] == pytest.approx(float(X.bt_win_rate(lp, env.ref_logp_table, env.reward_table)), abs=1e-9)
    assert env.head_to_head(lp, lp) == pytest.approx(0.5, abs=1e-9)


def test_optimal_policy_sits_on_the_frontier(env):
    for beta in (0.1, 1.0, 10.0):
        m = env.evaluate_table(env.optimal_logp(beta), beta).metrics
        assert abs(m["exact/frontier_gap"]) < 1e-6
        assert abs(m["kl/to_target"]) < 1e-9
        assert m["exact/invalid_mass"] == pytest.approx(0.0, abs=1e-12)
        assert m["reward/gold"] == pytest.approx(m["exact/target_reward"], abs=1e-9)
    # random tabular policies stay under the frontier
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        m = env.evaluate_table(torch.randn(env.reward_table.shape, generator=g, dtype=torch.float64) * 2).metrics
        assert m["exact/frontier_gap"] >= -1e-9


def test_policy_is_restricted_to_response_tokens(env):
    """Every copy of the reference (make_policy, a reload) keeps the restriction, with finite log-probs."""
    from alignbench.tasks.exact import MASK_VALUE, ResponseMaskedGPT2

    policy = env.make_policy()
    assert isinstance(policy, ResponseMaskedGPT2) and policy.training
    ids = torch.cat([env.prompt_ids[:, None], env.response_ids[:3]], 1)
    logits = policy(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
    allowed[env.response_token_ids] = True
    assert (logits[..., ~allowed] < MASK_VALUE / 2).all() and (logits[..., allowed] > MASK_VALUE / 2).all()
    # a masked (padding) label contributes 0, not NaN, and gradients stay finite
    from alignbench.logprobs import sequence_logps

    padded = ids.clone()
    padded[:, -1] = 0  # a shorter completion right-padded with <pad>
    am = torch.ones_like(ids)
    am[:, -1] = 0
    cm = am.clone()
    cm[:, 0] = 0
    out = sequence_logps(policy, padded, am, cm)
    out.sum.sum().backward()
    assert torch.isfinite(out.sum).all()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
    reloaded = ResponseMaskedGPT2.from_pretrained(str(env.reference_dir))
    assert torch.equal(env.logp_table(reloaded), env.ref_logp_raw)
    # the tuple interface and the labels loss follow the restricted distribution
    with torch.no_grad():
        tup = policy(input_ids=ids, return_dict=False)
        lossy = policy(input_ids=ids, labels=ids)
    assert isinstance(tup, tuple) and torch.allclose(tup[0], logits.detach())
    nll = -env.logp_table(policy)[torch.arange(3), torch.arange(3)].mean() / 3  # rows i: prompt i, response i
    assert float(lossy.loss) == pytest.approx(float(nll), rel=1e-5)


# ------------------------------------------------------------------------------------------ the frontier


def test_frontier_increasing_from_reference(env):
    f = env.frontier_curve()
    assert np.all(np.diff(f.kl) >= 0)
    assert np.all(np.diff(f.reward) >= -1e-12)
    e_ref = float(X.expected(env.ref_logp_table, env.reward_table))
    assert f.kl[0] == pytest.approx(0.0, abs=1e-9)
    assert f.reward[0] == pytest.approx(e_ref, abs=1e-5)
    # it ends at the best response of each prompt
    assert f.reward[-1] == pytest.approx(float(env.reward_table.max(-1).values.mean()), abs=1e-3)
    df = env.frontier()
    assert list(df.columns) == ["beta", "kl", "reward"] and len(df) == len(f.kl)
    # the exact frontier value at a KL budget agrees with interpolation on the fine grid
    for kl_value in (0.05, 0.5, 1.0):
        assert env.frontier_reward_at(kl_value) == pytest.approx(f.reward_at(kl_value), abs=1e-3)


def test_closed_form_optimum_matches_brute_force(env):
    beta, k = 0.7, 0
    ref, r = env.ref_logp_table[k], env.reward_table[k]
    star = env.optimal_logp(beta)[k]
    # first-order condition: r(y) - beta log(pi*(y)/pi_ref(y)) is the same constant (beta log Z) for every y
    c = r - beta * (star - ref)
    assert float(c.max() - c.min()) < 1e-9
    # brute force: maximise E_p[r] - beta KL(p || pi_ref) over a free tabular policy
    theta = torch.zeros_like(ref, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        lp = theta.log_softmax(-1)
        obj = (lp.exp() * r).sum() - beta * (lp.exp() * (lp - ref)).sum()
        (-obj).backward()
        return -obj

    for _ in range(5):
        opt.step(closure)
    assert torch.allclose(theta.detach().softmax(-1), star.exp(), atol=1e-5)


# ------------------------------------------------------------------------------------------ gold reward


def test_reward_standardised_under_reference(env):
    p = env.ref_logp_table.exp()
    r = env.reward_table
    mean = (p * r).sum(-1)
    var = (p * (r - mean[:, None]) ** 2).sum(-1)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)  # per prompt
    assert torch.allclose(var, torch.ones_like(var), atol=1e-5)
    assert abs(float(X.expected(env.ref_logp_table, r))) < 1e-5  # prompts weighted uniformly
    assert abs(float(X.expected(env.ref_logp_table, r ** 2)) - 1.0) < 1e-5


def test_gold_reward_parses_strings(env):
    k = torch.tensor([0, 1, 2, 2])
    y = torch.tensor([0, 5, 26, 13])
    prompts = [env.prompt_strings[i] for i in k]
    completions = [env.responses[i] for i in y]
    out = env.gold_reward(prompts, completions)
    assert out.shape == (4,)
    assert torch.allclose(out.double(), env.reward_table[k, y], atol=1e-6)
    # not L response tokens: the prompt's lowest valid reward
    bad = env.gold_reward(["<p1>", "<p1>", "<p1>"], ["t0 t1", "t0 <p2> t1", "t0 t1 t2 t0"])
    assert torch.allclose(bad.double(), env.reward_table[1].min().expand(3), atol=1e-6)
    with pytest.raises(DataError):
        env.gold_reward(["<p9>"], ["t0 t0 t0"])


def test_reward_of_sampled_completions(env):
    from alignbench.generation import sample

    s = sample(env.reference, env.tokenizer, ["<p0>", "<p1>"] * 16, env.generation, generator_seed=0)
    assert s.completions.shape == (32, 3)
    assert (env.response_index(s.texts) >= 0).all()  # masked logits: only response tokens are sampled
    assert env.gold_reward(["<p0>", "<p1>"] * 16, s.texts).shape == (32,)


# ------------------------------------------------------------------------------------------ preference data


def _pair_rewards(env, split="train"):
    k, c, r = env.pair_index[split]
    return env.reward_table.numpy()[k, c], env.reward_table.numpy()[k, r]


def test_preference_data(env):
    from alignbench.data import validate_rows

    tr, ev = env.preferences["train"], env.preferences["eval"]
    assert len(tr) == 1024 and len(ev) == 256
    for ds, split in ((tr, "train"), (ev, "eval")):
        assert set(ds.column_names) == {"prompt", "chosen", "rejected"}
        validate_rows(ds, "paired", split=split)
        assert all(c != r for c, r in zip(ds["chosen"], ds["rejected"]))
        assert set(ds["prompt"]) <= set(env.prompt_strings)
    # the string columns agree with the index arrays
    k, c, r = env.pair_index["train"]
    assert tr["chosen"][:5] == [env.responses[i] for i in c[:5]] and tr["prompt"][:5] == [env.prompt_strings[i] for i in k[:5]]
    # Bradley-Terry labels agree with the gold reward well above chance
    rc, rr = _pair_rewards(env)
    assert (rc > rr).mean() > 0.6
    # the training pairs cover what unseen_mass counts
    assert env.seen_in_train[torch.from_numpy(k), torch.from_numpy(c)].all()


def test_deterministic_labels_and_noise(env, cache):
    det = _variant(env, cache, labels="deterministic")
    assert det.loaded_from_cache  # labels do not touch the reference
    rc, rr = _pair_rewards(det)
    assert (rc >= rr).all()
    # same pairs as the BT data, only the labels differ
    kb, cb, rb = env.pair_index["train"]
    kd, cd, rd = det.pair_index["train"]
    assert np.array_equal(kb, kd)
    assert np.array_equal(np.minimum(cb, rb), np.minimum(cd, rd))
    noisy = _variant(env, cache, labels="deterministic", label_noise=0.25)
    rc, rr = _pair_rewards(noisy)
    flipped = (rc < rr).mean()
    assert abs(flipped - 0.25) < 0.05  # 1024 pairs: standard error ~0.014
    assert det.fingerprint != env.fingerprint != noisy.fingerprint


# ------------------------------------------------------------------------------------------ caching


def test_second_setup_loads_the_cached_reference(env, cache):
    folder = reference_folder(env.config, cache)
    assert env.reference_dir == folder
    weights = folder / "model.safetensors"
    assert weights.exists() and (folder / "tokenizer.json").exists()
    mtime = weights.stat().st_mtime_ns
    again = ExactTask(env.config).setup(cache, CPU)
    assert again.loaded_from_cache
    assert weights.stat().st_mtime_ns == mtime
    assert torch.equal(again.ref_logp_raw, env.ref_logp_raw)
    assert torch.equal(again.reward_table, env.reward_table)
    assert again.fingerprint == env.fingerprint
    assert again.preferences["train"]["chosen"] == env.preferences["train"]["chosen"]
    # the folder is a loadable save_pretrained checkpoint
    from alignbench.models import load_causal_lm, load_tokenizer

    assert load_tokenizer(folder).get_vocab() == env.tokenizer.get_vocab()
    assert load_causal_lm(folder).config.vocab_size == len(env.tokenizer)


def test_damaged_cache_is_rebuilt(env, tmp_path):
    import shutil

    folder = reference_folder(env.config, tmp_path)
    shutil.copytree(env.reference_dir, folder)  # a copy of the fixture's cache entry, then damaged
    (folder / "model.safetensors").write_bytes(b"garbage")
    rebuilt = ExactTask(env.config).setup(tmp_path, CPU)
    assert not rebuilt.loaded_from_cache and rebuilt.reference_dir == folder
    assert torch.allclose(rebuilt.ref_logp_raw, env.ref_logp_raw, atol=1e-6)  # same seeded build
    assert ExactTask(env.config).setup(tmp_path, CPU).loaded_from_cache


def _setup_in_child(args):
    cfg, cache = args
    torch.set_num_threads(1)
    e = ExactTask(cfg).setup(cache, CPU)
    return e.loaded_from_cache, e.ref_logp_raw.numpy(), e.reference_dir.name


def test_concurrent_setups_build_once(env, tmp_path):
    """Two processes racing on an empty cache: one builds under the lock, the other waits and loads."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_setup_in_child, [(env.config, tmp_path)] * 2)
    assert sorted(r[0] for r in results) == [False, True]
    assert np.array_equal(results[0][1], results[1][1])
    assert [p.name for p in (tmp_path / "exact").iterdir() if not p.name.startswith(".")] == [results[0][2]]


# ------------------------------------------------------------------------------------------ config


def test_config_validation():
    with pytest.raises(ConfigError) as e:
        ExactConfig(vocab_size=10, length=4)
    assert e.value.field == "length" and "vocab_size" in str(e.value)
    ExactConfig(vocab_size=8, length=4)  # 4096 is allowed
    with pytest.raises(ConfigError, match="vocab_sz"):
        from_mapping(ExactConfig, {"vocab_sz": 4})
    with pytest.raises(ConfigError, match="labels"):
        from_mapping(ExactConfig, {"labels": "random"})
    with pytest.raises(ConfigError, match="label_noise"):
        from_mapping(ExactConfig, {"label_noise": 0.6})
    with pytest.raises(ConfigError, match="num_prompts"):
        from_mapping(ExactConfig, {"num_prompts": 0})
    cfg = from_mapping(ExactConfig, {"vocab_size": "4", "length": 3.0})
    assert cfg.vocab_size == 4 and cfg.length == 3 and cfg.num_responses == 64


def test_registered_with_train_defaults():
    from alignbench.registry import get_task

    assert get_task("exact") is ExactTask
    tc = ExactTask(ExactConfig()).train_config()
    assert tc.steps == ExactTask.train_defaults["steps"] and tc.batch_size == ExactTask.train_defaults["batch_size"]


# ------------------------------------------------------------------------------------------ best-of-n


def test_best_of_n_exact(env):
    ref, r = env.ref_logp_table, env.reward_table
    assert torch.allclose(X.best_of_n_logp(ref, r, 1), ref, atol=1e-12)
    bon = X.best_of_n_logp(ref, r, 4)
    assert torch.allclose(torch.logsumexp(bon, -1), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    m = env.evaluate_table(bon).metrics
    assert m["reward/gold"] > float(X.expected(ref, r)) + 0.1
    assert m["kl/ref"] <= math.log(4) - 3 / 4 + 1e-9
    assert m["exact/frontier_gap"] >= -1e-9
