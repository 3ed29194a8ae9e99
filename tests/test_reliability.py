"""Reliability: numerical faults, concurrent sweeps (determinism and resume: tests/test_resume.py)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from alignbench.cli import main

from .conftest import TINY_EXACT, TINY_TRAIN
from .test_sweep import sweep_args


def metrics(out):
    rows = {}
    for p in sorted((out / "runs").glob("*/metrics.jsonl")):
        rows[p.parent.name] = [json.loads(line) for line in p.read_text().splitlines()]
    return rows


def comparable(summary_csv):
    """summary.csv without the wall-time column (the only column that depends on the clock)."""
    return pd.read_csv(summary_csv).drop(columns=["wall_s"])


# Determinism and resume after SIGKILL from a real checkpoint, for every method kind: tests/test_resume.py.


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
