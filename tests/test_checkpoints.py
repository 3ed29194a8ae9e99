"""Checkpoints: the early-stopped choice, the envelope, the final-vs-early gap (hand-built rows, known answers); a real
tiny run keeps the early-stopped evaluation's per-prompt table; the best-so-far survives a resume; the report
section builds with one seed and with several."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from alignbench.api import EvalResult
from alignbench.cli import main
from alignbench.io import expand_logp
from alignbench.report import checkpoints as C
from alignbench.report import seeds as S
from alignbench.report import write_report
from alignbench.report.schema import EVAL_EARLY, ResultsData, as_frame, load_metrics

from .test_report_seeds import CLEAR, folder
from .test_sweep import sweep_args


def rows(losses, steps=None):
    steps = steps if steps is not None else [5 * i for i in range(len(losses))]
    return [{"step": s, "eval/loss": v} for s, v in zip(steps, losses)]


def test_early_stop_choice_min_max_ties_and_missing():
    assert C.early_stop_choice(rows([0.69, 0.60, 0.55, 0.58]), "eval/loss", "min") == 2
    assert C.early_stop_choice(rows([0.69, 0.60, 0.55, 0.58]), "eval/loss", "max") == 0
    assert C.early_stop_choice(rows([0.69, 0.50, 0.60, 0.50]), "eval/loss", "min") == 1  # tie: the earliest step
    # rows out of step order are sorted first: position 1 of the sorted rows is step 5
    assert C.early_stop_choice(rows([0.5, 0.7, 0.4], steps=[10, 0, 5]), "eval/loss", "min") == 1
    # a signal that never improves chooses its first row: on the offline loop, step 0 (the reference)
    assert C.early_stop_choice(rows([0.69, 0.70, 0.75]), "eval/loss", "min") == 0
    # rows without the signal are no candidates (an online method's step 0 has no training reward yet)
    online = [{"step": 0}, {"step": 5, "online/rm_reward": 0.3}, {"step": 10, "online/rm_reward": 0.2}]
    assert C.early_stop_choice(online, "online/rm_reward", "max") == 1
    assert C.early_stop_choice(rows([0.6, 0.5]), "online/rm_reward", "max") is None  # never logged
    assert C.early_stop_choice([{"step": 0, "eval/loss": None}], "eval/loss", "min") is None
    with pytest.raises(ValueError, match="mode"):
        C.early_stop_choice(rows([0.5]), "eval/loss", "lowest")


def test_envelope_and_concave_hull():
    pts = [(0.0, 0.0), (1.0, 0.8), (2.0, 0.6), (0.5, 0.1), (3.0, 1.0), (np.nan, 5.0)]
    np.testing.assert_allclose(C.envelope(pts), [[0.0, 0.0], [0.5, 0.1], [1.0, 0.8], [3.0, 1.0]])
    # (0.5, 0.1) lies below the chord from (0, 0) to (1, 0.8): the hull drops it
    k, r = S.upper_hull(*C.envelope(pts).T)
    np.testing.assert_allclose(np.stack([k, r], 1), [[0.0, 0.0], [1.0, 0.8], [3.0, 1.0]])
    # interpolating adjacent Pareto points, an added point can lower the curve; the hull never is
    few, more = ([0.0, 2.0], [0.0, 1.0]), ([0.0, 1.0, 2.0], [0.0, 0.2, 1.0])
    assert S.front_curve(*more, [1.0])[0] == pytest.approx(0.2)
    assert S.front_curve(*few, [1.0])[0] == pytest.approx(0.5)
    assert S.front_curve(*more, [1.0], concave=True)[0] == pytest.approx(0.5)


def test_final_vs_early_gap_is_paired_by_seed():
    final = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9}
    early = {0: 0.6, 1: 0.8, 2: 0.75, 4: 0.1}  # seeds 3 and 4 have no partner
    g = C.final_vs_early_gap(final, early)
    assert g.n == 3 and g.diff == pytest.approx(np.mean([-0.1, -0.2, -0.05]))
    assert g.hi < 0 and g.distinguishable  # every seed lost by training on
    assert -0.2 - 1e-9 <= g.lo <= g.hi <= -0.05 + 1e-9  # bootstrap means lie between the extreme differences
    one = C.final_vs_early_gap({0: 0.5}, {0: 0.6})
    assert one.n == 1 and one.diff == pytest.approx(-0.1) and np.isnan(one.lo) and not one.distinguishable
    mixed = C.paired_gap({0: 0.5, 1: 0.7}, {0: 0.6, 1: 0.6})  # -0.1 and +0.1: the interval holds 0
    assert mixed.diff == pytest.approx(0.0) and not mixed.distinguishable


def _run(method, seed, metrics):
    return SimpleNamespace(task="t", method=method, seed=seed, metrics=as_frame(metrics))


def test_three_frontiers_of_hand_built_runs():
    # one dpo run: the held-out loss is lowest at step 5, the final step is 10; the reference (KL 0) at step 0
    dpo = [{"step": 0, "kl/ref": 0.0, "reward/gold": 0.0, "eval/loss": 0.69},
           {"step": 5, "kl/ref": 1.0, "reward/gold": 0.8, "eval/loss": 0.50},
           {"step": 10, "kl/ref": 2.0, "reward/gold": 0.6, "eval/loss": 0.60}]
    bon = [{"step": 0, "kl/ref": 2.0, "reward/gold": 0.4}]
    table = C.evaluation_table({"a": _run("dpo", 0, dpo), "b": _run("bon", 0, bon)},
                               {"dpo": ("eval/loss", "min"), "bon": None})
    pick = table.set_index("run_id")
    assert table[table["early"]]["step"].tolist() == [5.0] and not table["fallback"].any()
    assert table[table["final"]]["step"].tolist() == [10.0, 0.0]
    sets = {c: C.point_sets(table, "t", c, {("t", 0): 0.0}) for c in C.CHOICES}  # with the reference (0, 0)
    assert "bon" not in sets[C.EARLY] and len(pick.loc["a"]) == 3
    score = {c: S.frontier_score(*sets[c]["dpo"][0], 0.0, 2.0, concave=True) for c in C.CHOICES}
    # final: (0, 0)-(2, 0.6), mean 0.3; early-stopped: (0, 0)-(1, 0.8) then flat: (0.4 + 0.8) / 2 = 0.6;
    # envelope: (2, 0.6) is dominated by (1, 0.8), so the same as early-stopped
    assert score[C.FINAL] == pytest.approx(0.3, abs=1e-9)
    assert score[C.EARLY] == pytest.approx(0.6, abs=5e-3) and score[C.ENVELOPE] == pytest.approx(score[C.EARLY])
    # a signal never logged keeps the final checkpoint, flagged
    t2 = C.evaluation_table({"a": _run("dpo", 0, dpo)}, {"dpo": ("online/rm_reward", "max")})
    assert t2[t2["early"]]["step"].tolist() == [10.0] and t2["fallback"].all()


# ------------------------------------------------------------------------------------------ a real tiny run


def z_dtype_is_codes(path):
    with np.load(path) as z:
        return z["logp"].dtype == np.uint8


def test_tiny_dpo_run_keeps_the_lowest_held_out_loss_checkpoint(tmp_path, cache_dir, tiny_exact_env):
    out = tmp_path / "out"
    assert main(sweep_args(out, cache_dir, methods="dpo", betas="0.3",
                           extra=["--steps", "20", "--eval-every", "5", "--train-arg=lr=0.003"])) == 0
    run = next((out / "runs").iterdir())
    m = load_metrics(run)
    assert m["step"].tolist() == [0, 5, 10, 15, 20]
    best = int(m["step"].iloc[int(np.argmin(m["eval/loss"].to_numpy()))])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["early_step"] == best < 20  # this config's held-out loss turns up before the end
    with np.load(run / EVAL_EARLY) as z:
        assert int(z["step"]) == best
        logp = torch.tensor(expand_logp(z["logp"]), dtype=torch.float64)
    assert z_dtype_is_codes(run / EVAL_EARLY)
    again = tiny_exact_env.evaluate_table(logp).metrics  # the saved table gives that evaluation's metrics
    row = m[m["step"] == best].iloc[0]
    for key in ("kl/ref", "reward/gold"):  # to the stored codes' precision (1/16 nat per entry, io.compact_logp)
        assert again[key] == pytest.approx(row[key], rel=0.02, abs=2e-3), key
    summ = pd.read_csv(out / "summary.csv")
    assert ResultsData(out, summ, policy="early").eval_final(run.name)["step"] == best
    text = (out / "report.md").read_text()
    assert "## Checkpoints: final vs early-stopped vs envelope" in text and "eval/loss (min)" in text


def test_best_so_far_survives_a_checkpoint_and_resume(tmp_path):
    from alignbench.config import from_mapping
    from alignbench.registry import get_method
    from alignbench.runner import MetricsLogger, RunContext, RunSpec
    from alignbench.config import TrainConfig

    cls = get_method("dpo")
    spec = RunSpec(task="exact", method="dpo", seed=0, method_config=from_mapping(cls.config_cls, {}),
                   task_config=TrainConfig(), train=TrainConfig(), run_id="r")

    def ctx():
        return RunContext(spec=spec, run_dir=tmp_path, env=None, method=cls(spec.method_config),
                          device=torch.device("cpu"), cache_dir=tmp_path, logger=MetricsLogger(tmp_path / "m.jsonl"))

    def result(loss):
        return EvalResult({"eval/loss": loss}, {"logp": torch.full((2, 3), loss), "prompts": ["a", "b"]})

    a = ctx()
    for step, loss in ((0, 0.7), (5, 0.5), (10, 0.6)):
        a.log_eval(step, result(loss))
    assert a.early["step"] == 5 and a.extra_summary["early_step"] == 5
    a.save_checkpoint(10, {}, {})
    b = ctx()
    assert b.resume({}, {}) == 10
    assert b.early["step"] == 5 and b.extra_summary["early_step"] == 5
    assert torch.equal(b.early["per_prompt"]["logp"], torch.full((2, 3), 0.5))
    b.log_eval(15, result(0.55))  # worse than step 5: kept
    assert b.early["step"] == 5
    b.log_eval(20, result(0.4))
    assert b.early["step"] == 20


# ------------------------------------------------------------------------------------------ the report section


def _with_losses(out):
    """Add a held-out loss to every run of a test_report_seeds folder: lowest at step 25 of 0, 25, 50, except dpo's
    seed 1, whose loss falls to the end (its early-stopped policy is its final one)."""
    for p in out.glob("runs/*/metrics.jsonl"):
        ms = [json.loads(line) for line in p.read_text().splitlines()]
        late = p.parent.name.startswith("t-dpo-") and p.parent.name.endswith("-s1")
        for m, loss in zip(ms, (0.69, 0.6, 0.5) if late else (0.69, 0.5, 0.6)):
            m["eval/loss"] = loss
        p.write_text("".join(json.dumps(m) + "\n" for m in ms))
    return out


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_report_section_with_one_and_several_seeds(tmp_path, n_seeds):
    out = _with_losses(folder(tmp_path / "r", {k: v[:n_seeds] for k, v in CLEAR.items()}))
    text = write_report(out).read_text()
    sec = text[text.index("## Checkpoints"):text.index("## Diagnostics")]
    ck = pd.read_csv(out / "checkpoints.csv")
    runs = ck[ck["table"] == "run"]
    late = runs["run_id"].str.startswith("t-dpo-") & runs["run_id"].str.endswith("-s1")
    assert (runs.loc[~late, "early_step"] == 25).all() and (runs.loc[late, "early_step"] == 50).all()
    assert (runs["final_step"] == 50).all()
    sc = ck[ck["table"] == "score"].pivot(index="method", columns="choice", values="score")
    assert (sc[C.ENVELOPE] >= sc[C.FINAL] - 1e-12).all() and (sc[C.ENVELOPE] >= sc[C.EARLY] - 1e-12).all()
    gap = ck[(ck["table"] == "gap") & (ck["comparison"] == C.GAPS[0][0])].set_index("method")
    assert (gap["n_seeds"] == n_seeds).all()
    assert (out / "checkpoints_t.png").exists() and "![checkpoints_t.png]" in sec
    if n_seeds == 1:
        assert gap["ci_low"].isna().all() and "no interval and no claim (one seed)" in sec
    else:
        assert gap["ci_low"].notna().all()
        gaps = ck[ck["table"] == "gap"].set_index(["method", "comparison"])
        # dpo: two seeds gain by training on, one does not differ; a resample of that seed alone has p = 1/27 > 2.5%
        assert gaps.loc[("dpo", C.GAPS[0][0]), "ci_low"] == 0.0 and gaps.loc[("kto", C.GAPS[0][0]), "ci_low"] > 0
        for (m, name), r in gaps.iterrows():
            claimed = r["ci_low"] > 0 or r["ci_high"] < 0
            line = next(x for x in sec.splitlines() if x.startswith(f"- `t`, {m}: ") and name in x)
            assert ("(n=3 seeds, paired)" in line) == claimed and ("not distinguishable with 3 seeds" in line) != claimed


# ------------------------------------------------------------------------------------------ --eval-every


def test_eval_every_is_a_sweep_setting(tmp_path, capsys):
    from alignbench.config import from_mapping
    from alignbench.errors import ConfigError
    from alignbench.sweep import SweepConfig, plan

    def specs(**kw):
        return plan(from_mapping(SweepConfig, {"out": str(tmp_path / "unused"), "methods": ["dpo", "ppo"],
                                               "betas": [0.1], **kw})).specs

    assert {(s.method, s.train.eval_every) for s in specs()} == {("dpo", 25), ("ppo", 10)}  # the exact task's defaults
    assert {s.train.eval_every for s in specs(eval_every=10, train_args={"eval_every": 7})} == {10}  # the flag wins
    for bad in (0, -5, 2.5):
        with pytest.raises(ConfigError, match="eval_every"):
            from_mapping(SweepConfig, {"eval_every": bad})
    out = tmp_path / "never"
    assert main(["sweep", "--methods", "dpo", "--eval-every", "0", "--out", str(out)]) != 0
    assert "eval_every" in capsys.readouterr().err and not out.exists()


def test_a_bad_early_stop_declaration_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from alignbench.errors import AlignbenchError
    from alignbench.registry import get_method

    monkeypatch.setattr(get_method("dpo"), "early_stop_signal", ("eval/loss", "lowest"))
    out = tmp_path / "never"
    with pytest.raises(AlignbenchError, match="early_stop_signal must be"):
        from alignbench.config import from_mapping
        from alignbench.sweep import SweepConfig, plan

        plan(from_mapping(SweepConfig, {"out": str(out), "methods": ["dpo"], "betas": [0.1]}))
    assert not out.exists()
