"""The examples and degeneration sections (alignbench.report.examples) from hand-built results folders."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alignbench import degeneration as DG
from alignbench import exact as X
from alignbench import report as R
from alignbench.report import examples as E
from alignbench.registry import discover, methods, tasks

P, N_SAMPLES, K, NR = 10, 4, 3, 6
PROMPTS = [f"the movie {i}" for i in range(P)]
# (method, beta) -> (KL, mean gold reward, rep2): "alpha" repeats itself at small beta, "omega" never does
CELLS = {("alpha", 0.1): (8.0, 0.9, 0.40), ("alpha", 1.0): (1.1, 0.5, 0.06),
         ("omega", 0.1): (3.0, 0.8, 0.05), ("omega", 1.0): (0.9, 0.3, 0.05)}
REF_REP, SE = 0.05, 0.01


def completion(method, beta, seed, i, j):
    return f"{method} b{beta:g} s{seed} p{i} j{j}"


def reward_of(method, beta, seed, i, j):
    return round(CELLS[(method, beta)][1] + 0.01 * i - 0.1 * j + 0.001 * seed, 4)


def ref_reward(seed, i, j):
    return round(-0.2 + 0.01 * i + 0.001 * seed, 4)


def _run(out, rid, row, metrics, ef):
    d = out / "runs" / rid
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"task": row["task"], "method": row["method"], "seed": row["seed"]}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (d / "eval_final.json").write_text(json.dumps(ef))
    (d / "summary.json").write_text(json.dumps(row))


def build(out: Path, seeds=(0,), table=False) -> Path:
    """A text task 'words' (declared has_text) with two methods x two betas x seeds; optionally an
    enumerable task 'grid' whose task file holds ref_logp/reward/responses."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for (m, beta), (kl, rew, rep) in CELLS.items():
        for s in seeds:
            rid = f"words-{m}-beta{beta:g}-s{s}"
            metrics = {"step": 10, "reward/gold": rew, "kl/ref": kl, DG.REP: rep, DG.REP + "_se": SE,
                       DG.reference_name(DG.REP): REF_REP, DG.reference_name(DG.REP) + "_se": SE,
                       DG.DISTINCT2: 0.5, DG.DISTINCT2 + "_se": 0.02, DG.REF_LOGP: -2.0 - rep,
                       DG.REF_LOGP + "_se": 0.1, DG.LENGTH: 9.0, DG.LENGTH + "_se": 0.2}
            ef = {"prompts": PROMPTS[::-1] if m == "omega" else PROMPTS,  # order differs between methods
                  "completions": [], "rewards": [], "ref_completions": [], "ref_rewards": []}
            for i in (range(P - 1, -1, -1) if m == "omega" else range(P)):
                ef["completions"].append([completion(m, beta, s, i, j) for j in range(2)])
                ef["rewards"].append([reward_of(m, beta, s, i, j) for j in range(N_SAMPLES)])
                ef["ref_completions"].append([f"ref s{s} p{i} j{j}" for j in range(2)])
                ef["ref_rewards"].append([ref_reward(s, i, j) for j in range(N_SAMPLES)])
            row = {"run_id": rid, "task": "words", "method": m, "sweep_param": "beta", "beta": beta,
                   "sweep_value": beta, "seed": s, "status": "ok", "reason": "", "kl": kl, "reward": rew}
            rows.append(row)
            _run(out, rid, row, [metrics], ef)
    facts = {"words": {"has_text": True}}
    if table:
        rng = np.random.default_rng(0)
        ref = np.log(rng.dirichlet(np.ones(NR), K))
        reward = rng.standard_normal((K, NR))
        np.savez(out / "task_grid.npz", ref_logp=ref, reward=reward, prompts=np.array([f"<p{k}>" for k in range(K)]),
                 responses=np.array([f"r{y}" for y in range(NR)]))
        for m, t in (("alpha", 2.0), ("omega", 0.5)):
            lp = ref + t * reward
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            kl = float((np.exp(lp) * (lp - ref)).sum(1).mean())
            row = {"run_id": f"grid-{m}", "task": "grid", "method": m, "sweep_param": "beta", "beta": 1.0,
                   "sweep_value": 1.0, "seed": 0, "status": "ok", "reason": "", "kl": kl,
                   "reward": float((np.exp(lp) * reward).sum(1).mean())}
            rows.append(row)
            _run(out, row["run_id"], row, [{"step": 1, "kl/ref": kl}], {"logp": lp.tolist()})
        facts["grid"] = {"has_text": False}
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)
    (out / "sweep.json").write_text(json.dumps({"tasks": facts}))
    return out


def load(out):
    summary, _ = R.load_results(out)
    return summary, R.load_runs(out, summary)


def blocks(text):
    """prompt -> the table rows (policy, gold reward, completion) under it."""
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith("**prompt:**"):
            cur = line.split("`")[1]
            out[cur] = []
        elif cur and line.startswith("| ") and not line.startswith("| policy"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cur].append(cells)
    return out


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_examples_pick_the_same_prompts_for_every_method_with_gold_rewards(tmp_path, seeds):
    out = build(tmp_path / "res", seeds)
    summary, runs = load(out)
    text = E.section_examples(out, summary, runs)
    got = blocks(text)
    assert list(got) == E.pick_prompts([PROMPTS], E.N_PROMPTS) and len(got) == 6
    assert E.pick_prompts([PROMPTS[::-1], PROMPTS[3:] + PROMPTS[:3]], 6) == list(got)  # order-free
    for prompt, rows in got.items():
        i = PROMPTS.index(prompt)
        by_text = {r[3]: (r[0], float(r[2])) for r in rows}
        # the reference, then best (beta 0.1 for both) and KL≈1 (alpha 1.0 at KL 1.1, omega 1.0 at 0.9)
        assert by_text[f"ref s0 p{i} j0"][1] == pytest.approx(ref_reward(0, i, 0), abs=0.006)
        for m in ("alpha", "omega"):
            for beta, tag in ((0.1, "best"), (1.0, "KL≈1")):
                label, rew = by_text[completion(m, beta, 0, i, 0)]  # the lowest seed's first sample
                assert f"[{tag}]" in label and f"β={beta:g}" in label
                assert rew == pytest.approx(reward_of(m, beta, 0, i, 0), abs=0.006)
                assert ("(seed 0 of 3)" in label) == (len(seeds) == 3)
        assert len(rows) == 5
    ex = pd.read_csv(out / E.EXAMPLES_CSV)
    assert len(ex) == len(CELLS) * P * 2 + P * 2  # the lowest seed only, whatever the number of seeds
    assert set(ex["seed"]) == {min(seeds)}
    r = ex[(ex["run_id"] == "words-omega-beta1-s0") & (ex["prompt"] == PROMPTS[7]) & (ex["sample"] == 1)]
    assert r["completion"].item() == completion("omega", 1.0, 0, 7, 1)
    assert r["reward"].item() == pytest.approx(reward_of("omega", 1.0, 0, 7, 1))


def test_degeneration_columns_figure_and_repetition_finding(tmp_path):
    out = build(tmp_path / "res", (0, 1))
    summary, runs = load(out)
    cols = E.degeneration_columns(runs)
    assert cols.loc["words-alpha-beta0.1-s1", "rep-2"] == 0.40
    assert cols.loc["words-alpha-beta0.1-s1", E.REF_PREFIX + "rep-2"] == REF_REP
    ud = E.unit_degeneration(summary, runs)
    a = ud[ud["label"] == "alpha β=0.1"].iloc[0]
    assert a["rep-2_se"] == pytest.approx(math.sqrt(2 * SE ** 2) / 2)  # seeds combined
    text = E.section_degeneration(out, summary, runs)
    assert (out / "degen_words.png").exists() and "degen_words.png" in text
    found = E.findings_degeneration(out, summary, runs)
    # alpha at beta 0.1: 0.40 - 0.05 far beyond 1.96 * sqrt(2) * 0.007; alpha at beta 1: 0.01 < 0.0196
    assert len(found) == 1 and "alpha" in found[0] and "KL 8 nats" in found[0] and "omega" not in found[0]


def test_enumerable_task_shows_top_responses_against_the_optimal_policy(tmp_path):
    out = build(tmp_path / "res", (0,), table=True)
    summary, runs = load(out)
    text = E.section_examples(out, summary, runs)
    assert "### grid: most probable responses" in text
    z = np.load(out / "task_grid.npz")
    ref, reward = torch.tensor(z["ref_logp"]), torch.tensor(z["reward"])
    _, _, budget = E.picks(summary, "grid")
    beta = E.optimal_beta_at_kl(ref, reward, budget)
    target = X.optimal_logp(ref, reward, beta)
    assert float(X.kl(target, ref)) == pytest.approx(budget, rel=1e-6)
    rows = blocks(text.split("### grid")[1])
    k = [f"<p{k}>" for k in range(K)].index(next(iter(rows)))
    star = next(r for r in rows[f"<p{k}>"] if r[0].startswith("π*_β"))
    y = int(torch.argmax(target[k]))
    assert star[3] == f"`r{y}` p={math.exp(float(target[k, y])):.2f} r={float(reward[k, y]):+.2f}"
    p = target[k].exp()
    assert float(star[1]) == pytest.approx(float((p * (target[k] - ref[k])).sum()), abs=0.006)  # KL of this prompt
    assert float(star[2]) == pytest.approx(float((p * reward[k]).sum()), abs=0.006)


def _string_literals(path: Path) -> set[str]:
    """String constants of a module's code, docstrings (prose) left out."""
    tree = ast.parse(path.read_text())
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


def test_report_code_names_no_method_or_task():
    discover()
    names = set(methods()) | set(tasks())
    import alignbench.degeneration
    import alignbench.report.examples

    for mod in (alignbench.report.examples, alignbench.degeneration):
        lits = _string_literals(Path(mod.__file__))
        assert not names & lits, (mod.__name__, names & lits)
        words = {w.strip("`'\".,:;()[]") for s in lits for w in s.replace("-", " ").split()}
        assert not names & words, (mod.__name__, names & words)
