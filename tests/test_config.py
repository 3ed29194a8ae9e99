"""Typed configs: coercion, unknown keys with did-you-mean, validation naming the field."""

import math

import pytest

from alignbench.config import TrainConfig, from_mapping, load_yaml, stable_hash
from alignbench.errors import ConfigError
from alignbench.sweep import SweepConfig, load_sweep_config


def test_coercion_from_strings_and_lists():
    cfg = from_mapping(SweepConfig, {"tasks": "exact,sentiment", "betas": ["0.1", 1], "seeds": "0,1", "steps": "50"})
    assert cfg.tasks == ("exact", "sentiment")
    assert cfg.betas == (0.1, 1.0)
    assert cfg.seeds == (0, 1)
    assert cfg.steps == 50


@pytest.mark.parametrize("data,field", [
    ({"stepz": 3}, "stepz"),
    ({"steps": 0}, "steps"),
    ({"steps": "ten"}, "steps"),
    ({"lr": -1.0}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"precision": "fp8"}, "precision"),
    ({"batch_size": True}, "batch_size"),
])
def test_train_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        from_mapping(TrainConfig, data)
    assert e.value.field == field
    assert "\n" not in str(e.value)


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        from_mapping(TrainConfig, {"stepss": 3})


@pytest.mark.parametrize("betas", [[0.1, 0.0], [-1], ["abc"], [float("inf")]])
def test_sweep_betas_validated(betas):
    with pytest.raises(ConfigError, match="betas"):
        from_mapping(SweepConfig, {"betas": betas})


def test_yaml_safe_loader_and_flags_override(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("tasks: [exact]\nsteps: 20\nout: a\n")
    cfg = load_sweep_config(str(p), {"out": "b", "steps": None})
    assert (cfg.tasks, cfg.steps, cfg.out) == (("exact",), 20, "b")
    p.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(p)


def test_stable_hash_is_order_independent():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_run_ids_survive_new_fields_with_defaults():
    """Run ids hash only non-default fields: adding a config field with a default keeps old ids valid."""
    from dataclasses import dataclass, field

    from alignbench.config import non_default

    @dataclass(frozen=True)
    class Old:
        a: int = 1

    @dataclass(frozen=True)
    class New:
        a: int = 1
        b: float = 2.0
        c: tuple = field(default_factory=tuple)

    assert stable_hash(non_default(Old(a=3))) == stable_hash(non_default(New(a=3)))
    assert non_default(New(a=1, b=2.5)) == {"b": 2.5}
    assert non_default(TrainConfig()) == {}


def test_a_task_sets_training_fields_per_method_and_the_sweep_wins(tmp_path):
    from alignbench.config import from_mapping
    from alignbench.planning import SweepConfig, plan

    def evals(**kw):
        cfg = from_mapping(SweepConfig, {"out": str(tmp_path / "unused"), "tasks": ["sentiment"], "seeds": [0],
                                         "methods": ["dpo", "ppo", "rloo"], "betas": [0.1], **kw})
        return {s.method: (s.train.eval_every, s.train.steps) for s in plan(cfg).specs}

    # the sentiment task's defaults: 4 evaluations after step 0 for each (100 steps; 20 and 50 iterations)
    assert evals() == {"dpo": (25, 100), "ppo": (5, 100), "rloo": (13, 100)}
    assert evals(train_args={"eval_every": 7}) == {"dpo": (7, 100), "ppo": (7, 100), "rloo": (7, 100)}
    assert evals(eval_every=9) == {"dpo": (9, 100), "ppo": (9, 100), "rloo": (9, 100)}
