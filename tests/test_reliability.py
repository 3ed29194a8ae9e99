"""Reliability: determinism per method, resume after a kill, numerical faults, concurrent sweeps."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from alignbench.cli import main

from .conftest import TINY_EXACT, TINY_TRAIN
from .test_sweep import sweep_args

OFFLINE = ["dpo", "ipo", "kto"]


def metrics(out):
    rows = {}
    for p in sorted((out / "runs").glob("*/metrics.jsonl")):
        rows[p.parent.name] = [json.loads(line) for line in p.read_text().splitlines()]
    return rows


def comparable(summary_csv):
    """summary.csv without the wall-time column (the only column that depends on the clock)."""
    return pd.read_csv(summary_csv).drop(columns=["wall_s"])


def test_same_config_and_seed_give_identical_metrics(tmp_path, cache_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(sweep_args(out, cache_dir, methods=",".join(OFFLINE), betas="0.3")) == 0
    ma, mb = metrics(a), metrics(b)
    assert sorted(ma) == sorted(mb) and len(ma) == len(OFFLINE)
    assert ma == mb  # bit-identical floats in every logged metric of every method
    pd.testing.assert_frame_equal(comparable(a / "summary.csv"), comparable(b / "summary.csv"))


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path, cache_dir, monkeypatch):
    """A run stopped right after a checkpoint resumes from it and ends exactly where a clean run ends."""
    from alignbench import runner

    extra = ["--train-arg", "checkpoint_every=2"]
    clean = tmp_path / "clean"
    assert main(sweep_args(clean, cache_dir, methods="dpo,kto", betas="0.3", extra=extra)) == 0

    calls = {"n": 0}
    original = runner.RunContext.save_checkpoint

    def save_then_die(self, step, modules, extra_state):
        original(self, step, modules, extra_state)
        calls["n"] += 1
        if step == 4:
            raise KeyboardInterrupt  # stands in for SIGKILL right after the checkpoint at step 4

    monkeypatch.setattr(runner.RunContext, "save_checkpoint", save_then_die)
    killed = tmp_path / "killed"
    assert main(sweep_args(killed, cache_dir, methods="dpo,kto", betas="0.3", extra=extra)) == 130
    monkeypatch.setattr(runner.RunContext, "save_checkpoint", original)
    run_dirs = list((killed / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "checkpoint.pt").exists()
    assert not (run_dirs[0] / "summary.json").exists()

    resumed_from = {}
    original_resume = runner.RunContext.resume

    def spy(self, modules, state):
        step = original_resume(self, modules, state)
        resumed_from[self.spec.run_id] = step
        return step

    monkeypatch.setattr(runner.RunContext, "resume", spy)
    assert main(sweep_args(killed, cache_dir, methods="dpo,kto", betas="0.3", extra=extra)) == 0
    assert sorted(resumed_from.values()) == [0, 4]  # one run resumed at step 4, the other started fresh
    assert metrics(killed) == metrics(clean)
    pd.testing.assert_frame_equal(comparable(killed / "summary.csv"), comparable(clean / "summary.csv"))
    assert not list(killed.rglob("checkpoint.pt"))  # removed once the run is complete


def test_sigkill_mid_sweep_then_rerun_gives_the_same_summary(tmp_path, cache_dir):
    """SIGKILL a real sweep process at an arbitrary moment; the same command finishes it identically."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    args = sweep_args(clean, cache_dir, methods="dpo,ipo", betas="0.1,1.0")
    assert main(args) == 0
    kill_args = sweep_args(killed, cache_dir, methods="dpo,ipo", betas="0.1,1.0")
    env = {**os.environ, "ALIGNBENCH_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alignbench", *kill_args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # kill as soon as the second run has started: one run is complete, one is half done
    while time.time() < deadline and len(list(killed.glob("runs/*/config.json"))) < 2:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.parent.name for p in killed.glob("runs/*/summary.json")}
    assert len(done_before) < 4
    assert main(kill_args) == 0
    pd.testing.assert_frame_equal(comparable(killed / "summary.csv"), comparable(clean / "summary.csv"))
    assert not list(killed.rglob("*.tmp"))


NAN_PLUGIN = '''
from dataclasses import dataclass
import torch
from alignbench.api import LossOutput, MethodConfig, OfflineMethod
from alignbench.registry import register_method

@dataclass(frozen=True)
class Cfg(MethodConfig):
    pass

@register_method("explodes")
class Explodes(OfflineMethod):
    description = "a loss that turns NaN at step 3 (test plugin)"
    config_cls = Cfg
    data_format = "paired"
    calls = 0

    def compute_loss(self, b):
        Explodes.calls += 1
        h = (b.policy["chosen"] - b.reference["chosen"]) - (b.policy["rejected"] - b.reference["rejected"])
        loss = -torch.nn.functional.logsigmoid(self.config.beta * h).mean()
        if b.policy["chosen"].requires_grad and Explodes.calls >= 3:
            loss = loss * float("nan")
        return LossOutput(loss, h.detach(), h.detach(), {})
'''


def test_nan_loss_fails_the_run_and_the_sweep_goes_on(tmp_path, cache_dir):
    plugin = tmp_path / "explodes.py"
    plugin.write_text(textwrap.dedent(NAN_PLUGIN))
    out = tmp_path / "res"
    assert main(sweep_args(out, cache_dir, methods="explodes,dpo", betas="0.5",
                           extra=["--plugins", str(plugin)])) == 1  # exit 1: a run failed
    s = pd.read_csv(out / "summary.csv").set_index("method")
    assert s.loc["explodes", "status"] == "failed"
    assert "non-finite loss at step" in s.loc["explodes", "reason"]
    assert s.loc["dpo", "status"] == "ok"
    assert "non-finite loss" in (out / "report.md").read_text()


def test_two_concurrent_sweeps_never_run_the_same_run_twice(tmp_path, cache_dir):
    """Each process waits for the runs the other holds, then writes summary.csv from every completed run
    under the folder lock: each reports 6/6 and the summary is complete, with no third pass."""
    out = tmp_path / "shared"
    args = sweep_args(out, cache_dir, methods="dpo,ipo,kto", betas="0.1,1.0")
    env = {**os.environ, "ALIGNBENCH_QUIET": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "alignbench", *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        assert "6/6 runs ok" in stdout, stdout  # each sweep's own summary is complete
    s = pd.read_csv(out / "summary.csv")
    assert len(s) == 6 and set(s["status"]) == {"ok"}
    pids = set()
    for run in (out / "runs").iterdir():
        attempts = [json.loads(r) for r in (run / "attempts.jsonl").read_text().splitlines()]
        assert len(attempts) == 1, f"{run.name} was started {len(attempts)} times"
        pids.add(attempts[0]["pid"])
    assert pids <= {p.pid for p in procs}
