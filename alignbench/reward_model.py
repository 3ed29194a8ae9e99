"""The learned reward model of RLHF: a scalar head on the task's reference model, trained on the task's pairs.

The reward model (RM) is ``AutoModelForSequenceClassification`` (``num_labels=1``) initialised from the
task's reference model (``env.reference_dir``), trained with the Bradley-Terry loss

    L = -E log sigma(r(x, y_w) - r(x, y_l))                  (InstructGPT, arXiv 2203.02155, Eq. 1)

on ``env.preferences["train"]`` (the same pairs DPO sees) for a few epochs, keeping the checkpoint of
best held-out preference accuracy on ``env.preferences["eval"]`` (the DPO paper's practice, App. C.1).

Scores are read at the last real token of each sequence, located with the attention mask (not with
``pad_token_id``, which for GPT-2 tokenizers equals the end token that a completion may end with), and
position ids are computed from the attention mask, so left- and right-padded batches score the same.

:func:`get_reward_model` trains one RM per (task fingerprint, seed, RM config), stores it under
``cache_dir/reward_models/<key>/`` (``save_pretrained`` safetensors + ``metrics.json``, through the cache
service :mod:`alignbench.cache`: built once under a file lock, every file checked by sha256 before use and
retrained when damaged), loads it afterwards, and memoises it in-process so that every PPO and best-of-N
run of a sweep shares one copy.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import cache, io
from .config import check_int, check_nonnegative, check_positive, from_mapping, param, stable_hash, to_dict
from .errors import AlignbenchError
from .models import fast_kernels, quiet
from .optim import clip_gradients, make_optimizer, warmup_schedule

SCORE_CHUNK = 256
_MEMO: dict[tuple[str, str], "RewardModel"] = cache.memo("reward models by (key, device)")


@dataclass(frozen=True)
class RewardModelConfig:
    """Training settings of the reward model (a task may override them via ``env.reward_model_defaults``)."""

    epochs: int = param(5, "passes over the training pairs; the best held-out-accuracy checkpoint is kept (DPO paper: 3 "
                           "epochs for GPT-2 large; 5 measured better on the small embedded tasks)")
    batch_size: int = param(32, "preference pairs per optimizer step")
    lr: float = param(3e-4, "AdamW learning rate (3e-4 suits the tiny embedded models; ~1e-5 for GPT-2 large)")
    weight_decay: float = param(0.0, "AdamW weight decay")
    warmup_steps: int = param(10, "linear learning-rate warmup steps")
    max_grad_norm: float = param(1.0, "gradient clipping norm")
    evals_per_epoch: int = param(4, "held-out evaluations per epoch; the best-accuracy checkpoint is kept")
    gold_corr_samples: int = param(1024, "reference samples on held-out prompts for the RM-vs-gold Pearson correlation (0: skip)")

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_positive("max_grad_norm", self.max_grad_norm)
        check_int("evals_per_epoch", self.evals_per_epoch, 1)
        check_int("gold_corr_samples", self.gold_corr_samples, 0)


# ------------------------------------------------------------------------------------- scalar heads


def scalar_head(model: nn.Module) -> nn.Module:
    """The linear scalar head of a ``*ForSequenceClassification`` causal model (``score`` in transformers)."""
    head = getattr(model, "score", None)
    if head is None:
        raise AlignbenchError(f"reward model: {type(model).__name__} has no 'score' head (use a causal-LM architecture)")
    return head


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids 0, 1, ... counted over real tokens (left padding gets the positions generation used)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def token_values(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Scalar head applied at every position: (B, T). The value at position t summarises tokens 0..t.

    Used for the RM's score (at the last real token) and for PPO's token-level critic (at every token).
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=positions_from_mask(attention_mask), use_cache=False).last_hidden_state
    return scalar_head(model)(hidden).squeeze(-1).float()


def last_token_index(attention_mask: Tensor) -> Tensor:
    """(B,) index of the rightmost real token of each row (works for left and right padding)."""
    t = attention_mask.shape[1]
    return (t - 1) - attention_mask.flip(-1).long().argmax(-1)


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B,) scalar score of each whole sequence: the head's output at its last real token."""
    values = token_values(model, input_ids, attention_mask)
    return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)


def bt_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Bradley-Terry negative log-likelihood -mean log sigma(r_w - r_l) (InstructGPT Eq. 1)."""
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


@dataclass
class RewardModel:
    """A trained reward model.

    model:   the ``*ForSequenceClassification`` module (frozen, eval mode; copy it before training it,
             e.g. as PPO's critic).
    metrics: ``eval_accuracy``, ``eval_loss``, ``train_accuracy``, ``train_loss``, ``gold_corr`` (where the
             task has a gold reward), ``best_epoch``, sizes and training time.
    """

    model: nn.Module
    metrics: dict[str, Any]
    key: str
    path: Path
    config: RewardModelConfig = field(default_factory=RewardModelConfig)

    @torch.no_grad()
    def score(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,) reward of each (prompt + completion) sequence, no gradient; chunked for large batches."""
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, input_ids.shape[0], SCORE_CHUNK):
            ids = input_ids[s:s + SCORE_CHUNK].to(device)
            am = attention_mask[s:s + SCORE_CHUNK].to(device)
            out.append(sequence_scores(self.model, ids, am))
        return torch.cat(out) if out else torch.zeros(0, device=device)

    def summary(self) -> dict[str, Any]:
        """The reward model's facts every run that uses it adds to its summary (accuracy, loss, gold correlation)."""
        m = self.metrics
        out = {"rm_accuracy": m.get("eval_accuracy"), "rm_eval_loss": m.get("eval_loss")}
        if "gold_corr" in m:
            out["rm_gold_corr"] = m["gold_corr"]
        return out

    def to(self, device: torch.device) -> "RewardModel":
        self.model.to(device)
        return self


# ------------------------------------------------------------------------------------- building one


def scalar_model_from(path: str | Path, pad_token_id: int | None, *, zero_head: bool = False) -> nn.Module:
    """``AutoModelForSequenceClassification(num_labels=1)`` from a causal-LM folder, with pad_token_id set
    and the fused GELU kernel (:func:`alignbench.models.fast_kernels`).

    The backbone is loaded from ``path``; the scalar head is new (``zero_head``: initialised to 0, so the
    first outputs are 0, as for a fresh value head).
    """
    from transformers import AutoModelForSequenceClassification

    with quiet():
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
        except Exception as e:  # noqa: BLE001
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise AlignbenchError(f"reward model: cannot build a scalar head on '{path}' ({first})") from None
    fast_kernels(model)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if zero_head:
        with torch.no_grad():
            for p in scalar_head(model).parameters():
                p.zero_()
    return model


def _resolve_config(env, config: RewardModelConfig | dict | None) -> RewardModelConfig:
    if isinstance(config, RewardModelConfig):
        return config
    base = dict(getattr(env, "reward_model_defaults", None) or {})
    base.update(config or {})
    return from_mapping(RewardModelConfig, base, where="reward_model")


def check_preferences(env, who: str = "a learned reward model") -> None:
    """One-line AlignbenchError naming the field when the task has no preference pairs."""
    prefs = getattr(env, "preferences", None)
    if prefs is None:
        raise AlignbenchError(f"preferences: task '{getattr(env, 'task_name', '?')}' has no preference data "
                              f"(env.preferences is None), which {who} needs")
    for split in ("train", "eval"):
        if split not in prefs or prefs[split] is None or len(prefs[split]) == 0:
            raise AlignbenchError(f"preferences: task '{getattr(env, 'task_name', '?')}' has no '{split}' "
                                  f"preference pairs, which {who} needs")


def reward_model_key(env, seed: int, config: RewardModelConfig) -> str:
    return stable_hash({"task": env.fingerprint, "seed": int(seed), "rm": to_dict(config)}, n=16)


def get_reward_model(env, cache_dir: str | Path, seed: int, device: torch.device, show_progress: bool = True,
                     config: RewardModelConfig | dict | None = None) -> RewardModel:
    """The reward model for ``env`` and ``seed``: memoised in-process, else loaded from the disk cache,
    else trained (once, under a file lock) and cached. Does not disturb the global RNG state."""
    check_preferences(env)
    cfg = _resolve_config(env, config)
    key = reward_model_key(env, seed, cfg)
    memo_key = (key, str(device))
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    final = Path(cache_dir) / "reward_models" / key
    trained: list[RewardModel] = []

    def build(tmp: Path) -> None:
        trained.append(_train_and_save(env, tmp, seed, device, cfg, key, show_progress))

    if cache.entry(final, build, what="reward model"):
        rm = trained[0]
        rm.path = final
    else:
        rm = _load(final, device, key, cfg)
    _MEMO[memo_key] = rm
    return rm


def clear_memo() -> None:
    _MEMO.clear()


def _load(folder: Path, device: torch.device, key: str, cfg: RewardModelConfig) -> RewardModel:
    """A verified cache entry (:func:`alignbench.cache.entry` checked every file) -> RewardModel."""
    from transformers import AutoModelForSequenceClassification

    with quiet():
        model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    metrics = io.read_json(folder / "metrics.json")
    model.to(device)
    _freeze(model)
    metrics = {**metrics, "cached": True}
    return RewardModel(model=model, metrics=metrics, key=key, path=folder, config=cfg)


def _freeze(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _train_and_save(env, final: Path, seed: int, device: torch.device, cfg: RewardModelConfig, key: str,
                    show_progress: bool) -> RewardModel:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # training must not shift the caller's random stream
        torch.manual_seed(seed)
        model, metrics = train_reward_model(env, seed, device, cfg, show_progress=show_progress)
        if cfg.gold_corr_samples > 0 and getattr(env, "has_gold_reward", False):
            metrics["gold_corr"] = gold_correlation(model, env, cfg.gold_corr_samples, seed)
    metrics = {**metrics, "key": key, "config": to_dict(cfg), "fingerprint": env.fingerprint, "seed": int(seed)}
    with quiet():
        model.save_pretrained(final)
    io.write_json(final / "metrics.json", metrics)
    _freeze(model)
    return RewardModel(model=model, metrics={**metrics, "cached": False}, key=key, path=final, config=cfg)


# ------------------------------------------------------------------------------------- training


def _pair_batch(tokens, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor, int]:
    """chosen and rejected rows of ``idx`` stacked on the batch axis (right-padded to a common width)."""
    b = tokens.batch(idx, device)
    t = max(b.input_ids["chosen"].shape[1], b.input_ids["rejected"].shape[1])

    def stack(d):
        return torch.cat([torch.nn.functional.pad(d[c], (0, t - d[c].shape[1])) for c in ("chosen", "rejected")])

    return stack(b.input_ids), stack(b.attention_mask), len(idx)


@torch.no_grad()
def preference_eval(model: nn.Module, tokens, device: torch.device) -> dict[str, float]:
    """Held-out BT loss and accuracy (ties count one half) of ``model`` on tokenized pairs."""
    was = model.training
    model.eval()
    margins = []
    for s in range(0, len(tokens), SCORE_CHUNK):
        idx = torch.arange(s, min(s + SCORE_CHUNK, len(tokens)))
        ids, am, n = _pair_batch(tokens, idx, device)
        sc = sequence_scores(model, ids, am)
        margins.append((sc[:n] - sc[n:]).cpu())
    if was:
        model.train()
    m = torch.cat(margins)
    acc = ((m > 0).float() + 0.5 * (m == 0).float()).mean()
    return {"accuracy": float(acc), "loss": float(-torch.nn.functional.logsigmoid(m).mean())}


def train_reward_model(env, seed: int, device: torch.device, cfg: RewardModelConfig, *,
                       show_progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Bradley-Terry training on ``env.preferences['train']``; returns the best held-out-accuracy checkpoint."""
    from tqdm.auto import tqdm

    from .data import tokenize, validate_rows
    from .models import progress_disabled

    check_preferences(env)
    train_ds, eval_ds = env.preferences["train"], env.preferences["eval"]
    validate_rows(train_ds, "paired", split="train")
    validate_rows(eval_ds, "paired", split="eval")
    train_tok = tokenize(train_ds, "paired", env.tokenizer)
    eval_tok = tokenize(eval_ds, "paired", env.tokenizer)

    torch.manual_seed(seed)
    model = scalar_model_from(env.reference_dir, env.tokenizer.pad_token_id).to(device)
    model.train()
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    sched = warmup_schedule(opt, cfg.warmup_steps)
    n = len(train_tok)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    eval_at = {round(steps_per_epoch * (i + 1) / cfg.evals_per_epoch) for i in range(cfg.evals_per_epoch)}
    gen = torch.Generator().manual_seed(seed)

    t0 = time.perf_counter()
    start = preference_eval(model, eval_tok, device)
    best = {"eval_accuracy": start["accuracy"], "eval_loss": start["loss"], "best_epoch": 0.0}
    best_state = copy.deepcopy(model.state_dict())
    history = [{"epoch": 0.0, "eval_accuracy": start["accuracy"], "eval_loss": start["loss"]}]
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="reward model (BT)", leave=False,
               disable=progress_disabled(show_progress), dynamic_ncols=True)
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            ids, am, b = _pair_batch(train_tok, idx, device)
            sc = sequence_scores(model, ids, am)
            loss = bt_loss(sc[:b], sc[b:])
            if not torch.isfinite(loss):
                raise AlignbenchError(f"reward model: non-finite Bradley-Terry loss at epoch {epoch}, step {i}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            run_loss += float(loss.detach()) * b
            run_acc += float((sc[:b] > sc[b:]).float().sum().detach())
            run_n += b
            bar.update(1)
            if (i + 1) in eval_at:
                ev = preference_eval(model, eval_tok, device)
                ep = round(epoch + (i + 1) / steps_per_epoch, 3)
                history.append({"epoch": ep, "eval_accuracy": ev["accuracy"], "eval_loss": ev["loss"],
                                "train_loss": run_loss / max(run_n, 1), "train_accuracy": run_acc / max(run_n, 1)})
                # best accuracy; equal accuracy -> lower held-out loss
                if (ev["accuracy"], -ev["loss"]) > (best["eval_accuracy"], -best["eval_loss"]):
                    best = {"eval_accuracy": ev["accuracy"], "eval_loss": ev["loss"], "best_epoch": ep}
                    best_state = copy.deepcopy(model.state_dict())
                bar.set_postfix(acc=f"{ev['accuracy']:.3f}")
                run_loss, run_acc, run_n = 0.0, 0.0, 0
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    tr = preference_eval(model, train_tok, device)
    metrics = {**best, "train_accuracy": tr["accuracy"], "train_loss": tr["loss"],
               "n_train_pairs": n, "n_eval_pairs": len(eval_tok), "epochs": cfg.epochs,
               "train_seconds": round(time.perf_counter() - t0, 2), "history": history}
    return model, metrics


@torch.no_grad()
def gold_correlation(model: nn.Module, env, n_samples: int, seed: int) -> float:
    """Pearson correlation of RM score and gold reward on reference samples for held-out prompts."""
    from .generation import sample

    prompts = list(env.prompts["eval"])
    if not prompts or n_samples <= 0:
        return float("nan")
    reps = max(1, math.ceil(n_samples / len(prompts)))
    batch = (prompts * reps)[:max(n_samples, len(prompts))]
    device = next(model.parameters()).device
    ref = env.reference
    ref_device = next(ref.parameters()).device
    ref.to(device)
    try:
        s = sample(ref, env.tokenizer, batch, env.generation, generator_seed=seed + 1)
    finally:
        ref.to(ref_device)
    was = model.training
    model.eval()
    scores = torch.cat([sequence_scores(model, s.input_ids[i:i + SCORE_CHUNK].to(device),
                                        s.attention_mask[i:i + SCORE_CHUNK].to(device))
                        for i in range(0, len(batch), SCORE_CHUNK)]).double().cpu()
    if was:
        model.train()
    gold = env.gold_reward(batch, s.texts).double().cpu()
    return pearson(scores, gold)


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two 1-D tensors (nan when either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = a.norm() * b.norm()
    return float((a @ b) / den) if den > 0 else float("nan")


_SCORE_TABLES: dict[tuple[str, str], Tensor] = cache.memo("reward-model score tables")  # (RM key, task fingerprint) -> (K, N)


@torch.no_grad()
def rm_score_table(env, rm) -> Tensor:
    """(K, N) reward-model score of every (prompt, response) of an exact task (memoised per RM and task)."""
    key = (rm.key, env.fingerprint)
    if key not in _SCORE_TABLES:
        k, n = env.ref_logp_table.shape
        ids = torch.cat([env.prompt_ids.repeat_interleave(n)[:, None], env.response_ids.repeat(k, 1)], 1)
        _SCORE_TABLES[key] = rm.score(ids, torch.ones_like(ids)).double().cpu().view(k, n)
    return _SCORE_TABLES[key]
