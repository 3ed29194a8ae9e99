"""alignbench compare: run-by-run comparison of two results folders (bit-identical, or how far apart)."""

import pandas as pd

from alignbench.cli import main
from alignbench.compare import compare, rel_diff

ROWS = [{"run_id": "exact-dpo-beta0.1-s0-aaa", "task": "exact", "method": "dpo", "sweep_param": "beta",
         "sweep_value": 0.1, "seed": 0, "status": "ok", "reason": "", "kl": 5.077910463362708, "reward": 1.1142,
         "wall_s": 7.1, "perf/generate_share": 0.1},
        {"run_id": "exact-kto-beta0.1-s0-bbb", "task": "exact", "method": "kto", "sweep_param": "beta",
         "sweep_value": 0.1, "seed": 0, "status": "ok", "reason": "", "kl": 3.5, "reward": float("nan"),
         "wall_s": 8.0, "perf/generate_share": 0.2}]


def folder(path, rows):
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path / "summary.csv", index=False)
    return path


def test_identical_folders_and_time_columns_ignored(tmp_path, capsys):
    a = folder(tmp_path / "a", ROWS)
    b = folder(tmp_path / "b", [dict(r, wall_s=r["wall_s"] * 3, **{"perf/generate_share": 0.9}) for r in ROWS])
    res = compare(a, b)
    assert res.same and len(res.identical) == 2 and not res.differs
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "2 runs in both, 2 bit-identical, 0 differ" in out and out.strip().endswith("same numbers")


def test_a_changed_number_is_found_with_its_column(tmp_path, capsys):
    a = folder(tmp_path / "a", ROWS)
    changed = [dict(ROWS[0], kl=5.077910463362709), ROWS[1]]  # one ulp away in the last printed digit
    b = folder(tmp_path / "b", changed)
    res = compare(a, b)
    assert not res.same and list(res.differs) == ["exact-dpo-beta0.1-s0-aaa"]
    col, d = res.differs["exact-dpo-beta0.1-s0-aaa"]
    assert col == "kl" and d == rel_diff(5.077910463362708, 5.077910463362709) and 0 < d < 1e-15
    assert main(["compare", str(a), str(b)]) == 1
    assert "differs  exact-dpo-beta0.1-s0-aaa: largest relative difference" in capsys.readouterr().out


def test_missing_runs_and_a_nan_that_became_a_number(tmp_path):
    a = folder(tmp_path / "a", ROWS)
    b = folder(tmp_path / "b", [dict(ROWS[1], reward=0.5)])
    res = compare(a, b)
    assert res.only_a == ["exact-dpo-beta0.1-s0-aaa"] and res.differs["exact-kto-beta0.1-s0-bbb"][0] == "reward"
    assert res.per_column["reward"] == float("inf")


def test_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignbench: error: compare: ") and len(err.splitlines()) == 1
