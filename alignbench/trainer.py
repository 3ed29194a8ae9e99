"""The one training loop for every offline method (DPO, IPO, KTO and any paired/unpaired plugin).

Per step: one forward of all completion columns of the batch through the policy (every distinct prefix
of the batch once, e.g. chosen and rejected behind one copy of their shared prompt, ``packing.py``, where
that saves enough positions; otherwise the columns concatenated on the batch axis); reference log-probs come from
a cache computed once per (task, data, reference model) and shared by every method and beta of a
sweep; the method turns the log-probs into a loss; AdamW with linear warmup, gradient clipping,
periodic evaluation (the task's exact or sampled metrics plus held-out preference metrics).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import cache
from .api import LogpBatch, OfflineMethod, RunContext, TaskEnv
from .config import stable_hash
from .data import FORMAT_COLUMNS, TokenizedColumns, format_dataset, tokenize, validate_rows
from .errors import AlignbenchError
from .logprobs import sequence_logps
from .distributed import Distributed
from .models import prepare_policy
from .optim import clip_gradients, make_optimizer, warmup_schedule
from .packing import CHECK_TOLERANCE, packed_forward, worth_packing
from .report import names as N

EVAL_CHUNK = 256


@dataclass
class PreparedSplit:
    """A split in one data format: token tensors plus cached reference log-probs per column."""

    tokens: TokenizedColumns
    ref_logps: dict[str, Tensor]  # col -> (N,) summed reference log-probs (CPU, float32); {} without reference
    lengths: dict[str, Tensor]  # col -> (N,) completion token counts

    def __len__(self) -> int:
        return len(self.tokens)


_PREPARED: dict[str, PreparedSplit] = cache.memo("prepared splits")  # every run of a sweep shares one copy


def _dataset_hash(ds) -> str:
    h = hashlib.sha256()
    for col in sorted(ds.column_names):
        h.update(col.encode())
        h.update(json.dumps(list(ds[col]), default=str).encode())
    return h.hexdigest()[:16]


def concat_forward(model: nn.Module, batch: TokenizedColumns) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Summed completion log-probs per column from ONE forward over all columns stacked on the batch axis.

    Columns are right-padded to a common length first. Returns (logps[col] (B,), lengths[col] (B,)).
    """
    cols = list(batch.input_ids)
    t = max(batch.input_ids[c].shape[1] for c in cols)

    def stack(d: dict[str, Tensor]) -> Tensor:  # (padding only the columns that need it)
        return torch.cat([d[c] if d[c].shape[1] == t else torch.nn.functional.pad(d[c], (0, t - d[c].shape[1]))
                          for c in cols])

    out = sequence_logps(model, stack(batch.input_ids), stack(batch.attention_mask), stack(batch.completion_mask))
    b = batch.input_ids[cols[0]].shape[0]
    return ({c: out.sum[i * b:(i + 1) * b] for i, c in enumerate(cols)},
            {c: out.count[i * b:(i + 1) * b] for i, c in enumerate(cols)})


class PolicyForward:
    """The policy's training forward: prefix-sharing packing (``packing.py``) where it pays, else ``concat_forward``.

    Packing applies when ``share_prompt`` is on, the model gives the same log-probs packed as unpacked on a
    probe batch (checked once, in eval mode, to ``CHECK_TOLERANCE``), and, per batch, when it saves enough
    positions (``worth_packing``): paired data shares each prompt between chosen and rejected, and any
    format shares the prompts and completion prefixes that several rows of a batch have in common.
    ``last_packed`` tells whether the last call packed.
    """

    def __init__(self, model: nn.Module, tokens: TokenizedColumns, cols: list[str], enabled: bool,
                 device: torch.device):
        self.cols, self.last_packed, self.reason = cols, False, ""
        self.pack = enabled
        if enabled:
            probe = tokens.batch(torch.arange(min(len(tokens), 8)), device).select(cols)
            self.pack, self.reason = _packing_agrees(model, probe, cols)

    def __call__(self, model: nn.Module, batch: TokenizedColumns) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        plan = worth_packing(batch, self.cols) if self.pack else None
        self.last_packed = plan is not None
        return packed_forward(model, batch, self.cols, plan) if self.last_packed else concat_forward(model, batch)


@torch.no_grad()
def _packing_agrees(model: nn.Module, probe: TokenizedColumns, cols: list[str]) -> tuple[bool, str]:
    """Whether ``model`` gives the packed forward the unpacked log-probs (it must honour position ids and 4D masks)."""
    was = model.training
    model.eval()  # no dropout: the two forwards must be comparable
    try:
        packed, _ = packed_forward(model, probe, cols)
        plain, _ = concat_forward(model, probe)
        # relative above 1 nat: long completions have large summed log-probs, and larger rounding with them
        diff = max(float(((packed[c].float() - plain[c].float()).abs() / plain[c].float().abs().clamp(min=1)).max())
                   for c in cols)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:  # e.g. no position_ids, no 4D masks
        return False, f"the model rejects packed inputs ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    finally:
        model.train(was)
    if not diff <= CHECK_TOLERANCE:
        return False, f"packed and unpacked log-probs differ by {diff:.3g} relative (> {CHECK_TOLERANCE:g})"
    return True, ""


@torch.no_grad()
def score_all(model: nn.Module, tokens: TokenizedColumns, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Summed log-probs of every row and column (chunked, no grad), on the CPU."""
    logps: dict[str, list[Tensor]] = {c: [] for c in tokens.input_ids}
    lens: dict[str, list[Tensor]] = {c: [] for c in tokens.input_ids}
    for start in range(0, len(tokens), EVAL_CHUNK):
        idx = torch.arange(start, min(start + EVAL_CHUNK, len(tokens)))
        lp, ln = concat_forward(model, tokens.batch(idx, device))
        for c in lp:
            logps[c].append(lp[c].float().cpu())
            lens[c].append(ln[c].float().cpu())
    return {c: torch.cat(v) for c, v in logps.items()}, {c: torch.cat(v) for c, v in lens.items()}


def prepare(env: TaskEnv, fmt: str, split: str, cache_dir: Path, device: torch.device, *, seed: int = 0,
            statistic_columns: "dict[str, str] | None" = None, reference: bool = True) -> PreparedSplit:
    """Tokenize a split in format ``fmt`` (plus a method's ``statistic_columns``, see ``data.format_dataset``)
    and attach reference log-probs, cached on disk.

    The cache key covers the task fingerprint (its config and reference weights), the data rows (every
    column) and the format, so every method and every beta of a sweep reuses the same reference log-probs.
    A corrupted cache file (sha256 mismatch) is recomputed, never used. ``reference=False`` (reference-free
    methods) runs no reference forward: ``ref_logps`` is ``{}`` (or the memoised copy's, which the trainer
    does not pass on) and the lengths come from the completion masks.
    """
    if env.preferences is None or split not in env.preferences:
        raise AlignbenchError(f"preferences: task '{env.task_name}' has no '{split}' preference data")
    ds = format_dataset(env.preferences[split], fmt, seed=seed, statistic_columns=dict(statistic_columns or {}))
    extra = tuple(statistic_columns or ())
    key = stable_hash({"task": env.fingerprint, "fmt": fmt, "split": split, "rows": _dataset_hash(ds)}, n=20)
    if key in _PREPARED:
        return _PREPARED[key]
    if not reference and f"{key}-noref" in _PREPARED:
        return _PREPARED[f"{key}-noref"]
    validate_rows(ds, fmt, split=split)
    tokens = tokenize(ds, fmt, env.tokenizer, extra_columns=extra)
    if not reference:
        lens = {c: m[:, 1:].sum(1).float() for c, m in tokens.completion_mask.items()}  # as sequence_logps counts
        _PREPARED[f"{key}-noref"] = PreparedSplit(tokens, {}, lens)
        return _PREPARED[f"{key}-noref"]
    path = Path(cache_dir) / "reflogps" / f"{key}.safetensors"

    def build() -> dict[str, Tensor]:
        logps, lens = score_all(env.reference.to(device), tokens, device)
        return {**{f"logp.{c}": v for c, v in logps.items()}, **{f"len.{c}": v for c, v in lens.items()}}

    table = cache.tensors(path, build, what="reference log-probs")
    logps = {c: table[f"logp.{c}"].cpu() for c in tokens.input_ids}
    lens = {c: table[f"len.{c}"].cpu() for c in tokens.input_ids}
    prepared = PreparedSplit(tokens, logps, lens)
    _PREPARED[key] = prepared
    return prepared


def clear_memo() -> None:
    _PREPARED.clear()


class BatchStream:
    """Endless shuffled mini-batches of row indices (each epoch a fresh seeded permutation).

    Its state (generator, current permutation, position) is saved in checkpoints so that a resumed
    run sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, min(batch_size, n)
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def __next__(self) -> Tensor:
        if self.pos + self.batch_size > self.n:  # drop the ragged tail; start a new epoch
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], int(state["pos"])


@torch.no_grad()
def preference_metrics(method: OfflineMethod, policy: nn.Module, data: PreparedSplit, pairs: PreparedSplit | None,
                       device: torch.device, prefix: str) -> dict[str, float]:
    """Held-out (or train) loss of the method on its own format, and implicit-reward diagnostics on pairs.

    ``{prefix}/loss``: the method's loss; ``{prefix}/implicit_acc``: share of pairs whose chosen log-ratio
    exceeds the rejected one; ``logratio/chosen`` and ``logratio/rejected``: mean log pi/pi_ref.
    ``pairs=None`` (a reference-free method's training data, which has no reference log-probs): the loss only.
    The method sees reference log-probs only if it declares ``needs_reference``.
    """
    was = policy.training
    policy.eval()
    lp, _ = score_all(policy, data.tokens, device)
    labels = data.tokens.labels
    reference = data.ref_logps if method.needs_reference else {}
    out = method.compute_loss(LogpBatch(policy=lp, reference=reference, lengths=data.lengths, labels=labels))
    if pairs is None:
        policy.train(was)
        return {f"{prefix}/loss": float(out.loss)}
    # a paired method's own data holds the same rows as the pairs (data_format "paired"): scored once
    plp = lp if method.data_format == "paired" else score_all(policy, pairs.tokens, device)[0]
    lr_c = plp["chosen"] - pairs.ref_logps["chosen"]
    lr_r = plp["rejected"] - pairs.ref_logps["rejected"]
    if was:
        policy.train()
    # ties (e.g. every pair at step 0, where all log-ratios are 0) count one half
    acc = ((lr_c > lr_r).float() + 0.5 * (lr_c == lr_r).float()).mean()
    res = {f"{prefix}/loss": float(out.loss), f"{prefix}/implicit_acc": float(acc)}
    if prefix == "eval":
        res.update({"logratio/chosen": float(lr_c.mean()), "logratio/rejected": float(lr_r.mean()),
                    "logratio/margin": float((lr_c - lr_r).mean())})
    return res


def train_offline(method: OfflineMethod, ctx: RunContext) -> None:
    """Train ``ctx``'s policy with ``method``'s loss; evaluate at step 0, every eval_every steps and at the end."""
    env, tc, device = ctx.env, ctx.train, ctx.device
    fmt, uses_ref, stats = method.data_format, method.needs_reference, dict(method.statistic_columns)
    # a reference-free method's data gets no reference forward; the held-out pairs always do (evaluation: the
    # log-ratio diagnostics), and the task's evaluate() measures KL(pi || pi_ref) for every method
    train = prepare(env, fmt, "train", ctx.cache_dir, device, statistic_columns=stats, reference=uses_ref)
    held_out = prepare(env, fmt, "eval", ctx.cache_dir, device, statistic_columns=stats, reference=uses_ref)
    pairs_eval = prepare(env, "paired", "eval", ctx.cache_dir, device)
    # a fixed subset of the training data for the train-side diagnostics (same size as held-out); the train-side
    # log-ratio accuracy needs the reference on training pairs, so reference-free methods report the loss only
    n_probe = min(len(train), len(held_out))
    train_probe = _subset(train, torch.arange(n_probe))
    paired_train = prepare(env, "paired", "train", ctx.cache_dir, device) if uses_ref else None
    pairs_train = None if paired_train is None else (  # a paired method's probe is already these pairs
        train_probe if fmt == "paired" else
        _subset(paired_train, torch.arange(min(n_probe, len(env.preferences["train"])))))

    # accelerate: DDP over processes under `accelerate launch`; the identity in a single process
    dist = Distributed.for_device(device)
    device = dist.device if dist.num_processes > 1 else device
    policy = prepare_policy(env.make_policy(), tc).to(device)
    optimizer = make_optimizer(policy.parameters(), tc.lr, tc.weight_decay)  # LoRA: the adapters only
    policy, optimizer = dist.prepare(policy, optimizer)
    trainable = [p for p in policy.parameters() if p.requires_grad]  # listed once: clipped every step
    scheduler = warmup_schedule(optimizer, tc.warmup_steps)
    stream = BatchStream(len(train), tc.batch_size, ctx.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    grad_cols = [c for c in FORMAT_COLUMNS[fmt] if c not in method.statistic_columns]
    forward = PolicyForward(dist.unwrap(policy), train.tokens, grad_cols, tc.share_prompt, device)
    if forward.reason:
        print(f"alignbench: {method.name}: prefix-sharing packing off: {forward.reason}", file=sys.stderr)
    ctx.compute.watch(dist.unwrap(policy))  # every training forward (packed or not) from here on is counted
    if uses_ref:  # cached once per sweep; each run is charged one pass over its training split, as if uncached
        ctx.compute.add(N.COMPUTE_REF_FWD, reference_positions(train.tokens))

    def evaluate(step: int, running: dict[str, list[float]]) -> None:
        if not dist.is_main:  # the other processes hold the same weights; one evaluates and writes
            running.clear()
            return
        model = dist.unwrap(policy)
        extra = {k: sum(v) / len(v) for k, v in running.items() if v}
        with ctx.compute.evaluating():
            extra.update(preference_metrics(method, model, held_out, pairs_eval, device, "eval"))
            extra.update(preference_metrics(method, model, train_probe, pairs_train, device, "train"))
        ctx.evaluate(model, step, extra)
        running.clear()

    running: dict[str, list[float]] = {}
    modules = {"policy": dist.unwrap(policy), "optimizer": optimizer, "scheduler": scheduler, "stream": stream}
    if method.state_dict():  # a method with running state (e.g. BCO's reward shift) is checkpointed with the rest
        modules["method"] = method
    start = ctx.resume(modules, running)  # 0 on a fresh run; else the step of the last checkpoint
    if start == 0:
        evaluate(0, running)  # the reference itself: where every reward-vs-KL path starts
    bar = ctx.progress(tc.steps, f"{method.name} {method.sweep_param}={method.sweep_value:g}")
    bar.update(start)
    for step in range(start + 1, tc.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(tc.grad_accum):
            idx = dist.shard(next(stream))  # every process draws the same batch and keeps its share
            batch = train.tokens.batch(idx, device)
            with autocast:
                # chosen and rejected (or completion) in ONE forward; batch-statistic columns (KTO's
                # mismatched pairs for z0) without gradient, gathered over processes
                logps, lengths = forward(policy, batch.select(grad_cols))
                if method.statistic_columns:
                    with torch.no_grad():
                        stat_lp, stat_len = concat_forward(policy, batch.select(method.statistic_columns))
            reference = {c: v[idx].to(device) for c, v in train.ref_logps.items()} if uses_ref else {}
            for c in method.statistic_columns:
                logps[c], lengths[c] = dist.gather(stat_lp[c]), dist.gather(stat_len[c])
                if uses_ref:
                    reference[c] = dist.gather(reference[c])
            out = method.compute_loss(LogpBatch(policy=logps, reference=reference, lengths=lengths,
                                                labels=batch.labels))
            ctx.check_finite(out.loss, "loss", step)
            dist.backward(out.loss / tc.grad_accum)
        grad_norm = clip_gradients(trainable, tc.max_grad_norm)
        ctx.check_finite(grad_norm, "gradient norm", step)
        optimizer.step()
        scheduler.step()

        running.setdefault("train/batch_loss", []).append(out.loss.item())
        running.setdefault("train/grad_norm", []).append(grad_norm.item())
        running.setdefault("train/packed", []).append(float(forward.last_packed))
        for k, v in out.metrics.items():
            running.setdefault(k, []).append(float(v))
        bar.update(1)
        if step % tc.eval_every == 0 or step == tc.steps:
            evaluate(step, running)
            if ctx.logger.rows:
                bar.set_postfix({k: f"{v:.3g}" for k, v in ctx.logger.rows[-1].items()
                                 if k in (N.GOLD, N.KL)})
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.steps and dist.is_main:
            ctx.save_checkpoint(step, modules, running)
        dist.wait()
    bar.close()


def reference_positions(tokens: TokenizedColumns) -> int:
    """Positions of one reference pass over a split as :func:`score_all` lays it out: rows x columns x the widest
    column (the columns are stacked on the batch axis and padded to a common length)."""
    widths = [v.shape[1] for v in tokens.input_ids.values()]
    return len(tokens) * len(widths) * max(widths, default=0)


def _subset(split: PreparedSplit, idx: Tensor) -> PreparedSplit:
    t = split.tokens
    tokens = TokenizedColumns({c: v[idx] for c, v in t.input_ids.items()},
                              {c: v[idx] for c, v in t.attention_mask.items()},
                              {c: v[idx] for c, v in t.completion_mask.items()},
                              t.labels[idx] if t.labels is not None else None)
    return PreparedSplit(tokens, {c: v[idx] for c, v in split.ref_logps.items()},
                         {c: v[idx] for c, v in split.lengths.items()})
