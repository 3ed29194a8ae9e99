"""The exact task: an enumerable response space, so every metric is exact (no sampling error).

Prompts are single tokens ``<p0> .. <p{K-1}>``; responses are exactly ``L`` space-separated tokens
from ``t0 .. t{V-1}``, so there are ``N = V**L`` responses per prompt (at most 4096) and every
quantity of interest is a sum over a (K, N) table.

Pieces (all seeded by ``seed``):

* **Base distribution**: per prompt, a random position-dependent Markov chain over the V response
  tokens (initial and transition logits ~ N(0, 1) / ``base_temperature``), far from uniform.
* **Reference policy** pi_ref: a tiny GPT-2 trained by maximum likelihood on samples of the base
  distribution (the task's SFT step). Built once per reference-relevant config and cached with
  ``save_pretrained`` under ``cache_dir/exact/<hash>/`` (``reference_dir``).
* **Gold reward** r(x, y) = sum_t w[x, t, y_t] + interaction_scale * sum_{t<s} J[x, t, s, y_t, y_s]
  (w, J ~ N(0, 1)), then standardised per prompt to mean 0 and standard deviation 1 under
  pi_ref(. | x); hence also mean 0 and std 1 under pi_ref with prompts weighted uniformly.
  ``gold_reward`` gives a completion that is not L response tokens (hand-written text; the masked
  policies below cannot sample one) the prompt's lowest valid reward.
* **Preference pairs**: prompt uniform, y, y' ~ pi_ref independently (resampled until y != y'),
  labelled by Bradley-Terry on the gold reward (``labels="bt"``) or by the larger gold reward
  (``"deterministic"``, ties by a coin), then flipped with probability ``label_noise``.
  Their streams are seeded by ``data_seed`` where set (the **data seed**: pairs, labels, and so the
  reward model trained on them), else by ``seed``; the base distribution, reference, gold reward and
  prompts always by ``seed``.

**The policy is a distribution over the N responses.** The reference (and so every policy, a copy of
it) is a :class:`ResponseMaskedGPT2`: a tiny GPT-2 (built by :func:`alignbench.models.tiny_gpt2`)
whose next-token logits of every token other than the V response tokens are set to -1e4, so its
softmax puts exactly zero mass (exp underflows to 0) on pad, eos, unk and prompt tokens. Hence
pi(y|x) = exp(sequence log-prob from :func:`alignbench.logprobs.sequence_logps`) sums to 1 over the
N enumerated responses, the exact tables are exactly the distribution the methods optimise and sample
from, and generation never emits an invalid token. (Without the mask, DPO at small beta moved about
half of the probability mass to invalid token sequences within 100 steps, which a table over the
valid responses cannot see.) ``exact/invalid_mass`` (1 - sum of the raw table's rows) checks this and
stays at float rounding level. ``reference_dir`` holds a standard GPT-2 checkpoint whose
``config.allowed_token_ids`` lists the response tokens; load it with
``ResponseMaskedGPT2.from_pretrained`` to keep the restriction (``AutoModelForCausalLM`` gives the
unrestricted model; reward models and critics built from the folder are unaffected).

Exact metrics of :meth:`ExactEnv.evaluate_table`: ``reward/gold``, ``kl/ref`` (KL(pi || pi_ref)),
``policy/entropy``, ``winrate/vs_ref`` (Bradley-Terry win probability against pi_ref),
``exact/frontier_gap`` (optimal reward at the policy's KL minus its reward; >= 0),
``exact/unseen_mass`` (mean over the prompts with training pairs, i.e. all but ``held_out_prompts``, of the
policy's mass on responses that occur in no training pair of that prompt), ``exact/invalid_mass``, ``policy/length``, and given beta
``kl/to_target`` (KL(pi || pi*_beta)) with the target's own ``exact/target_kl`` and
``exact/target_reward``; given the run's own population target (:meth:`ExactEnv.target_metrics`,
docs/targets.md) ``kl/to_own_target``, ``exact/objective_gap`` and ``exact/estimation_gap``.
Prompts are weighted uniformly. ``per_prompt`` keeps the normalised policy
table ``logp`` (K x N), the gold ``reward_table`` (K x N) and per-prompt ``reward`` and ``kl``, so
that head-to-head win rates can be computed exactly later.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from alignbench import exact as X
from alignbench import io
from alignbench.api import (EnumerableEnv, EvalResult, GenerationSpec, TabularProblem, Target, TargetEvaluable, Task,
                           TaskEnv)
from alignbench.config import (check_choice, check_int, check_nonnegative, check_positive, check_range,
                               param, stable_hash)
from alignbench.errors import ConfigError, DataError
from alignbench.registry import register_task
from alignbench.report import names as N

MAX_RESPONSES = 4096
REFERENCE_VERSION = 3  # bump when the way the reference is built changes (invalidates caches)
_REFERENCE_FIELDS = ("num_prompts", "vocab_size", "length", "seed", "base_temperature", "n_layer", "n_embd",
                     "n_head", "pretrain_samples", "pretrain_steps", "pretrain_batch_size", "pretrain_lr")
_LOGP_CHUNK = 4096  # sequences per forward pass of logp_table

MASK_VALUE = -1e4  # added to the logits of non-response tokens: exp underflows to exactly 0

# independent random streams derived from the seed
_STREAM_BASE, _STREAM_SAMPLES, _STREAM_REWARD, _STREAM_TRAIN_PAIRS, _STREAM_EVAL_PAIRS = range(5)


@dataclass(frozen=True)
class ExactConfig:
    """Parameters of the exact task (the reference-relevant ones key the reference cache)."""

    num_prompts: int = param(8, "number of prompts K (single tokens <p0>..<p{K-1}>)")
    vocab_size: int = param(6, "response tokens V (t0..t{V-1})")
    length: int = param(4, "response length L; N = V**L responses per prompt (at most 4096)")
    seed: int = param(0, "seed of the base distribution, reference training, gold reward and preference data")
    base_temperature: float = param(0.5, "temperature of the random Markov base distribution (lower: farther from uniform)")
    n_layer: int = param(2, "reference transformer layers")
    n_embd: int = param(64, "reference transformer width")
    n_head: int = param(4, "reference transformer attention heads")
    pretrain_samples: int = param(20000, "samples of the base distribution the reference is trained on (MLE)")
    pretrain_steps: int = param(300, "reference MLE training steps")
    pretrain_batch_size: int = param(256, "reference MLE batch size (sequences)")
    pretrain_lr: float = param(3e-3, "reference MLE peak learning rate")
    interaction_scale: float = param(0.5, "weight of the pairwise token interactions of the gold reward, relative to the per-position weights")
    num_train_pairs: int = param(2048, "training preference pairs")
    num_eval_pairs: int = param(512, "evaluation preference pairs")
    labels: str = param("bt", "'bt': Bradley-Terry labels on the gold reward; 'deterministic': the larger gold reward wins")
    label_noise: float = param(0.0, "probability of flipping each preference label, in [0, 0.5]")
    data_seed: int | None = param(None, "seed of the preference pairs and their labels (train and held-out), hence of "
                                        "the reward model trained on them; None: the task seed, as before. The "
                                        "reference, gold reward table and prompts stay those of `seed`")
    held_out_prompts: int = param(0, "prompts (the last ones, <p{K-h}>..<p{K-1}>) that get no training pairs and no "
                                     "online rollouts; evaluated with the rest, reported apart (distribution shift)")

    def __post_init__(self) -> None:
        check_int("num_prompts", self.num_prompts, 1)
        check_int("vocab_size", self.vocab_size, 2)
        check_int("length", self.length, 1)
        if self.vocab_size ** self.length > MAX_RESPONSES:
            raise ConfigError("length", f"vocab_size**length = {self.vocab_size}**{self.length} = "
                                        f"{self.vocab_size ** self.length} responses exceeds {MAX_RESPONSES}; "
                                        f"lower vocab_size or length")
        check_int("seed", self.seed, 0)
        check_positive("base_temperature", self.base_temperature)
        check_int("n_layer", self.n_layer, 1)
        check_int("n_embd", self.n_embd, 1)
        check_int("n_head", self.n_head, 1)
        if self.n_embd % self.n_head:
            raise ConfigError("n_embd", f"must be divisible by n_head={self.n_head}, got {self.n_embd}")
        check_int("pretrain_samples", self.pretrain_samples, 1)
        check_int("pretrain_steps", self.pretrain_steps, 1)
        check_int("pretrain_batch_size", self.pretrain_batch_size, 1)
        check_positive("pretrain_lr", self.pretrain_lr)
        check_nonnegative("interaction_scale", self.interaction_scale)
        check_int("num_train_pairs", self.num_train_pairs, 1)
        check_int("num_eval_pairs", self.num_eval_pairs, 1)
        check_choice("labels", self.labels, ("bt", "deterministic"))
        check_range("label_noise", self.label_noise, 0.0, 0.5)
        if self.data_seed is not None:
            check_int("data_seed", self.data_seed, 0)
        check_int("held_out_prompts", self.held_out_prompts, 0)
        if self.held_out_prompts >= self.num_prompts:
            raise ConfigError("held_out_prompts", f"must be < num_prompts={self.num_prompts} (some prompt needs "
                                                  f"training pairs), got {self.held_out_prompts}")

    @property
    def num_responses(self) -> int:
        return self.vocab_size ** self.length

    @property
    def pair_seed(self) -> int:
        """The seed of the preference data's random streams: ``data_seed`` where set, else the task seed."""
        return self.seed if self.data_seed is None else self.data_seed

    def reference_key(self) -> dict[str, Any]:
        """The fields that determine the reference model (its cache key)."""
        return {"version": REFERENCE_VERSION, **{k: getattr(self, k) for k in _REFERENCE_FIELDS}}


# ------------------------------------------------------------------------------------------ the masked policy class

_MASKED_CLS: type | None = None


def _masked_gpt2_class() -> type:
    """Build :class:`ResponseMaskedGPT2` on first use (keeps ``import alignbench.tasks.exact`` free of transformers)."""
    global _MASKED_CLS
    if _MASKED_CLS is not None:
        return _MASKED_CLS
    from transformers import GPT2LMHeadModel

    class ResponseMaskedGPT2(GPT2LMHeadModel):
        """GPT-2 whose next-token distribution is restricted to ``config.allowed_token_ids``.

        ``MASK_VALUE`` is added to the logits of every other token (a finite value, so that a masked
        label times a zero mask stays 0 rather than NaN). Weights and checkpoints are plain GPT-2.
        """

        def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                    position_ids=None, inputs_embeds=None, encoder_hidden_states=None,
                    encoder_attention_mask=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
            return_dict = kwargs.pop("return_dict", None)
            out = super().forward(input_ids=input_ids, past_key_values=past_key_values,
                                  attention_mask=attention_mask, token_type_ids=token_type_ids,
                                  position_ids=position_ids, inputs_embeds=inputs_embeds,
                                  encoder_hidden_states=encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask, use_cache=use_cache,
                                  logits_to_keep=logits_to_keep, return_dict=True, **kwargs)
            out.logits = out.logits + self._logit_mask(out.logits)
            if labels is not None:  # the causal LM loss of the restricted distribution
                out.loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(),
                                                             labels[:, 1:].flatten().to(out.logits.device),
                                                             ignore_index=-100)
            return out.to_tuple() if return_dict is False else out

        def _logit_mask(self, logits: Tensor) -> Tensor:
            key = (logits.device, logits.dtype)
            cache = self.__dict__.setdefault("_mask_cache", {})
            if key not in cache:
                mask = torch.full((logits.shape[-1],), MASK_VALUE, dtype=logits.dtype, device=logits.device)
                mask[torch.tensor(list(self.config.allowed_token_ids), device=logits.device)] = 0
                cache[key] = mask
            return cache[key]

    ResponseMaskedGPT2.__module__ = __name__
    ResponseMaskedGPT2.__qualname__ = "ResponseMaskedGPT2"
    _MASKED_CLS = ResponseMaskedGPT2
    return _MASKED_CLS


def __getattr__(name: str) -> Any:  # PEP 562: ``from alignbench.tasks.exact import ResponseMaskedGPT2`` builds it lazily
    if name == "ResponseMaskedGPT2":
        return _masked_gpt2_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------ pure helpers


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def enumerate_responses(vocab_size: int, length: int) -> np.ndarray:
    """(N, L) token indices (0..V-1) of all responses, in lexicographic order (index = base-V number)."""
    n = vocab_size ** length
    idx = np.arange(n)
    digits = [(idx // vocab_size ** (length - 1 - t)) % vocab_size for t in range(length)]
    return np.stack(digits, axis=1).astype(np.int64)


def _log_softmax(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(axis=axis, keepdims=True))


@dataclass
class BaseDistribution:
    """Per-prompt position-dependent Markov chain: init (K, V) and trans (K, L-1, V, V) logits."""

    init: np.ndarray
    trans: np.ndarray

    @classmethod
    def random(cls, cfg: ExactConfig) -> "BaseDistribution":
        rng = _rng(cfg.seed, _STREAM_BASE)
        k, v, length = cfg.num_prompts, cfg.vocab_size, cfg.length
        init = rng.standard_normal((k, v)) / cfg.base_temperature
        trans = rng.standard_normal((k, max(length - 1, 0), v, v)) / cfg.base_temperature
        return cls(init, trans)

    def log_table(self, responses: np.ndarray) -> np.ndarray:
        """(K, N) exact log-probabilities of every response."""
        li, lt = _log_softmax(self.init), _log_softmax(self.trans)
        out = li[:, responses[:, 0]]
        for t in range(1, responses.shape[1]):
            out = out + lt[:, t - 1, responses[:, t - 1], responses[:, t]]
        return out

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n samples: prompt indices (n,) uniform and response tokens (n, L)."""
        k = rng.integers(0, self.init.shape[0], n)
        length = self.trans.shape[1] + 1
        y = np.empty((n, length), dtype=np.int64)
        y[:, 0] = _categorical(np.exp(_log_softmax(self.init[k])), rng)
        pt = np.exp(_log_softmax(self.trans))
        for t in range(1, length):
            y[:, t] = _categorical(pt[k, t - 1, y[:, t - 1]], rng)
        return k, y


def _categorical(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of (n, m) probabilities (inverse CDF)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(1), probs.shape[1] - 1)


def raw_reward_table(cfg: ExactConfig, responses: np.ndarray) -> np.ndarray:
    """(K, N) unstandardised gold reward: per-position weights plus scaled pairwise interactions."""
    rng = _rng(cfg.seed, _STREAM_REWARD)
    k, v, length = cfg.num_prompts, cfg.vocab_size, cfg.length
    w = rng.standard_normal((k, length, v))
    j = rng.standard_normal((k, length, length, v, v))
    r = np.zeros((k, responses.shape[0]))
    for t in range(length):
        r += w[:, t, responses[:, t]]
        for s in range(t + 1, length):
            r += cfg.interaction_scale * j[:, t, s, responses[:, t], responses[:, s]]
    return r


def standardise(reward: np.ndarray, logp_ref: np.ndarray) -> np.ndarray:
    """Per prompt: mean 0 and standard deviation 1 under pi_ref(.|x) (so also over uniform prompts)."""
    p = np.exp(logp_ref)
    mean = (p * reward).sum(-1, keepdims=True)
    std = np.sqrt((p * (reward - mean) ** 2).sum(-1, keepdims=True))
    return (reward - mean) / np.maximum(std, 1e-12)


def sample_pairs(logp_ref: np.ndarray, reward: np.ndarray, n: int, labels: str, label_noise: float,
                 rng: np.random.Generator, n_prompts: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n labelled pairs (prompt, chosen, rejected) of response indices; y, y' ~ pi_ref, y != y'; prompts uniform
    over the first ``n_prompts`` (default: all K)."""
    k_count = logp_ref.shape[0] if n_prompts is None else n_prompts
    probs = np.exp(logp_ref)
    k = rng.integers(0, k_count, n)
    y1 = _categorical(probs[k], rng)
    y2 = _categorical(probs[k], rng)
    same = y1 == y2
    for _ in range(10_000):  # resample the second response of identical pairs
        if not same.any():
            break
        y2[same] = _categorical(probs[k[same]], rng)
        same = y1 == y2
    else:
        raise DataError("exact task: pi_ref is (nearly) deterministic on some prompt, so pairs with y != y' "
                        "cannot be drawn; raise base_temperature")
    r1, r2 = reward[k, y1], reward[k, y2]
    u, coin, flip_u = rng.random(n), rng.random(n) < 0.5, rng.random(n)  # drawn for every label type
    if labels == "bt":
        first_wins = u < 1.0 / (1.0 + np.exp(-(r1 - r2)))
    else:
        first_wins = np.where(r1 == r2, coin, r1 > r2)
    first_wins ^= flip_u < label_noise
    chosen = np.where(first_wins, y1, y2)
    rejected = np.where(first_wins, y2, y1)
    return k, chosen, rejected


# ------------------------------------------------------------------------------------------ the built task


class ExactEnv(TaskEnv):
    """A built exact task. Tables are float64 on the CPU: (K, N) with K prompts and N responses."""

    task_name = "exact"
    exact = True
    has_gold_reward = True
    kl_estimator = "exact"

    def __init__(self, config: ExactConfig, reference: nn.Module, tokenizer: Any, reference_dir: Path,
                 meta: dict[str, Any], loaded_from_cache: bool):
        from datasets import Dataset

        from alignbench.models import weights_fingerprint

        self.config = cfg = config
        self.reference = reference
        self.tokenizer = tokenizer
        self.reference_dir = Path(reference_dir)
        self.reference_meta = meta
        self.loaded_from_cache = loaded_from_cache
        K, V, L = cfg.num_prompts, cfg.vocab_size, cfg.length

        self.prompt_strings = [f"<p{k}>" for k in range(K)]
        self.response_tokens = [f"t{v}" for v in range(V)]
        self._prompt_index = {p: k for k, p in enumerate(self.prompt_strings)}
        self._token_index = {t: v for v, t in enumerate(self.response_tokens)}
        ids = tokenizer.convert_tokens_to_ids(self.prompt_strings + self.response_tokens)
        self.prompt_ids = torch.tensor(ids[:K], dtype=torch.long)  # (K,)
        self.response_token_ids = torch.tensor(ids[K:], dtype=torch.long)  # (V,)
        self._responses_np = enumerate_responses(V, L)
        self.response_ids = self.response_token_ids[torch.from_numpy(self._responses_np)]  # (N, L)
        self.responses = [" ".join(self.response_tokens[v] for v in row) for row in self._responses_np]
        self.generation = GenerationSpec(max_new_tokens=L, fixed_length=True, pad_token_id=0)
        n_train_prompts = K - cfg.held_out_prompts  # held-out prompts: no training pairs, no online rollouts
        self.prompts = {"train": self.prompt_strings[:n_train_prompts], "eval": list(self.prompt_strings)}

        # reference table: raw sequence log-probs (rows sum to 1 up to rounding), then exactly normalised
        self.ref_logp_raw = self.logp_table(reference)
        self.ref_logp_table = self.ref_logp_raw - torch.logsumexp(self.ref_logp_raw, -1, keepdim=True)
        self.reward_table = torch.from_numpy(
            standardise(raw_reward_table(cfg, self._responses_np), self.ref_logp_table.numpy()))
        self._min_reward = self.reward_table.min(-1).values

        # preference pairs (as response indices, kept for analyses) and their string datasets
        ref_np, r_np = self.ref_logp_table.numpy(), self.reward_table.numpy()
        self.pair_index: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.preferences = {}
        for split, n, stream, n_prompts in (("train", cfg.num_train_pairs, _STREAM_TRAIN_PAIRS, n_train_prompts),
                                            ("eval", cfg.num_eval_pairs, _STREAM_EVAL_PAIRS, K)):
            k, c, r = sample_pairs(ref_np, r_np, n, cfg.labels, cfg.label_noise, _rng(cfg.pair_seed, stream), n_prompts)
            self.pair_index[split] = (k, c, r)
            self.preferences[split] = Dataset.from_dict({
                "prompt": [self.prompt_strings[i] for i in k],
                "chosen": [self.responses[i] for i in c],
                "rejected": [self.responses[i] for i in r],
            })
        k, c, r = self.pair_index["train"]
        seen = np.zeros((K, self.num_responses), dtype=bool)
        seen[k, c] = True
        seen[k, r] = True
        self.seen_in_train = torch.from_numpy(seen)  # (K, N) responses that occur in the training pairs

        self.win_vs_ref = self._win_table(self.ref_logp_table)  # (K, N): P_BT(y beats y' ~ pi_ref)
        # (K, N): P_BT(y beats the chosen response of a held-out pair of the same prompt), as in the
        # DPO paper's win rate against the data's chosen responses; prompts without eval pairs are NaN
        ke, ce, _ = self.pair_index["eval"]
        counts = np.zeros((K, self.num_responses))
        np.add.at(counts, (ke, ce), 1.0)
        chosen_dist = torch.from_numpy(counts / np.maximum(counts.sum(-1, keepdims=True), 1.0))
        self.win_vs_chosen = self._win_table(chosen_dist.clamp_min(1e-300).log().to(self.reward_table.dtype))
        self._has_eval_pairs = torch.from_numpy(counts.sum(-1) > 0)
        base = torch.from_numpy(BaseDistribution.random(cfg).log_table(self._responses_np))
        self.reference_fit_kl = float(X.kl(base, self.ref_logp_table))  # KL(base || pi_ref): the SFT fit
        data_hash = stable_hash([a.tolist() for split in ("train", "eval") for a in self.pair_index[split]], n=16)
        config = {k: v for k, v in asdict(cfg).items() if not (k == "data_seed" and v is None)}  # ids as before
        self.fingerprint = stable_hash({"task": "exact", "config": config,
                                        "reference": weights_fingerprint(reference), "data": data_hash}, n=16)

    # ---------------------------------------------------------------- sizes and parsing

    @property
    def num_prompts(self) -> int:
        return self.config.num_prompts

    @property
    def num_responses(self) -> int:
        return self.config.num_responses

    def prompt_index(self, prompts: list[str]) -> Tensor:
        """(B,) prompt indices; an unknown prompt raises DataError."""
        out = []
        for p in prompts:
            k = self._prompt_index.get(p.strip())
            if k is None:
                raise DataError(f"exact task: unknown prompt {p!r} (expected <p0>..<p{self.num_prompts - 1}>)")
            out.append(k)
        return torch.tensor(out, dtype=torch.long)

    def response_index(self, completions: list[str]) -> Tensor:
        """(B,) response indices; -1 where a completion is not L valid response tokens."""
        V, L = self.config.vocab_size, self.config.length
        out = []
        for c in completions:
            toks = c.split()
            idx = 0
            if len(toks) != L:
                out.append(-1)
                continue
            for t in toks:
                v = self._token_index.get(t)
                if v is None:
                    idx = -1
                    break
                idx = idx * V + v
            out.append(idx)
        return torch.tensor(out, dtype=torch.long)

    def gold_reward(self, prompts: list[str], completions: list[str]) -> Tensor:
        """(B,) float32 gold reward; an invalid completion gets the prompt's lowest valid reward."""
        if len(prompts) != len(completions):
            raise DataError(f"exact task: {len(prompts)} prompts but {len(completions)} completions")
        k = self.prompt_index(prompts)
        y = self.response_index(completions)
        valid = y >= 0
        r = torch.where(valid, self.reward_table[k, y.clamp_min(0)], self._min_reward[k])
        return r.float()

    # ---------------------------------------------------------------- exact tables

    @torch.no_grad()
    def logp_table(self, policy: nn.Module) -> Tensor:
        """(K, N) float64 log pi(y|x) of every (prompt, response), from one batched forward pass.

        Prefix sharing: the K * V**(L-1) rows ``prompt + first L-1 response tokens`` hold, at their L
        positions, every next-token distribution that any of the K * N full sequences needs (a causal
        LM's logits at a position depend only on the tokens up to it), so the forward pass is V times
        smaller than scoring every sequence. Log-probs are taken by
        :func:`alignbench.logprobs.token_logps`, as in training; the table equals
        :meth:`logp_table_full` (``sequence_logps`` on every full sequence) up to float rounding.
        Rows sum to 1 up to rounding for a :class:`ResponseMaskedGPT2`.
        """
        return self.table_from_logits(self.prefix_logits(policy))

    @torch.no_grad()
    def prefix_logits(self, policy: nn.Module) -> Tensor:
        """(K, N/V, L, vocab) float32 next-token logits of the prefix rows (see :meth:`logp_table`)."""
        K, N, V, L = self.num_prompts, self.num_responses, self.config.vocab_size, self.config.length
        n_prefix = N // V
        prefixes = self.response_ids[::V, :L - 1]  # (N/V, L-1): response n has prefix row n // V
        ids = torch.cat([self.prompt_ids.repeat_interleave(n_prefix)[:, None], prefixes.repeat(K, 1)], 1)
        logits = torch.cat(self._forward_chunks(policy, ids, lambda m, x: m(
            input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits.float().cpu()))
        return logits.view(K, n_prefix, L, -1)

    def table_from_logits(self, logits: Tensor, temperature: float = 1.0) -> Tensor:
        """(K, N) float64 log pi_T(y|x) = sum_t log softmax(logits_t / T)[y_t] from :meth:`prefix_logits`.

        T = 1 is :meth:`logp_table`; T = 0 is greedy decoding (:func:`alignbench.robustness.greedy_logp`: all mass
        on the per-token argmax chain). Only the response tokens compete: the masked logits stay at
        ``MASK_VALUE / T``, whose exp is 0 for T <= 5."""
        from alignbench import robustness as R
        from alignbench.logprobs import token_logps

        K, N, V, L = self.num_prompts, self.num_responses, self.config.vocab_size, self.config.length
        if temperature == 0:
            return R.greedy_logp(R.greedy_chain(logits[..., self.response_token_ids]), N)
        if temperature != 1.0:
            logits = logits / temperature
        row = torch.arange(N) // V
        out = torch.empty(K, N, dtype=torch.float64)
        per = max(1, (1 << 24) // (N * L * logits.shape[-1]))  # prompts per gather, bounding memory
        for k0 in range(0, K, per):
            lg = logits[k0:k0 + per][:, row]  # (k, N, L, vocab): the distributions along each response
            labels = self.response_ids.expand(lg.shape[0], N, L)
            out[k0:k0 + per] = token_logps(lg.flatten(0, 1), labels.flatten(0, 1)).sum(-1).double().view(-1, N)
        return out

    @torch.no_grad()
    def logp_table_full(self, policy: nn.Module) -> Tensor:
        """(K, N) float64 log pi(y|x) by :func:`alignbench.logprobs.sequence_logps` on every full sequence.

        The exact computation the trainer does on a pair; :meth:`logp_table` gives the same values
        about V times faster.
        """
        from alignbench.logprobs import sequence_logps

        K, N = self.num_prompts, self.num_responses
        ids = torch.cat([self.prompt_ids.repeat_interleave(N)[:, None], self.response_ids.repeat(K, 1)], 1)

        def score(m: nn.Module, x: Tensor) -> Tensor:
            attn = torch.ones_like(x)
            comp = attn.clone()
            comp[:, 0] = 0
            return sequence_logps(m, x, attn, comp).sum.double().cpu()

        return torch.cat(self._forward_chunks(policy, ids, score)).view(K, N)

    @staticmethod
    def _forward_chunks(policy: nn.Module, ids: Tensor, fn) -> list[Tensor]:
        """fn(policy, chunk on the policy's device) over chunks of rows, in eval mode (mode restored)."""
        device = next(policy.parameters()).device
        was_training = policy.training
        policy.eval()
        try:
            return [fn(policy, ids[s:s + _LOGP_CHUNK].to(device)) for s in range(0, ids.shape[0], _LOGP_CHUNK)]
        finally:
            if was_training:
                policy.train()

    def _win_table(self, logp_other: Tensor, chunk: int = 512) -> Tensor:
        """(K, N): sum_{y'} other(y') sigma(r(y) - r(y')), the BT win probability of y against ``other``."""
        p = logp_other.exp()
        out = torch.empty_like(self.reward_table)
        for k in range(self.num_prompts):
            r = self.reward_table[k]
            for s in range(0, r.shape[0], chunk):
                out[k, s:s + chunk] = torch.sigmoid(r[s:s + chunk, None] - r[None, :]) @ p[k]
        return out

    def optimal_logp(self, beta: float) -> Tensor:
        """(K, N) log pi*_beta = log pi_ref + r / beta - log Z (the KL-regularised optimum)."""
        return X.optimal_logp(self.ref_logp_table, self.reward_table, float(beta))

    @cached_property
    def _frontier(self) -> X.Frontier:
        return X.frontier(self.ref_logp_table, self.reward_table, np.geomspace(1e6, 1e-4, 600))

    def frontier_curve(self) -> X.Frontier:
        """The exact optimal reward-vs-KL frontier (pi*_beta over beta in [1e-4, 1e6], KL increasing)."""
        return self._frontier

    def frontier(self):
        """The frontier as a DataFrame with columns beta, kl, reward."""
        import pandas as pd

        f = self._frontier
        return pd.DataFrame({"beta": f.beta, "kl": f.kl, "reward": f.reward})

    def frontier_reward_at(self, kl_value: float) -> float:
        """The optimal expected reward among policies with KL(pi || pi_ref) <= kl_value (bisection on beta)."""
        ref, r = self.ref_logp_table, self.reward_table
        if kl_value <= 0:
            return float(X.expected(ref, r))
        lo, hi = math.log(1e-6), math.log(1e6)  # log beta; KL falls as beta grows
        lp_lo = X.optimal_logp(ref, r, math.exp(lo))
        if float(X.kl(lp_lo, ref)) <= kl_value:
            return float(X.expected(lp_lo, r))
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if float(X.kl(X.optimal_logp(ref, r, math.exp(mid)), ref)) > kl_value:
                lo = mid
            else:
                hi = mid
        return float(X.expected(X.optimal_logp(ref, r, math.exp(hi)), r))

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, policy: nn.Module, *, beta: float | None = None, seed: int = 0) -> EvalResult:
        """Exact metrics of ``policy`` (``seed`` is unused: nothing is sampled)."""
        return self.evaluate_table(self.logp_table(policy), beta)

    def evaluate_table(self, logp: Tensor, beta: float | None = None) -> EvalResult:
        """Exact metrics of a (K, N) log-probability table (raw sequence log-probs or normalised rows)."""
        raw = torch.as_tensor(logp).detach().cpu().double()
        if raw.shape != self.reward_table.shape:
            raise ValueError(f"logp table must be {tuple(self.reward_table.shape)}, got {tuple(raw.shape)}")
        total = torch.logsumexp(raw, -1, keepdim=True)
        lp = raw - total
        ref, r = self.ref_logp_table, self.reward_table
        p = lp.exp()
        reward = float(X.expected(lp, r))
        kl_ref = float(X.kl(lp, ref))
        per_prompt_kl = torch.where(p > 0, p * (lp - ref), torch.zeros_like(p)).sum(-1)
        metrics = {
            N.GOLD: reward,
            N.KL: kl_ref,
            "policy/entropy": float(X.entropy(lp)),
            "winrate/vs_ref": float(X.expected(lp, self.win_vs_ref)),
            "winrate/vs_chosen": float((p * self.win_vs_chosen).sum(-1)[self._has_eval_pairs].mean()),
            N.FRONTIER_GAP: self.frontier_reward_at(kl_ref) - reward,
            "exact/unseen_mass": float((p * (~self.seen_in_train)).sum(-1)[~torch.from_numpy(self.held_out_mask)].mean()),
            "exact/invalid_mass": float((1.0 - total.exp()).clamp_min(0).mean()),
            "policy/length": float(self.config.length),
        }
        if beta is not None:
            target = self.optimal_logp(beta)
            metrics[N.KL_TO_TARGET] = float(X.kl(lp, target))
            metrics["exact/target_kl"] = float(X.kl(target, ref))
            metrics["exact/target_reward"] = float(X.expected(target, r))
        per_prompt = {
            "prompts": list(self.prompt_strings),
            "reward": (p * r).sum(-1).tolist(),
            "kl": per_prompt_kl.tolist(),
            "logp": lp.float(),  # stored as float16 (stored_arrays); the reward table is saved once per sweep (artifacts())
            "winrate_vs_chosen": torch.where(self._has_eval_pairs, (p * self.win_vs_chosen).sum(-1),
                                             torch.full_like(per_prompt_kl, float("nan"))).tolist(),
        }
        return EvalResult(metrics=metrics, per_prompt=per_prompt)

    def stored_arrays(self, per_prompt: dict[str, Any]) -> dict[str, Any]:
        """The log-prob table is stored as uint8 codes of 1/16 nat (:func:`alignbench.io.compact_logp`, ~8 KB a run)."""
        return {**per_prompt, "logp": io.compact_logp(per_prompt["logp"])} if "logp" in per_prompt else per_prompt

    def tabular_problem(self) -> TabularProblem:
        """The task as tables for a method's population target (docs/targets.md)."""
        cfg = self.config
        return TabularProblem(self.ref_logp_table, self.reward_table, cfg.labels, cfg.label_noise,
                              lengths=torch.full((self.num_responses,), cfg.length, dtype=torch.long))

    def target_metrics(self, result: EvalResult, target: Target) -> dict[str, float]:
        """The run against its own target: KL(pi || target), and frontier_gap split into the target's own gap
        (objective_gap = F(KL(target || ref)) - E_target[r], F the gold frontier) and the rest (estimation_gap)."""
        lp = result.per_prompt["logp"].double()  # the evaluated table (float32 as saved), renormalised
        lp = lp - torch.logsumexp(lp, -1, keepdim=True)
        t = target.logp.double()
        t_kl = float(X.kl(t, self.ref_logp_table))
        objective = self.frontier_reward_at(t_kl) - float(X.expected(t, self.reward_table))
        return {N.KL_TO_OWN_TARGET: float(X.kl(lp, t)), N.OBJECTIVE_GAP: objective,
                N.ESTIMATION_GAP: result.metrics[N.FRONTIER_GAP] - objective,
                "exact/own_target_kl": t_kl, "exact/own_target_reward": float(X.expected(t, self.reward_table))}

    def evaluate_robustness(self, policy: nn.Module, *, temperatures=(), seed: int = 0,
                            final: EvalResult | None = None) -> dict[str, float]:
        """Exact metrics of pi_T at each temperature (:meth:`table_from_logits`; win rates against pi_ref at
        T = 1) from one forward pass, and, with ``held_out_prompts``, gold reward, KL and win rate against pi_ref
        on the prompts with training pairs (``@in``) and on the held-out ones (``@shift``)."""
        from alignbench import robustness as R

        logits = self.prefix_logits(policy)
        out: dict[str, float] = {}
        for t in temperatures:
            lp = self.table_from_logits(logits, float(t))
            per = self.per_prompt_metrics(lp - torch.logsumexp(lp, -1, keepdim=True))
            out.update({N.at_temperature(k, t): float(np.nanmean(v)) for k, v in per.items()})
        if self.config.held_out_prompts:
            lp = self.table_from_logits(logits)
            per = self.per_prompt_metrics(lp - torch.logsumexp(lp, -1, keepdim=True))
            out.update(R.split_means({k: per[k] for k in R.SPLIT_METRICS}, self.held_out_mask))
        return out

    @property
    def held_out_mask(self) -> np.ndarray:
        """(K,) bool: the prompts that get no training pairs (``held_out_prompts``, the last ones)."""
        return np.arange(self.num_prompts) >= self.num_prompts - self.config.held_out_prompts

    def per_prompt_metrics(self, lp: Tensor) -> dict[str, np.ndarray]:
        """(K,) gold reward, KL(pi || pi_ref), win rate against pi_ref and against the eval pairs' chosen responses
        (NaN on prompts without eval pairs) of each prompt, from a normalised (K, N) table, as :meth:`evaluate_table`."""
        p = lp.exp()
        kl = torch.where(p > 0, p * (lp - self.ref_logp_table), torch.zeros_like(p)).sum(-1)
        chosen = torch.where(self._has_eval_pairs, (p * self.win_vs_chosen).sum(-1), torch.full_like(kl, float("nan")))
        return {N.GOLD: (p * self.reward_table).sum(-1).numpy(), N.KL: kl.numpy(),
                N.WIN_VS_REF: (p * self.win_vs_ref).sum(-1).numpy(), N.WIN_VS_CHOSEN: chosen.numpy()}

    def head_to_head(self, logp_a: Tensor, logp_b: Tensor) -> float:
        """Exact Bradley-Terry win probability of policy table a against policy table b."""
        a = torch.as_tensor(logp_a).double()
        b = torch.as_tensor(logp_b).double()
        a = a - torch.logsumexp(a, -1, keepdim=True)
        b = b - torch.logsumexp(b, -1, keepdim=True)
        return float(X.bt_win_rate(a, b, self.reward_table))

    def artifacts(self) -> dict[str, Any]:
        """Saved once per sweep as DIR/task_exact.npz: the gold reward table (head-to-head win rates), the
        reference's normalised log-prob table ``ref_logp`` (K, N) and the N response strings, so that the
        report can show pi*_beta = pi_ref exp(r / beta) / Z next to each policy's most probable responses."""
        return {"reward": self.reward_table.float(), "prompts": list(self.prompt_strings),
                "ref_logp": self.ref_logp_table.float(), "responses": list(self.responses)}

    def notes(self) -> list[str]:
        if self.config.labels != "deterministic":
            return []
        return ["Deterministic preference labels (the larger gold reward always wins; the stress preset). With "
                "deterministic labels DPO's loss has no finite minimiser (it keeps pushing the margin), while IPO's "
                "squared loss has one (IPO paper, arXiv 2310.12036)."]

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "kl_estimator": "exact",
            "has_text": False,  # responses are token ids: the report shows its response table, not text
            "num_prompts": cfg.num_prompts,
            "vocab_size": cfg.vocab_size,
            "length": cfg.length,
            "num_responses": self.num_responses,
            "num_train_pairs": cfg.num_train_pairs,
            "num_eval_pairs": cfg.num_eval_pairs,
            "labels": cfg.labels,
            "label_noise": cfg.label_noise,
            "held_out_prompts": cfg.held_out_prompts,
            "temperature": 1.0,
            "reference_entropy": float(X.entropy(self.ref_logp_table)),
            "reference_invalid_mass": float((1.0 - torch.logsumexp(self.ref_logp_raw, -1).exp()).clamp_min(0).mean()),
            "reference_fit_kl": self.reference_fit_kl,
            "max_reward": float(self.reward_table.max(-1).values.mean()),
            "train_coverage": float(self.seen_in_train.double().mean()),
        }


# ------------------------------------------------------------------------------------------ building the reference


def _build_tokenizer(cfg: ExactConfig):
    from alignbench.tokenization import build_word_tokenizer

    words = [f"<p{k}>" for k in range(cfg.num_prompts)] + [f"t{v}" for v in range(cfg.vocab_size)]
    return build_word_tokenizer(words)


def _build_reference(cfg: ExactConfig, folder: Path) -> None:
    """Train the reference by MLE on base-distribution samples and save model + tokenizer in ``folder``."""
    from alignbench.models import tiny_gpt2, train_causal_lm

    t0 = time.perf_counter()
    tok = _build_tokenizer(cfg)
    K, V = cfg.num_prompts, cfg.vocab_size
    ids = tok.convert_tokens_to_ids([f"<p{k}>" for k in range(K)] + [f"t{v}" for v in range(V)])
    prompt_ids, token_ids = np.array(ids[:K]), np.array(ids[K:])
    base = BaseDistribution.random(cfg)
    k, y = base.sample(cfg.pretrain_samples, _rng(cfg.seed, _STREAM_SAMPLES))
    input_ids = torch.from_numpy(np.concatenate([prompt_ids[k][:, None], token_ids[y]], 1))
    loss_mask = torch.ones_like(input_ids)
    loss_mask[:, 0] = 0
    plain = tiny_gpt2(len(tok), n_positions=1 + cfg.length, n_layer=cfg.n_layer, n_embd=cfg.n_embd,
                      n_head=cfg.n_head, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      seed=cfg.seed)
    plain.config.allowed_token_ids = [int(i) for i in token_ids]
    model = _masked_gpt2_class()(plain.config)
    model.load_state_dict(plain.state_dict())
    losses = train_causal_lm(model, input_ids, loss_mask, steps=cfg.pretrain_steps,
                             batch_size=cfg.pretrain_batch_size, lr=cfg.pretrain_lr, seed=cfg.seed,
                             desc="exact: reference (MLE)")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    meta = {"reference_key": cfg.reference_key(), "final_loss": float(np.mean(losses[-20:])),
            "build_seconds": round(time.perf_counter() - t0, 2)}
    (folder / "exact_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _load_reference(folder: Path, device: torch.device) -> tuple[nn.Module, Any, dict[str, Any]]:
    from alignbench.models import freeze, load_tokenizer

    model = _masked_gpt2_class().from_pretrained(str(folder))
    if not getattr(model.config, "allowed_token_ids", None):
        raise ValueError(f"{folder}: config.allowed_token_ids is missing")
    tok = load_tokenizer(folder, what="exact tokenizer")
    meta = json.loads((folder / "exact_meta.json").read_text())
    return freeze(model.to(device)), tok, meta


def reference_folder(cfg: ExactConfig, cache_dir: Path) -> Path:
    return Path(cache_dir) / "exact" / stable_hash(cfg.reference_key(), n=12)


def get_reference(cfg: ExactConfig, cache_dir: Path, device: torch.device) -> tuple[nn.Module, Any, dict, Path, bool]:
    """(model, tokenizer, meta, folder, loaded_from_cache): the cached reference (model and tokenizer files
    verified by sha256, :mod:`alignbench.cache`), built once under a lock when missing or damaged."""
    from alignbench import cache

    folder = reference_folder(cfg, cache_dir)
    built = cache.entry(folder, lambda tmp: _build_reference(cfg, tmp), what="exact reference model")
    return (*_load_reference(folder, device), folder, not built)


# ------------------------------------------------------------------------------------------ the task


@register_task("exact")
class ExactTask(Task):
    description = "enumerable toy task (K prompts x V**L responses): every metric exact, with the optimal reward-KL frontier"
    config_cls = ExactConfig
    capabilities = (EnumerableEnv, TargetEvaluable)
    # budgets of the default sweep (3 seeds of every method within 15 minutes on 2 cores, docs/performance.md):
    # 150 offline steps of 64 pairs see the 2,048 training pairs ~4.7 times; evaluations every 25 steps resolve
    # the gold-reward peak for the checkpoint frontiers. Online methods: 100 iterations of 128 rollouts (one
    # gradient step each), PPO 40 iterations (8 minibatch steps each); their gold reward had flattened by then at
    # beta >= 0.1 in the previous round's single-seed runs (300 iterations; PPO 100).
    train_defaults = {"steps": 150, "batch_size": 64, "lr": 1e-3, "warmup_steps": 10, "eval_every": 25}
    method_defaults = {"ppo": {"iterations": 40}, "ppo-gt": {"iterations": 40}, "rloo": {"iterations": 100},
                       "rloo-gt": {"iterations": 100}, "grpo": {"iterations": 100}, "online-dpo": {"iterations": 100}}
    # four evaluations after step 0 for every method, as the convergence test needs (report/convergence.py)
    method_train_defaults = {"ppo": {"eval_every": 10}, "ppo-gt": {"eval_every": 10}}

    def setup(self, cache_dir: Path, device: torch.device) -> ExactEnv:
        cfg: ExactConfig = self.config
        model, tok, meta, folder, cached = get_reference(cfg, Path(cache_dir), torch.device(device))
        return ExactEnv(cfg, model, tok, folder, meta, cached)
