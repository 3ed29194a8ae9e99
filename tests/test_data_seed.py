"""The data seed: a task's preference sample (and the reward model trained on it) reseeded apart from its reference,
gold reward and prompts; crossed with the run seeds by the sweep; bad values refused in one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from alignbench.cli import main
from alignbench.config import from_mapping
from alignbench.errors import ConfigError
from alignbench.planning import SweepConfig, plan
from alignbench.registry import get_task

from .conftest import TINY_EXACT

CPU = torch.device("cpu")


def _env(cache_dir, **extra):
    t = get_task("exact")
    return t(from_mapping(t.config_cls, {**TINY_EXACT, **extra})).setup(cache_dir, CPU)


def _same_pairs(a, b) -> bool:
    return all(np.array_equal(x, y) for s in ("train", "eval") for x, y in zip(a.pair_index[s], b.pair_index[s]))


def test_default_data_seed_is_the_task_seed_and_another_changes_only_the_pairs(tiny_exact_env, cache_dir):
    default = tiny_exact_env
    assert _same_pairs(default, _env(cache_dir, data_seed=0))  # None: the task seed's streams, as before
    other = _env(cache_dir, data_seed=1)
    assert not _same_pairs(default, other)
    assert list(default.preferences["train"]["chosen"]) != list(other.preferences["train"]["chosen"])
    assert torch.equal(default.ref_logp_table, other.ref_logp_table)  # the reference is the task's
    assert torch.equal(default.reward_table, other.reward_table) and default.prompts == other.prompts
    assert default.fingerprint != other.fingerprint  # caches (reference log-probs, reward models) keyed apart


def _plan(**kw):
    return plan(from_mapping(SweepConfig, {"methods": ["dpo"], "betas": [0.1], "task_args": {"exact": TINY_EXACT},
                                           "out": "/tmp/alignbench-test-data-seed-unused", **kw}))


def test_sweep_crosses_data_seeds_with_seeds_and_run_ids_tell_them_apart():
    base = _plan(seeds=[0, 1])
    assert all(re.match(r"^exact-dpo-beta0\.1-s[01]-[0-9a-f]{6}$", s.run_id) for s in base.specs)
    assert all("data_seed" not in s.identity()["task_config"] for s in base.specs)  # ids as before the option
    p = _plan(seeds=[0, 1], data_seeds=[0, 2])
    assert [(s.seed, s.task_config.data_seed) for s in p.specs] == [(0, 0), (1, 0), (0, 2), (1, 2)]
    assert len({s.run_id for s in p.specs}) == 4 and all(f"-d{s.task_config.data_seed}-" in s.run_id for s in p.specs)
    assert p.task_of(p.specs[2]).config.data_seed == 2 and p.task_of(p.specs[0]) is p.tasks["exact"]


@pytest.mark.parametrize("args, field", [
    (["--data-seeds", "-1"], "data_seeds[0]"),
    (["--data-seeds", "1.5"], "data_seeds[0]"),
    (["--data-seeds", "1,1"], "data_seeds"),
    (["--task-arg=exact.data_seed=-2"], "task_args.exact.data_seed"),
    (["--task-arg=exact.data_seed=0.5"], "task_args.exact.data_seed"),
    (["--data-seeds", "1", "--task-arg=exact.data_seed=1"], "task_args.exact.data_seed"),
])
def test_bad_data_seed_is_one_line_naming_the_field(args, field, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", "--task", "exact", "--methods", "dpo", "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err
    assert not out.exists()


def test_a_task_without_a_data_seed_field_is_refused():
    from alignbench.api import Task
    from alignbench.planning import data_seed_configs

    class Plain(Task):
        name = "plain"

        def setup(self, cache_dir, device):  # pragma: no cover - never built
            raise AssertionError

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        seed: int = 0

    cfg = from_mapping(SweepConfig, {"data_seeds": [1]})
    with pytest.raises(ConfigError, match="data_seeds: task 'plain' has no data_seed field"):
        data_seed_configs(cfg, "plain", Plain(Cfg()))
