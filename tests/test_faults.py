"""Faults that must never give silent wrong results: a corrupted file in any kind of cache entry is noticed
(one line on stderr) and rebuilt to the same numbers as a clean build; a build killed midway leaves no
temporary folder behind for good; a truncated summary.json is an incomplete run, redone; failed runs
have empty metric columns and a non-zero exit (two concurrent sweeps: tests/test_reliability.py)."""

import json
import pandas as pd
import pytest
import torch

from alignbench import cache
from alignbench.cli import main
from alignbench.config import from_mapping
from alignbench.registry import get_task

from .conftest import TINY_EXACT
from .test_sentiment_task import SMALL as SMALL_SENTIMENT
from .test_sweep import sweep_args

CPU = torch.device("cpu")


def flip(path, where=0.5, n=16):
    """Flip the top bit of ``n`` bytes from ``where`` (a fraction of the file) on."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * where)
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0x80
    path.write_bytes(bytes(data))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_rebuilt(capsys, needle):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "rebuilding" in line]
    assert len(lines) == 1 and needle in lines[0], err


def _exact_task():
    cls = get_task("exact")
    return cls(from_mapping(cls.config_cls, TINY_EXACT))


@pytest.mark.parametrize("target", ["model.safetensors", "tokenizer.json"])
def test_corrupted_exact_reference_is_rebuilt_identically(target, tmp_path, capsys):
    """The task reference model and its tokenizer files: flipped bytes -> notice, rebuild, same numbers.
    A temporary folder of a killed build is removed by the rebuild."""
    task = _exact_task()
    clean = task.setup(tmp_path, CPU)
    a = weights(clean.reference)  # before the flip: loaded weights may be memory-mapped from the file
    folder = clean.reference_dir
    stale = folder.parent / f".{folder.name}.tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    flip(folder / target)
    cache.clear()
    capsys.readouterr()
    again = task.setup(tmp_path, CPU)
    assert_rebuilt(capsys, f"{target} fails its sha256 check")
    assert not again.loaded_from_cache and not stale.exists()
    b = weights(again.reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.tokenizer.get_vocab() == clean.tokenizer.get_vocab()
    assert torch.equal(again.ref_logp_table, clean.ref_logp_table)
    cache.clear()
    assert task.setup(tmp_path, CPU).loaded_from_cache  # the rebuilt entry verifies


def test_corrupted_sentiment_sft_model_is_rebuilt_identically(tmp_path, capsys):
    cls = get_task("sentiment")
    task = cls(from_mapping(cls.config_cls, SMALL_SENTIMENT))
    clean = task.setup(tmp_path, CPU)
    a = weights(clean.reference)
    flip(clean.cache_folder / "reference" / "model.safetensors")
    cache.clear()
    capsys.readouterr()
    again = task.setup(tmp_path, CPU)
    assert_rebuilt(capsys, "reference/model.safetensors fails its sha256 check")
    b = weights(again.reference)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(again.preferences["train"]["chosen"]) == list(clean.preferences["train"]["chosen"])


def test_corrupted_reward_model_is_retrained_identically(tiny_exact_env, tmp_path, capsys):
    from alignbench import reward_model as RM

    cfg = {"epochs": 1, "gold_corr_samples": 0, "evals_per_epoch": 1}
    clean = RM.get_reward_model(tiny_exact_env, tmp_path, 0, CPU, show_progress=False, config=cfg)
    a = weights(clean.model)
    flip(clean.path / "model.safetensors")
    cache.clear()
    capsys.readouterr()
    again = RM.get_reward_model(tiny_exact_env, tmp_path, 0, CPU, show_progress=False, config=cfg)
    assert_rebuilt(capsys, "model.safetensors fails its sha256 check")
    assert again.metrics["cached"] is False
    b = weights(again.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupted_reference_logprobs_are_recomputed_identically(tiny_exact_env, tmp_path, capsys):
    from alignbench import trainer

    cache.clear()  # another test may have prepared the same split in this process (the memo would skip the cache)
    clean = trainer.prepare(tiny_exact_env, "paired", "train", tmp_path, CPU)
    path = next((tmp_path / "reflogps").glob("*.safetensors"))
    flip(path, where=0.9)
    cache.clear()
    capsys.readouterr()
    again = trainer.prepare(tiny_exact_env, "paired", "train", tmp_path, CPU)
    assert_rebuilt(capsys, "reference log-probs")
    assert again is not clean
    for col in clean.ref_logps:
        assert torch.equal(again.ref_logps[col], clean.ref_logps[col])


def comparable(path):
    return pd.read_csv(path).drop(columns=["wall_s"])


def test_truncated_summary_json_is_redone_and_another_sweep_needs_force(tmp_path, cache_dir, capsys, monkeypatch):
    out = tmp_path / "res"
    args = sweep_args(out, cache_dir, methods="dpo,kto", betas="0.3")
    assert main(args) == 0
    before = comparable(out / "summary.csv")
    victim = next((out / "runs").glob("*kto*/summary.json"))
    victim.write_text(victim.read_text()[:40])  # a crash mid-write on a filesystem without atomic rename
    capsys.readouterr()
    monkeypatch.delenv("ALIGNBENCH_QUIET")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "summary.json is unreadable" in captured.err and "redone" in captured.err
    assert "skipped 1 already complete, running 1" in captured.out  # progress lines on a pipe
    assert "[1/1] ok " + victim.parent.name in captured.out
    pd.testing.assert_frame_equal(comparable(out / "summary.csv"), before)
    assert json.loads(victim.read_text())["status"] == "ok"

    # another sweep into this folder is refused (nothing written); with --force its runs join the folder's
    other = sweep_args(out, cache_dir, methods="ipo", betas="0.3")
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(other) == 2
    assert "holds the results of another sweep" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert main(other + ["--force"]) == 0
    assert "1/1 runs ok (2 more runs of the folder in summary.csv)" in capsys.readouterr().out
    s = pd.read_csv(out / "summary.csv")
    assert list(s["method"]) == ["dpo", "kto", "ipo"]  # the folder's runs first, then the added one
    record = json.loads((out / "sweep.json").read_text())
    assert len(record["runs"]) == 3 and record["added"][0]["methods"] == ["ipo"]
    assert record["config"]["methods"] == ["dpo", "kto"]
    assert main(args) == 0  # the first sweep's command still resumes there (its runs are the folder's)


FAILS = '''
from dataclasses import dataclass
from alignbench.api import MethodConfig, OfflineMethod
from alignbench.registry import register_method

@dataclass(frozen=True)
class Cfg(MethodConfig):
    pass

@register_method("fails_h15")
class Fails(OfflineMethod):
    description = "raises in its loss (test plugin)"
    config_cls = Cfg
    data_format = "paired"

    def compute_loss(self, b):
        raise RuntimeError("boom")
'''


def test_failed_run_exits_1_and_leaves_metric_columns_empty(tmp_path, cache_dir, capsys, monkeypatch):
    plugin = tmp_path / "fails_h15.py"
    plugin.write_text(FAILS)
    monkeypatch.delenv("ALIGNBENCH_RAISE", raising=False)
    out = tmp_path / "res"
    assert main(sweep_args(out, cache_dir, methods="fails_h15,dpo", betas="0.5", extra=["--plugins", str(plugin)])) == 1
    assert "1/2 runs ok, 1 failed" in capsys.readouterr().out
    s = pd.read_csv(out / "summary.csv").set_index("method")
    assert s.loc["fails_h15", "status"] == "failed" and "boom" in s.loc["fails_h15", "reason"]
    for col in ("kl", "reward", "win_rate_vs_ref"):
        assert pd.isna(s.loc["fails_h15", col]) and not pd.isna(s.loc["dpo", col])


def test_readonly_runs_folder_mid_sweep_is_one_line(tmp_path, cache_dir, capsys, monkeypatch):
    """runs/ made read-only under a running sweep (simulated: root ignores file modes)."""
    from alignbench import io

    real = io.write_json

    def denied(path, obj):
        if path.name == "config.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, obj)

    monkeypatch.setattr(io, "write_json", denied)
    assert main(sweep_args(tmp_path / "res", cache_dir, methods="dpo", betas="0.5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json: Permission denied" in err[0]
