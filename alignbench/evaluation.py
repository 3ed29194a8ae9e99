"""Sampled evaluation shared by every non-exact task: gold reward, KL to the reference, win rate.

:class:`SampledTaskEnv` is the base class of task environments whose response space cannot be
enumerated. ``evaluate(policy)`` draws ``n_eval_samples`` completions per held-out prompt from the
policy (seeded, at the task's temperature) and reports, each with a standard error over prompts:

* ``reward/gold``      mean gold reward of the policy's samples;
* ``kl/ref``           KL(pi || pi_ref) estimated from the policy's own samples by k1: the mean of the
                       summed per-token log-ratio ``sum_t log pi(y_t|.) - log pi_ref(y_t|.)`` (unbiased);
* ``kl/ref_k3``        the k3 estimator ``sum_t (rho_t - 1 - log rho_t)``, rho_t = pi_ref/pi per token
                       (also unbiased for the sequence KL and never negative; lower variance while
                       pi is close to pi_ref, heavier-tailed far from it);
* ``winrate/vs_ref``   P(gold reward of a policy sample > that of a reference sample for the same
                       prompt), ties counting one half, averaged over all n x m sample pairs per prompt;
* ``policy/entropy``   mean of ``-sum_t log pi(y_t|.)`` over the samples (a sampled sequence entropy);
* ``policy/length``    mean number of completion tokens (the end token included when generated);
* ``reward/ref``       the reference's mean gold reward on the same prompts (its cached samples);
* ``reward/kl_penalized`` reward/gold - beta * kl/ref, when ``evaluate`` is given the run's beta;
* ``kl/is_bound``      0 here; 1 from :meth:`SampledTaskEnv.evaluate_samples` when the KL passed in is
                       only an upper bound (the analytic best-of-N value);
* ``degen/*``          degeneration of the samples (repetition, distinct-n, fluency under the reference),
                       defined and cited in :mod:`alignbench.degeneration`, with the reference's values on
                       its own samples as ``reference/*``.

Standard errors treat prompts as the unit: samples are averaged within a prompt, and the SE is the
standard deviation of the per-prompt means over sqrt(number of prompts).

At a temperature T != 1 the sampled distributions are the temperature-scaled policies, so log-probs are
taken from logits / T for both the policy and the reference: the KL reported is KL(pi_T || pi_ref,T),
between the distributions that are actually sampled.

The reference's own samples (for win rates) are drawn once per (seed, temperature) and cached on
the env, so evaluating many checkpoints does not resample the reference. Evaluation runs inside
``torch.random.fork_rng``: it never disturbs the caller's random state.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import degeneration as DG
from .api import EvalResult, GenerationSpec, TaskEnv
from .generation import Samples, sample
from .logprobs import sequence_logps
from .report import names as N

KL_ESTIMATOR = ("sampled: k1 = mean over policy samples of the summed per-token log-ratio "
                "log pi - log pi_ref (unbiased); k3 reported as kl/ref_k3")


def derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed derived from ``seed`` and labels (independent streams for policy / reference)."""
    blob = repr((int(seed), *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules of the same class hold equal parameters and buffers (same names, shapes, values)."""
    if type(a) is not type(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].to(sb[k].device), sb[k])
                                          for k in sa)


def mean_se(per_unit: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of per-unit values (SE = std(ddof=1) / sqrt(n); NaN with < 2 units)."""
    x = np.asarray(per_unit, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    m = float(x.mean())
    if x.size < 2:
        return m, float("nan")
    return m, float(x.std(ddof=1) / math.sqrt(x.size))


def pairwise_win_rate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-unit win rate of ``a`` over ``b``: (U, n) and (U, m) -> (U,).

    Every sample of ``a`` is compared with every sample of ``b`` of the same unit; a tie counts 1/2.
    """
    a = np.asarray(a, dtype=np.float64)[:, :, None]
    b = np.asarray(b, dtype=np.float64)[:, None, :]
    return ((a > b) + 0.5 * (a == b)).mean(axis=(1, 2))


@torch.no_grad()
def batched_sequence_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                           completion_mask: Tensor, *, temperature: float = 1.0,
                           batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Summed completion log-probs (B,), per-token log-probs (B, T-1) and token counts (B,) on CPU.

    Uses the shared :func:`sequence_logps`, in chunks of ``batch_size`` rows, in eval mode (the
    model's train/eval state is restored). Logits are divided by ``temperature`` when it is not 1.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    sums, toks, counts = [], [], []
    try:
        for s in range(0, input_ids.shape[0], batch_size):
            am = attention_mask[s:s + batch_size]
            t = min(max(int(am.sum(-1).max()), 2), input_ids.shape[1])
            out = sequence_logps(model, input_ids[s:s + batch_size, :t].to(dev), am[:, :t].to(dev),
                                 completion_mask[s:s + batch_size, :t].to(dev), temperature)
            tok = torch.zeros((am.shape[0], input_ids.shape[1] - 1), dtype=torch.float32)
            tok[:, : out.tokens.shape[1]] = out.tokens.float().cpu()
            sums.append(out.sum.float().cpu())
            toks.append(tok)
            counts.append(out.count.float().cpu())
    finally:
        if was_training:
            model.train()
    return torch.cat(sums), torch.cat(toks), torch.cat(counts)


@dataclass
class PolicySamples:
    """Samples of one model on a list of unique prompts, n per prompt, with their statistics.

    rewards, logp, logp_ref, k3, lengths: (P, n) arrays (logp / logp_ref / k3 only where computed);
    texts: P lists of n completion texts (special tokens dropped);
    tokens: P lists of n completion token-id lists (end token and padding dropped), for degeneration.
    """

    prompts: list[str]
    texts: list[list[str]]
    rewards: np.ndarray
    lengths: np.ndarray
    logp: np.ndarray | None = None
    logp_ref: np.ndarray | None = None
    k3: np.ndarray | None = None
    tokens: list[list[list[int]]] | None = None
    memo: dict[str, Any] = field(default_factory=dict)  # statistics computed once per (cached) sample set


class SampledTaskEnv(TaskEnv):
    """Base of non-exact task environments: sampled metrics with standard errors.

    Subclasses set the :class:`~alignbench.api.TaskEnv` attributes (through ``__init__``) and
    implement :meth:`gold_reward`; ``evaluate`` and ``evaluate_samples`` come from here.
    """

    exact = False
    has_text = True  # completions are text: the report shows examples and degeneration metrics
    kl_estimator = KL_ESTIMATOR

    def __init__(self, *, task_name: str, tokenizer: Any, reference: nn.Module, reference_dir: Path,
                 preferences: Any, prompts: dict[str, list[str]], generation: GenerationSpec,
                 fingerprint: str, n_eval_samples: int = 8, eval_batch_size: int = 256,
                 n_example_completions: int = 1):
        self.task_name = task_name
        self.tokenizer = tokenizer
        self.reference = reference
        self.reference_dir = Path(reference_dir)
        self.preferences = preferences
        self.prompts = prompts
        self.generation = generation
        self.fingerprint = fingerprint
        self.n_eval_samples = int(n_eval_samples)
        self.eval_batch_size = int(eval_batch_size)
        self.n_example_completions = int(n_example_completions)
        self._ref_cache: dict[tuple, PolicySamples] = {}
        self._reference_evals: dict[tuple, EvalResult] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ sampling

    @property
    def temperature(self) -> float:
        return float(self.generation.temperature)

    def _pad_id(self) -> int:
        pad = self.generation.pad_token_id
        return int(pad if pad is not None else 0)

    def draw(self, model: nn.Module, prompts: Sequence[str], n: int, *, seed: int,
             score_logps: bool = False, temperature: float | None = None) -> PolicySamples:
        """``n`` completions per prompt from ``model`` (seeded; the global RNG state is preserved).

        With ``score_logps`` the samples' log-probs under ``model`` and the reference are computed too.
        ``temperature`` (default: the task's) samples ``model`` at another temperature and scores it there
        (0: greedy, a deterministic policy whose log-probs are 0); the reference is scored as always.
        """
        t_model = self.temperature if temperature is None else float(temperature)
        prompts = list(prompts)
        rep = [p for p in prompts for _ in range(n)]
        dev = next(model.parameters()).device
        fork_devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            smp = sample(model, self.tokenizer, rep, self.generation, temperature=t_model,
                         generator_seed=seed, max_batch=self.eval_batch_size)
        rewards = self.gold_reward(rep, smp.texts).detach().float().cpu().numpy()
        lengths = smp.lengths.float().cpu().numpy()
        texts = [smp.texts[i * n:(i + 1) * n] for i in range(len(prompts))]
        out = PolicySamples(prompts, texts, rewards.reshape(len(prompts), n), lengths.reshape(len(prompts), n),
                            tokens=self._sample_tokens(smp, n))
        if score_logps:
            ids, am, cm = smp.right_padded(self._pad_id())
            t = self.temperature if self.temperature > 0 else 1.0
            t_pol = t if temperature is None else t_model
            if t_pol > 0:
                lp, lp_tok, _ = batched_sequence_logps(model, ids, am, cm, temperature=t_pol,
                                                       batch_size=self.eval_batch_size)
            if model is self.reference and t_pol == t:  # the reference's own samples: the same forward
                lr, lr_tok = lp, lp_tok
            else:
                lr, lr_tok, _ = batched_sequence_logps(self.reference, ids, am, cm, temperature=t,
                                                       batch_size=self.eval_batch_size)
            if t_pol == 0:  # greedy decoding: log pi_0(y) = 0 for the one completion it gives
                lp, lp_tok = torch.zeros_like(lr), torch.zeros_like(lr_tok)
            # per-token k3 summed over the completion: E[rho_t - 1 | prefix] = 0 under pi, so the sum
            # is an unbiased, non-negative estimate of the sequence KL (masked positions give 0)
            log_rho = (lr_tok - lp_tok).double()
            k3 = (torch.expm1(log_rho) - log_rho).sum(-1)
            out.logp = lp.double().numpy().reshape(len(prompts), n)
            out.logp_ref = lr.double().numpy().reshape(len(prompts), n)
            out.k3 = k3.numpy().reshape(len(prompts), n)
        return out

    def reference_samples(self, seed: int = 0, prompts: Sequence[str] | None = None) -> PolicySamples:
        """The reference's ``n_eval_samples`` completions per prompt (eval prompts by default), cached
        per (seed, temperature, prompts)."""
        prompts = list(self.prompts["eval"] if prompts is None else prompts)
        key = (int(seed), self.temperature, self.n_eval_samples, tuple(prompts))
        with self._lock:
            hit = self._ref_cache.get(key)
        if hit is not None:
            return hit
        ref = self.draw(self.reference, prompts, self.n_eval_samples, seed=derive_seed(seed, "reference"),
                        score_logps=True)
        with self._lock:
            self._ref_cache[key] = ref
        return ref

    # ------------------------------------------------------------------ metrics

    def evaluate(self, policy: nn.Module, **kwargs: Any) -> EvalResult:
        """:meth:`evaluate_policy`, memoised for an unchanged copy of the reference (every run's step 0): the same
        weights, seed and arguments draw the same samples, so each (seed, arguments) is evaluated once per env."""
        if not same_weights(policy, self.reference):
            return self.evaluate_policy(policy, **kwargs)
        key = (self.temperature, tuple(sorted(kwargs.items())))
        with self._lock:
            hit = self._reference_evals.get(key)
        if hit is None:
            hit = self.evaluate_policy(policy, **kwargs)
            with self._lock:
                self._reference_evals[key] = hit
        return copy.deepcopy(hit)

    def evaluate_policy(self, policy: nn.Module, *, beta: float | None = None, seed: int = 0) -> EvalResult:
        prompts = list(self.prompts["eval"])
        pol = self.draw(policy, prompts, self.n_eval_samples, seed=derive_seed(seed, "policy"), score_logps=True)
        ref = self.reference_samples(seed)
        log_ratio = pol.logp - pol.logp_ref
        per_kl = log_ratio.mean(1)
        metrics: dict[str, float] = {}
        self._put(metrics, N.GOLD, pol.rewards.mean(1))
        self._put(metrics, N.KL, per_kl)
        self._put(metrics, "kl/ref_k3", pol.k3.mean(1))
        per_win = pairwise_win_rate(pol.rewards, ref.rewards)
        self._put(metrics, "winrate/vs_ref", per_win)
        self._put(metrics, "policy/entropy", (-pol.logp).mean(1))
        self._put(metrics, "policy/length", pol.lengths.mean(1))
        self._put_degeneration(metrics, pol.tokens, DG.ref_logp_per_token(pol.logp_ref, pol.lengths))
        if "degeneration" not in ref.memo:  # the reference's baselines: once per cached sample set
            self._put_degeneration(ref.memo.setdefault("degeneration", {}), ref.tokens,
                                   DG.ref_logp_per_token(ref.logp_ref, ref.lengths), ref.lengths.mean(1),
                                   name=DG.reference_name)
        metrics.update(ref.memo["degeneration"])
        metrics["reward/ref"] = float(ref.rewards.mean())
        metrics["kl/is_bound"] = 0.0
        if beta is not None:
            metrics["reward/kl_penalized"] = metrics[N.GOLD] - float(beta) * metrics[N.KL]
        vs_chosen = self.win_rate_vs_chosen(policy, seed)
        if vs_chosen is not None:
            self._put(metrics, "winrate/vs_chosen", vs_chosen)
        per_prompt = {
            "prompts": prompts,
            "reward": pol.rewards.mean(1).tolist(),
            "rewards": pol.rewards.tolist(),  # (P, n) gold rewards of the policy's samples: head-to-head judge
            "ref_rewards": ref.rewards.tolist(),
            "kl": per_kl.tolist(),
            "winrate": per_win.tolist(),
            "completions": [t[: self.n_example_completions] for t in pol.texts],
            # the reference's first samples for the same prompts (gold rewards: ref_rewards[:, :k])
            "ref_completions": [t[: self.n_example_completions] for t in ref.texts],
        }
        return EvalResult(metrics=metrics, per_prompt=per_prompt)

    n_vs_chosen: int = 64  # held-out pairs used for the win rate against the data's chosen responses

    def win_rate_vs_chosen(self, policy: nn.Module, seed: int) -> np.ndarray | None:
        """Per-pair win of one policy sample against the chosen response of a held-out preference pair
        (same prompt), judged by the gold reward, ties 1/2: the DPO paper's win rate against the data.
        None where the task has no held-out preference data."""
        prefs = (self.preferences or {}).get("eval")
        if prefs is None or len(prefs) == 0:
            return None
        if getattr(self, "_chosen_cache", None) is None:
            rows = prefs.select(range(min(self.n_vs_chosen, len(prefs))))
            prompts, chosen = list(rows["prompt"]), list(rows["chosen"])
            self._chosen_cache = (prompts, self.gold_reward(prompts, chosen).detach().float().cpu().numpy())
        prompts, chosen_r = self._chosen_cache
        pol = self.draw(policy, prompts, 1, seed=derive_seed(seed, "vs_chosen"))
        return pairwise_win_rate(pol.rewards, chosen_r[:, None])

    def evaluate_samples(self, prompts: Sequence[str], completions: Sequence[str], *, kl: float | None = None,
                         kl_se: float | None = None, kl_is_bound: bool = False,
                         lengths: Sequence[float] | None = None, seed: int = 0) -> EvalResult:
        """Metrics of a policy given only as samples (e.g. best-of-N): prompts[i] -> completions[i].

        Samples are grouped by prompt (several per prompt allowed); the gold reward and the win rate
        against the reference's cached samples for the same prompts are computed here; ``kl`` (and
        ``kl_se``) are passed through, with ``kl/is_bound`` = 1.0 when ``kl`` is only an upper bound
        (e.g. the analytic best-of-N value). ``lengths`` (tokens per completion, e.g. ``Samples.lengths``)
        default to the token count of each text, plus the end token where the text must have stopped at it.
        """
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions) or not prompts:
            raise ValueError("evaluate_samples: prompts and completions must be non-empty and of equal length")
        rewards = self.gold_reward(prompts, completions).detach().float().cpu().numpy().astype(np.float64)
        token_ids = self._completion_ids(completions)
        lens = np.asarray([len(x) for x in token_ids] if lengths is None else lengths, dtype=np.float64)
        ref_lp = self._reference_logps(prompts, token_ids)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        uniq = list(groups)
        ref = self.reference_samples(seed, uniq if set(uniq) - set(self.prompts["eval"]) else None)
        ref_rows = {p: i for i, p in reversed(list(enumerate(ref.prompts)))}
        per_reward = np.array([rewards[groups[p]].mean() for p in uniq])
        per_len = np.array([lens[groups[p]].mean() for p in uniq])
        per_win = np.array([pairwise_win_rate(rewards[groups[p]][None], ref.rewards[ref_rows[p]][None])[0]
                            for p in uniq])
        metrics: dict[str, float] = {}
        self._put(metrics, N.GOLD, per_reward)
        self._put(metrics, "winrate/vs_ref", per_win)
        self._put(metrics, "policy/length", per_len)
        special = self._special_ids()
        toks = [[[t for t in token_ids[i] if t not in special] for i in groups[p]] for p in uniq]
        per_lp = np.array([(ref_lp[groups[p]] / np.maximum(lens[groups[p]], 1.0)).mean() for p in uniq])
        self._put_degeneration(metrics, toks, per_lp)
        # the reference's baselines on as many of its samples per prompt as the policy has (distinct-n
        # grows as the corpus shrinks, so the counts must match)
        k = [len(groups[p]) for p in uniq]
        ref_sel = [(ref_rows[p], min(c, ref.rewards.shape[1])) for p, c in zip(uniq, k)]
        self._put_degeneration(metrics, [ref.tokens[i][:c] for i, c in ref_sel],
                               np.array([(ref.logp_ref[i, :c] / np.maximum(ref.lengths[i, :c], 1.0)).mean()
                                         for i, c in ref_sel]),
                               np.array([ref.lengths[i, :c].mean() for i, c in ref_sel]), name=DG.reference_name)
        metrics["reward/ref"] = float(np.mean([ref.rewards[ref_rows[p]].mean() for p in uniq]))
        if kl is not None:
            metrics[N.KL] = float(kl)
            if kl_se is not None:
                metrics[N.KL_SE] = float(kl_se)
        metrics["kl/is_bound"] = 1.0 if kl_is_bound else 0.0
        per_prompt = {
            "prompts": uniq,
            "reward": per_reward.tolist(),
            "rewards": [rewards[groups[p]].tolist() for p in uniq],
            "ref_rewards": np.stack([ref.rewards[ref_rows[p]] for p in uniq]).tolist(),
            "winrate": per_win.tolist(),
            "completions": [[completions[i] for i in groups[p][: self.n_example_completions]] for p in uniq],
            "ref_completions": [ref.texts[ref_rows[p]][: self.n_example_completions] for p in uniq],
        }
        return EvalResult(metrics=metrics, per_prompt=per_prompt)

    def _text_lengths(self, completions: list[str]) -> np.ndarray:
        """Completion lengths in tokens, counted as ``evaluate`` counts them (the end token included)."""
        return np.asarray([len(x) for x in self._completion_ids(completions)], dtype=np.float64)

    def _completion_ids(self, completions: list[str]) -> list[list[int]]:
        """Token ids of completion texts as sampled: re-tokenized, with the end token put back.

        Texts from :func:`~alignbench.generation.sample` drop the end token; a completion shorter than
        ``max_new_tokens`` can only have stopped at it, so it is added back there.
        """
        spec = self.generation
        eos = spec.eos_token_id
        out = []
        for x in self.tokenizer(completions, add_special_tokens=False)["input_ids"]:
            x = list(x)
            if not spec.fixed_length and eos is not None and eos not in x and len(x) < spec.max_new_tokens:
                x.append(int(eos))
            out.append(x[: spec.max_new_tokens])
        return out

    def _sample_tokens(self, smp: Samples, n: int) -> list[list[list[int]]]:
        """[prompt][sample] completion token ids of ``smp`` (n per prompt), special tokens dropped."""
        cm = smp.completion_mask[:, -smp.completions.shape[1]:].tolist()
        rows = [[t for t, m in zip(row, mask) if m] for row, mask in zip(smp.completions.tolist(), cm)]
        return DG.group(DG.strip_special(rows, self._special_ids()), n)

    def _special_ids(self) -> set[int]:
        """Token ids left out of the degeneration n-grams: the end token and the tokenizer's special
        tokens (dropped from the texts too, so the n-grams are those of the text)."""
        ids = set(getattr(self.tokenizer, "all_special_ids", None) or [])
        if not self.generation.fixed_length and self.generation.eos_token_id is not None:
            ids.add(self.generation.eos_token_id)
        return {int(i) for i in ids}

    def _reference_logps(self, prompts: list[str], completion_ids: list[list[int]]) -> np.ndarray:
        """(B,) summed reference log-probs of given completions (token ids) after their prompts."""
        rows = [list(p) + list(c) for p, c in zip(self.tokenizer(prompts, add_special_tokens=False)["input_ids"],
                                                   completion_ids)]
        width = max(max(len(r) for r in rows), 2)
        ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
        am = torch.zeros_like(ids)
        cm = torch.zeros_like(ids)
        for i, (r, c) in enumerate(zip(rows, completion_ids)):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            am[i, : len(r)] = 1
            cm[i, len(r) - len(c): len(r)] = 1
        t = self.temperature if self.temperature > 0 else 1.0
        lp, _, _ = batched_sequence_logps(self.reference, ids, am, cm, temperature=t, batch_size=self.eval_batch_size)
        return lp.double().numpy()

    def _put_degeneration(self, metrics: dict[str, float], tokens: list[list[list[int]]], ref_logp: np.ndarray,
                          lengths: np.ndarray | None = None, name=lambda k: k) -> None:
        """The :mod:`~alignbench.degeneration` metrics of samples grouped by prompt, under ``name(key)``."""
        per_prompt, pooled = DG.compute(tokens)
        for key, per in per_prompt.items():
            self._put(metrics, name(key), per[np.isfinite(per)])
        for key, (value, se) in pooled.items():
            metrics[name(key)], metrics[name(key) + "_se"] = value, se
        self._put(metrics, name(DG.REF_LOGP), ref_logp)
        if lengths is not None:
            self._put(metrics, name(DG.LENGTH), lengths)

    @staticmethod
    def _put(metrics: dict[str, float], key: str, per_prompt: np.ndarray) -> None:
        m, se = mean_se(per_prompt)
        metrics[key] = m
        metrics[key + "_se"] = se

    def describe(self) -> dict[str, Any]:
        return {
            "kl_estimator": self.kl_estimator,
            "reward_estimator": "mean gold reward of policy samples; SE over prompts (per-prompt means)",
            "winrate": "policy sample vs reference sample of the same prompt, all n x n pairs, ties = 1/2",
            "temperature": self.temperature,
            "n_eval_prompts": len(self.prompts["eval"]),
            "n_eval_samples": self.n_eval_samples,
            "max_new_tokens": self.generation.max_new_tokens,
            "has_text": bool(self.has_text),
        }
