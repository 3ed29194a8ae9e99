"""Whether a run had stopped moving at the end of training: window means against the evaluation noise.

Comparing the last two evaluations says little where a policy's reward jumps by +-20% from one evaluation to
the next (the exact task at lr 1e-3 with batches of 32): almost every run reads "still moving". Here a metric
(gold reward, KL) is compared over windows instead:

* the evaluations after step 0 are v_1..v_n; the **window** is the last third of them, w = max(2, round(n / 3))
  evaluations (at least 2 w = 4 evaluations are needed, else no verdict);
* the **change** d = mean(last window) - mean(previous window);
* the **distance travelled** D = |mean(last window) - v_0| (v_0: the step-0 evaluation, the reference; v_1
  without one);
* the **noise** of one evaluation, sigma, from the successive differences over both windows (sd of v_t - v_{t-1}
  over sqrt 2: a slow trend hardly enters it), and the standard error of d, sigma sqrt(2 / w).

A metric is still moving when |d| exceeds all three of: ``REL_TOL`` (10%) of D, ``NOISE_Z`` (2) standard errors,
and ``ABS_TOL`` (0.02) absolutely. A run has converged when neither gold reward nor KL is still moving. The
relative change d / max(D, ABS_TOL) is recorded per metric (summary columns ``reward_change``, ``kl_change``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from . import names as N

REL_TOL = 0.10  # a change under 10% of the distance travelled since step 0 is "stopped"
NOISE_Z = 2.0  # ... and so is one within 2 standard errors of the evaluation noise
ABS_TOL = 0.02  # ... and one under 0.02 absolutely (metrics that never left 0)
MIN_EVALS = 4  # evaluations after step 0 needed for two windows of 2


def window_size(n: int) -> int:
    """Evaluations per window for n evaluations after step 0: the last third, at least 2."""
    return max(2, int(round(n / 3)))


def moving(values: Sequence[float], start: float | None = None) -> dict[str, float] | None:
    """Whether one metric's series (evaluations after step 0, in order) was still moving at its end.

    values: (n,) finite values; start: the step-0 value (None: the first value). Returns ``change`` (d / max(D,
    ABS_TOL)), ``diff`` (d), ``se`` (of d), ``moving`` (1.0 / 0.0), or None with fewer than ``MIN_EVALS`` values.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size < MIN_EVALS:
        return None
    w = window_size(v.size)
    last, prev = v[-w:], v[-2 * w:-w]
    d = float(last.mean() - prev.mean())
    base = float(v[0] if start is None or not math.isfinite(start) else start)
    travelled = abs(float(last.mean()) - base)
    steps = np.diff(v[-2 * w:])
    sigma = float(steps.std(ddof=1) / math.sqrt(2.0)) if steps.size > 1 else 0.0
    se = sigma * math.sqrt(2.0 / w)
    is_moving = abs(d) > max(REL_TOL * travelled, NOISE_Z * se, ABS_TOL)
    return {"change": d / max(travelled, ABS_TOL), "diff": d, "se": se, "moving": float(is_moving)}


def _column(rows: Any, key: str) -> tuple[list[float], float | None]:
    """(values after step 0, the step-0 value or None) of metric ``key`` in evaluation rows (dicts or a frame)."""
    recs = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    after, start = [], None
    for r in recs:
        x = r.get(key)
        try:
            x = float(x)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(x):
            continue
        if float(r.get("step", 1)) <= 0:
            start = x
        else:
            after.append(x)
    return after, start


def run_convergence(rows: Any) -> dict[str, Any] | None:
    """``converged`` (bool), ``reward_change`` and ``kl_change`` (relative, see the module docstring) of one run's
    evaluation rows; None where either metric has fewer than ``MIN_EVALS`` evaluations after step 0."""
    out: dict[str, Any] = {}
    still = False
    for col, key in ((N.REWARD_CHANGE, N.GOLD), (N.KL_CHANGE, N.KL)):
        res = moving(*_column(rows, key))
        if res is None:
            return None
        out[col] = res["change"]
        still = still or bool(res["moving"])
    out[N.CONVERGED] = not still
    return out


def describe() -> str:
    """The definition in one sentence, for the report."""
    return (f"a run is still moving when the mean of gold reward or KL over the last third of its evaluations (at "
            f"least 2) differs from the mean over the third before by more than {100 * REL_TOL:.0f}% of the distance "
            f"travelled since step 0, more than {NOISE_Z:g} standard errors of the evaluation-to-evaluation noise, and "
            f"more than {ABS_TOL:g} absolutely (no verdict with fewer than {MIN_EVALS} evaluations after step 0)")
