"""Multi-axis grids: METHOD.FIELD grids cross with the sweep axis; each cell is its own frontier point."""

import pandas as pd
import pytest

from alignbench.cli import main
from alignbench.errors import ConfigError
from alignbench.report.winrates import units
from alignbench.sweep import load_sweep_config, plan

from .conftest import TINY_EXACT, TINY_TRAIN


def cfg(tmp_path, grid, **over):
    return load_sweep_config(None, {"tasks": ["exact"], "methods": ["dpo", "kto"], "grid": grid,
                                    "out": str(tmp_path / "g"), **over})


def test_a_field_grid_crosses_the_sweep_axis(tmp_path):
    p = plan(cfg(tmp_path, {"dpo": [0.1, 1.0], "dpo.lr": [1e-4, 1e-3], "dpo.label_smoothing": [0.0, 0.1]}))
    dpo = [s for s in p.specs if s.method == "dpo"]
    assert len(dpo) == 2 * 2 * 2 and len({s.run_id for s in dpo}) == 8
    combos = {(s.method_config.beta, s.train.lr, s.method_config.label_smoothing) for s in dpo}
    assert combos == {(b, lr, ls) for b in (0.1, 1.0) for lr in (1e-4, 1e-3) for ls in (0.0, 0.1)}
    assert {s.variant for s in dpo} == {"label_smoothing=0, lr=0.0001", "label_smoothing=0, lr=0.001",
                                       "label_smoothing=0.1, lr=0.0001", "label_smoothing=0.1, lr=0.001"}
    kto = [s for s in p.specs if s.method == "kto"]  # another method keeps its own grid and the task's lr
    assert {s.variant for s in kto} == {""} and {s.train.lr for s in kto} == {1e-3}


@pytest.mark.parametrize("grid, field, words", [
    ({"dpo.nosuch": [1]}, "grid.dpo.nosuch", "unknown field"),
    ({"dpo.lr": [-1.0]}, "grid.dpo.lr", "must be > 0"),
    ({"dpo.label_smoothing": [0.7]}, "grid.dpo.label_smoothing", "[0, 0.5)"),
    ({"dpo.beta": [0.1]}, "grid.dpo.beta", "is the sweep axis"),
    ({"dpo.lr": [1e-3, 1e-3]}, "grid.dpo.lr[1]", "listed twice"),
    ({"ppo.lr": [1e-3]}, "grid.ppo.lr", "not in this sweep"),
])
def test_bad_field_grids_name_the_field(tmp_path, grid, field, words):
    with pytest.raises(ConfigError) as e:
        plan(cfg(tmp_path, grid))
    assert e.value.field == field and words in str(e.value)


def test_a_two_axis_sweep_runs_and_keeps_its_cells_apart(tmp_path, cache_dir, capsys):
    out = tmp_path / "two"
    args = ["sweep", "--task", "exact", "--methods", "dpo", "--grid", "dpo=0.1,1", "--grid", "dpo.lr=1e-4,1e-2",
            "--out", str(out), "--cache-dir", str(cache_dir), "--no-progress"]
    args += [f"--task-arg=exact.{k}={v}" for k, v in TINY_EXACT.items()]
    args += [f"--train-arg={k}={v}" for k, v in TINY_TRAIN.items()]
    assert main(args) == 0
    s = pd.read_csv(out / "summary.csv")
    assert len(s) == 4 and set(s["variant"]) == {"lr=0.0001", "lr=0.01"}
    us = units(s.assign(variant=s["variant"].fillna("")))
    assert len(us) == 4 and {u.label for u in us} == {f"dpo β={b}, lr={lr}" for b in ("0.1", "1") for lr in ("0.0001", "0.01")}
    text = (out / "report.md").read_text()
    assert "β=0.1, lr=0.01" in text and "β=1, lr=0.0001" in text
    # the larger learning rate moves further from the reference in the same number of steps
    kl = s.set_index(["sweep_value", "variant"])["kl"]
    assert kl[(0.1, "lr=0.01")] > kl[(0.1, "lr=0.0001")]
