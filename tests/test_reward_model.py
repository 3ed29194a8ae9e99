"""The learned reward model: Bradley-Terry training on the exact task's pairs, caching, padding, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from alignbench import reward_model as RM
from alignbench.config import from_mapping
from alignbench.errors import AlignbenchError, ConfigError

CPU = torch.device("cpu")


# fixtures `env` (the SMALL_EXACT task) and `reward_model` (its seed-0 RM, trained once per session): conftest.py


@pytest.fixture
def trained(reward_model, cache):
    return reward_model, cache


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


def test_bradley_terry_loss_hand_derived():
    # margins r_w - r_l = 1, 0, -2:
    #   -log sigma(1)  = log(1 + e^-1) = 0.31326168751822286
    #   -log sigma(0)  = log 2         = 0.69314718055994531
    #   -log sigma(-2) = log(1 + e^2)  = 2.12692801104297249
    #   mean = 3.13333687912114066 / 3 = 1.04444562637371355
    chosen = torch.tensor([1.5, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    loss = RM.bt_loss(chosen, rejected)
    assert loss.item() == pytest.approx(1.04444562637371355, abs=1e-12)
    loss.backward()
    # d/dr_w = -(1 - sigma(m)) / B = -sigma(-m) / 3: -0.26894142/3, -0.5/3, -0.88079708/3; d/dr_l = minus that
    want = -torch.tensor([0.2689414213699951, 0.5, 0.8807970779778823], dtype=torch.float64) / 3
    torch.testing.assert_close(chosen.grad, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(rejected.grad, -want, rtol=0, atol=1e-12)
    # only the margin matters (BT is shift invariant), and a large negative margin stays finite: log(1 + e^40) ~ 40
    assert RM.bt_loss(chosen.detach() + 7.0, rejected.detach() + 7.0).item() == pytest.approx(loss.item(), abs=1e-12)
    assert RM.bt_loss(torch.tensor([-20.0]), torch.tensor([20.0])).item() == pytest.approx(40.0, abs=1e-6)
