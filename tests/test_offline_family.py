"""SimPO, ORPO, SLiC-HF, robust DPO, NCA and BCO: hand-derived numbers, limit cases, config checks, the paired-loss
helper, reference-free training without a reference forward, a sweep smoke test and resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from alignbench import trainer
from alignbench.api import LogpBatch
from alignbench.cli import main
from alignbench.config import TrainConfig, from_mapping
from alignbench.errors import ConfigError
from alignbench.paired import paired_output
from alignbench.registry import get_method, get_task
from alignbench.runner import RunSpec, execute
from alignbench.methods.bco import BCO, BCOConfig, RunningMean, bco_losses
from alignbench.methods.dpo import dpo_loss
from alignbench.methods.nca import nca_loss, nca_losses
from alignbench.methods.orpo import ORPOConfig, log_odds, orpo_losses
from alignbench.methods.rdpo import RDPOConfig, rdpo_loss, rdpo_losses
from alignbench.methods.simpo import SimPOConfig, simpo_loss
from alignbench.methods.slic import SLiC, SLiCConfig, slic_losses

from .conftest import TINY_EXACT, TINY_TRAIN
from .test_reliability import comparable, metrics
from .test_sweep import sweep_args

T = torch.float64
NEW = ["simpo", "orpo", "slic", "rdpo", "nca", "bco"]
NOT_KL = {"simpo", "orpo", "slic"}  # their swept value is no KL coefficient


def t(*xs: float, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=T, requires_grad=requires_grad)


def softplus(x: float) -> float:  # -log sigma(x)
    return math.log1p(math.exp(-x))


# ------------------------------------------------------------------------------------------ hand-derived numbers


def test_simpo_hand_numbers_and_zero_margin():
    # chosen: log pi = -2 over 4 tokens (mean -0.5); rejected: -6 over 3 tokens (mean -2); beta 2, gamma 1
    # rewards 2 * -0.5 = -1 and 2 * -2 = -4; logit -1 - (-4) - 1 = 2; loss -log sigma(2) = 0.1269280110
    out = simpo_loss(t(-2.0), t(-6.0), t(4.0), t(3.0), beta=2.0, gamma=1.0)
    assert out.loss.item() == pytest.approx(0.1269280110, abs=1e-9)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((-1.0, -4.0))
    assert out.metrics["train/margin"].item() == pytest.approx(3.0)
    assert out.metrics["train/accuracy"].item() == 1.0
    assert "train/logratio_chosen" not in out.metrics  # reference-free: no log-ratio to report
    # equal per-token means: -log sigma(-gamma); with gamma = 0, log 2 whatever beta
    same = (t(-4.0, -3.0), t(-8.0, -3.0), t(2.0, 1.0), t(4.0, 1.0))
    assert simpo_loss(*same, beta=7.0, gamma=0.0).loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert simpo_loss(*same, beta=7.0, gamma=1.5).loss.item() == pytest.approx(softplus(-1.5), abs=1e-12)


def test_simpo_config_gamma_is_ratio_times_beta():
    cfg = from_mapping(SimPOConfig, {"beta": 4.0})
    assert cfg.gamma == pytest.approx(0.55 * 4.0)
    with pytest.raises(ConfigError, match="gamma_beta_ratio"):
        from_mapping(SimPOConfig, {"gamma_beta_ratio": -0.1})


def test_rdpo_hand_numbers_eps0_is_dpo_and_unbiased():
    # one pair with beta h = 1, eps = 0.25: [(0.75) l(1) - 0.25 l(-1)] / 0.5 = -0.1867383125
    out = rdpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=1.0, epsilon=0.25)
    assert out.loss.item() == pytest.approx(-0.1867383125, abs=1e-9)
    pc, pr, rc, rr = t(-1.0, -3.0, -5.0), t(-2.0, -1.0, -5.5), t(-1.5, -2.0, -4.0), t(-1.5, -2.0, -6.0)
    torch.testing.assert_close(rdpo_loss(pc, pr, rc, rr, 0.3, 0.0).loss, dpo_loss(pc, pr, rc, rr, 0.3).loss,
                               rtol=0, atol=1e-15)
    # unbiased: a label flipped with probability eps gives, in expectation, the clean DPO loss
    eps = 0.2
    clean = rdpo_losses(pc, pr, rc, rr, 0.3, eps)
    flipped = rdpo_losses(pr, pc, rr, rc, 0.3, eps)
    dpo = -torch.nn.functional.logsigmoid(0.3 * ((pc - rc) - (pr - rr)))
    torch.testing.assert_close((1 - eps) * clean + eps * flipped, dpo, rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="epsilon"):
        from_mapping(RDPOConfig, {"epsilon": 0.5})


def test_nca_hand_numbers_and_symmetry():
    # beta r_w = 1, beta r_l = -1: l(1) + l(-1)/2 + l(1)/2 = 1.1265233750
    assert nca_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=1.0).loss.item() == pytest.approx(1.1265233750, abs=1e-9)
    # zero log-ratios: l(0) + l(0)/2 + l(0)/2 = 2 log 2
    assert nca_loss(t(-3.0), t(-4.0), t(-3.0), t(-4.0), beta=0.5).loss.item() == pytest.approx(2 * math.log(2))
    # the rejected term depends on its own reward only, and is DPO-unlike: a shift of both log-ratios by c
    # changes NCA (each reward is classified against the reference) but not DPO's margin
    pc, pr, rc, rr = t(-1.0, -2.0), t(-3.0, -1.0), t(-2.0, -2.5), t(-2.0, -0.5)
    shifted = nca_losses(pc + 1.0, pr + 1.0, rc, rr, 0.5)
    assert not torch.allclose(shifted, nca_losses(pc, pr, rc, rr, 0.5))
    # symmetric in the sign of the rejected reward around 0 only through l(-x) - l(x) = x:
    x = 0.7
    up = nca_losses(t(-1.0), t(-1.0 + x / 0.5), t(-1.0), t(-1.0), 0.5)  # beta r_l = +x
    down = nca_losses(t(-1.0), t(-1.0 - x / 0.5), t(-1.0), t(-1.0), 0.5)  # beta r_l = -x
    diff = up - down
    assert diff.item() == pytest.approx(0.5 * x)  # 1/2 [l(-x) - l(x)] = x / 2


def test_orpo_odds_at_known_probabilities():
    # mean per-token probability 0.8 over 2 tokens -> log odds log 4; 0.2 -> log 1/4; log odds ratio log 16
    pc, pr = t(2 * math.log(0.8)), t(3 * math.log(0.2))
    losses, nll, oc, orr = orpo_losses(pc, pr, t(2.0), t(3.0), lam=0.5)
    assert (oc.item(), orr.item()) == pytest.approx((math.log(4), math.log(0.25)), abs=1e-12)
    assert nll.item() == pytest.approx(-math.log(0.8), abs=1e-12)
    # NLL + lambda log(1 + 1/16) = 0.2231435513 + 0.5 * 0.0606246218
    assert losses.item() == pytest.approx(0.2534558622, abs=1e-9)
    assert log_odds(t(math.log(0.5))).item() == pytest.approx(0.0, abs=1e-15)
    # p -> 1: log odds = log p - log(1 - p) ~ -log(1e-10), accurate where log1p(-exp(x)) loses all digits
    assert log_odds(t(-1e-10)).item() == pytest.approx(-math.log(1e-10), rel=1e-9)
    with pytest.raises(ConfigError, match="lam"):
        from_mapping(ORPOConfig, {"lam": 0})


def test_slic_hand_numbers_zero_region_and_hinge_form():
    # margin 0.5 < delta 1: hinge 0.5, + 0.1 * 2 = 0.7; margin 3 >= 1: hinge 0, only the NLL 0.2
    pc, pr = t(-2.0, -2.0, requires_grad=True), t(-2.5, -5.0, requires_grad=True)
    losses = slic_losses(pc, pr, delta=1.0, lam=0.1)
    torch.testing.assert_close(losses, t(0.7, 0.2))
    losses.sum().backward()
    torch.testing.assert_close(pr.grad, t(1.0, 0.0))  # no gradient on y_l inside the zero region
    torch.testing.assert_close(pc.grad, t(-1.1, -0.1))
    # hinge form: relu(1 - h / delta) with h = 0.5 - (-1) = 1.5, delta 2 -> 0.25
    assert slic_losses(t(-1.0), t(-3.0), 2.0, 0.0, t(-1.5), t(-2.0)).item() == pytest.approx(0.25)
    assert SLiC(from_mapping(SLiCConfig, {})).needs_reference is False
    assert SLiC(from_mapping(SLiCConfig, {"form": "hinge"})).needs_reference is True
    with pytest.raises(ConfigError, match="form"):
        from_mapping(SLiCConfig, {"form": "rso"})
    with pytest.raises(ConfigError, match="delta"):
        from_mapping(SLiCConfig, {"delta": 0})


def test_bco_zero_shift_and_running_mean():
    labels = torch.tensor([True, False])
    # delta = 0, beta = 0.5: desirable r = 1 -> l(0.5); undesirable r = 2 -> l(-1) on -(0.5 * 2)
    losses, rewards = bco_losses(t(-1.0, -1.0), t(-2.0, -3.0), labels, 0.5, 0.0)
    torch.testing.assert_close(losses, t(softplus(0.5), softplus(-1.0)))
    torch.testing.assert_close(rewards, t(0.5, 1.0))
    # the shift moves both rows' logits: delta = 0.5 makes the desirable row's logit 0
    assert bco_losses(t(-1.0), t(-2.0), labels[:1], 0.5, 0.5)[0].item() == pytest.approx(math.log(2))
    run = RunningMean()
    run.update(t(1.0, 2.0, 3.0))
    run.update(t(5.0))
    assert run.mean == pytest.approx(11 / 4) and run.count == 4
    again = RunningMean()
    again.load_state_dict(run.state_dict())
    assert again.state_dict() == run.state_dict()


def test_bco_updates_its_shift_in_training_only():
    method = BCO(from_mapping(BCOConfig, {"beta": 1.0}))
    pol = t(-1.0, -2.0, requires_grad=True)
    batch = LogpBatch(policy={"completion": pol}, reference={"completion": t(-2.0, -1.0)},
                      lengths={}, labels=torch.tensor([True, False]))
    with torch.no_grad():
        method.compute_loss(batch)  # evaluation
    assert method.delta.count == 0
    out = method.compute_loss(batch)  # training: rewards 1 and -1, mean 0
    assert method.delta.count == 2 and method.delta.mean == pytest.approx(0.0)
    assert out.loss.item() == pytest.approx(softplus(1.0))  # both rows classified right by a margin of 1


def test_paired_output_reduces_detaches_and_reports():
    losses = t(1.0, 3.0, requires_grad=True)
    out = paired_output(losses, t(0.5, -1.0, requires_grad=True), t(-0.5, 1.0), beta=0.5)
    assert out.loss.item() == 2.0 and out.loss.requires_grad
    assert not out.chosen_rewards.requires_grad
    torch.testing.assert_close(out.chosen_rewards, t(0.25, -0.5))
    assert set(out.metrics) == {"train/margin", "train/accuracy", "train/logratio_chosen", "train/logratio_rejected"}
    free = paired_output(losses, rewards=(t(2.0, 0.0), t(1.0, 1.0)), metrics={"x/y": t(7.0)})
    assert set(free.metrics) == {"train/margin", "train/accuracy", "x/y"}
    assert free.metrics["train/accuracy"].item() == 0.5
    with pytest.raises(ValueError):
        paired_output(losses, t(0.0, 0.0), t(0.0, 0.0), rewards=(t(0.0), t(0.0)))


# ------------------------------------------------------------------------------------------ harness


def test_reference_free_method_trains_without_a_reference_forward(tmp_path, tiny_exact_env, monkeypatch):
    """SimPO: no reference forward on its (training or held-out) data; only the held-out pairs, for the log-ratio
    diagnostics. DPO in the same setting scores the training pairs (the spy can see it)."""
    env = tiny_exact_env
    calls: list[tuple[bool, int]] = []
    original = trainer.score_all

    def spy(model, tokens, device):
        calls.append((model is env.reference, len(tokens)))
        return original(model, tokens, device)

    seen: list[dict] = []
    simpo_cls = get_method("simpo")
    original_loss = simpo_cls.compute_loss

    def loss_spy(self, batch):
        seen.append(batch.reference)
        return original_loss(self, batch)

    monkeypatch.setattr(trainer, "score_all", spy)
    monkeypatch.setattr(simpo_cls, "compute_loss", loss_spy)
    n_train, n_eval = TINY_EXACT["num_train_pairs"], TINY_EXACT["num_eval_pairs"]
    try:
        summary = run_one(env, tmp_path, "simpo")
        assert summary["status"] == "ok" and math.isfinite(summary["kl"])
        reference_rows = [n for is_ref, n in calls if is_ref]
        assert reference_rows == [n_eval]  # the held-out pairs only (evaluation), never the n_train training pairs
        assert seen and all(r == {} for r in seen)  # the loss never received reference log-probs
        calls.clear()
        assert run_one(env, tmp_path, "dpo")["status"] == "ok"
        assert n_train in [n for is_ref, n in calls if is_ref]  # the control: DPO scores its training pairs
    finally:
        trainer.clear_memo()


def test_slic_hinge_form_declares_and_gets_the_reference(tmp_path, tiny_exact_env):
    """The trainer reads needs_reference from the instance: slic's hinge form trains on reference log-ratios."""
    try:
        summary = run_one(tiny_exact_env, tmp_path, "slic", {"form": "hinge"})
    finally:
        trainer.clear_memo()
    assert summary["status"] == "ok", summary["reason"]  # a batch without reference log-probs fails the run
    assert math.isnan(summary["beta"]) and summary["sweep_value"] == 1.0


def run_one(env, tmp_path: Path, name: str, margs: dict | None = None) -> dict:
    """One 3-step run of ``name`` on the tiny exact task with a fresh reference cache and no memoised log-probs."""
    trainer.clear_memo()  # every reference forward happens inside this run
    task_cls, cls = get_task("exact"), get_method(name)
    cfg = from_mapping(cls.config_cls, margs or {})
    spec = RunSpec(task="exact", method=name, seed=0, method_config=cfg,
                   task_config=from_mapping(task_cls.config_cls, TINY_EXACT),
                   train=from_mapping(TrainConfig, {**TINY_TRAIN, "steps": 3}), run_id=name)
    return execute(spec, env, cls(cfg), tmp_path / name, device=torch.device("cpu"),
                   cache_dir=tmp_path / f"cache-{name}", show_progress=False)


@pytest.fixture(scope="module")
def family_sweep(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("family")
    grid = ["--grid", "simpo=2.5", "--grid", "orpo=0.1", "--grid", "slic=1"]
    assert main(sweep_args(out, cache_dir, methods=",".join(NEW), betas="0.3", extra=grid)) == 0
    return pd.read_csv(out / "summary.csv").set_index("method")


@pytest.mark.parametrize("name", NEW)
def test_new_method_runs_through_the_sweep(family_sweep, name):
    row = family_sweep.loc[name]
    assert row["status"] == "ok"
    assert math.isfinite(row["kl"]) and row["kl"] > 1e-4  # it moved away from the reference
    assert math.isfinite(row["reward"])
    assert row["sweep_param"] == get_method(name).sweep_param
    if name in NOT_KL:  # no KL coefficient: no beta column and no pi*_beta to measure against
        assert math.isnan(row["beta"]) and math.isnan(row.get("kl_to_target", float("nan")))
    else:
        assert row["beta"] == 0.3 == row["sweep_value"] and math.isfinite(row["kl_to_target"])


def test_bco_resumes_after_sigkill_with_its_running_shift(tmp_path, cache_dir, monkeypatch):
    """A real SIGKILL right after the step-4 checkpoint; rerunning resumes there (BCO's delta included) and ends
    exactly where an uninterrupted run ends."""
    from alignbench import runner

    extra = ["--train-arg", "checkpoint_every=2"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main(sweep_args(clean, cache_dir, methods="bco", betas="0.3", extra=extra)) == 0
    script = ("import os, signal, sys\n"
              "from alignbench import runner\n"
              "from alignbench.cli import main\n"
              "save = runner.RunContext.save_checkpoint\n"
              "def save_then_die(self, step, modules, extra):\n"
              "    save(self, step, modules, extra)\n"
              "    if step == 4:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "runner.RunContext.save_checkpoint = save_then_die\n"
              "sys.exit(main(sys.argv[1:]))\n")
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "ALIGNBENCH_QUIET": "1", "PYTHONPATH": path}
    args = sweep_args(killed, cache_dir, methods="bco", betas="0.3", extra=extra)
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=root, timeout=300,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    (run_dir,) = list((killed / "runs").iterdir())
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["modules"]["method"]["count"] > 0  # BCO's delta is in the checkpoint

    resumed_from = []
    original_resume = runner.RunContext.resume

    def spy(self, modules, extra_state):
        resumed_from.append(original_resume(self, modules, extra_state))
        return resumed_from[-1]

    monkeypatch.setattr(runner.RunContext, "resume", spy)
    assert main(args) == 0
    assert resumed_from == [4]
    assert metrics(killed) == metrics(clean)
    pd.testing.assert_frame_equal(comparable(killed / "summary.csv"), comparable(clean / "summary.csv"))
    rows = [json.loads(x) for x in next((killed / "runs").glob("*/metrics.jsonl")).read_text().splitlines()]
    assert rows[-1]["step"] == TINY_TRAIN["steps"]


def test_readme_add_a_method_example_runs_verbatim_and_reports_margin(tmp_path, cache_dir):
    """README's "Add a method" example, copied as it stands into a plugin file, runs through the sweep and logs the
    paired-loss helper's diagnostics."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Add a method"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]
    plugin = tmp_path / "hinge_example.py"
    plugin.write_text(code)
    out = tmp_path / "out"
    assert main(sweep_args(out, cache_dir, methods="hinge", betas="0.5", extra=["--plugins", str(plugin)])) == 0
    (m,) = metrics(out).values()
    last = m[-1]
    assert {"train/margin", "train/accuracy", "train/logratio_chosen"} <= set(last)
    assert math.isfinite(last["train/margin"]) and 0 <= last["train/accuracy"] <= 1
