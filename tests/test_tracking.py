"""Experiment tracking: --report-to tensorboard streams each run's metrics to a TensorBoard log."""

import pytest

from alignbench.cli import main

from .conftest import require

from .test_sweep import sweep_args


def test_tensorboard_receives_every_logged_metric(tmp_path, cache_dir):
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(sweep_args(out, cache_dir, methods="dpo", betas="0.5", extra=["--report-to", "tensorboard"])) == 0
    (run,) = list((out / "runs").iterdir())
    logs = run / "tensorboard"
    assert any(logs.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(logs))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"reward/gold", "kl/ref", "eval/loss", "train/loss"} <= tags
    assert [e.step for e in acc.Scalars("kl/ref")] == [0, 3, 6]


def test_tracking_is_off_by_default(tmp_path, cache_dir):
    out = tmp_path / "plain"
    assert main(sweep_args(out, cache_dir, methods="dpo", betas="0.5")) == 0
    assert not list(out.rglob("tensorboard"))
