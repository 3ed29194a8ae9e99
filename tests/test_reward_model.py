"""The learned reward model: Bradley-Terry training on the exact task's pairs, caching, padding, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from alignbench import reward_model as RM
from alignbench.config import from_mapping
from alignbench.errors import AlignbenchError, ConfigError
from .conftest import SMALL_EXACT
from alignbench.registry import get_task

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def env(cache_dir):
    # conftest.py's session-wide cache: the test modules share the reference model
    task_cls = get_task("exact")
    return task_cls(from_mapping(task_cls.config_cls, SMALL_EXACT)).setup(cache_dir, CPU)


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    cache = tmp_path_factory.mktemp("rm-cache")
    RM.clear_memo()
    rm = RM.get_reward_model(env, cache, 0, CPU, show_progress=False)
    return rm, cache


def oracle_accuracy(env) -> float:
    """Accuracy of the gold reward itself on the held-out BT-labelled pairs (the ceiling)."""
    ds = env.preferences["eval"]
    g_c = env.gold_reward(list(ds["prompt"]), list(ds["chosen"]))
    g_r = env.gold_reward(list(ds["prompt"]), list(ds["rejected"]))
    return float(((g_c > g_r).float() + 0.5 * (g_c == g_r).float()).mean())


def test_reward_model_learns_the_preferences(env, trained):
    rm, cache = trained
    m = rm.metrics
    ceiling = oracle_accuracy(env)
    assert m["cached"] is False
    assert m["eval_accuracy"] > 0.6, m
    assert m["eval_accuracy"] > ceiling - 0.1, (m["eval_accuracy"], ceiling)
    assert m["gold_corr"] > 0.5, m
    assert m["eval_loss"] < 0.69  # below the chance loss log 2
    # weights and metrics on disk, next to each other
    folder = cache / "reward_models" / rm.key
    assert (folder / "model.safetensors").is_file()
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["eval_accuracy"] == pytest.approx(m["eval_accuracy"])
    assert saved["gold_corr"] == pytest.approx(m["gold_corr"])
    assert saved["fingerprint"] == env.fingerprint


def test_reward_model_is_cached_and_memoised(env, trained, monkeypatch):
    rm, cache = trained
    assert RM.get_reward_model(env, cache, 0, CPU, show_progress=False) is rm  # in-process memo

    def boom(*a, **k):
        raise AssertionError("the reward model was retrained instead of loaded")

    monkeypatch.setattr(RM, "train_reward_model", boom)
    RM.clear_memo()
    loaded = RM.get_reward_model(env, cache, 0, CPU, show_progress=False)
    assert loaded is not rm and loaded.metrics["cached"] is True
    ids = torch.cat([env.prompt_ids[:, None], env.response_ids[:4]], 1)
    am = torch.ones_like(ids)
    torch.testing.assert_close(loaded.score(ids, am), rm.score(ids, am))
    # another seed is another reward model (and would be trained)
    with pytest.raises(AssertionError, match="retrained"):
        RM.get_reward_model(env, cache, 1, CPU, show_progress=False)


def test_scores_do_not_depend_on_padding_side(trained):
    rm, _ = trained
    a, b = [3, 8, 9, 10], [4, 9]
    right = torch.tensor([a, b + [0, 0]])
    left = torch.tensor([a, [0, 0] + b])
    am_r = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    am_l = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    alone = torch.cat([rm.score(torch.tensor([a]), torch.ones(1, 4, dtype=torch.long)),
                       rm.score(torch.tensor([b]), torch.ones(1, 2, dtype=torch.long))])
    torch.testing.assert_close(rm.score(right, am_r), alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm.score(left, am_l), alone, atol=1e-5, rtol=1e-5)


def test_training_does_not_move_the_global_random_stream(env, tmp_path):
    cfg = {"epochs": 1, "gold_corr_samples": 0, "evals_per_epoch": 1}
    torch.manual_seed(123)
    RM.get_reward_model(env, tmp_path, 5, CPU, show_progress=False, config=cfg)
    after = torch.rand(3)
    torch.manual_seed(123)
    torch.testing.assert_close(torch.rand(3), after)


def test_no_preferences_is_a_one_line_error_naming_the_field(env):
    class NoPrefs:
        task_name = "toy"
        preferences = None
        fingerprint = "x"

    with pytest.raises(AlignbenchError, match="preferences") as e:
        RM.get_reward_model(NoPrefs(), "/nonexistent", 0, CPU)
    assert "\n" not in str(e.value)


def test_bad_reward_model_config_names_the_field():
    with pytest.raises(ConfigError) as e:
        from_mapping(RM.RewardModelConfig, {"epochs": 0}, where="reward_model")
    assert e.value.field == "reward_model.epochs"


def test_pearson():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert RM.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert RM.pearson(a, -a) == pytest.approx(-1.0)
