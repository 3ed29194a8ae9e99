"""Robustness of a final policy: other sampling temperatures and shifted prompts.

* **Temperature** (DPO paper, arXiv 2305.18290, Fig. 2 right): the final policy sampled with per-token temperature
  T, pi_T(y|x) = prod_t softmax(logits_t / T)[y_t]; T = 0 is greedy decoding (all mass on the per-token argmax
  chain). Its gold reward, KL(pi_T || pi_ref) and win rate against the reference sampled at the task's own
  temperature (T = 1 by default: the reference stays the one baseline for every T).
* **Distribution shift** (DPO paper, section 6.3): the same metrics on in-distribution prompts and on shifted ones
  (exact task: prompts held out of the training data; sentiment task: a shifted prompt grammar).

The metrics are named by :func:`alignbench.report.names.at_temperature` and :func:`~alignbench.report.names.on_split`
and become summary columns (:meth:`alignbench.runner.RunContext.evaluate_robustness`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .api import EvalResult
from .evaluation import derive_seed, mean_se, pairwise_win_rate
from .report import names as N

# what is measured at each temperature (exact tasks add the win rate against the data's chosen responses)
TEMPERATURE_METRICS = (N.GOLD, N.KL, N.WIN_VS_REF)
SPLIT_METRICS = (N.GOLD, N.KL, N.WIN_VS_REF)


# ------------------------------------------------------------------------------------------ pure functions


def greedy_chain(logits: Tensor) -> Tensor:
    """(K,) response index of the greedy (per-token argmax) chain of each prompt.

    logits: (K, P, L, V) next-token logits over the V response tokens at the L positions of P = V**(L-1) prefix
    rows, row p holding the responses whose first L-1 tokens are the base-V digits of p (response n = p*V + v).
    The chain's token t is argmax_v logits[k, row, t] with row = its first t tokens followed by zeros
    (a causal model's logits at position t depend only on tokens < t). Ties go to the lower token.
    """
    k, _, length, v = logits.shape
    idx = torch.zeros(k, dtype=torch.long)  # base-V value of the chain's first t tokens
    for t in range(length):
        row = idx * v ** (length - 1 - t)
        idx = idx * v + logits[torch.arange(k), row, t].argmax(-1)
    return idx


def greedy_logp(chain: Tensor, n: int) -> Tensor:
    """(K, N) float64 log-probability table of greedy decoding: 0 on each prompt's chain, -inf elsewhere."""
    out = torch.full((chain.shape[0], n), float("-inf"), dtype=torch.float64)
    out[torch.arange(chain.shape[0]), chain] = 0.0
    return out


def split_means(per_prompt: Mapping[str, np.ndarray], shifted: np.ndarray) -> dict[str, float]:
    """The mean of each (K,) per-prompt metric over the in-distribution and over the shifted prompts.

    shifted: (K,) bool. Returns ``{on_split(name, SPLIT_IN): .., on_split(name, SPLIT_SHIFT): ..}``; the mean over
    all K prompts is their average weighted by the prompt counts.
    """
    shifted = np.asarray(shifted, bool)
    out = {}
    for name, values in per_prompt.items():
        v = np.asarray(values, np.float64)
        out[N.on_split(name, N.SPLIT_IN)] = float(v[~shifted].mean()) if (~shifted).any() else float("nan")
        out[N.on_split(name, N.SPLIT_SHIFT)] = float(v[shifted].mean()) if shifted.any() else float("nan")
    return out


def renamed(metrics: Mapping[str, float], names: Sequence[str], rename) -> dict[str, float]:
    """``{rename(name): value}`` of ``names`` (and their ``_se``) that ``metrics`` has."""
    return {rename(k): float(metrics[k]) for name in names for k in (name, name + "_se") if k in metrics}


# ------------------------------------------------------------------------------------------ sampled tasks


def sampled_metrics(env: Any, policy: nn.Module, prompts: Sequence[str], seed: int,
                    temperature: float | None = None) -> dict[str, float]:
    """Gold reward, KL(pi_T || pi_ref) (k1 over the policy's samples) and win rate against the reference's samples
    at the task's temperature, with standard errors over prompts, as :meth:`SampledTaskEnv.evaluate` computes them
    (the same seeds: at the task's own temperature and eval prompts the numbers are the standard evaluation's).
    Greedy decoding (T = 0) draws one completion per prompt (all would be the same)."""
    prompts = list(prompts)
    n = 1 if temperature == 0 else env.n_eval_samples
    pol = env.draw(policy, prompts, n, seed=derive_seed(seed, "policy"), score_logps=True, temperature=temperature)
    ref = env.reference_samples(seed, None if prompts == list(env.prompts["eval"]) else prompts)
    out: dict[str, float] = {}
    for name, per_prompt in ((N.GOLD, pol.rewards.mean(1)), (N.KL, (pol.logp - pol.logp_ref).mean(1)),
                             (N.WIN_VS_REF, pairwise_win_rate(pol.rewards, ref.rewards))):
        out[name], out[name + "_se"] = mean_se(per_prompt)
    return out


def sampled_robustness(env: Any, policy: nn.Module, *, temperatures: Sequence[float], seed: int = 0,
                       final: EvalResult | None = None) -> dict[str, float]:
    """:meth:`~alignbench.api.RobustnessEvaluable.evaluate_robustness` of a sampled task: every temperature on the
    eval prompts, and, where ``env.prompts`` has a ``"shift"`` set, the task's temperature on it. ``final`` (the
    standard evaluation of the same policy) is reused for the task's own temperature on the eval prompts."""
    base = final.metrics if final is not None else None
    out: dict[str, float] = {}
    for t in temperatures:
        m = base if base is not None and float(t) == env.temperature else \
            sampled_metrics(env, policy, env.prompts["eval"], seed, float(t))
        out.update(renamed(m, TEMPERATURE_METRICS, lambda k, t=t: N.at_temperature(k, t)))
    shifted = env.prompts.get("shift")
    if shifted:
        m_in = base if base is not None else sampled_metrics(env, policy, env.prompts["eval"], seed)
        out.update(renamed(m_in, SPLIT_METRICS, lambda k: N.on_split(k, N.SPLIT_IN)))
        out.update(renamed(sampled_metrics(env, policy, shifted, seed), SPLIT_METRICS,
                           lambda k: N.on_split(k, N.SPLIT_SHIFT)))
    return out
