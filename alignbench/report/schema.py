"""The results folder's schema: its file names, the columns of ``summary.csv``, and the one reader of each file.

The writers (``alignbench.runner``, ``alignbench.sweep``) and the readers (the report sections, the win-rate
tables, the diagnostics) all use this module, so the layout is defined once:

```
DIR/summary.csv            one row per run (SUMMARY_COLUMNS: BASE_COLUMNS, then metric columns, then extras)
DIR/winrates.csv, DIR/ranking.csv, DIR/report.md, DIR/*.png   written by the report
DIR/sweep.json             the resolved sweep config, grids, task facts and notes, method declarations, versions
DIR/frontier_<task>.csv    the exact optimal frontier (beta, kl, reward), where the task has one
DIR/task_<task>.npz        arrays a task saves once per sweep (e.g. the exact task's reward table)
DIR/runs/<run_id>/config.json     the run's resolved config
DIR/runs/<run_id>/metrics.jsonl   one row per evaluation step
DIR/runs/<run_id>/eval_final.npz  per-prompt results of the final evaluation (head-to-head win rates)
DIR/runs/<run_id>/eval_early.npz  ... of the early-stopped evaluation (the method's early_stop_signal; written only
                                  where it is not the final one: summary column ``early_step``)
DIR/runs/<run_id>/summary.json    the run's summary row, written last: its presence marks the run complete
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..errors import AlignbenchError
from . import names as N

SUMMARY_CSV = "summary.csv"
SWEEP_JSON = "sweep.json"
REPORT_MD = "report.md"
WINRATES_CSV = "winrates.csv"
RANKING_CSV = "ranking.csv"
RUNS = "runs"
CONFIG_JSON = "config.json"
METRICS_JSONL = "metrics.jsonl"
EVAL_FINAL = "eval_final.npz"
EVAL_EARLY = "eval_early.npz"
EARLY_STEP = "early_step"  # summary column: the step of the run's early-stopped evaluation
CHECKPOINTS_CSV = "checkpoints.csv"
WINRATES_EARLY_CSV = "winrates_early.csv"
RUN_SUMMARY = "summary.json"


def frontier_csv(task: str) -> str:
    return f"frontier_{task}.csv"


def task_npz(task: str) -> str:
    return f"task_{task}.npz"


SUMMARY_KEYS = {  # summary.csv column <- final metric name
    "kl": N.KL,
    "kl_se": N.KL_SE,
    "reward": N.GOLD,
    "reward_se": N.GOLD_SE,
    "win_rate_vs_ref": N.WIN_VS_REF,
    "win_rate_vs_ref_se": N.WIN_VS_REF_SE,
    "entropy": N.ENTROPY,
    "length": N.LENGTH,
    "frontier_gap": N.FRONTIER_GAP,
    "kl_to_target": N.KL_TO_TARGET,
    "kl_to_own_target": N.KL_TO_OWN_TARGET,
    "objective_gap": N.OBJECTIVE_GAP,
    "estimation_gap": N.ESTIMATION_GAP,
    "unseen_mass": N.UNSEEN_MASS,
    "kl_is_bound": N.KL_IS_BOUND,
    "win_rate_vs_chosen": N.WIN_VS_CHOSEN,
}
BASE_COLUMNS = ["run_id", "task", "method", "sweep_param", "beta", "sweep_value", "variant", "seed", "data_seed", "status",
                "reason", "steps", "wall_s"]
# columns filled from each run's final evaluation row when an older summary.csv lacks them
FROM_METRICS = {"win_rate_vs_chosen": N.WIN_VS_CHOSEN, "win_rate_vs_chosen_se": N.WIN_VS_CHOSEN_SE}


def summary_frame(rows: list[dict[str, Any]]) -> "Any":
    """summary.csv as a DataFrame with a fixed column order (base columns, metrics, then extras sorted)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    known = [c for c in BASE_COLUMNS + list(SUMMARY_KEYS) if c in df.columns]
    return df[known + sorted(c for c in df.columns if c not in known)]


def read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_results(out: Path) -> "tuple[Any, dict[str, Any]]":
    """(summary, sweep meta) of a results folder, with defaults for columns older summaries lack."""
    import pandas as pd

    out = Path(out)
    if not out.is_dir():
        raise AlignbenchError(f"report: results folder not found: {out}")
    path = out / SUMMARY_CSV
    if not path.exists():
        raise AlignbenchError(f"report: {path} not found (run `alignbench sweep --out {out}` first)")
    try:
        summary = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise AlignbenchError(f"report: {path} is unreadable ({type(e).__name__})") from None
    for col, default in (("status", "ok"), ("reason", ""), ("sweep_param", "beta"), ("seed", 0)):
        if col not in summary:
            summary[col] = default
    if "sweep_value" not in summary and "beta" in summary:
        summary["sweep_value"] = summary["beta"]
    summary["reason"] = summary["reason"].fillna("")
    summary["variant"] = summary["variant"].fillna("").astype(str) if "variant" in summary else ""
    if "data_seed" in summary and summary["data_seed"].notna().any():  # the unit of every seed statistic is the pair
        summary["train_seed"] = summary["seed"]
        summary["seed"] = [f"{s}/d{int(d)}" if d == d else str(s) for s, d in zip(summary["seed"], summary["data_seed"])]
    try:
        meta = io.read_json(out / SWEEP_JSON) if (out / SWEEP_JSON).exists() else {}
    except ValueError:
        meta = {}
    return summary, meta


def as_frame(rows: "Any") -> "Any":
    """Evaluation rows (a list of dicts or a DataFrame) as a DataFrame sorted by step, numeric columns coerced."""
    import pandas as pd

    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(list(rows))
    if df.empty:
        return pd.DataFrame({"step": pd.Series(dtype=float)})
    for c in df.columns:
        if df[c].dtype == object:
            conv = pd.to_numeric(df[c], errors="coerce")
            if conv.notna().sum() >= df[c].notna().sum():  # a numeric column with missing values
                df[c] = conv
    if "step" not in df:
        df["step"] = np.arange(len(df), dtype=float)
    return df.sort_values("step", kind="stable").reset_index(drop=True)


def load_metrics(run_dir: str | Path) -> "Any":
    """``run_dir/metrics.jsonl`` as a frame (empty when the file is missing or unreadable)."""
    path = Path(run_dir) / METRICS_JSONL
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a partial last line of a run that was killed mid-write
    return as_frame(rows)


def pd_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def cell(summary: "Any") -> list[str]:
    """The columns that make a cell of a method's sweep (one point of its frontier, all seeds together): the
    sweep axis' value, and the values of any extra grid axes (``variant``, e.g. "lr=0.0001") where present."""
    return ["sweep_value", "variant"] if "variant" in summary and (summary["variant"].astype(str) != "").any() \
        else ["sweep_value"]


def cell_label(param: str, value: float, variant: str = "") -> str:
    return f"{sym(param)}={value:g}" + (f", {variant}" if variant else "")


def sym(param: str) -> str:
    """How a sweep axis is written: β for beta, else its field name."""
    return "β" if param == "beta" else str(param)


@dataclass
class RunData:
    """What the report knows about one run: its summary row, evaluation rows and resolved config."""

    run_id: str
    task: str
    method: str
    param: str
    value: float
    seed: Any
    status: str
    metrics: Any  # DataFrame of metrics.jsonl
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.method} {sym(self.param)}={self.value:g}" + (f" s{self.seed}" if str(self.seed) not in ("0", "0.0") else "")


def load_runs(out: Path, summary: "Any") -> dict[str, RunData]:
    """Every run of the summary with its ``metrics.jsonl`` (empty where missing) and ``config.json``."""
    runs: dict[str, RunData] = {}
    for _, r in summary.iterrows():
        rid = str(r["run_id"])
        folder = Path(out) / RUNS / rid
        cfg = read_json_or_none(folder / CONFIG_JSON) or {}
        runs[rid] = RunData(rid, str(r["task"]), str(r["method"]), str(r.get("sweep_param", "beta")),
                            float(r.get("sweep_value", float("nan"))), r.get("seed", 0), str(r.get("status", "ok")),
                            load_metrics(folder), cfg)
    return runs


def augment_summary(summary: "Any", runs: dict[str, RunData]) -> "Any":
    """Summary columns that ``summary.csv`` lacks, taken from each run's final evaluation row."""
    summary = summary.copy()
    for col, key in FROM_METRICS.items():
        if col in summary and summary[col].notna().any():
            continue
        vals = []
        for rid in summary["run_id"].astype(str):
            m = runs[rid].metrics if rid in runs else None
            vals.append(float(m[key].dropna().iloc[-1]) if m is not None and key in m and m[key].notna().any()
                        else float("nan"))
        if any(np.isfinite(vals)):
            summary[col] = vals
    return summary


class ResultsData:
    """Lazy, cached access to a results folder's per-prompt files (never loads a model)."""

    def __init__(self, out: str | Path, summary: "Any", policy: str = "final"):
        """``policy``: whose per-prompt results :meth:`eval_final` reads: "final" (``eval_final.npz``) or "early"
        (``eval_early.npz``, or ``eval_final.npz`` where the summary's ``early_step`` is the run's last step)."""
        self.out = Path(out)
        self.summary = summary
        self.policy = policy
        self._final: dict[str, Any] = {}
        self._task: dict[str, dict[str, np.ndarray]] = {}

    def _policy_file(self, folder: Path, run_id: str) -> Path | None:
        if self.policy == "final" or (folder / EVAL_EARLY).exists():
            return folder / (EVAL_FINAL if self.policy == "final" else EVAL_EARLY)
        s = self.summary
        row = s[s["run_id"].astype(str) == run_id] if EARLY_STEP in s and "steps" in s else s.iloc[:0]
        same = len(row) and pd_float(row[EARLY_STEP].iloc[0]) == pd_float(row["steps"].iloc[0])
        return folder / EVAL_FINAL if same else None  # the early-stopped evaluation is the final one

    def eval_final(self, run_id: str) -> dict[str, Any] | None:
        """A run's per-prompt evaluation of the chosen ``policy`` (final: ``eval_final.npz``, or ``eval_final.json``
        from older versions)."""
        if run_id not in self._final:
            folder = self.out / RUNS / run_id
            data = read_json_or_none(folder / "eval_final.json") if self.policy == "final" else None
            path = self._policy_file(folder, run_id)
            if data is None and path is not None and path.exists():
                try:
                    with np.load(path, allow_pickle=False) as z:
                        data = {k: (z[k].tolist() if z[k].dtype.kind in "US" else z[k]) for k in z.files}
                    if data is not None and "logp" in data:  # uint8 codes (io.compact_logp) or an older float table
                        data["logp"] = io.expand_logp(data["logp"])
                except (OSError, ValueError):
                    data = None
            self._final[run_id] = data
        return self._final[run_id]

    def task_artifacts(self, task: str) -> dict[str, np.ndarray]:
        """Arrays the task saved once for the whole sweep (``task_<task>.npz`` or ``.json``), or {}."""
        if task not in self._task:
            arts: dict[str, np.ndarray] = {}
            npz, js = self.out / task_npz(task), self.out / f"task_{task}.json"
            if npz.exists():
                try:
                    with np.load(npz, allow_pickle=False) as z:
                        arts = {k: z[k] for k in z.files}
                except (OSError, ValueError):
                    arts = {}
            elif js.exists():
                data = read_json_or_none(js) or {}
                arts = {k: np.asarray(v) for k, v in data.items() if isinstance(v, list)}
            self._task[task] = arts
        return self._task[task]

    def reward_table(self, task: str, run_id: str) -> np.ndarray | None:
        arts = self.task_artifacts(task)
        if "reward" in arts and np.asarray(arts["reward"]).ndim == 2:
            return np.asarray(arts["reward"], float)
        ef = self.eval_final(run_id) or {}
        for key in ("reward_table", "reward"):
            v = ef.get(key)
            if v is not None:
                a = np.asarray(v, dtype=float)
                if a.ndim == 2:
                    return a
        return None

    def prompts(self, run_id: str) -> list[str] | None:
        ef = self.eval_final(run_id)
        return list(ef["prompts"]) if ef and "prompts" in ef else None
