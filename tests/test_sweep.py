"""End to end: a smoke sweep writes summary.csv, report.md and frontier.png; reruns skip completed runs;
bad input exits non-zero with one line naming the field and writes nothing; a method added from a
throwaway file runs through the sweep."""

import json
import textwrap

import pandas as pd
import pytest

from alignbench.cli import main

from .conftest import TINY_EXACT, TINY_TRAIN


def sweep_args(out, cache_dir, methods="dpo,ipo,kto", betas="0.1,1.0", extra=()):
    args = ["sweep", "--task", "exact", "--methods", methods, "--betas", betas, "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress"]
    args += [f"--task-arg=exact.{k}={v}" for k, v in TINY_EXACT.items()]
    args += [f"--train-arg={k}={v}" for k, v in TINY_TRAIN.items()]
    return args + list(extra)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("smoke")
    assert main(sweep_args(out, cache_dir)) == 0
    return out


def test_smoke_sweep_outputs(smoke):
    summary = pd.read_csv(smoke / "summary.csv")
    for col in ("run_id", "task", "method", "beta", "seed", "status", "reason", "steps", "kl", "reward",
                "win_rate_vs_ref", "frontier_gap", "kl_to_target"):
        assert col in summary.columns, col
    assert len(summary) == 6 and set(summary["status"]) == {"ok"}, summary[["run_id", "reason"]]
    assert set(summary["method"]) == {"dpo", "ipo", "kto"}
    assert (summary["steps"] == TINY_TRAIN["steps"]).all()
    # trained policies moved away from the reference, and the frontier bounds every run
    assert (summary["kl"] > 1e-4).all()
    assert (summary["frontier_gap"] > -1e-6).all()
    report = (smoke / "report.md").read_text()
    assert "## Reward vs KL frontier" in report and "frontier.png" in report
    assert (smoke / "frontier.png").stat().st_size > 3_000  # a drawn figure (72 dpi, 32 colours), not an empty one
    run = smoke / "runs" / summary["run_id"][0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert rows[0]["kl/ref"] == pytest.approx(0.0, abs=1e-5)  # step 0 is the reference itself
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["train"]["steps"] == TINY_TRAIN["steps"]


def test_rerun_skips_completed_runs(smoke, cache_dir):
    before = {p: p.stat().st_mtime_ns for p in (smoke / "runs").glob("*/summary.json")}
    assert main(sweep_args(smoke, cache_dir)) == 0
    after = {p: p.stat().st_mtime_ns for p in (smoke / "runs").glob("*/summary.json")}
    assert before == after


def test_report_rebuilds_from_files(smoke):
    (smoke / "report.md").unlink()
    assert main(["report", str(smoke)]) == 0
    assert "## All runs" in (smoke / "report.md").read_text()


@pytest.mark.parametrize("extra,needle", [
    (["--methods", "dpoo"], "did you mean 'dpo'"),
    (["--task", "exactt"], "did you mean 'exact'"),
    (["--betas", "0"], "betas[0]: must be > 0"),
    (["--betas", "-0.5"], "betas[0]"),
    (["--betas", "abc"], "--betas: 'abc' is not a number"),
    (["--betas", "nan"], "betas[0]: must be finite"),
    (["--train-arg", "stepz=3"], "train.stepz: unknown key (did you mean 'steps'?)"),
    (["--method-arg", "dpo.bta=1"], "method_args.dpo.bta: unknown key"),
    (["--task-arg", "exact.vocab_size=99"], "vocab_size"),
])
def test_bad_input_one_line_nonzero_nothing_written(smoke, cache_dir, capsys, extra, needle):
    before = snapshot(smoke)
    capsys.readouterr()
    assert main(sweep_args(smoke, cache_dir) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1
    assert snapshot(smoke) == before


def test_bad_input_in_a_fresh_folder_creates_nothing(tmp_path, cache_dir):
    out = tmp_path / "never"
    assert main(sweep_args(out, cache_dir, betas="0")) == 2
    assert not out.exists()


def test_bad_yaml_config_keys(tmp_path, cache_dir, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("tasks: [exact]\nbetaz: [0.1]\n")
    assert main(["sweep", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "betaz: unknown key (did you mean 'betas'?)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


THROWAWAY = '''
"""A throwaway method: SLiC-style hinge loss on the sequence log-ratio margin."""
from dataclasses import dataclass

import torch

from alignbench.api import LossOutput, MethodConfig, OfflineMethod
from alignbench.registry import register_method


@dataclass(frozen=True)
class HingeConfig(MethodConfig):
    pass


def hinge_loss(pc, pr, rc, rr, beta):
    margin = (pc - rc) - (pr - rr)
    return LossOutput(torch.relu(1 - beta * margin).mean(), (beta * (pc - rc)).detach(),
                      (beta * (pr - rr)).detach(), {})


@register_method("throwaway-hinge")
class Hinge(OfflineMethod):
    description = "hinge loss on the log-ratio margin (test plugin)"
    config_cls = HingeConfig
    data_format = "paired"

    def compute_loss(self, b):
        return hinge_loss(b.policy["chosen"], b.policy["rejected"], b.reference["chosen"],
                          b.reference["rejected"], self.config.beta)
'''


def test_method_added_from_one_file_runs_through_the_sweep(tmp_path, cache_dir, capsys):
    plugin = tmp_path / "plugins" / "hinge.py"
    plugin.parent.mkdir()
    plugin.write_text(textwrap.dedent(THROWAWAY))
    assert main(["list", "--plugins", str(plugin.parent)]) == 0
    assert "throwaway-hinge" in capsys.readouterr().out
    out = tmp_path / "res"
    assert main(sweep_args(out, cache_dir, methods="throwaway-hinge", betas="0.5",
                           extra=["--plugins", str(plugin.parent)])) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["method"]) == ["throwaway-hinge"] and summary["status"][0] == "ok"
    assert summary["kl"][0] > 0


def test_results_folder_that_is_a_file_or_unreadable(tmp_path, cache_dir, capsys):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    assert main(sweep_args(not_a_folder, cache_dir)) == 2
    assert "out: " in capsys.readouterr().err and not_a_folder.read_text() == "x"
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.csv").write_bytes(b"\x00\xff\x00garbage")
    assert main(["report", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "summary.csv" in err
    assert sorted(p.name for p in broken.iterdir()) == ["summary.csv"]


def test_corrupted_reference_logp_cache_is_rebuilt_not_used(tiny_exact_env, cache_dir):
    import torch

    from alignbench import trainer

    trainer.clear_memo()
    first = trainer.prepare(tiny_exact_env, "paired", "eval", cache_dir, torch.device("cpu"))
    files = sorted((cache_dir / "reflogps").glob("*.safetensors"))
    assert files
    for f in files:  # flip bytes in every cached file: the sha256 sidecar no longer matches
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    trainer.clear_memo()
    again = trainer.prepare(tiny_exact_env, "paired", "eval", cache_dir, torch.device("cpu"))
    for col in ("chosen", "rejected"):
        assert torch.equal(first.ref_logps[col], again.ref_logps[col])
    from alignbench import io

    assert any(io.load_tensors(f) is not None for f in files)  # the entry it needed was rewritten, valid again
