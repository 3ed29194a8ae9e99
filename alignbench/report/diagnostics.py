"""Overfitting and overoptimization diagnostics of runs, from their ``metrics.jsonl`` alone.

Every function here is pure: it takes the evaluation rows of a run (a list of dicts, one per
evaluation step, or the equivalent DataFrame) or plain arrays, and returns numbers. Metrics a run did
not log are simply absent from the answer (``None``), never an error.

* :func:`peak_step`                where the gold reward peaks over training;
* :func:`overoptimization_flags`   gold reward falling after its peak (by more than its noise) while the
                                   proxy (the metric the method declares as its proxy reward, e.g. a
                                   reward model's score or the implicit reward margin) keeps rising;
* :func:`overfitting_flags`        held-out preference loss rising from its minimum while the training
                                   loss keeps falling, and the train - held-out accuracy gap;
* :func:`likelihood_displacement`  chosen and rejected log-ratios log pi/pi_ref (the known DPO effect:
                                   the chosen likelihood falls too, the rejected one falls far below);
* :func:`kl_bounded`               whether KL(pi || pi_ref) is still growing over the last third of training;
* :func:`fit_gao_rl` / :func:`fit_gao_bon`   the functional forms of Gao et al. 2022 (arXiv 2210.10760)
                                   for gold reward against d = sqrt(KL), with the predicted peak;
* :func:`pareto_front` / :func:`frontier_leaders`  which method's reward-vs-KL frontier is highest where.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import names as N
from .convergence import run_convergence
from .schema import as_frame, load_metrics  # noqa: F401  (re-exported)

GOLD, KL = N.GOLD, N.KL


# ------------------------------------------------------------------------------------------ rows


def _series(df: pd.DataFrame, key: str) -> pd.Series | None:
    if key not in df:
        return None
    s = pd.to_numeric(df[key], errors="coerce")
    return s if s.notna().any() else None


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


# ------------------------------------------------------------------------------------------ per run


def peak_step(rows: pd.DataFrame | Sequence[dict[str, Any]], key: str = GOLD) -> dict[str, float] | None:
    """The evaluation step where ``key`` (gold reward) is highest (the first such step on ties).

    Returns ``{"step", "reward", "kl", "index", "n_evals"}`` or None when the metric was never logged.
    """
    df = as_frame(rows)
    s = _series(df, key)
    if s is None:
        return None
    i = int(s.idxmax())
    kl = _series(df, KL)
    return {"step": float(df["step"].iloc[i]), "reward": float(s.iloc[i]),
            "kl": float(kl.iloc[i]) if kl is not None else float("nan"), "index": i, "n_evals": int(s.notna().sum())}


def overoptimization_flags(rows: pd.DataFrame | Sequence[dict[str, Any]], *, z: float = 2.0,
                           rel_tol: float = 0.05, proxies: Sequence[str] = ()) -> dict[str, Any] | None:
    """Gold reward falling after its peak while the proxy keeps rising.

    ``gold_falls``: the final gold reward lies below the peak by more than ``z`` standard errors of the
    difference (from ``reward/gold_se`` where logged; 0 on exact tasks) and by more than ``rel_tol`` of
    the gain from the first evaluation to the peak. ``proxy_rises``: the proxy at the final step exceeds
    its value at the peak (the first logged value at or after it) by more than ``rel_tol`` of its range.
    ``flag`` = both (overoptimization). None when gold reward was logged at fewer than 2 steps.
    """
    df = as_frame(rows)
    gold = _series(df, GOLD)
    if gold is None or gold.notna().sum() < 2:
        return None
    valid = gold.notna()
    first, last = int(valid.idxmax()), int(valid[::-1].idxmax())
    p = int(gold.idxmax())
    se = _series(df, GOLD + "_se")
    se_p = float(se.iloc[p]) if se is not None and np.isfinite(se.iloc[p]) else 0.0
    se_l = float(se.iloc[last]) if se is not None and np.isfinite(se.iloc[last]) else 0.0
    noise = z * math.hypot(se_p, se_l)
    drop = float(gold.iloc[p] - gold.iloc[last])
    gain = float(gold.iloc[p] - gold.iloc[first])
    gold_falls = p != last and drop > noise and drop > rel_tol * max(gain, 0.0) and drop > 1e-9
    out: dict[str, Any] = {"peak_step": float(df["step"].iloc[p]), "peak_reward": float(gold.iloc[p]),
                           "final_step": float(df["step"].iloc[last]), "final_reward": float(gold.iloc[last]),
                           "drop": drop, "noise": noise, "gold_falls": bool(gold_falls), "proxy": None,
                           "proxy_change": float("nan"), "proxy_rises": False, "flag": False}
    for name in proxies:
        prox = _series(df, name)
        if prox is None:
            continue
        after = prox.iloc[p:].dropna()
        if len(after) < 1:
            continue
        at_peak, at_end = float(after.iloc[0]), float(prox.dropna().iloc[-1])
        rng = float(prox.max() - prox.min())
        change = at_end - at_peak
        out.update(proxy=name, proxy_change=change,
                   proxy_rises=bool(len(after) >= 2 and change > max(rel_tol * rng, 1e-12)))
        break
    out["flag"] = bool(out["gold_falls"] and out["proxy_rises"])
    return out


def overfitting_flags(rows: pd.DataFrame | Sequence[dict[str, Any]], *, rel_tol: float = 0.05,
                      abs_tol: float = 0.01) -> dict[str, Any] | None:
    """Held-out preference loss rising from its minimum while the training loss keeps falling.

    ``flag``: the final held-out loss (``eval/loss``) exceeds its minimum over training by more than
    ``rel_tol`` of the initial-to-minimum improvement and by more than ``abs_tol`` of the initial loss,
    and the train-subset loss
    (``train/loss``) at the end is below its value at that minimum. Also the final gaps held-out - train
    loss and train - held-out implicit-reward accuracy. None when ``eval/loss`` was never logged.
    """
    df = as_frame(rows)
    ev = _series(df, "eval/loss")
    if ev is None or ev.notna().sum() < 2:
        return None
    tr = _series(df, "train/loss")
    m = int(ev.idxmin())
    last = int(ev.notna()[::-1].idxmax())
    first = int(ev.notna().idxmax())
    rise = float(ev.iloc[last] - ev.iloc[m])
    improvement = float(ev.iloc[first] - ev.iloc[m])
    train_falls = tr is not None and np.isfinite(tr.iloc[last]) and np.isfinite(tr.iloc[m]) and tr.iloc[last] < tr.iloc[m]
    floor = max(abs_tol * abs(float(ev.iloc[first])), 1e-4)  # rises below 1% of the initial loss are noise
    flag = bool(rise > max(rel_tol * max(improvement, 0.0), floor) and train_falls)
    acc_e, acc_t = _series(df, "eval/implicit_acc"), _series(df, "train/implicit_acc")
    return {
        "min_eval_loss_step": float(df["step"].iloc[m]), "min_eval_loss": float(ev.iloc[m]),
        "final_eval_loss": float(ev.iloc[last]), "eval_loss_rise": rise,
        "final_train_loss": float(tr.iloc[last]) if tr is not None else float("nan"),
        "loss_gap": float(ev.iloc[last] - tr.iloc[last]) if tr is not None else float("nan"),
        "acc_gap": float(acc_t.iloc[last] - acc_e.iloc[last]) if acc_t is not None and acc_e is not None else float("nan"),
        "flag": flag,
    }


def likelihood_displacement(rows: pd.DataFrame | Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the chosen log-ratio log pi(y_w)/pi_ref(y_w) (held-out pairs) falls below 0, and how far
    the rejected one falls. None when the log-ratios were never logged."""
    df = as_frame(rows)
    ch, rj = _series(df, "logratio/chosen"), _series(df, "logratio/rejected")
    if ch is None or rj is None:
        return None
    below = df["step"][(ch < 0) & (df["step"] > 0)]
    last = int(ch.notna()[::-1].idxmax())
    return {
        "final_chosen": float(ch.iloc[last]), "final_rejected": float(rj.iloc[last]),
        "final_margin": float(ch.iloc[last] - rj.iloc[last]),
        "min_chosen": float(ch.min()), "min_rejected": float(rj.min()),
        "first_step_chosen_below_ref": float(below.iloc[0]) if len(below) else float("nan"),
        "chosen_falls": bool(ch.iloc[last] < 0),
    }


def kl_bounded(rows: pd.DataFrame | Sequence[dict[str, Any]], *, last_frac: float = 1 / 3, tol: float = 0.05,
               abs_tol: float = 0.01, key: str = KL) -> dict[str, Any] | None:
    """Is KL(pi || pi_ref) still growing over the last ``last_frac`` of training?

    A least-squares line through the KL values of the evaluations in the last ``last_frac`` of the steps
    (at least the last two evaluations) gives the growth over that window; relative to the KL at its
    start, growth > ``tol`` (and > ``abs_tol`` nats) means unbounded (``bounded`` False).
    None when KL was logged at fewer than 3 evaluation steps.
    """
    df = as_frame(rows)
    s = _series(df, key)
    if s is None or s.notna().sum() < 3:
        return None
    d = pd.DataFrame({"step": df["step"], "kl": s}).dropna()
    smax, smin = float(d["step"].max()), float(d["step"].min())
    w = d[d["step"] >= smax - last_frac * (smax - smin) - 1e-9]
    if len(w) < 2:
        w = d.iloc[-2:]
    x, y = w["step"].to_numpy(float), w["kl"].to_numpy(float)
    slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
    growth = slope * float(np.ptp(x))
    start = float(np.polyval(np.polyfit(x, y, 1), x[0])) if np.ptp(x) > 0 else float(y[0])
    rel = growth / max(abs(start), abs_tol)
    return {"kl_start": float(y[0]), "kl_end": float(y[-1]), "window_start_step": float(x[0]),
            "growth": growth, "rel_growth": rel, "bounded": bool(not (rel > tol and growth > abs_tol)),
            "n_points": int(len(w))}


def converged(rows: pd.DataFrame | Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Whether gold reward and KL had stopped moving at the end of training (window means against the evaluation
    noise: :mod:`.convergence`): ``converged``, ``reward_change``, ``kl_change``; None with too few evaluations."""
    res = run_convergence(as_frame(rows))
    if res is None:
        return None
    return {"converged": res[N.CONVERGED], "reward_change": res[N.REWARD_CHANGE], "kl_change": res[N.KL_CHANGE]}


def run_diagnostics(rows: pd.DataFrame | Sequence[dict[str, Any]], proxies: Sequence[str] = ()) -> dict[str, Any]:
    """All per-run diagnostics, flattened to one row (keys absent where the run did not log the inputs).

    ``proxies``: the metric(s) the run's method declares as its proxy reward (for the overoptimization flag).
    """
    df = as_frame(rows)
    out: dict[str, Any] = {"n_evals": int(len(df)), "final_step": float(df["step"].max()) if len(df) else float("nan")}
    pk = peak_step(df)
    if pk:
        out.update(peak_step=pk["step"], peak_reward=pk["reward"], peak_kl=pk["kl"])
    oo = overoptimization_flags(df, proxies=proxies)
    if oo:
        out.update(gold_drop=oo["drop"], gold_noise=oo["noise"], gold_falls=oo["gold_falls"], proxy=oo["proxy"],
                   proxy_change=oo["proxy_change"], overoptimized=oo["flag"])
    of = overfitting_flags(df)
    if of:
        out.update(eval_loss_rise=of["eval_loss_rise"], min_eval_loss_step=of["min_eval_loss_step"],
                   loss_gap=of["loss_gap"], acc_gap=of["acc_gap"], overfit=of["flag"])
    ld = likelihood_displacement(df)
    if ld:
        out.update(final_logratio_chosen=ld["final_chosen"], final_logratio_rejected=ld["final_rejected"],
                   chosen_falls=ld["chosen_falls"], first_step_chosen_below_ref=ld["first_step_chosen_below_ref"])
    kb = kl_bounded(df)
    if kb:
        out.update(kl_rel_growth_last_third=kb["rel_growth"], kl_bounded=kb["bounded"])
    cv = converged(df)
    if cv:
        out.update(converged=cv["converged"], final_reward_change=cv["reward_change"], final_kl_change=cv["kl_change"])
    return out


# ------------------------------------------------------------------------------------------ Gao et al. forms


@dataclass
class GaoFit:
    """A fit of gold reward R against d = sqrt(KL): ``R - r0 = d (alpha - b log d)`` (form "rl") or
    ``R - r0 = d (alpha - b d)`` (form "bon"), with the predicted peak (d*, KL* = d*^2, R*)."""

    form: str
    alpha: float
    b: float
    r0: float
    d_star: float
    kl_star: float
    r_star: float
    has_peak: bool
    r2: float
    rmse: float
    n: int
    kl_max: float  # largest KL among the fitted points: a peak beyond it is an extrapolation

    def predict(self, kl: Any) -> np.ndarray:
        d = np.sqrt(np.maximum(np.asarray(kl, dtype=float), 0.0))
        if self.form == "rl":
            return self.r0 + d * self.alpha - self.b * _dlogd(d)
        return self.r0 + d * (self.alpha - self.b * d)

    @property
    def peak_observed(self) -> bool:
        return bool(self.has_peak and self.kl_star <= self.kl_max)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dlogd(d: np.ndarray) -> np.ndarray:
    """d log d with its limit 0 at d = 0."""
    d = np.asarray(d, dtype=float)
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


def enough_points(n_points: int, n_params: int) -> bool:
    """A fit is stated only from ``n_params + 2`` points: with fewer, R^2 is 1 or nearly so by construction
    and its predicted peak says nothing ("too few points")."""
    return n_points >= n_params + 2


def _fit(form: str, kl: Iterable[float], reward: Iterable[float], r0: float | None) -> GaoFit:
    kl_a = np.asarray(list(kl), dtype=float)
    r_a = np.asarray(list(reward), dtype=float)
    ok = np.isfinite(kl_a) & np.isfinite(r_a)
    kl_a, r_a = np.maximum(kl_a[ok], 0.0), r_a[ok]
    d = np.sqrt(kl_a)
    at_zero = d < 1e-6
    cols = [d, -_dlogd(d)] if form == "rl" else [d, -d * d]
    if r0 is None and at_zero.any():
        r0 = float(r_a[at_zero].mean())
    n_params = len(cols) + (r0 is None)
    if not enough_points(int((~at_zero).sum()), n_params):
        raise ValueError(f"fit_gao_{form}: too few points ({int((~at_zero).sum())} with KL > 0 for {n_params} "
                         f"parameters; a fit is stated from {n_params + 2})")
    if r0 is None:  # no reference point: fit the intercept too
        if len(d) < 3:
            raise ValueError(f"fit_gao_{form}: need 3 points to fit the intercept as well")
        X = np.stack(cols + [np.ones_like(d)], 1)
        coef, *_ = np.linalg.lstsq(X, r_a, rcond=None)
        alpha, b, r0 = (float(c) for c in coef)
    else:
        X = np.stack(cols, 1)
        coef, *_ = np.linalg.lstsq(X, r_a - r0, rcond=None)
        alpha, b = (float(c) for c in coef)
    if form == "rl":  # dR/dd = alpha - b (log d + 1) = 0
        has_peak = b > 0
        d_star = math.exp(min(alpha / b - 1.0, 700.0)) if has_peak else math.inf
        r_star = r0 + b * d_star if has_peak else math.inf
    else:  # dR/dd = alpha - 2 b d = 0
        has_peak = b > 0 and alpha > 0
        d_star = alpha / (2 * b) if has_peak else math.inf
        r_star = r0 + alpha * alpha / (4 * b) if has_peak else math.inf
    fit = GaoFit(form, alpha, b, float(r0), d_star, d_star * d_star, r_star, has_peak, float("nan"), float("nan"),
                 int(len(d)), float(kl_a.max()))
    resid = r_a - fit.predict(kl_a)
    ss_tot = float(((r_a - r_a.mean()) ** 2).sum())
    fit.rmse = float(np.sqrt((resid ** 2).mean()))
    fit.r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return fit


def fit_gao_rl(kl: Iterable[float], reward: Iterable[float], r0: float | None = None) -> GaoFit:
    """Least squares of ``R - r0 = d (alpha - b log d)``, d = sqrt(KL) (Gao et al. 2022, the RL form).

    ``r0`` is the reference's reward (d = 0); by default the mean reward of the points with KL = 0, or a
    fitted intercept when there are none. Peak where dR/dd = 0: d* = exp(alpha/b - 1), R* = r0 + b d*
    (only when b > 0; otherwise ``has_peak`` is False and d*, R* are infinite).
    """
    return _fit("rl", kl, reward, r0)


def fit_gao_bon(kl: Iterable[float], reward: Iterable[float], r0: float | None = None) -> GaoFit:
    """Least squares of ``R - r0 = d (alpha - b d)`` (Gao et al. 2022, the best-of-N form);
    peak d* = alpha / (2 b), R* = r0 + alpha^2 / (4 b)."""
    return _fit("bon", kl, reward, r0)


# ------------------------------------------------------------------------------------------ frontiers


def pareto_front(kl: Iterable[float], reward: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats with less (or equal) KL and more reward, sorted by KL."""
    k = np.asarray(list(kl), dtype=float)
    r = np.asarray(list(reward), dtype=float)
    ok = np.isfinite(k) & np.isfinite(r)
    k, r = k[ok], r[ok]
    order = np.lexsort((-r, k))
    keep_k, keep_r, best = [], [], -np.inf
    for i in order:
        if r[i] > best:
            keep_k.append(k[i])
            keep_r.append(r[i])
            best = r[i]
    return np.array(keep_k), np.array(keep_r)


def frontier_leaders(fronts: dict[str, tuple[np.ndarray, np.ndarray]], *, n_grid: int = 400,
                     tie_tol: float = 0.0) -> pd.DataFrame:
    """Which method's frontier (linear interpolation between its Pareto points) is highest, by KL range.

    Only KL values inside a method's own range of Pareto points count for it; where fewer than two
    methods cover a KL value, nothing is claimed. Returns segments with columns ``kl_lo``, ``kl_hi``,
    ``leader`` ("tie" where the lead is at most ``tie_tol``), ``runner_up``, ``max_lead`` and ``n_methods``.
    """
    fronts = {m: f for m, f in fronts.items() if len(f[0]) >= 2 and np.ptp(f[0]) > 0}
    cols = ["kl_lo", "kl_hi", "leader", "runner_up", "max_lead", "n_methods"]
    if len(fronts) < 2:
        return pd.DataFrame(columns=cols)
    lo = min(float(f[0].min()) for f in fronts.values())
    hi = max(float(f[0].max()) for f in fronts.values())
    grid = np.linspace(lo, hi, n_grid)
    vals = {}
    for m, (k, r) in fronts.items():
        v = np.interp(grid, k, r)
        v[(grid < k.min() - 1e-12) | (grid > k.max() + 1e-12)] = np.nan
        vals[m] = v
    names = sorted(vals)
    table = np.stack([vals[m] for m in names], 1)
    labels: list[tuple[str, str, float, int] | None] = []
    for row in table:
        have = np.isfinite(row)
        if have.sum() < 2:
            labels.append(None)
            continue
        order = np.argsort(np.where(have, -row, np.inf))
        lead = float(row[order[0]] - row[order[1]])
        labels.append(("tie" if tie_tol > 0 and lead <= tie_tol else names[order[0]], names[order[1]], lead, int(have.sum())))
    segs: list[dict[str, Any]] = []
    prev = None
    for g, lab in zip(grid, labels):
        if lab is None:
            prev = None
            continue
        if prev is not None and segs[-1]["leader"] == lab[0]:
            s = segs[-1]
            s["kl_hi"] = float(g)
            if lab[2] > s["max_lead"]:
                s["max_lead"], s["runner_up"] = lab[2], lab[1]
            s["n_methods"] = max(s["n_methods"], lab[3])
        else:
            segs.append({"kl_lo": float(g), "kl_hi": float(g), "leader": lab[0], "runner_up": lab[1],
                         "max_lead": lab[2], "n_methods": lab[3]})
        prev = lab
    return pd.DataFrame(segs, columns=cols)
