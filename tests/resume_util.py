"""Resume and determinism checks for every method kind, shared by the tests (one parameter line per method).

:func:`kill_at_pause` runs a sweep in a child process, SIGKILLs it at a deterministic point (right after the
first checkpoint is written, or right after the first run is complete for methods with no training loop),
runs the same sweep again in this process and returns both folders for comparison with an uninterrupted
sweep. The child pauses at that point (it writes a marker file and sleeps) so the kill never races the run.

To cover a new method, add one line to ``KINDS`` (``tests/test_resume.py`` parametrizes over it)::

    Kind("simpo", "simpo", ("--betas", "2.0")),                         # an offline method
    Kind("rloo", "rloo", ("--betas", "0.1", *online_args("rloo"))),      # an online method with iterations

Run as ``python -m tests.resume_util MODE MARKER SWEEP_ARGS...`` it is that child.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .test_sweep import sweep_args

ROOT = Path(__file__).resolve().parents[1]
# columns / metric names measured with the clock: the only things allowed to differ between two runs
CLOCK = re.compile(r"^(wall_s|perf/.*|.*_seconds)$")


def online_args(method: str, iterations: int = 4, rollout_batch: int = 16, minibatch_size: int = 8) -> tuple:
    """Method args for a short online run (PPO-style iterations) that checkpoints at iteration 2."""
    return (f"--method-arg={method}.iterations={iterations}", f"--method-arg={method}.rollout_batch={rollout_batch}",
            f"--method-arg={method}.minibatch_size={minibatch_size}")


@dataclass(frozen=True)
class Kind:
    """One method kind to kill and resume. ``checkpoints=False``: the method has no training loop (nothing to
    checkpoint, e.g. best-of-N); the sweep is killed after its first complete run instead."""

    id: str
    methods: str
    args: tuple = ()
    checkpoints: bool = True


KINDS = [
    Kind("dpo", "dpo", ("--betas", "0.3")),
    Kind("ipo", "ipo", ("--betas", "0.3")),
    Kind("kto", "kto", ("--betas", "0.3")),
    Kind("ppo", "ppo", ("--betas", "0.3", *online_args("ppo"))),          # with its learned reward model
    Kind("ppo-gt", "ppo-gt", ("--betas", "0.3", *online_args("ppo-gt"))),
    Kind("bon", "bon", ("--grid", "bon=1,4"), checkpoints=False),
    Kind("simpo", "simpo", ("--betas", "2.0")),                          # reference-free (bco: test_offline_family)
    Kind("rloo", "rloo", ("--betas", "0.1", *online_args("rloo"))),      # the shared online loop's methods
    Kind("grpo", "grpo", ("--betas", "0.1", *online_args("grpo"))),
    Kind("online-dpo", "online-dpo", ("--betas", "0.1", *online_args("online-dpo"),
                                      "--method-arg=online-dpo.label=bt")),  # sampled labels: RNG state resumed
]
CHECKPOINT_EVERY = 2  # TINY_TRAIN has 6 steps: checkpoints at 2 and 4, evaluations at 0, 3, 6


def args_for(kind: Kind, out: Path, cache_dir: Path) -> list[str]:
    args = sweep_args(out, cache_dir, methods=kind.methods, extra=[f"--train-arg=checkpoint_every={CHECKPOINT_EVERY}"])
    i = args.index("--betas")
    del args[i:i + 2]  # each kind sets its own sweep values
    return args + list(kind.args)


# ------------------------------------------------------------------------------------ what must be equal


def metrics(out: Path) -> dict[str, list[dict]]:
    """Every run's metrics.jsonl rows, without the clock-measured entries."""
    rows = {}
    for p in sorted((out / "runs").glob("*/metrics.jsonl")):
        rows[p.parent.name] = [{k: v for k, v in json.loads(line).items() if not CLOCK.match(k)}
                               for line in p.read_text().splitlines()]
    return rows


def summary(out: Path) -> pd.DataFrame:
    """summary.csv without the clock-measured columns."""
    df = pd.read_csv(out / "summary.csv")
    return df.drop(columns=[c for c in df.columns if CLOCK.match(c)])


def attempts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]


def assert_same_results(a: Path, b: Path) -> None:
    """Bit-identical metrics in every run and the same summary (clock columns aside)."""
    ma, mb = metrics(a), metrics(b)
    assert sorted(ma) == sorted(mb) and ma, (sorted(ma), sorted(mb))
    for run in ma:
        assert ma[run] == mb[run], f"{run}: metrics differ"
    pd.testing.assert_frame_equal(summary(a), summary(b))
    assert early_tables(a).keys() == early_tables(b).keys()  # the early-stopped evaluations, kept across a resume
    for run, arrays in early_tables(a).items():
        other = early_tables(b)[run]
        assert arrays.keys() == other.keys() and all(np.array_equal(arrays[k], other[k]) for k in arrays), run


def early_tables(out: Path) -> dict[str, dict]:
    """Every run's eval_early.npz arrays (where the early-stopped evaluation is not the final one)."""
    tables = {}
    for p in sorted((out / "runs").glob("*/eval_early.npz")):
        with np.load(p) as z:
            tables[p.parent.name] = {k: z[k] for k in z.files}
    return tables


# ------------------------------------------------------------------------------------ kill, then resume


def kill_at_pause(kind: Kind, out: Path, cache_dir: Path, timeout: float = 300.0) -> dict:
    """Start the sweep in a child process, wait until it pauses, SIGKILL it. Returns the marker's content."""
    mode = "checkpoint" if kind.checkpoints else "run"
    marker = out.parent / f"{out.name}.paused"
    env = {**os.environ, "ALIGNBENCH_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = [sys.executable, "-m", "tests.resume_util", mode, str(marker), *args_for(kind, out, cache_dir)]
    proc = subprocess.Popen(child, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the child sweep ended (rc {proc.returncode}) before pausing: "
                                     f"{proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the child sweep never reached its pause point")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    return json.loads(marker.read_text())


def _child(mode: str, marker: str, args: list[str]) -> int:
    """The killed sweep: pause forever (until SIGKILL) right after the first checkpoint / the first complete run."""
    from alignbench import executors, runner
    from alignbench.cli import main

    def pause(info: dict) -> None:
        Path(marker + ".tmp").write_text(json.dumps(info))
        os.replace(marker + ".tmp", marker)
        time.sleep(3600)

    if mode == "checkpoint":
        original = runner.RunContext.save_checkpoint

        def save_then_pause(self, step, modules, extra):
            original(self, step, modules, extra)
            pause({"run_id": self.spec.run_id, "step": step})

        runner.RunContext.save_checkpoint = save_then_pause
    else:
        original_execute = executors.execute  # what executors._run_locked calls for each run

        def execute_then_pause(spec, *a, **k):
            result = original_execute(spec, *a, **k)
            pause({"run_id": spec.run_id, "step": None})
            return result

        executors.execute = execute_then_pause
    return main(args)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], sys.argv[3:]))
