"""The README is executed: every fenced block of README.md is covered, automatically.

* a ``python`` block that names a file in its first line (``# methods/hinge.py``) is written verbatim to a
  plugin file and run through ``alignbench sweep --methods <name> --plugins <file>``;
* a command block: every command runs in a temporary folder (configs/ copied in) with a tiny budget
  appended (``--steps``, seeds, betas, cache, tiny task arguments; later flags override earlier ones), and
  must exit 0. ``make TARGET`` runs the alignbench command of the Makefile's recipe; ``$ cmd`` lines are
  error examples, run verbatim, whose stderr must be the documented line, with exit code 2 and nothing
  written. Commands that cannot run here are planned (configs built and validated, nothing trained) or
  skipped, each for a reason listed in PLAN_ONLY / NOT_RUN below;
* a file-layout block (every line starts with ``DIR/`` or is indented) is documentation, not commands.

A command matching no rule fails the test, naming it: a new kind of command needs a rule here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from alignbench import sweep as S
from alignbench.cli import main

from .conftest import TINY_EXACT

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# the task arguments that make each embedded task tiny; a task without an entry is planned, not run
TINY_TASK_ARGS = {
    "exact": TINY_EXACT,
    "sentiment": {"n_reviews": 1500, "n_layer": 1, "n_embd": 32, "n_head": 2, "ref_steps": 30, "ref_batch_size": 64,
                  "n_train_pairs": 128, "n_eval_pairs": 32, "n_eval_prompts": 8, "n_eval_samples": 4},
}
BUDGET = ["--steps", "2", "--seeds", "0", "--device", "cpu", "--no-progress", "--train-arg", "eval_every=1",
          "--train-arg", "batch_size=8", "--train-arg", "warmup_steps=1"]
ONLINE_BUDGET = {"iterations": 2, "rollout_batch": 8, "minibatch_size": 8}  # set for every method with the field


def online_budget(names: set[str] | None = None) -> list[str]:
    """--method-arg flags that shrink every method of the sweep (``names``; all registered ones by default) that
    has online iterations (PPO-style fields). A method-arg for a method outside the sweep is an input error."""
    from dataclasses import fields

    from alignbench.registry import methods

    out = []
    for name, cls in methods().items():
        if names is not None and name not in names:
            continue
        have = {f.name for f in fields(cls.config_cls)}
        out += [f"--method-arg={name}.{k}={v}" for k, v in ONLINE_BUDGET.items() if k in have]
    return out
DEFAULT_SWEEP_VALUES = {"--betas": "0.3", "--grid": "bon=2"}  # added where the command sets none
TINY_VALUES = {"--workers": "2"}  # replaced where the command sets one
# commands that run only as far as planning (every config built and validated), and why
PLAN_ONLY = {
    "--executor ray": "starting Ray costs ~15 s; the Ray executor runs in test_scaleout.py",
    "accelerate launch": "a multi-GPU launcher; the data-parallel path runs under torchrun in test_scaleout.py",
    "torchrun ": "the same two-process torchrun sweep runs in test_scaleout.py (checked against one process)",
}
# commands that are not run at all, and why
NOT_RUN = {
    "pip install": "installs packages (`make install` installs the test extra, which includes ray)",
    " ... ": "elided arguments ('...') in the README",
}
MAKE_NOT_RUN = {"test": "runs this test suite itself", "bench": "the benchmark is smoke-tested in test_bench_smoke.py",
                "install": "installs packages", "clean": "removes caches",
                "reproduce": "the default sweep of `make sweep` (run here) again into another folder, then `compare`, "
                             "which test_compare.py runs"}


# ------------------------------------------------------------------------------------------ parsing


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced block."""
    out, cur, info = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if cur is None:
                cur, info = [], line[3:].strip()
            else:
                out.append((info, cur))
                cur = None
        elif cur is not None:
            cur.append(line)
    assert cur is None, "README.md has an unclosed ``` block"
    return out


def commands(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Logical command lines (continuations joined, trailing comments cut) and, for ``$`` lines, the expected
    output lines that follow them."""
    out: list[tuple[str, list[str]]] = []
    pending = ""
    for raw in lines:
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment line (or a comment continuing the previous line's)
        if out and out[-1][0].startswith("$") and not line.startswith("$"):
            out[-1][1].append(line)  # the documented output of an error example
            continue
        out.append((re.sub(r"\s+#.*$", "", line).strip(), []))
    return out


def kind(info: str, lines: list[str]) -> str:
    if info.startswith("python"):
        return "python"
    body = [ln for ln in lines if ln.strip()]
    if body and all(ln.startswith("DIR/") or ln[:1].isspace() for ln in body):
        return "layout"
    return "commands"


def make_recipe(target: str) -> list[str] | None:
    """The alignbench command of a Makefile target's recipe (variables substituted), None if it has none."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[?:]?=\s*(.*?)\s*$", text, flags=re.M))
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert m, f"make {target}: no such target in the Makefile"
    for line in m.group(1).splitlines():
        line = line.strip()
        for _ in range(3):
            line = re.sub(r"\$\((\w+)\)", lambda v: variables.get(v.group(1), ""), line)
            line = re.sub(r"\$\(shell nproc[^)]*\)", str(os.cpu_count() or 1), line)  # WORKERS: one per core
        words = shlex.split(line)
        if words and words[0].endswith("/alignbench"):
            return words[1:]
    return None


README_BLOCKS = blocks(README.read_text())
COMMAND_BLOCKS = [(i, lines) for i, (info, lines) in enumerate(README_BLOCKS) if kind(info, lines) == "commands"]
PYTHON_BLOCKS = [(i, lines) for i, (info, lines) in enumerate(README_BLOCKS) if kind(info, lines) == "python"]


def test_every_block_is_classified_and_the_readme_has_commands():
    kinds = [kind(info, lines) for info, lines in README_BLOCKS]
    assert kinds.count("commands") >= 4 and kinds.count("python") >= 1 and kinds.count("layout") >= 1, kinds


# ------------------------------------------------------------------------------------------ running


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for every block (so a sweep repeated by several blocks finds its runs complete)."""
    d = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "configs", d / "configs")
    return d


def alignbench_words(cmd: str) -> list[str] | None:
    """The alignbench arguments of a command line (after the program name), or None if it is not one."""
    words = shlex.split(cmd)
    if words and words[0] in ("alignbench", ".venv/bin/alignbench"):
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1:words.index("-m") + 2] == ["alignbench"]:
        return words[words.index("-m") + 2:]  # a launcher: accelerate launch / torchrun ... -m alignbench ...
    if words[:2] == ["python", "-m"] and words[2:3] == ["alignbench"]:
        return words[3:]
    return None


def planned(args: list[str], monkeypatch):
    """Plan a sweep command without running it; returns its SweepConfig (fails on a bad config)."""
    seen = {}

    def plan_only(cfg):
        seen["plan"] = S.plan(cfg)
        seen["cfg"] = cfg
        return pd.DataFrame({"status": []})

    with monkeypatch.context() as m:  # undoes only this patch (not the test's chdir into its work folder)
        m.setattr(S, "run_sweep", plan_only)
        assert main(args) == 0, f"planning failed: alignbench {' '.join(args)}"
    assert seen["plan"].specs, f"the sweep plans no run: {args}"
    return seen["cfg"]


def sweep_methods(cfg) -> set[str]:
    """The methods a sweep config runs (its own list, or each task's default set)."""
    from alignbench.planning import _method_names
    from alignbench.registry import get_task

    return {m for t in cfg.tasks for m in _method_names(cfg, get_task(t))}




def tiny(args: list[str], tasks: list[str], cache_dir: Path, methods: set[str]) -> list[str]:
    """The command with a tiny budget: values and method-args only for the sweep's own ``methods``. A command
    without ``--out`` writes to a folder of its own (the default ``results/default`` belongs to one sweep: what
    another sweep there does, nothing or a refusal, is tested in test_bad_input.py on the committed folder)."""
    args = list(args)
    if "--out" not in args:  # the same planned sweep (e.g. `make sweep` and `--config configs/default.yaml`) shares one
        key = [a for i, a in enumerate(args) if a != "--workers" and (i == 0 or args[i - 1] != "--workers")]
        args += ["--out", "results/readme-" + hashlib.sha256(" ".join(key).encode()).hexdigest()[:8]]
    for flag, value in TINY_VALUES.items():
        if flag in args:
            args += [flag, value]
    for flag, value in DEFAULT_SWEEP_VALUES.items():
        if flag not in args and (flag != "--grid" or value.split("=")[0] in methods):
            args += [flag, value]
    args += [*BUDGET, *online_budget(methods), "--cache-dir", str(cache_dir)]
    for t in tasks:
        args += [f"--task-arg={t}.{k}={v}" for k, v in TINY_TASK_ARGS[t].items()]
    return args


def run_command(cmd: str, cache_dir: Path, monkeypatch) -> str:
    """Run (or plan) one README command line in the current folder; returns what was done."""
    for needle, reason in NOT_RUN.items():
        if needle in f" {cmd} ":
            return f"not run ({reason})"
    words = shlex.split(cmd)
    if words[0] == "make":
        (target,) = words[1:] or ["all"]
        if target in MAKE_NOT_RUN:
            return f"not run ({MAKE_NOT_RUN[target]})"
        args = make_recipe(target)
        assert args is not None, f"README command {cmd!r}: the Makefile recipe runs no alignbench command; add it " \
                                 "to MAKE_NOT_RUN in tests/test_readme.py with a reason"
    else:
        args = alignbench_words(cmd)
        assert args is not None, f"README command not covered by tests/test_readme.py: {cmd!r} (add a rule)"
    if args[0] == "compare":  # the README's folders are the committed ones; compare a folder this block wrote
        written = sorted(Path("results").glob("*/summary.csv"))
        assert written, f"README command {cmd!r}: no results folder written before it in this block"
        args = ["compare", str(written[0].parent), str(written[0].parent)]
    if args[0] != "sweep":
        assert main(args) == 0, f"README command failed: {cmd}"
        return "run"
    cfg = planned(args, monkeypatch)
    tasks = list(cfg.tasks)
    reason = next((r for needle, r in PLAN_ONLY.items() if needle in cmd), None)
    if reason is None and any(t not in TINY_TASK_ARGS for t in tasks):
        reason = f"task(s) {[t for t in tasks if t not in TINY_TASK_ARGS]} need hub models (test_presets.py runs " \
                 "them on tiny local copies)"
    if reason:
        return f"planned only ({reason})"
    full = tiny(args, tasks, cache_dir, sweep_methods(cfg))
    assert main(full) == 0, f"README command failed: {cmd}\n(run as: alignbench {' '.join(full)})"
    out = full[len(full) - 1 - full[::-1].index("--out") + 1] if "--out" in full else cfg.out  # the last --out wins
    s = pd.read_csv(Path(out) / "summary.csv")
    assert set(s["status"]) == {"ok"}, s[["run_id", "reason"]]
    return "run"


@pytest.mark.parametrize("index,lines", COMMAND_BLOCKS, ids=[f"block{i}" for i, _ in COMMAND_BLOCKS])
def test_readme_command_block_runs(index, lines, workdir, cache_dir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    repo_before = repository_files()
    done = []
    for cmd, expected in commands(lines):
        if cmd.startswith("$ "):  # an error example: verbatim, its documented message, exit 2, nothing written
            before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
            capsys.readouterr()
            args = alignbench_words(cmd[2:])
            assert args is not None, f"README error example not covered: {cmd!r}"
            assert main(args) == 2, cmd
            assert capsys.readouterr().err.strip() == "\n".join(expected).strip(), cmd
            assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before, f"{cmd} wrote files"
            done.append((cmd, "error example"))
        else:
            done.append((cmd, run_command(cmd, cache_dir, monkeypatch)))
    assert done
    assert Path.cwd() == workdir
    assert repository_files() == repo_before, "a README command wrote into the repository"
    print("\n".join(f"{what}: {cmd}" for cmd, what in done))


def repository_files() -> set[str]:
    """The repository's results/ and .cache/ contents (where a sweep run in the wrong folder would write)."""
    return {str(p.relative_to(ROOT)) for d in ("results", ".cache") for p in (ROOT / d).rglob("*")}


@pytest.mark.parametrize("index,lines", PYTHON_BLOCKS, ids=[f"block{i}" for i, _ in PYTHON_BLOCKS])
def test_readme_python_block_runs_verbatim_as_a_plugin(index, lines, tmp_path, cache_dir):
    header = lines[0]
    section = re.match(r"#\s*alignbench/report/sections/(\w+)\.py\s*$", header)
    if section:
        return run_report_section(lines, tmp_path)
    m = re.match(r"#\s*methods/(\w+)\.py\s*$", header)
    assert m, (f"README python block {index}: its first line must name its file (# methods/<name>.py or "
               f"# alignbench/report/sections/<name>.py): {header!r}")
    plugin = tmp_path / f"{m.group(1)}.py"
    plugin.write_text("\n".join(lines) + "\n")  # verbatim
    name = re.search(r'@register_method\("([^"]+)"\)', plugin.read_text()).group(1)
    out = tmp_path / "out"
    args = tiny(["sweep", "--task", "exact", "--methods", name, "--out", str(out), "--plugins", str(plugin)],
                ["exact"], cache_dir, {name})
    assert main(args) == 0
    s = pd.read_csv(out / "summary.csv")
    assert list(s["method"]) == [name] and list(s["status"]) == ["ok"], s[["run_id", "reason"]]
    assert s["kl"][0] > 0  # the plugin's loss trained the policy away from the reference


def run_report_section(lines: list[str], tmp_path: Path) -> None:
    """A README report-section block, run verbatim: importing it registers the section, which then appears in a
    report rebuilt from a small results folder (two completed runs of 1.5 s and 2.5 s)."""
    import importlib.util

    from alignbench.report import write_report
    from alignbench.report.core import _SECTIONS, unregister_section

    path = tmp_path / "readme_section.py"
    path.write_text("\n".join(lines) + "\n")  # verbatim
    before = set(_SECTIONS)
    spec = importlib.util.spec_from_file_location("readme_section", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    added = set(_SECTIONS) - before
    try:
        assert len(added) == 1, f"the block registers one section, got {sorted(added)}"
        out = tmp_path / "res"
        out.mkdir()
        pd.DataFrame([{"run_id": f"t-dpo-beta{b}-s0", "task": "t", "method": "dpo", "sweep_param": "beta",
                       "beta": b, "sweep_value": b, "seed": 0, "status": "ok", "reason": "", "steps": 10,
                       "wall_s": w, "kl": 1.0, "reward": 0.5} for b, w in ((0.1, 1.5), (1.0, 2.5))]
                     ).to_csv(out / "summary.csv", index=False)
        text = write_report(out).read_text()
        assert "## Wall time\n\n4 s over 2 runs" in text, text[:2000]
    finally:
        for name in added:
            unregister_section(name)


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_config_files_load_and_plan(config):
    cfg = S.load_sweep_config(str(ROOT / "configs" / config), {})
    p = S.plan(cfg)
    assert p.specs and {s.task for s in p.specs} == set(cfg.tasks)
    assert {s.seed for s in p.specs} == set(cfg.seeds)
    if cfg.methods:
        assert {s.method for s in p.specs} == set(cfg.methods)
