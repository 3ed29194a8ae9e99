"""alignbench performance benchmark (``make bench``): prints a table; not part of ``make test``.

Five comparisons, each in this one process (docs/performance.md holds the measured table):

1. **Harness overhead.** alignbench's DPO step (the real :func:`alignbench.trainer.train_offline`) with the
   plain loop's forward layout (``share_prompt=false``: chosen and rejected concatenated on the batch axis) vs
   a plain PyTorch loop doing only forward, DPO loss, backward and AdamW step on pre-built batches: the same
   model, the same 32-pair batches in the same order, the same AdamW, the same steps, precomputed (cached)
   reference log-probs. The loss curves must agree exactly. alignbench's default step (prefix-sharing packing,
   ``alignbench/packing.py``, on the batches where it saves positions) is timed too; it does less work than
   the plain loop, so its loss curve agrees to float rounding instead.
2. **TRL.** alignbench's default run vs TRL's ``DPOTrainer`` on the same token ids, the same cached reference
   log-probs, the same batches in the same order (alignbench's order, fed to TRL through
   ``train_sampling_strategy="sequential"``), the same module and the same (fused) AdamW with a constant
   learning rate. The loss curves agree to ~1e-7 at first (TRL computes log-probs through its own code path:
   rounding only); training amplifies the rounding, so the whole curve is held to 0.1%.
3. **Sweep sharing.** A 5-beta DPO sweep on the exact task in one ``run_sweep`` (reference model and
   reference log-probs built once) vs the same 5 runs started one by one from scratch (fresh cache, cleared
   in-process memos: each rebuilds the reference and its log-probs); the same for best-of-N, whose runs
   share one learned reward model.
4. **Kernel choices** (part ``kernels``). The plain loop with transformers' stock GELU module and torch's
   for-loop AdamW vs the fused kernels alignbench uses everywhere (``models.fast_kernels``,
   ``optim.make_optimizer``): what those choices are worth on their own, whatever the harness.
5. **PPO.** Rollout tokens per second (``model.generate`` with the KV cache) and the share of each PPO
   iteration spent generating, by wrapping ``alignbench.generation.sample`` as PPO calls it.

Comparisons 1 and 2 run on two workloads with the peer setup's sizes (tiny GPT-2, 2 layers, d=64; 32 pairs per
step; 64 steps): ``exact`` (the exact task's pairs, 5-token sequences, its reference weights as a plain GPT-2)
and ``synthetic`` (random word sequences, 8-28 tokens). See :func:`make_bench_env`.

What is timed (1, 2): per optimizer step, the wall time between consecutive step-end marks. For
alignbench the mark is the progress bar's ``update(1)``, which ``train_offline`` calls after the
optimizer step and the per-step metric bookkeeping and before any evaluation (the benchmark's run context
hands it a timestamping bar instead of tqdm). For TRL it is a ``TrainerCallback.on_step_end``; for the plain
loop, after ``optimizer.step()``. Evaluation and logging are outside the timed steps (alignbench evaluates
only at step 0 and after the last step; TRL logs only after the last step). The first ``--warmup`` steps of
every run are excluded; the figure is the median ms/step of each run, then the median over ``--repeats``
runs (the three loops are interleaved in each repeat so that machine load affects them alike). Every loop
runs with the same number of torch threads: alignbench's own choice (``runner.configure_threads``: 1 on CPU)
unless ``--threads`` says otherwise.

Usage: ``python benchmarks/bench.py [--quick] [--only overhead,trl,kernels,sweep,ppo,sweep-default] [--threads N] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL_OVERHEAD = 1.10  # alignbench step / plain step, at most
GOAL_TRL_SPEEDUP = 2.0  # TRL step / alignbench step, at least (CPU)
# The loss curves must agree. Both loops compute the same loss from the same weights, so at step 1 they differ
# only by float rounding (other layouts, other code paths); training then amplifies those differences (Adam
# normalises gradients that are zero up to rounding, such as the attention key bias's), by an amount that depends
# on the batch order: float32 alone moves a 64-step run on the exact workload by up to ~1e-3 relative, in either
# layout (``rounding_check``). So the goals are: the first EARLY_STEPS steps agree to 1e-5 in float32 (the same
# computation), and the whole run agrees to 1e-9 in float64, where rounding is too small to be amplified that far
# (the same math). The float32 difference over the whole run is reported next to that rounding envelope.
EARLY_STEPS = 16
GOAL_TRL_LOSS_AGREEMENT = 1e-5  # max |loss_a - loss_b| over the first EARLY_STEPS steps (float32)
GOAL_FP64_LOSS_REL_AGREEMENT = 1e-9  # max |loss_packed - loss_plain| / loss_plain over all steps, both in float64

# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Sizes:
    """Benchmark sizes. The defaults are the peer setup (reference-notes.md): tiny GPT-2 2x64, 32 pairs, 64 steps."""

    pairs: int = 2048  # training pairs (64 steps x 32 pairs = one epoch: no pair repeats)
    eval_pairs: int = 64
    batch_size: int = 32
    steps: int = 64
    warmup: int = 4  # steps excluded from the timing of every run
    repeats: int = 9
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    words: int = 256  # word-level vocabulary of the synthetic data
    vocab_size: int | None = None  # the synthetic policy's vocabulary; None: the tokenizer's (gpu_check: GPT-2's 50257)
    n_positions: int | None = None  # the synthetic policy's context; None: the longest sequence (gpu_check: 1024)
    prompt_words: tuple[int, int] = (4, 12)  # inclusive range of prompt lengths (words = tokens)
    completion_words: tuple[int, int] = (4, 16)
    lr: float = 1e-3
    beta: float = 0.1
    seed: int = 0
    trl_defaults: bool = True  # also time TRL with its own defaults (gradient checkpointing on; 1 run)
    trl_stock: bool = True  # also time TRL on the stock gelu_new module (3 runs)
    step_data: tuple[str, ...] = ("exact", "synthetic")  # workloads of the step comparisons (see make_bench_env)
    threads: int | None = None  # torch CPU threads; None: alignbench's own choice (runner.configure_threads)
    rounding_orders: int = 4  # batch orders of the float64 / float32 rounding check (rounding_check)
    # sweep comparison (exact task)
    sweep_betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    sweep_steps: int | None = None  # None: the exact task's default (300)
    sweep_task_args: dict = field(default_factory=dict)
    bon_grid: tuple[int, ...] = (1, 4, 16, 64)
    # PPO
    ppo_iterations: int = 20
    ppo_method: str = "ppo"
    online_methods: tuple[str, ...] = ("ppo", "rloo", "grpo", "online-dpo")  # part "ppo": every online-loop method


# a tiny exact task (4 prompts x 64 responses, 1-layer reference; tests/conftest.py's TINY_EXACT)
TINY_TASK = {"num_prompts": 4, "vocab_size": 4, "length": 3, "n_layer": 1, "n_embd": 32, "n_head": 2,
             "pretrain_steps": 60, "num_train_pairs": 256, "num_eval_pairs": 64}

QUICK = Sizes(pairs=256, eval_pairs=16, batch_size=16, steps=12, warmup=2, repeats=1, trl_defaults=False, trl_stock=False,
              sweep_betas=(0.1, 1.0), sweep_steps=6, sweep_task_args=dict(TINY_TASK), bon_grid=(1, 4), ppo_iterations=3,
              rounding_orders=1)


# ------------------------------------------------------------------------------------------ facts


def machine_facts() -> dict[str, Any]:
    import importlib.metadata as md

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
    versions = {}
    for pkg in ("torch", "transformers", "trl", "datasets", "accelerate", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_gib, 1), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
            "loadavg": load_average()}


def apply_threads(sizes: Sizes) -> int:
    """Set torch's CPU threads for the next part (``run_sweep`` sets its own, so this is re-applied per part)."""
    if sizes.threads is not None:
        torch.set_num_threads(sizes.threads)
    else:
        try:
            from alignbench.runner import configure_threads
        except ImportError:  # an older harness without it: torch's default
            pass
        else:
            configure_threads(torch.device("cpu"))
    return torch.get_num_threads()


def load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return (float("nan"),) * 3  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ the synthetic preference task


def synthetic_preferences(n: int, sizes: Sizes, seed: int):
    """Random word sequences: prompts and completions of varying lengths; 'chosen' draws from the low word ids."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    w = sizes.words

    def words(lo: int, hi: int, vocab_lo: int, vocab_hi: int) -> str:
        k = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return " ".join(f"w{int(i)}" for i in torch.randint(vocab_lo, vocab_hi, (k,), generator=g))

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        rows["prompt"].append(words(*sizes.prompt_words, 0, w))
        rows["chosen"].append(words(*sizes.completion_words, 0, w // 2))
        rows["rejected"].append(words(*sizes.completion_words, w // 4, w))
    return Dataset.from_dict(rows)


def exact_env(sizes: Sizes, cache: Path, device: torch.device = torch.device("cpu")):
    """The exact task (its default config, or ``sizes.sweep_task_args``), built or loaded from ``cache``."""
    from alignbench.config import from_mapping
    from alignbench.registry import get_task

    task_cls = get_task("exact")
    task = task_cls(from_mapping(task_cls.config_cls, dict(sizes.sweep_task_args)))
    return task.setup(cache, device)


def make_bench_env(sizes: Sizes, data: str = "synthetic", tmp: Path | None = None):
    """A minimal TaskEnv for the step comparisons: tokenizer, a frozen plain GPT-2 reference, pairs, a free evaluate().

    ``data="synthetic"``: random word sequences (prompts ``sizes.prompt_words``, completions ``sizes.completion_words``
    words long), a word-level tokenizer and a randomly initialised tiny GPT-2 (``sizes.n_layer`` x ``sizes.n_embd``).
    ``data="exact"``: the exact task's training pairs (1-token prompts, L-token completions), tokenizer and reference
    weights, loaded as a plain ``GPT2LMHeadModel`` (TRL's fused LM head reads ``lm_head.weight`` directly and would
    bypass the task's response mask, so all three loops use the unmasked model).
    """
    from alignbench.api import EvalResult, GenerationSpec, TaskEnv
    from alignbench.config import stable_hash
    from alignbench.models import freeze, tiny_gpt2, weights_fingerprint
    from alignbench.tokenization import build_word_tokenizer

    if data == "synthetic":
        tok = build_word_tokenizer([f"w{i}" for i in range(sizes.words)])
        max_len = sizes.prompt_words[1] + sizes.completion_words[1]
        reference = freeze(tiny_gpt2(sizes.vocab_size or len(tok), n_positions=sizes.n_positions or max_len,
                                     n_layer=sizes.n_layer, n_embd=sizes.n_embd,
                                     n_head=sizes.n_head, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id, seed=sizes.seed))
        prefs = {"train": synthetic_preferences(sizes.pairs, sizes, sizes.seed),
                 "eval": synthetic_preferences(sizes.eval_pairs, sizes, sizes.seed + 1)}
    elif data == "exact":
        from transformers import GPT2LMHeadModel

        ex = exact_env(sizes, Path(tmp or tempfile.mkdtemp()) / "exact-cache")
        tok = ex.tokenizer
        reference = freeze(GPT2LMHeadModel.from_pretrained(str(ex.reference_dir)))
        train, held = ex.preferences["train"], ex.preferences["eval"]
        prefs = {"train": train.select(range(min(sizes.pairs, len(train)))),
                 "eval": held.select(range(min(sizes.eval_pairs, len(held))))}
    else:
        raise ValueError(f"data: unknown workload {data!r} (synthetic, exact)")

    class BenchEnv(TaskEnv):
        task_name = f"bench-{data}"
        has_gold_reward = False

        def __init__(self):
            self.tokenizer = tok
            self.reference = reference
            self.reference_dir = Path(".")
            self.preferences = prefs
            self.prompts = {s: list(d["prompt"]) for s, d in prefs.items()}
            self.generation = GenerationSpec(max_new_tokens=16, eos_token_id=tok.eos_token_id)
            self.fingerprint = stable_hash({"bench": data, "sizes": str(sizes),
                                            "ref": weights_fingerprint(reference)}, n=16)

        def gold_reward(self, prompts, completions):
            return torch.zeros(len(prompts))

        def evaluate(self, policy, *, beta=None, seed=0):
            return EvalResult(metrics={})

    return BenchEnv()


# ------------------------------------------------------------------------------------------ step timing


class StepClock:
    """Stands in for the progress bar of train_offline / PPO: ``update()`` stamps the time (one mark per step)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def update(self, n: int = 1) -> None:
        self.marks.append(time.perf_counter())

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


@dataclass
class LoopResult:
    name: str
    step_s: list[float]  # wall seconds of each optimizer step, in order (warm-up included)
    losses: list[float]  # loss of each step
    total_s: float = float("nan")  # whole timed loop (all steps, warm-up included)
    extra: dict[str, Any] = field(default_factory=dict)

    def median_ms(self, warmup: int) -> float:
        return 1000 * statistics.median(self.step_s[warmup:])


def make_timed_context(env, method, train, tmp: Path, seed: int, device: torch.device = torch.device("cpu")):
    """A RunContext whose progress bar is a StepClock and whose check_finite records the loss of each step."""
    from alignbench.runner import MetricsLogger, RunContext, RunSpec

    class TimedContext(RunContext):
        def progress(self, total, desc):
            return self.clock

        def check_finite(self, value, what, step):
            if what == "loss":
                self.losses.append(value.detach())
            super().check_finite(value, what, step)

    spec = RunSpec(task=env.task_name, method=method.name, seed=seed, method_config=method.config,
                   task_config=None, train=train, run_id="bench")
    run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="run-"))
    ctx = TimedContext(spec=spec, run_dir=run_dir, env=env, method=method, device=device,
                       cache_dir=tmp / "cache", logger=MetricsLogger(run_dir / "metrics.jsonl"), show_progress=False)
    ctx.clock = StepClock()
    ctx.losses = []
    return ctx


def train_config(sizes: Sizes, share_prompt: bool = True, precision: str = "fp32"):
    from alignbench.config import TrainConfig

    # warmup 0 (constant lr, as in the other loops); max_grad_norm so large that clipping multiplies by exactly 1
    # (the norm is still computed: it is part of alignbench's step); evaluation only at step 0 and at the end.
    return TrainConfig(steps=sizes.steps, batch_size=sizes.batch_size, lr=sizes.lr, warmup_steps=0,
                       weight_decay=0.0, max_grad_norm=1e9, eval_every=sizes.steps, checkpoint_every=0,
                       share_prompt=share_prompt, precision=precision)


def dpo_method(beta: float):
    from alignbench.registry import get_method

    cls = get_method("dpo")
    return cls(cls.config_cls(beta=beta))


def fresh_policy(env) -> torch.nn.Module:
    policy = copy.deepcopy(env.reference)
    policy.train()
    for p in policy.parameters():
        p.requires_grad_(True)
    return policy


def run_alignbench(env, sizes: Sizes, tmp: Path, *, share_prompt: bool = True, precision: str = "fp32",
                   device: torch.device = torch.device("cpu")) -> LoopResult:
    """The real train_offline, timed per step through its progress-bar hook.

    ``share_prompt=False``: the plain loop's layout (chosen and rejected concatenated on the batch axis).
    ``extra["packed_share"]``: the share of steps that ran packed (``train/packed`` in the run's metrics).
    """
    from alignbench.runner import seed_everything
    from alignbench.trainer import train_offline

    method = dpo_method(sizes.beta)
    ctx = make_timed_context(env, method, train_config(sizes, share_prompt, precision), tmp, sizes.seed, device)
    seed_everything(sizes.seed)
    t0 = time.perf_counter()
    train_offline(method, ctx)
    wall = time.perf_counter() - t0
    steps = ctx.clock.step_seconds()
    return LoopResult("alignbench" if share_prompt else "alignbench (unpacked)", steps,
                      [float(x) for x in ctx.losses], total_s=sum(steps),
                      extra={"wall_with_setup_and_eval_s": wall,
                             "packed_share": float(ctx.logger.rows[-1].get("train/packed", 0.0))})


def alignbench_batches(env, sizes: Sizes, tmp: Path, device: torch.device = torch.device("cpu")):
    """The batches train_offline sees, in its order, as the tensors its one concatenated forward gets.

    Returns (train PreparedSplit, [(idx, input_ids, attention_mask, completion_mask, ref_chosen, ref_rejected)]), on the
    CPU; ``device`` computes the reference log-probs.
    """
    from alignbench.trainer import BatchStream, prepare

    train = prepare(env, "paired", "train", tmp / "cache", device)
    stream = BatchStream(len(train), sizes.batch_size, sizes.seed)
    out = []
    for _ in range(sizes.steps):
        idx = next(stream)
        b = train.tokens.batch(idx, torch.device("cpu"))
        t = max(v.shape[1] for v in b.input_ids.values())

        def stack(d):
            return torch.cat([F.pad(d[c], (0, t - d[c].shape[1])) for c in ("chosen", "rejected")])

        out.append((idx, stack(b.input_ids), stack(b.attention_mask), stack(b.completion_mask),
                    train.ref_logps["chosen"][idx], train.ref_logps["rejected"][idx]))
    return train, out


def run_plain(env, batches, sizes: Sizes, *, stock: bool = False, dtype: torch.dtype = torch.float32,
              packed_from=None) -> LoopResult:
    """Forward, DPO loss, backward, AdamW step; nothing else (batches pre-built, no clipping, no bookkeeping).

    ``stock``: transformers' default GELU module (gelu_new) and torch's default (for-loop) AdamW instead of
    alignbench's fused kernels (part ``kernels``: what alignbench's kernel choices are worth on their own).
    ``dtype``: the model's (and the loss's) float type. ``packed_from``: the train split's TokenizedColumns; the
    forward is then alignbench's packed one (``packing.packed_forward``) instead of the inline concatenated one
    (the float64 equivalence check).
    """
    from alignbench.optim import make_optimizer
    from alignbench.packing import packed_forward

    torch.manual_seed(sizes.seed)
    model = (stock_kernels(fresh_policy(env)) if stock else fresh_policy(env)).to(dtype)
    # the same (fused) AdamW as alignbench and TRL's default
    opt = torch.optim.AdamW(model.parameters(), lr=sizes.lr) if stock else make_optimizer(model.parameters(), sizes.lr)
    beta = sizes.beta
    losses, marks = [], []
    marks.append(time.perf_counter())
    for idx, ids, am, cm, ref_c, ref_r in batches:
        opt.zero_grad(set_to_none=True)
        if packed_from is not None:
            lp, _ = packed_forward(model, packed_from.batch(idx, torch.device("cpu")), ["chosen", "rejected"])
            pc, pr = lp["chosen"], lp["rejected"]
        else:
            logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits
            logp = torch.gather(logits[:, :-1].log_softmax(-1), 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            pc, pr = (logp * cm[:, 1:].to(logp.dtype)).sum(-1).chunk(2)
        loss = -F.logsigmoid(beta * ((pc - ref_c.to(dtype)) - (pr - ref_r.to(dtype)))).mean()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        marks.append(time.perf_counter())
    steps = [b - a for a, b in zip(marks, marks[1:])]
    return LoopResult("plain", steps, [float(x) for x in losses], total_s=sum(steps))


def rounding_check(env, train, batches, sizes: Sizes, orders: int = 4) -> dict[str, Any]:
    """Is the packed forward the same computation as the concatenated one over a whole run, and how far does float32
    rounding alone move a run? For the bench's batch order and ``orders - 1`` seeded shuffles of it: the plain loop
    and the packed loop in float64 (their max relative loss difference over all steps: the same math gives ~1e-12),
    and each in float32 against the float64 plain loop (rounding, amplified by training)."""
    g = torch.Generator().manual_seed(sizes.seed)
    rows = []
    for k in range(orders):
        order = batches if k == 0 else [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        truth = run_plain(env, order, sizes, dtype=torch.float64).losses
        rows.append({"packed64": max_rel_diff(truth, run_plain(env, order, sizes, dtype=torch.float64,
                                                                  packed_from=train.tokens).losses),
                     "plain32": max_rel_diff(truth, run_plain(env, order, sizes).losses),
                     "packed32": max_rel_diff(truth, run_plain(env, order, sizes, packed_from=train.tokens).losses)})
    return {"orders": rows, **{k: max(r[k] for r in rows) for k in rows[0]}}


def trl_dataset(train, batches):
    """TRL rows in alignbench's batch order: the same token ids (unpadded) and the same cached reference log-probs."""
    from datasets import Dataset

    tok = train.tokens
    rows = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "ref_chosen_logps": [], "ref_rejected_logps": []}
    for idx, *_ in batches:
        for i in idx.tolist():
            for col in ("chosen", "rejected"):
                am, cm, ids = tok.attention_mask[col][i], tok.completion_mask[col][i], tok.input_ids[col][i]
                n, p = int(am.sum()), int((am - cm).sum())
                if col == "chosen":
                    rows["prompt_ids"].append(ids[:p].tolist())
                rows[f"{col}_ids"].append(ids[p:n].tolist())
                rows[f"ref_{col}_logps"].append(float(train.ref_logps[col][i]))
    return Dataset.from_dict(rows)


def stock_kernels(model: torch.nn.Module) -> torch.nn.Module:
    """Undo alignbench's fused GELU (models.fast_kernels): GPT-2 as transformers builds it by default (gelu_new)."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, GELUTanh):
                setattr(module, name, NewGELUActivation())
    model.config.activation_function = "gelu_new"
    return model


def run_trl(env, dataset, sizes: Sizes, tmp: Path, *, gradient_checkpointing: bool = False,
            stock: bool = False, bf16: bool = False, device: torch.device = torch.device("cpu")) -> LoopResult:
    """TRL 1.16 DPOTrainer on pre-tokenized rows with precomputed reference log-probs, sequential sampler.

    ``stock``: the policy with transformers' default GELU module (gelu_new) instead of alignbench's fused one,
    i.e. the model as a TRL user loads the same checkpoint (for information; the goal compares the same module).
    ``bf16``: TRL's mixed precision (``DPOConfig(bf16=True)``); on CUDA each step ends with a synchronisation, as
    alignbench's does (its per-step ``.item()``).
    """
    from alignbench.optim import make_optimizer
    import warnings

    import trl
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    class Trainer(trl.DPOTrainer):
        # the rows are already tokenized exactly as alignbench tokenized them, and carry alignbench's cached
        # reference log-probs: skip TRL's own tokenization and reference pass (setup, outside the timed steps)
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.bench_losses.append(loss.detach())
            return loss

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, args, state, control, **kw):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    torch.manual_seed(sizes.seed)
    model = stock_kernels(fresh_policy(env)) if stock else fresh_policy(env)
    opt = make_optimizer(model.parameters(), sizes.lr)  # fused AdamW: alignbench's, and TRL's own default
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    out_dir = tempfile.mkdtemp(dir=tmp, prefix="trl-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # the same AdamW and constant lr as alignbench (passed below as `optimizers`), no clipping in effect,
        # alignbench's batch order (sequential sampler over rows already in that order), logging only after the
        # last step, no checkpoints, no evaluation; activation (gradient) checkpointing off unless asked for
        args = trl.DPOConfig(
            output_dir=out_dir, report_to=[], bf16=bf16, use_cpu=device.type == "cpu", seed=sizes.seed,
            beta=sizes.beta, loss_type=["sigmoid"], precompute_ref_log_probs=True,
            per_device_train_batch_size=sizes.batch_size, max_steps=sizes.steps, learning_rate=sizes.lr,
            max_grad_norm=1e9, train_sampling_strategy="sequential", activation_checkpointing=gradient_checkpointing,
            logging_steps=sizes.steps, save_strategy="no", eval_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=False,
        )
    clock = Clock()
    with warnings.catch_warnings():  # TRL/transformers deprecation notices, irrelevant here
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        t0 = time.perf_counter()
        trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=env.tokenizer,
                          optimizers=(opt, sched), callbacks=[clock])
        trainer.bench_losses = []
        trainer.remove_callback(PrinterCallback)  # no log lines on stdout (TRL logs after the last step anyway)
        t1 = time.perf_counter()
        trainer.train()
        t2 = time.perf_counter()
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    name = ("trl (gradient checkpointing, TRL default)" if gradient_checkpointing
            else "trl (stock gelu_new module)" if stock else "trl")
    res = LoopResult(name, steps, [float(x) for x in trainer.bench_losses], total_s=sum(steps),
                     extra={"construct_s": t1 - t0, "train_call_s": t2 - t1})
    shutil.rmtree(out_dir, ignore_errors=True)
    return res


def bench_kernels(sizes: Sizes, tmp: Path, *, data: str = "synthetic",
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """The plain loop with stock kernels (gelu_new module, for-loop AdamW) vs alignbench's fused ones, interleaved."""
    from alignbench.trainer import clear_memo

    clear_memo()
    env = make_bench_env(sizes, data, tmp)
    _, batches = alignbench_batches(env, sizes, tmp)
    runs: dict[str, list[LoopResult]] = {"stock": [], "fused": []}
    for r in range(sizes.repeats):
        for name, stock in (("stock", True), ("fused", False)):
            res = run_plain(env, batches, sizes, stock=stock)
            runs[name].append(res)
            log(f"  repeat {r + 1}/{sizes.repeats} {name:>6} kernels: {res.median_ms(sizes.warmup):7.2f} ms/step")
    med = {k: statistics.median(x.median_ms(sizes.warmup) for x in v) for k, v in runs.items()}
    per = [a.median_ms(sizes.warmup) / b.median_ms(sizes.warmup) for a, b in zip(runs["stock"], runs["fused"])]
    return {"data": data, "stock_ms": med["stock"], "fused_ms": med["fused"], "speedup": med["stock"] / med["fused"],
            "speedup_per_repeat": per, "max_abs_loss_diff": max_abs_diff(runs["stock"][0].losses, runs["fused"][0].losses)}


def bench_steps(sizes: Sizes, tmp: Path, *, data: str = "synthetic", with_trl: bool = True,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Comparisons 1 and 2 on one workload: plain loop vs alignbench vs TRL, interleaved over repeats."""
    from alignbench.trainer import clear_memo

    clear_memo()
    env = make_bench_env(sizes, data, tmp)
    train, batches = alignbench_batches(env, sizes, tmp)  # also fills the reference log-prob cache (setup)
    ds = trl_dataset(train, batches) if with_trl else None
    lengths = [int(b[1].shape[1]) for b in batches]
    runs: dict[str, list[LoopResult]] = {}
    loads = [load_average()]
    for r in range(sizes.repeats):
        order = [("plain", lambda: run_plain(env, batches, sizes)),
                 ("unpacked", lambda: run_alignbench(env, sizes, tmp, share_prompt=False)),
                 ("alignbench", lambda: run_alignbench(env, sizes, tmp))]
        if with_trl:
            order.append(("trl", lambda: run_trl(env, ds, sizes, tmp)))
            if sizes.trl_defaults and r == 0:
                order.append(("trl_gc", lambda: run_trl(env, ds, sizes, tmp, gradient_checkpointing=True)))
            if sizes.trl_stock and r < 3:
                order.append(("trl_stock", lambda: run_trl(env, ds, sizes, tmp, stock=True)))
        for name, fn in order:
            res = fn()
            runs.setdefault(name, []).append(res)
            log(f"  repeat {r + 1}/{sizes.repeats} {res.name:>10}: {res.median_ms(sizes.warmup):7.2f} ms/step "
                f"(loop {res.total_s:.2f} s)")
        loads.append(load_average())
    w = sizes.warmup

    def summary(name: str) -> dict[str, Any]:
        meds = [x.median_ms(w) for x in runs[name]]
        every = sorted(1000 * t for x in runs[name] for t in x.step_s[w:])
        return {"median_ms_per_step": statistics.median(meds), "min_ms_per_step": min(meds),
                "max_ms_per_step": max(meds),
                # 10th percentile of every timed step of every repeat: interference from other processes only ever
                # adds time, so a low percentile is the steadier estimate of a loop's own cost on a shared machine
                "p10_ms_per_step": every[len(every) // 10],
                "loop_s": statistics.median(x.total_s for x in runs[name]),
                "per_repeat_ms": meds, "step_ms": [[1000 * t for t in x.step_s] for x in runs[name]],
                "losses": runs[name][0].losses,
                **{k: statistics.median(x.extra[k] for x in runs[name]) for k in runs[name][0].extra}}

    out: dict[str, Any] = {name: summary(name) for name in runs}
    a, u, p = out["alignbench"], out["unpacked"], out["plain"]
    # the harness overhead compares like with like: alignbench in the plain loop's layout
    out["overhead_ratio"] = u["median_ms_per_step"] / p["median_ms_per_step"]
    # robustness check: the ratio within each repeat (the loops of one repeat run back to back)
    out["overhead_ratio_per_repeat"] = [x / y for x, y in zip(u["per_repeat_ms"], p["per_repeat_ms"])]
    out["overhead_ratio_p10"] = u["p10_ms_per_step"] / p["p10_ms_per_step"]
    out["plain_vs_alignbench_max_abs_loss_diff"] = max_abs_diff(u["losses"], p["losses"])
    # alignbench's default step (packed where it pays) vs the plain loop: time, and the same curve to rounding
    out["packed_share"] = a["packed_share"]
    out["default_vs_plain_ratio"] = a["median_ms_per_step"] / p["median_ms_per_step"]
    out["default_vs_unpacked_speedup"] = u["median_ms_per_step"] / a["median_ms_per_step"]
    out["default_vs_plain_max_abs_loss_diff_early"] = max_abs_diff(a["losses"][:EARLY_STEPS], p["losses"][:EARLY_STEPS])
    out["default_vs_plain_max_rel_loss_diff"] = max_rel_diff(p["losses"], a["losses"])
    # the losses of every repeat agree (determinism), not only the first
    out["alignbench_repeat_max_abs_loss_diff"] = max(max_abs_diff(x.losses, runs[k][0].losses)
                                                     for k in ("alignbench", "unpacked") for x in runs[k])
    if with_trl:
        t = out["trl"]
        out["trl_speedup"] = t["median_ms_per_step"] / a["median_ms_per_step"]
        out["trl_speedup_per_repeat"] = [x / y for x, y in zip(t["per_repeat_ms"], a["per_repeat_ms"])]
        out["trl_speedup_p10"] = t["p10_ms_per_step"] / a["p10_ms_per_step"]
        out["trl_loop_speedup"] = t["loop_s"] / a["loop_s"]
        out["trl_vs_alignbench_max_abs_loss_diff"] = max_abs_diff(a["losses"], t["losses"])
        out["trl_vs_alignbench_max_abs_loss_diff_early"] = max_abs_diff(a["losses"][:EARLY_STEPS],
                                                                       t["losses"][:EARLY_STEPS])
        out["trl_vs_alignbench_max_rel_loss_diff"] = max_rel_diff(a["losses"], t["losses"])
        out["trl_speedup_unpacked"] = t["median_ms_per_step"] / u["median_ms_per_step"]
        for k in ("trl_gc", "trl_stock"):
            if k in out:
                out[f"{k}_speedup"] = out[k]["median_ms_per_step"] / a["median_ms_per_step"]
    out["data"] = data
    out["seq_len_per_step"] = {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}
    out["positions_per_step"] = packed_positions(train, batches)
    out["rounding"] = rounding_check(env, train, batches, sizes, orders=sizes.rounding_orders)
    out["loadavg"] = loads
    return out


def packed_positions(train, batches) -> dict[str, list[int]]:
    """Per step: the concatenated layout's positions, the prefix tree's nodes and the packed rows' slots (min, max)."""
    from alignbench.packing import plan_packing

    plans = [plan_packing(train.tokens.batch(b[0], torch.device("cpu")), ["chosen", "rejected"]) for b in batches]
    spans = {"concatenated": [b[1].numel() for b in batches], "nodes": [p.nodes for p in plans],
             "packed": [p.positions for p in plans]}
    return {k: [min(v), max(v)] for k, v in spans.items()}


def span(x: list[int]) -> str:
    return f"{x[0]:,}" if x[0] == x[1] else f"{x[0]:,}-{x[1]:,}"


def max_abs_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def max_rel_diff(a: list[float], b: list[float]) -> float:
    """max |a - b| / |a| (inf when the lengths differ)."""
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)), default=0.0)


# ------------------------------------------------------------------------------------------ sweep sharing


def clear_process_memos() -> None:
    """Forget everything a sweep memoises in-process (what a fresh process would not have)."""
    from alignbench import cache

    cache.clear()


class Stopwatch:
    """Accumulate the wall time of calls to a patched module attribute."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        fn = getattr(owner, attr)
        sw = self

        def wrapped(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sw.seconds[label] = sw.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, wrapped)
        self._undo.append(lambda: setattr(owner, attr, fn))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def _sweep(method: str, values: tuple, sizes: Sizes, out: Path, cache: Path) -> tuple[float, dict[str, float]]:
    from alignbench import reward_model, trainer
    from alignbench.registry import get_task
    from alignbench.sweep import SweepConfig, run_sweep

    grid = {method: list(values)}
    cfg = SweepConfig(tasks=("exact",), methods=(method,), grid=grid, seeds=(0,), steps=sizes.sweep_steps,
                      out=str(out), device="cpu", cache_dir=str(cache), progress=False,
                      task_args={"exact": dict(sizes.sweep_task_args)} if sizes.sweep_task_args else {})
    sw = Stopwatch()
    sw.wrap(get_task("exact"), "setup", "task setup (reference model)")
    sw.wrap(trainer, "prepare", "reference log-probs (prepare)")
    sw.wrap(reward_model, "get_reward_model", "reward model")
    t0 = time.perf_counter()
    try:
        summary = run_sweep(cfg)
    finally:
        sw.restore()
    wall = time.perf_counter() - t0
    if not (summary["status"] == "ok").all():
        bad = summary[summary["status"] != "ok"][["run_id", "reason"]].to_string()
        raise RuntimeError(f"benchmark sweep had failed runs:\n{bad}")
    return wall, sw.seconds


def bench_sweep(method: str, values: tuple, sizes: Sizes, tmp: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One sweep (cold cache, then warm cache) vs the same runs one by one from scratch."""
    root = Path(tempfile.mkdtemp(dir=tmp, prefix=f"sweep-{method}-"))
    # untimed warm-up on a tiny task: first-use costs (imports, matplotlib's font cache, report code) must not land
    # on whichever of the three timed scenarios happens to run first
    clear_process_memos()
    _sweep(method, values[:1], replace(sizes, sweep_steps=1, sweep_task_args=dict(TINY_TASK)), root / "out-warmup",
           root / "cache-warmup")
    load0 = load_average()
    clear_process_memos()
    cold, cold_parts = _sweep(method, values, sizes, root / "out-shared-cold", root / "cache-shared")
    log(f"  {method}: one sweep of {len(values)}, cold cache: {cold:.1f} s {fmt_parts(cold_parts)}")
    clear_process_memos()
    warm, warm_parts = _sweep(method, values, sizes, root / "out-shared-warm", root / "cache-shared")
    log(f"  {method}: one sweep of {len(values)}, warm cache: {warm:.1f} s {fmt_parts(warm_parts)}")
    separate, sep_parts = 0.0, {}
    for i, v in enumerate(values):
        clear_process_memos()
        s, parts = _sweep(method, (v,), sizes, root / f"out-sep-{i}", root / f"cache-sep-{i}")
        separate += s
        for k, x in parts.items():
            sep_parts[k] = sep_parts.get(k, 0.0) + x
    log(f"  {method}: {len(values)} runs one by one from scratch: {separate:.1f} s {fmt_parts(sep_parts)}")
    clear_process_memos()
    shutil.rmtree(root, ignore_errors=True)
    return {"method": method, "values": list(values), "shared_cold_s": cold, "shared_warm_s": warm,
            "separate_s": separate, "saving_cold": separate / cold, "saving_warm": separate / warm,
            "parts": {"shared_cold": cold_parts, "shared_warm": warm_parts, "separate": sep_parts},
            "loadavg": [load0, load_average()]}


def bench_sweep_default(config: str, tmp: Path, quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The committed default sweep as ``make sweep`` runs it: ``alignbench sweep --config CONFIG`` in a fresh
    process, cold cache, into a temporary folder, with the default worker count (one per core). ``quick``: the
    same command path on a two-step exact-task DPO run (checks the part, numbers meaningless)."""
    import subprocess

    out, cache = tmp / "sweep-default-out", tmp / "sweep-default-cache"
    cmd = [sys.executable, "-m", "alignbench", "sweep", "--config", config, "--out", str(out), "--cache-dir", str(cache),
           "--no-progress"]
    if quick:
        cmd += ["--task", "exact", "--methods", "dpo", "--betas", "0.1", "--seeds", "0", "--steps", "2",
                *[f"--task-arg=exact.{k}={v}" for k, v in TINY_TASK.items()]]
    env = {k: v for k, v in os.environ.items() if k != "ALIGNBENCH_WORKERS"}
    load0 = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark sweep failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    import pandas as pd

    meta = json.loads((out / "sweep.json").read_text())
    summary = pd.read_csv(out / "summary.csv")
    res = {"config": config, "quick": quick, "wall_s": wall, "runs": int(len(summary)),
           "ok": int((summary["status"] == "ok").sum()), "workers": meta.get("workers"),
           "sum_run_s": float(summary["wall_s"].sum()), "tasks": sorted(summary["task"].unique().tolist()),
           "methods": int(summary["method"].nunique()), "seeds": sorted(int(x) for x in summary["seed"].unique()),
           "loadavg": [load0, load_average()]}
    log(f"  {config}: {res['ok']}/{res['runs']} runs ok in {wall:.0f} s with {res['workers']} workers "
        f"(sum of run times {res['sum_run_s']:.0f} s)")
    return res


def fmt_parts(parts: dict[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + ")" if parts else ""


# ------------------------------------------------------------------------------------------ PPO


def bench_ppo(sizes: Sizes, tmp: Path, log: Callable[[str], None] = print, method_name: str | None = None,
              device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """Iterations of an online-loop method (default ``sizes.ppo_method``) on the exact task with its default
    config: generation time (wrapped sample) vs the whole iteration."""
    import alignbench.online as ppo_mod  # the shared online loop calls sample()
    from alignbench.config import from_mapping
    from alignbench.registry import get_method, get_task
    from alignbench.runner import seed_everything

    task_cls = get_task("exact")
    task = task_cls(from_mapping(task_cls.config_cls, dict(sizes.sweep_task_args)))
    env = exact_env(sizes, tmp / "exact-cache", device)  # the same cache as the exact workload of the step comparisons
    method_name = method_name or sizes.ppo_method
    method_cls = get_method(method_name)
    method = method_cls(method_cls.config_cls(iterations=sizes.ppo_iterations))
    train = task.train_config({"eval_every": sizes.ppo_iterations, "checkpoint_every": 0})
    ctx = make_timed_context(env, method, train, tmp, 0, device)
    if method.needs_reward_model:
        ctx.reward_model()  # trained (or loaded) before the timed iterations, as a sweep shares it
    calls: list[tuple[float, float, int]] = []  # (start time, seconds, completion tokens) of each sample() call
    real_sample = ppo_mod.sample

    def timed_sample(*a, **k):
        t0 = time.perf_counter()
        s = real_sample(*a, **k)
        calls.append((t0, time.perf_counter() - t0, int(s.completion_mask.sum())))
        return s

    load0 = load_average()
    ppo_mod.sample = timed_sample
    try:
        seed_everything(0)
        method.run(ctx)
    finally:
        ppo_mod.sample = real_sample
    # an iteration = the interval between two consecutive progress marks; its generation time = the sample()
    # calls that start inside that interval
    marks = ctx.clock.marks
    its = []
    for a, b in zip(marks, marks[1:]):
        inside = [(sec, tok) for t0, sec, tok in calls if a <= t0 < b]
        its.append((b - a, sum(x for x, _ in inside), sum(t for _, t in inside)))
    its = its[1:] if len(its) > 1 else its  # the first timed iteration warms up generate()'s caches
    res = {"method": method_name, "iterations": sizes.ppo_iterations, "timed_iterations": len(its),
           "rollout_batch": method.config.rollout_batch,
           "tokens_per_iteration": statistics.median(t for _, _, t in its),
           "tokens_per_s": statistics.median(t / g for _, g, t in its),
           "generate_share": statistics.median(g / it for it, g, _ in its),
           "s_per_iteration": statistics.median(it for it, _, _ in its),
           "generate_s_per_iteration": statistics.median(g for _, g, _ in its),
           "ppo_own_perf": {k: v for k, v in ctx.extra_summary.items() if k.startswith("perf/")},
           "loadavg": [load0, load_average()]}
    log(f"  {method_name}: {res['tokens_per_s']:.0f} rollout tokens/s, generation {100 * res['generate_share']:.1f}% "
        f"of {1000 * res['s_per_iteration']:.0f} ms/iteration")
    return res


# ------------------------------------------------------------------------------------------ the table


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def row(what: str, figure: str, goal: str = "", ok: bool | None = None) -> str:
    """One table row; ``ok`` None: no verdict (an informative row)."""
    return f"| {what} | {figure} | {goal} | {'' if ok is None else verdict(ok)} |"


def timing(x: dict[str, Any]) -> str:
    """A loop's per-step figure for the table: median, range over repeats, p10."""
    return (f"{x['median_ms_per_step']:.2f} ms/step (repeats {x['min_ms_per_step']:.2f}-"
            f"{x['max_ms_per_step']:.2f}; p10 {x['p10_ms_per_step']:.2f})")


def table(results: dict[str, Any], sizes: Sizes) -> str:
    rows = ["| comparison | figure | goal | met? |", "|---|---|---|---|"]
    for data, s in results.get("steps", {}).items():
        L = s["seq_len_per_step"]
        tag = f"[{data}: {L['min']}-{L['max']} tokens/sequence]"
        p, a, u = s["plain"], s["alignbench"], s["unpacked"]
        rows.append(f"| {tag} plain PyTorch loop (forward, loss, backward, fused AdamW) | {timing(p)} | | |")
        rows.append(f"| {tag} alignbench DPO step (`train_offline`), plain loop's layout (`share_prompt=false`) "
                    f"| {timing(u)} | | |")
        rows.append(row(f"{tag} harness overhead: alignbench (same layout) / plain",
                        f"{s['overhead_ratio']:.3f}x (p10 steps: {s['overhead_ratio_p10']:.3f}x)",
                        f"<= {GOAL_OVERHEAD:.2f}x", s['overhead_ratio'] <= GOAL_OVERHEAD))
        d = s["plain_vs_alignbench_max_abs_loss_diff"]
        rows.append(row(f"{tag} loss curves alignbench (same layout) vs plain, max abs diff over {sizes.steps} steps",
                        f"{d:.1e}", "identical (0)", d == 0.0))
        pos = s["positions_per_step"]
        rows.append(f"| {tag} alignbench DPO step, default (prefix-sharing packing on {100 * s['packed_share']:.0f}% "
                    f"of steps: {span(pos['nodes'])} distinct prefixes in {span(pos['packed'])} slots instead of "
                    f"{span(pos['concatenated'])} positions) | {timing(a)} = {s['default_vs_unpacked_speedup']:.2f}x faster than unpacked, "
                    f"{s['default_vs_plain_ratio']:.3f}x the plain loop's time | | |")
        d = s["default_vs_plain_max_abs_loss_diff_early"]
        rows.append(row(f"{tag} loss curves alignbench default vs plain, max abs diff over the first {EARLY_STEPS} steps",
                        f"{d:.1e}", f"<= {GOAL_TRL_LOSS_AGREEMENT:.0e}", d <= GOAL_TRL_LOSS_AGREEMENT))
        rnd = s["rounding"]
        per = lambda k: ", ".join(f"{o[k]:.1e}" for o in rnd["orders"])  # noqa: E731
        rows.append(row(f"{tag} the same math over a whole run: packed vs plain loop, both in float64, max relative "
                        f"diff over {sizes.steps} steps ({len(rnd['orders'])} batch orders)", f"{rnd['packed64']:.1e}",
                        f"<= {GOAL_FP64_LOSS_REL_AGREEMENT:.0e}", rnd['packed64'] <= GOAL_FP64_LOSS_REL_AGREEMENT))
        rows.append(f"| {tag} float32 rounding over a whole run: max relative diff from the float64 plain loop over "
                    f"{sizes.steps} steps, per batch order | plain loop {per('plain32')}; packed {per('packed32')} | "
                    f"(informative) | |")
        rows.append(f"| {tag} loss curves alignbench default vs plain over all {sizes.steps} steps (float32), max "
                    f"relative diff | {s['default_vs_plain_max_rel_loss_diff']:.1e} | (informative: compare the "
                    f"float32 rounding row) | |")
        if "trl" in s:
            t = s["trl"]
            rows.append(f"| {tag} TRL `DPOTrainer` step | {timing(t)} | | |")
            rows.append(row(f"{tag} TRL / alignbench (default), per step",
                            f"{s['trl_speedup']:.2f}x (p10 steps: {s['trl_speedup_p10']:.2f}x)",
                            f">= {GOAL_TRL_SPEEDUP:.1f}x", s['trl_speedup'] >= GOAL_TRL_SPEEDUP))
            rows.append(row(f"{tag} TRL / alignbench (default), {sizes.steps}-step loop wall time",
                            f"{t['loop_s']:.2f} s / {a['loop_s']:.2f} s = {s['trl_loop_speedup']:.2f}x",
                            f">= {GOAL_TRL_SPEEDUP:.1f}x", s['trl_loop_speedup'] >= GOAL_TRL_SPEEDUP))
            rows.append(f"| {tag} TRL / alignbench in the plain loop's layout (unpacked), per step | "
                        f"{s['trl_speedup_unpacked']:.2f}x | (informative) | |")
            d = s["trl_vs_alignbench_max_abs_loss_diff_early"]
            rows.append(row(f"{tag} loss curves alignbench vs TRL, max abs diff over the first {EARLY_STEPS} steps",
                            f"{d:.1e}", f"<= {GOAL_TRL_LOSS_AGREEMENT:.0e}", d <= GOAL_TRL_LOSS_AGREEMENT))
            d, r = s["trl_vs_alignbench_max_abs_loss_diff"], s["trl_vs_alignbench_max_rel_loss_diff"]
            rows.append(f"| {tag} loss curves alignbench vs TRL over all {sizes.steps} steps (float32): max relative "
                        f"diff (max abs) | {r:.1e} ({d:.1e}) | (informative: compare the float32 rounding row) | |")
            if "trl_gc" in s:
                g = s["trl_gc"]
                rows.append(f"| {tag} TRL with its default gradient checkpointing (1 run) | "
                            f"{g['median_ms_per_step']:.2f} ms/step = {s['trl_gc_speedup']:.2f}x alignbench | "
                            f"(informative) | |")
            if "trl_stock" in s:
                g = s["trl_stock"]
                rows.append(f"| {tag} TRL on the stock module (transformers' six-op gelu_new, not alignbench's fused "
                            f"kernel; {len(g['per_repeat_ms'])} runs) | {g['median_ms_per_step']:.2f} ms/step = "
                            f"{s['trl_stock_speedup']:.2f}x alignbench | (informative) | |")
    for data, k in results.get("kernels", {}).items():
        rows.append(f"| [{data}] plain loop, stock kernels (transformers' gelu_new module, torch's for-loop AdamW) "
                    f"| {k['stock_ms']:.2f} ms/step | | |")
        rows.append(f"| [{data}] plain loop, alignbench's kernels (fused tanh-GELU, fused AdamW): speedup | "
                    f"{k['fused_ms']:.2f} ms/step = {k['speedup']:.2f}x (per repeat "
                    f"{min(k['speedup_per_repeat']):.2f}-{max(k['speedup_per_repeat']):.2f}; losses differ by "
                    f"{k['max_abs_loss_diff']:.1e}) | (no number set) | |")
    for key in ("sweep_dpo", "sweep_bon"):
        w = results.get(key)
        if w:
            what = "reference model + reference log-probs" if w["method"] != "bon" else "reference model + reward model"
            n = len(w["values"])
            rows.append(f"| {w['method']} sweep of {n} ({what} shared): one `run_sweep`, cold cache | "
                        f"{w['shared_cold_s']:.1f} s | | |")
            rows.append(f"| ... the same sweep, warm cache | {w['shared_warm_s']:.1f} s | | |")
            rows.append(f"| ... the same {n} runs one by one, each from scratch | {w['separate_s']:.1f} s | | |")
            rows.append(f"| saving: one by one / one sweep (cold; warm) | {w['saving_cold']:.2f}x; {w['saving_warm']:.2f}x "
                        f"| > 1x (no number set) | {verdict(w['saving_cold'] > 1)} |")
    sd = results.get("sweep_default")
    if sd:
        rows.append(f"| `{sd['config']}`{' (--quick: one tiny run)' if sd['quick'] else ''}: {sd['runs']} runs "
                    f"({', '.join(sd['tasks'])}; {sd['methods']} methods; seeds {sd['seeds']}), cold cache, "
                    f"{sd['workers']} workers | {sd['wall_s'] / 60:.1f} min ({sd['ok']}/{sd['runs']} ok; sum of run "
                    f"times {sd['sum_run_s']:.0f} s) | <= 15 min | {verdict(sd['wall_s'] <= 900)} |")
    for pp in results.get("online") or ([results["ppo"]] if results.get("ppo") else []):
        rows.append(f"| {pp['method']} rollout generation (KV cache), exact task | {pp['tokens_per_s']:.0f} tokens/s "
                    f"({pp['tokens_per_iteration']:.0f} tokens/iteration) | (no number set) | |")
        rows.append(f"| {pp['method']} share of an iteration spent generating | {100 * pp['generate_share']:.1f}% of "
                    f"{1000 * pp['s_per_iteration']:.0f} ms/iteration | (no number set) | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (checks that the script works; numbers meaningless)")
    ap.add_argument("--only", default="overhead,trl,kernels,sweep,ppo",
                    help="comma-separated subset of overhead,trl,kernels,sweep,ppo,sweep-default (sweep-default, not "
                         "in the default set: the whole default sweep, cold cache, ~15 min on 2 cores)")
    ap.add_argument("--config", default="configs/default.yaml", help="the sweep the sweep-default part runs")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of the step loops (default 9)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per loop (default 64)")
    ap.add_argument("--sweep-steps", type=int, default=None, help="steps per sweep run (default: the exact task's 300)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for every loop (default: alignbench's choice, 1 on CPU)")
    ap.add_argument("--json", default=None, help="also write every figure (with per-step losses) to this file")
    args = ap.parse_args(argv)
    for k, v in (("ALIGNBENCH_QUIET", "1"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                 ("TQDM_DISABLE", "1")):
        os.environ.setdefault(k, v)  # no progress bars, no network (all models are built locally)
    sizes = QUICK if args.quick else Sizes()
    over = {k: v for k, v in (("repeats", args.repeats), ("steps", args.steps), ("sweep_steps", args.sweep_steps),
                                      ("threads", args.threads))
            if v is not None}
    if over:
        sizes = replace(sizes, **over)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"overhead", "trl", "kernels", "sweep", "ppo", "sweep-default"}
    if unknown:
        ap.error(f"--only: unknown part(s) {sorted(unknown)}")
    from alignbench.models import quiet_transformers

    quiet_transformers()
    facts = machine_facts()
    print(f"alignbench bench: {facts['nproc']} CPUs ({facts['cpu']}), {facts['mem_gib']} GiB, torch threads "
          f"{facts['torch_threads']}, python {facts['python']}, "
          + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()))
    print(f"load average at start: {facts['loadavg']}")
    results: dict[str, Any] = {"machine": facts, "sizes": {k: getattr(sizes, k) for k in sizes.__dataclass_fields__}}
    tmp = Path(tempfile.mkdtemp(prefix="alignbench-bench-"))
    try:
        if parts & {"overhead", "trl"}:
            results["threads_steps"] = apply_threads(sizes)
            print(f"[1-2] DPO steps ({results['threads_steps']} torch threads): {sizes.batch_size} pairs/step, "
                  f"{sizes.steps} steps, {sizes.repeats} repeats, first {sizes.warmup} steps excluded")
            results["steps"] = {}
            for data in sizes.step_data:
                print(f"  workload: {data}")
                results["steps"][data] = bench_steps(sizes, tmp, data=data, with_trl="trl" in parts)
        if "kernels" in parts:
            apply_threads(sizes)
            print(f"[4] kernel choices: the plain loop with stock vs fused kernels, {sizes.repeats} repeats")
            results["kernels"] = {data: bench_kernels(sizes, tmp, data=data) for data in sizes.step_data}
        if "sweep" in parts:
            apply_threads(sizes)  # run_sweep applies alignbench's own choice anyway
            results["threads_sweep"] = "run_sweep's own (runner.configure_threads)"
            print(f"[3] sweep sharing on the exact task ({sizes.sweep_steps or 'default'} steps per run)")
            results["sweep_dpo"] = bench_sweep("dpo", sizes.sweep_betas, sizes, tmp)
            results["sweep_bon"] = bench_sweep("bon", sizes.bon_grid, sizes, tmp)
        if "sweep-default" in parts:
            print(f"[6] the default sweep, cold cache ({args.config})")
            results["sweep_default"] = bench_sweep_default(args.config, tmp, quick=args.quick)
        if "ppo" in parts:
            results["threads_ppo"] = apply_threads(sizes)
            print(f"[5] PPO rollouts on the exact task ({sizes.ppo_iterations} iterations, "
                  f"{results['threads_ppo']} torch threads)")
            results["online"] = [bench_ppo(sizes, tmp, method_name=m) for m in sizes.online_methods]
            results["ppo"] = results["online"][0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg_end"] = load_average()
    print()
    print(table(results, sizes))
    print()
    print(f"load average at end: {results['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
