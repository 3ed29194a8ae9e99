"""Best-of-N: exact BoN on the exact task, its sweep over n, the sampled branch and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from alignbench import io
from alignbench.api import EnumerableEnv, EvalResult, SampleEvaluable
from alignbench.config import from_mapping
from alignbench.errors import ConfigError
from .conftest import SMALL_EXACT
from .runs import run_method
from alignbench.registry import get_method, get_task
from alignbench.runner import RunSpec, execute
from alignbench.methods.bon import BestOfN, BestOfNConfig, bon_kl_bound, rm_score_table

CPU = torch.device("cpu")


# fixtures `task`, `cache` and `env` (the SMALL_EXACT task, built once per session): tests/conftest.py


def _run(task, env, cache, out, n: int, **extra):
    summary, rows, _ = run_method(task, env, cache, out, "bon", {"n": n, **extra}, name=f"bon-{n}")
    return summary, rows


def test_registration_and_config():
    cls = get_method("bon")
    assert cls is BestOfN
    assert cls.data_format == "online" and cls.needs_reward_model and cls.sweep_param == "n"
    assert cls.default_grid == (1, 2, 4, 8, 16, 32, 64)
    assert not hasattr(BestOfNConfig(), "beta")
    with pytest.raises(ConfigError) as e:
        from_mapping(BestOfNConfig, {"n": 0})
    assert e.value.field == "n"
    assert from_mapping(BestOfNConfig, {"n": 8.0}).n == 8  # sweep values may arrive as floats


def test_analytic_kl_bound():
    assert bon_kl_bound(1) == 0.0
    assert bon_kl_bound(4) == pytest.approx(math.log(4) - 0.75)


def test_exact_bon_sweep_improves_gold_reward_within_the_kl_bound(task, env, cache, tmp_path):
    results = {}
    for n in (1, 4, 16):
        summary, rows = _run(task, env, cache, tmp_path, n)
        assert summary["status"] == "ok", summary
        assert summary["sweep_param"] == "n" and summary["sweep_value"] == n
        assert summary["rm_accuracy"] > 0.6
        (row,) = rows
        assert row["step"] == 0 and row["bon/n"] == n and row["kl/is_bound"] == 0.0
        # exact KL(pi_BoN || pi_ref) never exceeds the analytic log n - (n-1)/n (Beirami et al. 2024)
        assert row["kl/ref"] <= bon_kl_bound(n) + 1e-9
        results[n] = row
    # n = 1 is the reference itself
    assert results[1]["kl/ref"] == pytest.approx(0.0, abs=1e-9)
    assert results[1]["reward/gold"] == pytest.approx(float((env.ref_logp_table.exp() * env.reward_table).sum(-1).mean()), abs=1e-9)
    # more samples: higher RM score (exactly monotone) and, with a decent RM, higher gold reward
    assert results[1]["bon/rm_score"] < results[4]["bon/rm_score"] < results[16]["bon/rm_score"]
    gold = [results[n]["reward/gold"] for n in (1, 4, 16)]
    assert gold[0] < gold[1] <= gold[2] + 0.05, gold
    assert results[16]["kl/ref"] > results[4]["kl/ref"] > 0


def test_score_table_matches_direct_scoring(env, cache):
    from alignbench.reward_model import get_reward_model

    rm = get_reward_model(env, cache, 0, CPU, show_progress=False)
    table = rm_score_table(env, rm)
    k, n = env.ref_logp_table.shape
    assert table.shape == (k, n)
    ids = torch.tensor([[int(env.prompt_ids[2])] + env.response_ids[5].tolist()])
    assert float(table[2, 5]) == pytest.approx(float(rm.score(ids, torch.ones_like(ids))[0]), abs=1e-5)


class SampledView:
    """The exact env seen as a sampled task: no EnumerableEnv interface, the SampleEvaluable one instead."""

    exact = False
    HIDDEN = ("ref_logp_table", "reward_table", "prompt_ids", "response_ids", "evaluate_table")

    def __init__(self, env):
        self._env = env
        self.calls = []

    def __getattr__(self, name):
        if name in self.HIDDEN:
            raise AttributeError(name)
        return getattr(self._env, name)

    def evaluate_samples(self, prompts, completions, *, kl, kl_se, kl_is_bound, lengths=None, seed=0):
        self.calls.append((list(prompts), list(completions), kl, kl_se, kl_is_bound))
        assert lengths is not None and all(n == self._env.config.length for n in lengths)
        r = self._env.gold_reward(prompts, completions)
        return EvalResult(metrics={"reward/gold": float(r.mean()), "reward/gold_se": float(r.std() / len(r) ** 0.5),
                                   "kl/ref": kl, "kl/ref_se": kl_se})


def test_sampled_branch_keeps_the_rm_best_and_reports_the_bound(task, env, cache, tmp_path):
    view = SampledView(env)
    assert not isinstance(view, EnumerableEnv) and isinstance(view, SampleEvaluable)
    n = 8
    summary, rows = _run(task, view, cache, tmp_path, n, samples_per_prompt=64)
    assert summary["status"] == "ok", summary
    ((prompts, completions, kl, kl_se, is_bound),) = view.calls
    assert len(prompts) == len(completions) == 64 * len(env.prompts["eval"])
    assert kl == pytest.approx(bon_kl_bound(n)) and kl_se == 0.0 and is_bound is True
    (row,) = rows
    assert row["kl/is_bound"] == 1.0 and summary["kl_is_bound"] == 1.0
    assert row["bon/rm_score"] > row["bon/rm_score_ref"]
    # sampled best-of-8 agrees with the exact best-of-8 within sampling noise
    exact_summary, _ = _run(task, env, cache, tmp_path / "exact", n)
    assert abs(row["reward/gold"] - exact_summary["reward"]) < 4 * row["reward/gold_se"] + 0.05
