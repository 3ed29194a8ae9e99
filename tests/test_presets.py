"""Real-model presets (imdb, hh_rlhf, tldr) run offline through their own code paths on tiny local copies:
tiny GPT-2 / GPT-NeoX (Pythia-like) policies, tiny sequence-classification judges, a tiny byte-level BPE
tokenizer and tiny datasets (save_to_disk folders, jsonl / parquet files)."""

import json

import pytest
import torch

from alignbench import degeneration as DG
from alignbench.config import from_mapping
from alignbench.data import tokenize
from alignbench.errors import AlignbenchError
from alignbench.logprobs import sequence_logps
from alignbench.registry import get_task

POS = ["great", "wonderful", "brilliant", "lovely", "superb"]
NEG = ["awful", "boring", "terrible", "dull", "bad"]


def _reviews(n):
    out = []
    for i in range(n):
        words = POS if i % 2 == 0 else NEG
        out.append(f"This movie was {words[i % 5]} and the acting was {words[(i + 2) % 5]}.<br /><br />I {'loved' if i % 2 == 0 else 'hated'} it.")
    return out


def _dialogue(i):
    return f"\n\nHuman: Can you tell me about topic {i}?\n\nAssistant: Sure, which part?\n\nHuman: The history please.\n\nAssistant:"


def _bpe_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from datasets import Dataset, DatasetDict
    from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, GPTNeoXConfig,
                              GPTNeoXForCausalLM)

    root = tmp_path_factory.mktemp("preset-assets")
    reviews = _reviews(40)
    corpus = reviews + [_dialogue(i) + " It began long ago." for i in range(20)] + \
        ["SUBREDDIT: r/test\n\nTITLE: my day\n\nPOST: I went out and it rained.\n\nTL;DR: rain ruined it"] * 5
    tok = _bpe_tokenizer(corpus)
    v = len(tok)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_positions=256, n_layer=1, n_embd=32, n_head=2,
                                      bos_token_id=eos, eos_token_id=eos))
    gpt2.save_pretrained(root / "gpt2-tiny")
    tok.save_pretrained(root / "gpt2-tiny")
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=v, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, max_position_embeddings=512, bos_token_id=eos,
                                            eos_token_id=eos))
    neox.save_pretrained(root / "pythia-tiny")
    tok.save_pretrained(root / "pythia-tiny")
    for name, labels in (("sentiment-judge", {0: "NEGATIVE", 1: "POSITIVE"}), ("rm-judge", None)):
        kw = {"num_labels": 2, "id2label": labels, "label2id": {b: a for a, b in labels.items()}} if labels else {"num_labels": 1}
        judge = GPT2ForSequenceClassification(GPT2Config(vocab_size=v, n_positions=512, n_layer=1, n_embd=16,
                                                         n_head=2, pad_token_id=eos, **kw))
        judge.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    # IMDb-like: a save_to_disk DatasetDict with train / test
    DatasetDict({"train": Dataset.from_dict({"text": reviews[:30], "label": [i % 2 for i in range(30)]}),
                 "test": Dataset.from_dict({"text": reviews[30:], "label": [i % 2 for i in range(10)]})}
                ).save_to_disk(str(root / "imdb"))
    # HH-like: a folder of jsonl files (train / test by file name)
    (root / "hh").mkdir()
    for split, rng in (("train", range(0, 16)), ("test", range(16, 22))):
        rows = [{"chosen": _dialogue(i) + " It began long ago.", "rejected": _dialogue(i) + " No."} for i in rng]
        (root / "hh" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # TL;DR, original comparisons format: one parquet file (split-less: divided into train / eval)
    info = [{"post": f"I went out on day {i} and it rained.", "title": f"my day {i}", "subreddit": "test"} for i in range(20)]
    Dataset.from_dict({"info": info,
                       "summaries": [[{"text": "rain ruined it"}, {"text": "day"}] for _ in range(20)],
                       "choice": [i % 2 for i in range(20)]}).to_parquet(str(root / "tldr.parquet"))
    # TL;DR, TRL format: jsonl with prompt / chosen / rejected
    (root / "tldr_trl.jsonl").write_text("".join(
        json.dumps({"prompt": f"POST: day {i} was wet.\n\nTL;DR:", "chosen": " rain", "rejected": " sun"}) + "\n"
        for i in range(20)))
    return root


COMMON = {"n_eval_prompts": 4, "n_eval_samples": 2, "n_eval_pairs": 4, "max_new_tokens": 6, "eval_batch_size": 8,
          "judge_batch_size": 8}


def _configs(a):
    return {
        "imdb": {"policy": str(a / "gpt2-tiny"), "judge": str(a / "sentiment-judge"), "dataset": str(a / "imdb"),
                 "n_train_prompts": 6, "completions_per_prompt": 3, "sft_steps": 2, "sft_batch_size": 4,
                 "sft_lr": 1e-3, "sft_max_tokens": 32, **COMMON},
        "hh_rlhf": {"policy": str(a / "pythia-tiny"), "judge": str(a / "rm-judge"), "dataset": str(a / "hh"),
                    "n_train_pairs": 8, **COMMON},
        "tldr": {"policy": str(a / "pythia-tiny"), "judge": str(a / "rm-judge"), "dataset": str(a / "tldr.parquet"),
                 "dataset_config": None, **COMMON},
    }


def _setup(name, overrides, cache):
    task_cls = get_task(name)
    return task_cls(from_mapping(task_cls.config_cls, overrides)).setup(cache, torch.device("cpu"))


def _dpo_step(env):
    """One DPO step on a preference batch through the shared code: tokenize, sequence_logps, loss, AdamW."""
    policy = env.make_policy()
    batch = tokenize(env.preferences["train"].select(range(min(4, len(env.preferences["train"])))), "paired",
                     env.tokenizer)
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    logr = {}
    for col in ("chosen", "rejected"):
        ids, am, cm = batch.input_ids[col], batch.attention_mask[col], batch.completion_mask[col]
        with torch.no_grad():
            ref = sequence_logps(env.reference, ids, am, cm).sum
        logr[col] = sequence_logps(policy, ids, am, cm).sum - ref
    loss = -torch.nn.functional.logsigmoid(0.1 * (logr["chosen"] - logr["rejected"])).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))


@pytest.mark.parametrize("name", ["imdb", "hh_rlhf", "tldr"])
def test_preset_runs_offline_on_local_copies(name, assets, tmp_path):
    env = _setup(name, _configs(assets)[name], tmp_path)
    for split in ("train", "eval"):
        ds = env.preferences[split]
        assert len(ds) > 0 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert len(env.prompts["eval"]) >= 2 and env.prompts["train"]
    res = env.evaluate(env.reference, seed=0)
    m = res.metrics
    for key in ("reward/gold", "reward/gold_se", "kl/ref", "kl/ref_k3", "winrate/vs_ref", "policy/entropy",
                "policy/length"):
        assert key in m
    assert m["kl/ref"] == pytest.approx(0.0, abs=1e-4)
    assert 0.0 <= m["winrate/vs_ref"] <= 1.0
    # degeneration metrics and reference examples from the shared SampledTaskEnv code; the task has text
    for key in DG.METRICS:
        assert key in m and DG.reference_name(key) in m, key
    assert m[DG.REF_LOGP] < 0 and 0.0 < m[DG.DISTINCT1] <= 1.0
    assert env.describe()["has_text"] is True
    assert len(res.per_prompt["ref_completions"]) == len(env.prompts["eval"])
    assert len(res.per_prompt["reward"]) == len(env.prompts["eval"])
    _dpo_step(env)
    # a second setup reuses the cached SFT model and data
    again = _setup(name, _configs(assets)[name], tmp_path)
    assert again.fingerprint == env.fingerprint
    assert again.preferences["train"]["chosen"] == env.preferences["train"]["chosen"]


def test_imdb_details(assets, tmp_path):
    env = _setup("imdb", _configs(assets)["imdb"], tmp_path)
    assert env.reference_dir.name == "reference" and (env.reference_dir / "config.json").exists()  # SFT'd copy
    assert env.judge.label_index == 1  # POSITIVE, found from id2label
    r = env.gold_reward(["This movie"], [" was great"])
    assert 0.0 <= float(r[0]) <= 1.0
    for p in env.prompts["eval"]:
        assert 1 <= len(env.tokenizer(p, add_special_tokens=False)["input_ids"]) <= 8
    assert len(env.preferences["train"]) <= 6 * 3  # at most k(k-1)/2 = 3 pairs per prefix


def test_hh_split_and_tldr_trl_format(assets, tmp_path):
    from alignbench.tasks.hh_rlhf import split_transcript

    p, r = split_transcript(_dialogue(3) + " It began.")
    assert p.endswith("\n\nAssistant:") and r == " It began." and p.count("Assistant:") == 2
    env = _setup("hh_rlhf", _configs(assets)["hh_rlhf"], tmp_path)
    row = env.preferences["train"][0]
    assert row["prompt"].endswith("Assistant:") and row["chosen"].endswith("<|endoftext|>")
    cfg = {**_configs(assets)["tldr"], "dataset": str(assets / "tldr_trl.jsonl")}
    env = _setup("tldr", cfg, tmp_path)
    assert env.preferences["train"][0]["chosen"].startswith(" rain")
    # the split-less file is divided: no eval prompt is a training prompt
    assert not set(env.prompts["eval"]) & set(env.prompts["train"])


@pytest.mark.parametrize("field,value,needle", [
    ("policy", "/nonexistent/gpt2-large", "/nonexistent/gpt2-large"),
    ("judge", "no-such-org/no-such-judge", "no-such-org/no-such-judge"),
    ("dataset", "/nonexistent/imdb.jsonl", "/nonexistent/imdb.jsonl"),
])
def test_missing_sources_fail_fast_with_one_line(field, value, needle, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {**_configs(assets)["imdb"], field: value}
    with pytest.raises(AlignbenchError) as info:  # offline: fails at once, no network retry
        _setup("imdb", cfg, tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{field}:") and needle in msg
    assert "local" in msg  # says how to point the preset at a local copy


def test_hub_names_are_defaults_and_remote_code_is_off():
    for name, policy in (("imdb", "gpt2-large"), ("hh_rlhf", "EleutherAI/pythia-410m"), ("tldr", "EleutherAI/pythia-410m")):
        cfg = get_task(name).config_cls()
        assert cfg.policy == policy and cfg.trust_remote_code is False
    assert get_task("imdb").config_cls().judge == "siebert/sentiment-roberta-large-english"
    assert get_task("tldr").config_cls().dataset == "openai/summarize_from_feedback"


def test_tokenizer_that_does_not_match_the_model_is_refused(assets, tmp_path):
    """A policy folder whose tokenizer has more tokens than the model has embeddings: one line, naming it."""
    import shutil

    from alignbench.tokenization import build_word_tokenizer

    bad = tmp_path / "gpt2-wrong-tokenizer"
    shutil.copytree(assets / "gpt2-tiny", bad)
    for f in bad.glob("*token*"):
        f.unlink()
    build_word_tokenizer([f"w{i}" for i in range(2000)]).save_pretrained(bad)
    with pytest.raises(AlignbenchError) as info:
        _setup("imdb", {**_configs(assets)["imdb"], "policy": str(bad)}, tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("policy:") and "do not fit" in msg


def test_dataset_with_zero_rows_is_refused(assets, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(AlignbenchError) as info:
        _setup("tldr", {**_configs(assets)["tldr"], "dataset": str(empty)}, tmp_path / "cache")
    assert "\n" not in str(info.value) and str(info.value) == f"dataset: '{empty}' has zero rows"
