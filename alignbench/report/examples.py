"""Report sections on what the policies write: example completions side by side, and degeneration.

Functions of ``(out, summary, runs)`` (the results folder, the summary frame and the report's
``run_id -> RunData``) returning Markdown, so that the report registers them like its other sections:

* :func:`section_examples` -- for each task with text, :data:`N_PROMPTS` evaluation prompts (chosen by
  a hash of the prompt text among the prompts every run saved, so the same for every method), each
  with the reference's completion, each method's at its best sweep value (highest mean gold reward)
  and at one matched KL budget (:func:`alignbench.winrates.select_matched_kl`), each with its gold
  reward; the first saved sample of the lowest seed, labelled where there are several seeds. It also
  writes ``DIR/examples.csv.gz`` (every saved completion and its gold reward, per run, and the
  reference's). On a task that saved its reference log-prob table (``task_<task>.npz`` with
  ``ref_logp``, ``reward`` and ``responses``; the exact task), it shows instead each policy's most
  probable responses with their probabilities next to pi*_beta = pi_ref exp(r / beta) / Z at the same
  KL budget (DPO paper, App. A.1, Eq. 4).
* :func:`section_degeneration` -- one figure per task (``degen_<task>.png``) of each degeneration
  metric of :mod:`alignbench.degeneration` against KL, one line per method, the reference's value dashed.
* :func:`degeneration_columns` -- per-run final degeneration values keyed by run_id (a diagnostics column).
* :func:`findings_degeneration` -- the methods and KL ranges where repetition exceeds the reference's
  by more than the 95% interval of the difference.

A task has text when its ``describe()`` (``sweep.json``) says ``has_text``; results written before that
key existed count as text where their runs saved completions. Nothing here names a task or a method.
"""

from __future__ import annotations

import gzip

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import degeneration as DG
from .. import exact as X
from .. import io
from . import winrates as W
from .render import md_table as _md_table
from .render import method_palette
from .render import save_figure as _save

N_PROMPTS = 6  # evaluation prompts shown per text task
N_PROMPTS_TABLE = 3  # prompts shown per task with an enumerable response table
TOP_K = 3  # most probable responses shown per policy on an enumerable task
BUDGET_ORDER = (1.0, 3.0, 0.3, 10.0)  # matched-KL budgets tried, ties broken by this order
Z95 = 1.959964
EXAMPLES_CSV = "examples.csv.gz"  # gzip (mtime 0: the same bytes for the same rows); pandas reads it as is
REF_LABEL = "π_ref"
REF_PREFIX = REF_LABEL + " "  # column prefix of the reference's baseline of a metric


# ------------------------------------------------------------------------------------------ selection


def task_facts(out: Path) -> dict[str, dict[str, Any]]:
    meta = W.read_json_or_none(Path(out) / "sweep.json") or {}
    return meta.get("tasks", {}) if isinstance(meta, dict) else {}


def pick_prompts(prompt_lists: list[list[str]], k: int) -> list[str]:
    """``k`` prompts present in every list, the same whatever the order of the lists: the first ``k``
    by the sha256 of their text."""
    common = set(prompt_lists[0]) if prompt_lists else set()
    for p in prompt_lists[1:]:
        common &= set(p)
    return sorted(common, key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:k]


def picks(summary: pd.DataFrame, task: str) -> tuple[dict[str, W.Unit], dict[str, W.Unit], float | None]:
    """(method -> unit at its best sweep value, method -> unit at the matched KL budget, the budget)."""
    us = [u for u in W.units(summary) if u.task == task]
    best = {m: u for (_, m), u in W.select_best(us).items()}
    matched, budget = {}, None
    for b in BUDGET_ORDER:
        got = {m: u for (_, m), u in W.select_matched_kl(us, b).items()}
        if len(got) > len(matched):
            matched, budget = got, b
    return best, matched, budget


def tagged_picks(summary: pd.DataFrame, task: str) -> tuple[list[tuple[W.Unit, str]], float | None]:
    """Each method's unit at its best sweep value and at the matched KL budget, tagged ``best`` /
    ``KL≈b`` (one entry tagged with both where they are the same unit), and the budget."""
    best, matched, budget = picks(summary, task)
    out = []
    for m in sorted(set(best) | set(matched)):
        b, k = best.get(m), matched.get(m)
        if b is not None and k is not None and b.run_ids == k.run_ids:
            out.append((b, f"best, KL≈{budget:g}"))
            continue
        if b is not None:
            out.append((b, "best"))
        if k is not None:  # (a matched unit implies a budget)
            out.append((k, f"KL≈{budget:g}"))
    return out, budget


def first_run(unit: W.Unit, summary: pd.DataFrame) -> tuple[str, Any, int]:
    """(run_id of the lowest seed, that seed, number of seeds) of a unit."""
    rows = summary[summary["run_id"].astype(str).isin(unit.run_ids)].sort_values("seed")
    return str(rows["run_id"].iloc[0]), rows["seed"].iloc[0], len(rows)


def _rows(x: Any) -> list[list[Any]]:
    """Per-prompt rows from eval_final (a list of lists, or JSON text where they were ragged)."""
    if isinstance(x, str):
        x = json.loads(x)
    return [list(r) if isinstance(r, (list, tuple, np.ndarray)) else [r] for r in x]


def _text_tasks(out: Path, summary: pd.DataFrame, data: W.ResultsData) -> list[str]:
    facts = task_facts(out)
    ok = summary[summary["status"] == "ok"]
    tasks = []
    for task, g in ok.groupby("task", sort=True):
        declared = facts.get(str(task), {}).get("has_text")
        if declared is None:
            declared = any("completions" in (data.eval_final(str(r)) or {}) for r in g["run_id"])
        if declared:
            tasks.append(str(task))
    return tasks


# ------------------------------------------------------------------------------------------ examples.csv.gz


def examples_frame(out: Path, summary: pd.DataFrame, data: W.ResultsData | None = None) -> pd.DataFrame:
    """Every saved completion with its gold reward: one row per (run, prompt, sample), and the
    reference's completions (policy ``π_ref``, one set per task and seed)."""
    data = data or W.ResultsData(out, summary)
    rows: list[dict[str, Any]] = []
    seen_ref: set[tuple] = set()
    ok = summary[summary["status"] == "ok"]
    for _, r in ok.iterrows():
        ef = data.eval_final(str(r["run_id"])) or {}
        if "completions" not in ef:
            continue
        base = {"task": r["task"], "seed": r["seed"]}
        sets = [({**base, "run_id": r["run_id"], "policy": r["method"], "sweep_param": r.get("sweep_param", "beta"),
                  "sweep_value": r.get("sweep_value"), "kl": r.get("kl")}, ef["completions"], ef.get("rewards"))]
        if "ref_completions" in ef and (r["task"], r["seed"]) not in seen_ref:
            seen_ref.add((r["task"], r["seed"]))
            sets.append(({**base, "run_id": "", "policy": REF_LABEL}, ef["ref_completions"], ef.get("ref_rewards")))
        for head, comps, rewards in sets:
            comps, rewards = _rows(comps), _rows(rewards) if rewards is not None else None
            for i, (prompt, texts) in enumerate(zip(ef["prompts"], comps)):
                for j, text in enumerate(texts):
                    rw = float(rewards[i][j]) if rewards is not None and j < len(rewards[i]) else float("nan")
                    rows.append({**head, "prompt": prompt, "sample": j, "completion": text, "reward": rw})
    cols = ["task", "policy", "run_id", "sweep_param", "sweep_value", "seed", "kl", "prompt", "sample", "completion",
            "reward"]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------ the section


def section_examples(out: Path, summary: pd.DataFrame, runs: dict[str, Any] | None = None) -> str:
    """Example completions per text task, and the response tables of enumerable tasks (see module doc)."""
    out = Path(out)
    data = W.ResultsData(out, summary)
    ex = examples_frame(out, summary, data)
    parts = []
    if not ex.empty:  # the file keeps the lowest seed of each task (what the tables show): its size stays one seed's
        lowest = ex.groupby("task")["seed"].transform("min")
        text = ex[ex["seed"] == lowest].to_csv(index=False)
        io.write_bytes(out / EXAMPLES_CSV, gzip.compress(text.encode(), compresslevel=9, mtime=0))
        (out / "examples.csv").unlink(missing_ok=True)  # the uncompressed file of earlier versions
        for task in _text_tasks(out, summary, data):
            parts.append(_text_examples(task, summary, ex[ex["task"] == task]))
    for task in sorted(summary.loc[summary["status"] == "ok", "task"].astype(str).unique()):
        parts.append(_table_examples(task, summary, data))
    parts = [p for p in parts if p]
    if not parts:
        return ""
    head = ["## What the policies write", ""]
    if not ex.empty:
        head += [f"All saved completions of the lowest seed with their gold rewards, per run: `{EXAMPLES_CSV}`.", ""]
    return "\n".join(head) + "\n" + "\n".join(parts)


def _seed_note(seed: Any, n: int) -> str:
    return f" (seed {seed} of {n})" if n > 1 else ""


def _text_examples(task: str, summary: pd.DataFrame, ex: pd.DataFrame) -> str:
    chosen, budget = tagged_picks(summary, task)
    runs = [(u, tag, *first_run(u, summary)) for u, tag in chosen]
    pol = ex[ex["policy"] != REF_LABEL]
    runs = [r for r in runs if (pol["run_id"] == r[2]).any()]  # runs that saved completions
    saved = [list(pol.loc[pol["run_id"] == rid, "prompt"].unique()) for _, _, rid, _, _ in runs]
    ref = ex[ex["policy"] == REF_LABEL]
    if not saved or ref.empty:
        return ""
    ref_seed = min(ref["seed"])
    ref = ref[ref["seed"] == ref_seed]
    prompts = pick_prompts(saved + [list(ref["prompt"].unique())], N_PROMPTS)
    if not prompts:
        return ""
    lines = [f"### {task}: example completions", "",
             f"{len(prompts)} evaluation prompts (the same for every method), the first saved sample of each policy: "
             "the reference, each method at its best sweep value"
             + (f" and at the run closest to KL = {budget:g} nats (within a factor {W.MAX_KL_RATIO:g})"
                if budget is not None else " (no KL budget that several methods reach)")
             + "; gold reward beside each. Several seeds: the lowest seed's sample.",
             ""]
    for p in prompts:
        rows = []
        r0 = ref[(ref["prompt"] == p) & (ref["sample"] == 0)]
        if not r0.empty:
            rows.append({"policy": f"{REF_LABEL}{_seed_note(ref_seed, 1)}", "KL": 0.0,
                         "gold reward": float(r0["reward"].iloc[0]), "completion": r0["completion"].iloc[0]})
        for u, tag, rid, seed, n in runs:
            s = pol[(pol["run_id"] == rid) & (pol["prompt"] == p) & (pol["sample"] == 0)]
            if s.empty:
                continue
            bound = " (KL: upper bound)" if u.kl_is_bound else ""
            rows.append({"policy": f"{u.label} [{tag}]{bound}{_seed_note(seed, n)}", "KL": u.kl,
                         "gold reward": float(s["reward"].iloc[0]), "completion": s["completion"].iloc[0]})
        lines += [f"**prompt:** `{p}`", "", _md_table(pd.DataFrame(rows), floatfmt=".2f")]
    return "\n".join(lines)


def _table_examples(task: str, summary: pd.DataFrame, data: W.ResultsData) -> str:
    arts = data.task_artifacts(task)
    if not all(k in arts for k in ("ref_logp", "reward", "responses", "prompts")):
        return ""
    ref = torch.as_tensor(np.asarray(arts["ref_logp"], np.float64))
    rew = torch.as_tensor(np.asarray(arts["reward"], np.float64))
    responses, all_prompts = [str(s) for s in arts["responses"]], [str(s) for s in arts["prompts"]]
    chosen, budget = tagged_picks(summary, task)
    if budget is None:
        return ""
    beta = optimal_beta_at_kl(ref, rew, budget)
    target = X.optimal_logp(ref, rew, beta)
    policies = [(REF_LABEL, ref), (f"π*_β (β={beta:.3g}, KL={budget:g})", target)]
    for u, tag in chosen:
        rid, seed, n = first_run(u, summary)
        ef = data.eval_final(rid) or {}
        if "logp" in ef:
            lp = torch.as_tensor(np.asarray(ef["logp"], np.float64))
            policies.append((f"{u.label} (KL {u.kl:.2g}) [{tag}]{_seed_note(seed, n)}", lp))
    prompts = pick_prompts([all_prompts], N_PROMPTS_TABLE)
    lines = [f"### {task}: most probable responses", "",
             f"Per prompt, each policy's {TOP_K} most probable responses with probability p and gold reward r, "
             f"against the optimal policy π*_β = π_ref exp(r/β)/Z at the same KL budget (β solved for "
             f"KL(π*_β ‖ π_ref) = {budget:g} nats, mean over prompts); methods at their best sweep value and "
             "closest to that budget (their mean KL in brackets); KL and E[r] of the prompt shown.", ""]
    for p in prompts:
        k = all_prompts.index(p)
        rows = []
        for label, lp in policies:
            top = torch.topk(lp[k], min(TOP_K, lp.shape[1])).indices.tolist()
            probs = lp[k].exp()
            row = {"policy": label, "KL (this prompt)": float((probs * (lp[k] - ref[k])).sum()),
                   "E[r]": float((probs * rew[k]).sum())}
            for i, y in enumerate(top, 1):
                row[f"#{i}"] = f"`{responses[y]}` p={math.exp(float(lp[k, y])):.2f} r={float(rew[k, y]):+.2f}"
            rows.append(row)
        lines += [f"**prompt:** `{p}`", "", _md_table(pd.DataFrame(rows), floatfmt=".2f")]
    return "\n".join(lines)


def optimal_beta_at_kl(ref: torch.Tensor, reward: torch.Tensor, kl: float, iters: int = 60) -> float:
    """β with KL(π*_β ‖ π_ref) = ``kl`` (mean over prompts), by bisection on log β (the KL falls as β grows)."""
    lo, hi = math.log(1e-4), math.log(1e4)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float(X.kl(X.optimal_logp(ref, reward, math.exp(mid)), ref)) > kl:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


# ------------------------------------------------------------------------------------------ degeneration


def _final(m: pd.DataFrame, key: str) -> float:
    if m is None or key not in m or not m[key].notna().any():
        return float("nan")
    return float(m[key].dropna().iloc[-1])


def degeneration_columns(runs: dict[str, Any]) -> pd.DataFrame:
    """Final degeneration values per run (index run_id; columns = the short labels of
    :data:`alignbench.degeneration.SHOWN` and their ``_se``); runs without them are left out."""
    rows = {}
    for rid, r in runs.items():
        if not _has_degen(r.metrics):
            continue
        vals = {}
        for key, label in DG.SHOWN.items():
            vals[label], vals[label + "_se"] = _final(r.metrics, key), _final(r.metrics, key + "_se")
            vals[REF_PREFIX + label] = _final(r.metrics, DG.reference_name(key))
            vals[REF_PREFIX + label + "_se"] = _final(r.metrics, DG.reference_name(key) + "_se")
        rows[rid] = vals
    return pd.DataFrame.from_dict(rows, orient="index")


def _has_degen(m: pd.DataFrame) -> bool:
    return m is not None and DG.REP in m and m[DG.REP].notna().any()


def unit_degeneration(summary: pd.DataFrame, runs: dict[str, Any]) -> pd.DataFrame:
    """Per (task, method, sweep value): mean KL, and each shown metric (mean over seeds, SE
    sqrt(sum SE_i^2) / n_seeds) with the reference's value."""
    cols = degeneration_columns(runs)
    out = []
    for u in W.units(summary):
        have = [r for r in u.run_ids if r in cols.index]
        if not have:
            continue
        c = cols.loc[have]
        row = {"task": u.task, "method": u.method, "label": u.label, "kl": u.kl, "kl_is_bound": u.kl_is_bound}
        for name in c.columns:
            if name.endswith("_se"):
                continue
            row[name] = float(c[name].mean())
            row[name + "_se"] = float(np.sqrt((c[name + "_se"] ** 2).sum()) / len(c))
        out.append(row)
    return pd.DataFrame(out)


def plot_degeneration(out: Path, task: str, ud: pd.DataFrame) -> Path | None:
    import matplotlib.pyplot as plt

    d = ud[(ud["task"] == task) & ud["kl"].notna()] if not ud.empty else ud
    shown = [lab for lab in DG.SHOWN.values() if lab in d and d[lab].notna().any()]
    if d.empty or not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
    palette = method_palette(list(ud["method"].unique()))
    for ax, lab in zip(axes[0], shown):
        for m, g in d.groupby("method"):
            g = g.sort_values("kl")
            ax.errorbar(g["kl"], g[lab], yerr=g[lab + "_se"].fillna(0), fmt="o-", ms=4, lw=1, capsize=2,
                        color=palette[m], label=m)
        ref = d[REF_PREFIX + lab].dropna() if REF_PREFIX + lab in d else pd.Series(dtype=float)
        if not ref.empty:
            ax.axhline(float(ref.median()), color="black", ls="--", lw=1, label=REF_LABEL)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(0, max(float(d["kl"].max()), 0.1) * 1.3)
        ax.set_xlabel("KL(π ‖ π_ref)  [nats]")
        ax.set_title(f"{task}: {lab}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(out) / f"degen_{task}.png"
    _save(fig, path)
    return path


def section_degeneration(out: Path, summary: pd.DataFrame, runs: dict[str, Any],
                         figures: list[Path] | None = None) -> str:
    """One figure per task of the degeneration metrics against KL (see :mod:`alignbench.degeneration`);
    the figures drawn are appended to ``figures``."""
    ud = unit_degeneration(summary, runs)
    if ud.empty:
        return ""
    lines = ["## Degeneration", "",
             f"On the final evaluation's samples: {DG.SHOWN[DG.REP]} = 1 − unique/total bigrams within a completion "
             "(Welleck et al. 2019), distinct-2 = distinct/total bigrams over all samples (Li et al. 2016; "
             "jackknife SE over prompts), the reference's mean per-token log-likelihood of the samples (fluency), and "
             "length in tokens; mean over seeds, bars ±1 SE; dashed: the reference's own samples.", ""]
    for task in sorted(ud["task"].unique()):
        path = plot_degeneration(out, task, ud)
        if path is not None:
            lines += [f"![degeneration {task}]({path.name})", ""]
            if figures is not None:
                figures.append(path)
    return "\n".join(lines) + "\n"  # its findings are in the Findings section (findings_degeneration)


def findings_degeneration(out: Path, summary: pd.DataFrame, runs: dict[str, Any],
                          ud: pd.DataFrame | None = None) -> list[str]:
    """Where a method's repetition exceeds the reference's by more than the 95% interval of the
    difference (policy and reference SEs combined as independent): the method and its KL range."""
    ud = unit_degeneration(summary, runs) if ud is None else ud
    lab = DG.SHOWN[DG.REP]
    if ud.empty or lab not in ud or REF_PREFIX + lab not in ud:
        return []
    found = []
    for (task, m), g in ud.groupby(["task", "method"], sort=True):
        diff = g[lab] - g[REF_PREFIX + lab]
        half = Z95 * np.sqrt(g[lab + "_se"] ** 2 + g[REF_PREFIX + lab + "_se"] ** 2)
        up = g[(diff > half) & g["kl"].notna()].sort_values("kl")
        if up.empty:
            continue
        top = up.loc[up[lab].idxmax()]
        rng = f"{up['kl'].min():.3g}" + (f"–{up['kl'].max():.3g}" if len(up) > 1 else "")
        bound = " (KL an upper bound)" if bool(up["kl_is_bound"].any()) else ""
        found.append(f"{task}: {m}'s repetition ({lab}) exceeds the reference's "
                     f"({float(g[REF_PREFIX + lab].mean()):.3f}) by more than its 95% interval at KL {rng} nats{bound} "
                     f"({len(up)} of {len(g)} sweep values; up to {top[lab]:.3f} at {top['label']}).")
    return found
