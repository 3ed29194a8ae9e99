"""Every bad input is one line on stderr naming the field or file, exit code 2, no traceback, nothing written.

The table runs the CLI in-process (``main(argv)``: the cases fail in planning, before any task setup, in
well under a second each); ``test_cases_in_a_real_process`` runs a few of them through
``python -m alignbench`` to check the process's exit code and stderr as a user sees them.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alignbench.cli import main
from alignbench.errors import DataError

from .conftest import TINY_EXACT, TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]

SAME_NAME_PLUGIN = '''
from alignbench.registry import register_method
from alignbench.methods.dpo import DPO as _Builtin

@register_method("dpo")
class DPO(_Builtin):
    pass
'''


def _write(tmp: Path, name: str, data: str | bytes) -> str:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else textwrap.dedent(data).encode())
    return str(p)


def _other_sweep(tmp: Path) -> Path:
    """A results folder made by another sweep (its sweep.json lists other runs)."""
    out = tmp / "out"
    (out / "runs" / "exact-dpo-beta9-s0-aaaaaa").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"runs": ["exact-dpo-beta9-s0-aaaaaa"], "config": {}}))
    (out / "summary.csv").write_text("run_id,status\nexact-dpo-beta9-s0-aaaaaa,ok\n")
    return out


# (id, extra args (a function of tmp_path), text the one error line must contain)
CASES = [
    ("empty methods", lambda t: ["--methods", ","], "--methods: empty list"),
    ("empty betas", lambda t: ["--betas", ","], "--betas: empty list"),
    ("empty seeds", lambda t: ["--seeds", " , "], "--seeds: empty list"),
    ("empty grid", lambda t: ["--methods", "bon", "--grid", "bon=,"], "--grid bon: empty list"),
    ("method-arg for an absent method", lambda t: ["--methods", "dpo", "--method-arg", "kto.nosuch=1"],
     "method_args.kto: method 'kto' is not in this sweep"),
    ("valid method-arg for an absent method", lambda t: ["--methods", "dpo", "--method-arg", "kto.desirable_weight=2"],
     "method_args.kto"),
    ("grid for an absent method", lambda t: ["--methods", "dpo", "--grid", "kto=0.5"], "grid.kto"),
    ("duplicate betas", lambda t: ["--betas", "0.1,0.1"], "betas[1]: 0.1 is listed twice"),
    ("duplicate methods", lambda t: ["--methods", "dpo,dpo"], "methods[1]: 'dpo' is listed twice"),
    ("duplicate seeds", lambda t: ["--seeds", "0,0"], "seeds[1]"),
    ("duplicate grid values", lambda t: ["--methods", "bon", "--grid", "bon=4,4"], "grid.bon[1]"),
    ("plugin re-registering a built-in name", lambda t: ["--plugins", _write(t, "impostor.py", SAME_NAME_PLUGIN)],
     "method 'dpo' is registered twice"),
    ("plugin with a syntax error", lambda t: ["--plugins", _write(t, "bad_syntax.py", "x = 1\ndef broken(:\n")],
     "bad_syntax.py:2: syntax error"),
    ("plugin with a failing import", lambda t: ["--plugins", _write(t, "bad_import.py", "import os\nimport no_such_h15\n")],
     "bad_import.py:2: ModuleNotFoundError"),
    ("plugin raising at import", lambda t: ["--plugins", _write(t, "raises.py", "x = 1\n\nraise RuntimeError('boom')\n")],
     "raises.py:3: RuntimeError: boom"),
    ("--cache-dir is a file", lambda t: ["--cache-dir", _write(t, "cachefile", "x")], "cache_dir: "),
    ("non-UTF-8 YAML", lambda t: ["--config", _write(t, "bin.yaml", b"tasks: [exact]\n\xff\xfe\x00\x81")],
     "is not UTF-8 text"),
    ("binary YAML", lambda t: ["--config", _write(t, "nul.yaml", b"tasks: [exact]\n\x00\x01\x02")], "is not valid YAML"),
    ("--out under a file", lambda t: ["--out", _write(t, "afile", "x") + "/sub"], "out: "),
    ("--out in /proc", lambda t: ["--out", "/proc/alignbench-h15/out"], "out: "),
    ("--out made by another sweep", lambda t: ["--out", str(_other_sweep(t))], "out: "),
    ("--steps zero", lambda t: ["--steps", "0"], "steps: must be >= 1"),
]


def _args(tmp: Path, extra: list[str]) -> list[str]:
    args = ["sweep", "--task", "exact", "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"), "--no-progress"]
    args += [f"--task-arg=exact.{k}={v}" for k, v in TINY_EXACT.items()]
    args += [f"--train-arg={k}={v}" for k, v in TINY_TRAIN.items()]
    return args + extra  # later flags win (--out, --cache-dir of a case replace the defaults)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    _, extra, needle = case
    work = tmp_path / "w"
    work.mkdir()
    args = _args(work, extra(work))
    before = _snapshot(work)
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("alignbench: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert _snapshot(work) == before  # nothing written, existing files byte-identical
    assert not (work / "cache").exists()


def test_plugin_clash_names_both_sources(tmp_path, capsys):
    plugin = _write(tmp_path, "impostor2.py", SAME_NAME_PLUGIN)
    assert main(["list", "--plugins", plugin]) == 2
    err = capsys.readouterr().err
    assert "impostor2.py" in err and str(ROOT / "methods" / "dpo.py") in err


def test_same_module_imported_again_is_idempotent():
    import importlib

    from alignbench.registry import get_method
    import alignbench.methods.dpo as dpo

    importlib.reload(dpo)  # the same class from the same file registers again without complaint
    assert get_method("dpo") is dpo.DPO


def test_cases_in_a_real_process(tmp_path):
    """The process's exit code and stderr, as a user sees them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALIGNBENCH_QUIET": "1"}
    for _, extra, needle in [CASES[4], CASES[13]]:
        work = tmp_path / needle[:6].strip("-. ")
        work.mkdir()
        p = subprocess.run([sys.executable, "-m", "alignbench", *_args(work, extra(work))], env=env,
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
        assert not (work / "out").exists()


def test_malformed_preference_rows_name_row_and_field(tmp_path):
    """A user's pairs file: a row without `rejected`, or with chosen=17 / rejected=null, is a one-line error
    naming the row and the field (the json loader fills a missing key with null and keeps 17 as a number)."""
    from alignbench.config import from_mapping
    from alignbench.registry import get_task

    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    for bad, needle in [({"prompt": "q", "chosen": "a"}, "row 1: field 'rejected' is missing"),
                        ({"prompt": "q", "chosen": 17, "rejected": None}, "row 1: field 'chosen' must be text, got 17"),
                        ({"prompt": "q", "chosen": "a", "rejected": None}, "row 1: field 'rejected' is missing")]:
        f = tmp_path / "pairs.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in [good, bad, good, good]))
        cls = get_task("tldr")
        task = cls(from_mapping(cls.config_cls, {"dataset": str(f), "dataset_config": None}))
        task.__dict__["_splits"] = {"train": _load(f), "eval": _load(f)}
        with pytest.raises(DataError) as e:
            task._pairs("train", None, 0, 0)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def _load(f):
    from alignbench.tasks._presets import load_dataset_any

    return load_dataset_any(str(f), None)


# ------------------------------------------------------------------------------------------ planning rules


def _plan(**kw):
    from alignbench.config import from_mapping
    from alignbench.sweep import SweepConfig, plan

    return plan(from_mapping(SweepConfig, {"out": "/tmp/alignbench-h15-unused", **kw}))


def test_steps_is_every_methods_budget():
    """--steps sets PPO's iterations too, over a task's default (sentiment: 20); an explicit
    method-arg iterations wins over --steps."""
    def iters(p):
        return {s.method: s.method_config.iterations for s in p.specs if s.method in ("ppo", "ppo-gt")}

    assert set(iters(_plan(tasks=["sentiment"], methods=["ppo", "ppo-gt"], betas=[0.1])).values()) == {20}
    assert set(iters(_plan(tasks=["sentiment"], methods=["ppo", "ppo-gt"], betas=[0.1], steps=5)).values()) == {5}
    assert set(iters(_plan(tasks=["exact"], methods=["ppo"], betas=[0.1], train_args={"steps": 7})).values()) == {7}
    mixed = _plan(tasks=["sentiment"], methods=["ppo", "ppo-gt"], betas=[0.1], steps=5,
                  method_args={"ppo": {"iterations": 9}})
    assert iters(mixed) == {"ppo": 9, "ppo-gt": 5}


def test_default_run_ids_unchanged_and_threads_change_them(monkeypatch):
    """The committed results/default run ids are what the default sweep plans on CPU with one thread; a
    second torch thread (different float rounding) gives other run ids and is recorded in the config."""
    import pandas as pd

    from alignbench.config import load_yaml

    default = load_yaml(ROOT / "configs" / "default.yaml")
    committed = list(pd.read_csv(ROOT / "results" / "default" / "summary.csv")["run_id"])
    from alignbench.registry import get_method

    specs = _plan(**{**default, "device": "cpu"}).specs
    # (plugins that other tests registered in this process join a task's default set: leave them out)
    ids = [s.run_id for s in specs if get_method(s.method).__module__.startswith("alignbench.methods.")]
    assert ids == committed
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        torch.set_num_threads(2)
        two = _plan(tasks=["exact"], methods=["dpo"], betas=[0.1], device="cpu").specs[0]
    finally:
        torch.set_num_threads(threads)
    one = _plan(tasks=["exact"], methods=["dpo"], betas=[0.1], device="cpu").specs[0]
    assert one.run_id in committed and two.run_id != one.run_id
    assert two.resolved()["numerics"] == {"device": "cpu", "threads": 2, "precision": "fp32"}


def test_sweep_help_lists_training_fields_and_where_to_find_the_rest(capsys):
    from dataclasses import fields

    from alignbench.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    assert "alignbench list --verbose" in text and "--force" in text and "exit status" in text
    for f in fields(TrainConfig):
        assert f"{f.name} = {f.default!r}" in text


def test_result_files_follow_the_umask(tmp_path):
    from alignbench import io

    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        io.write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_interrupt_message_says_rerun_resumes(monkeypatch, capsys):
    from alignbench import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_report", interrupted)
    assert main(["report", "x"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_gao_fit_needs_parameters_plus_two_points():
    from alignbench.report import diagnostics as D

    kl, r = [0.5, 1.0, 2.0, 3.0], [0.3, 0.5, 0.6, 0.55]
    with pytest.raises(ValueError, match="too few points"):
        D.fit_gao_bon(kl[:3], r[:3], 0.0)  # 3 points, 2 parameters
    assert D.fit_gao_bon(kl, r, 0.0).n == 4
    with pytest.raises(ValueError, match="too few points"):
        D.fit_gao_bon(kl, r, None)  # 4 points, 3 parameters (intercept fitted)


def _readme_sweeps() -> list[list[str]]:
    """The `alignbench sweep` examples of README's Command line section that write to the default --out."""
    text = (ROOT / "README.md").read_text().split("## Command line", 1)[1].split("```", 2)[1]
    cmds = [line.split("#", 1)[0].split() for line in text.splitlines() if line.startswith("alignbench sweep")]
    return [c[1:] for c in cmds if "--out" not in c]


def test_readme_examples_leave_the_committed_results_byte_identical(tmp_path, monkeypatch, capsys):
    """Run from a copy of the repository root: the examples that would write to results/default either
    find their runs complete (a part of the folder's sweep: nothing written) or are refused (another
    sweep); every file of results/default keeps its bytes."""
    import hashlib
    import shutil

    shutil.copytree(ROOT / "results" / "default", tmp_path / "results" / "default")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALIGNBENCH_CACHE", raising=False)

    def hashes():
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = hashes()
    examples = _readme_sweeps()
    assert len(examples) >= 4 and ["sweep", "--config", "configs/default.yaml"] in examples
    codes = []
    for args in examples + [["sweep"]]:
        codes.append(main(args))
        err = capsys.readouterr().err
        assert codes[-1] in (0, 2) and "Traceback" not in err, (args, err)
        assert hashes() == before, args
    assert 2 in codes  # refused: another sweep
    if not torch.cuda.is_available():  # (on CUDA every run id differs from the committed CPU ones)
        assert 0 in codes  # a part of the folder's sweep: nothing to do
