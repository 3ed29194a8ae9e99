"""Scale-out: local worker processes and the Ray executor give the same results as one process."""

import pandas as pd
import pytest

from alignbench.cli import main

from .test_reliability import comparable, metrics
from .test_sweep import sweep_args


@pytest.fixture(scope="module")
def serial(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("serial")
    assert main(sweep_args(out, cache_dir, methods="dpo,kto", betas="0.1,1.0")) == 0
    return out


def test_local_workers_match_a_single_process(tmp_path, cache_dir, serial):
    out = tmp_path / "workers"
    assert main(sweep_args(out, cache_dir, methods="dpo,kto", betas="0.1,1.0", extra=["--workers", "2"])) == 0
    pd.testing.assert_frame_equal(comparable(out / "summary.csv"), comparable(serial / "summary.csv"))
    assert metrics(out) == metrics(serial)
    assert (out / "report.md").exists()


def test_ray_executor_on_a_local_instance(tmp_path, cache_dir, serial):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'alignbench[ray]')")
    out = tmp_path / "ray"
    try:
        assert main(sweep_args(out, cache_dir, methods="dpo,kto", betas="0.1,1.0", extra=["--executor", "ray"])) == 0
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(comparable(out / "summary.csv"), comparable(serial / "summary.csv"))
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(p.name for p in (serial / "runs").iterdir())


def test_bad_executor_and_workers(tmp_path, cache_dir, capsys):
    assert main(sweep_args(tmp_path / "x", cache_dir, extra=["--executor", "slurm"])) == 2
    assert "executor: must be one of ['local', 'ray']" in capsys.readouterr().err
    assert main(sweep_args(tmp_path / "x", cache_dir, extra=["--workers", "0"])) == 2
    assert "workers: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
