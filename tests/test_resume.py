"""Every method kind resumes from a real checkpoint after SIGKILL and is deterministic (tests/resume_util.py)."""

from __future__ import annotations

import pytest

from alignbench.cli import main

from .resume_util import KINDS, Kind, args_for, assert_same_results, attempts, kill_at_pause

_CLEAN: dict[str, object] = {}


@pytest.fixture
def clean(tmp_path_factory, cache_dir):
    """An uninterrupted sweep of a kind (once per session and kind; shared by both tests below)."""

    def get(kind: Kind):
        if kind.id not in _CLEAN:
            out = tmp_path_factory.mktemp(f"clean-{kind.id}") / "out"
            assert main(args_for(kind, out, cache_dir)) == 0
            _CLEAN[kind.id] = out
        return _CLEAN[kind.id]

    return get


@pytest.mark.parametrize("kind", KINDS, ids=[k.id for k in KINDS])
def test_sigkill_then_rerun_resumes_from_the_checkpoint_and_matches_an_uninterrupted_run(kind, clean, tmp_path,
                                                                                          cache_dir):
    reference = clean(kind)
    out = tmp_path / "killed"
    paused = kill_at_pause(kind, out, cache_dir)
    run = out / "runs" / paused["run_id"]
    if kind.checkpoints:
        assert paused["step"] >= 1
        assert (run / "checkpoint.pt").is_file() and not (run / "summary.json").exists()
    else:  # killed after a complete run, before the next one
        assert (run / "summary.json").is_file()
    done_before = {p.parent.name for p in out.glob("runs/*/summary.json")}

    assert main(args_for(kind, out, cache_dir)) == 0  # the same command again
    assert_same_results(out, reference)
    assert not list(out.rglob("checkpoint.pt")) and not list(out.rglob("*.tmp"))
    tries = attempts(run)
    starts = [a for a in tries if "started" in a]
    resumes = [a for a in tries if "resumed_from" in a]
    if kind.checkpoints:
        assert len(starts) == 2, tries  # killed once, started again
        assert [a["resumed_from"] for a in resumes] == [paused["step"]], tries  # ... from the checkpoint, not 0
    else:
        assert len(starts) == 1 and not resumes, tries  # the complete run was not executed again
    for other in (out / "runs").iterdir():
        if other.name not in done_before and other != run:
            assert len([a for a in attempts(other) if "started" in a]) == 1


@pytest.mark.parametrize("kind", KINDS, ids=[k.id for k in KINDS])
def test_same_config_and_seed_give_bit_identical_metrics(kind, clean, tmp_path, cache_dir):
    reference = clean(kind)
    out = tmp_path / "again"
    assert main(args_for(kind, out, cache_dir)) == 0
    assert_same_results(out, reference)
