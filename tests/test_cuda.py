"""The CUDA paths (``pytest -m cuda``; ``benchmarks/gpu_check.sh`` runs them on a GPU machine).

Every test here is skipped without a CUDA device, with the reason "no CUDA device": a missing GPU is a fact
about the machine, not a missing dependency. On a GPU they check device selection, bf16 against fp32 DPO steps,
packed against unpacked log-probs, KV-cache generation against the uncached forward, one PPO run and the local
executor's GPU placement.
"""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest
import torch

from alignbench.cli import main

from .conftest import TINY_EXACT
from .test_packing import columns, random_rows
from .test_sweep import sweep_args

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

CUDA = torch.device("cuda")
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 2e-3 per operation); over a handful of DPO steps on the
# exact task the losses of the two precisions stay within 1e-2 relative (the goal for 64 steps of the
# 124M policy, benchmarks/gpu_check.py), and the gradients point the same way
BF16_LOSS_REL = 1e-2
BF16_GRAD_COSINE = 0.99
# float32 on the GPU: a different summation order than on the CPU, and than the other layout: rounding only
FP32_RTOL = 1e-4


@pytest.fixture(scope="module")
def cuda_env(cache_dir):
    from alignbench.config import from_mapping
    from alignbench.registry import get_task

    task_cls = get_task("exact")
    return task_cls(from_mapping(task_cls.config_cls, TINY_EXACT)).setup(cache_dir, CUDA)


def test_auto_device_picks_cuda():
    from alignbench.models import select_device

    assert select_device("auto").type == "cuda"
    assert select_device("cuda:0") == torch.device("cuda:0")


def _dpo_losses(env, split, cache_dir, precision: str, steps: int = 8) -> tuple[list[float], torch.Tensor]:
    """``steps`` DPO steps (beta 0.1, AdamW) from the reference on fixed batches; the losses and the first gradient."""
    from alignbench.optim import make_optimizer
    from alignbench.registry import get_method
    from alignbench.api import LogpBatch
    from alignbench.trainer import concat_forward

    dpo = get_method("dpo")(get_method("dpo").config_cls(beta=0.1))
    torch.manual_seed(0)
    policy = env.make_policy().to(CUDA)
    opt = make_optimizer(policy.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    losses, first_grad = [], None
    for _ in range(steps):
        idx = torch.randperm(len(split), generator=g)[:32]
        batch = split.tokens.batch(idx, CUDA)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logps, lengths = concat_forward(policy, batch.select(["chosen", "rejected"]))
        ref = {c: v[idx].to(CUDA) for c, v in split.ref_logps.items()}
        out = dpo.compute_loss(LogpBatch(policy=logps, reference=ref, lengths=lengths, labels=None))
        out.loss.backward()
        if first_grad is None:
            first_grad = torch.cat([p.grad.flatten().float() for p in policy.parameters() if p.grad is not None])
        opt.step()
        losses.append(float(out.loss))
    return losses, first_grad


def test_bf16_and_fp32_dpo_steps_agree(cuda_env, cache_dir):
    from alignbench.trainer import prepare

    split = prepare(cuda_env, "paired", "train", cache_dir, CUDA)
    fp32, g32 = _dpo_losses(cuda_env, split, cache_dir, "fp32")
    bf16, g16 = _dpo_losses(cuda_env, split, cache_dir, "bf16")
    assert fp32[-1] < fp32[0] - 0.01  # it trains (lr 1e-2 on a tiny model): the comparison is not of constants
    assert fp32 != bf16  # bf16 really ran
    rel = max(abs(a - b) / abs(a) for a, b in zip(fp32, bf16))
    assert rel <= BF16_LOSS_REL, (fp32, bf16)
    cosine = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    assert cosine >= BF16_GRAD_COSINE, cosine


def test_packed_and_unpacked_log_probs_agree_on_cuda(cuda_env, cache_dir):
    from alignbench.models import tiny_gpt2
    from alignbench.packing import packed_forward
    from alignbench.trainer import PolicyForward, concat_forward, prepare

    model = tiny_gpt2(32, n_positions=32, n_layer=2, n_embd=32, n_head=4, seed=0).to(CUDA)
    rows = columns(random_rows(12, 3, 0))  # ragged rows, most prefixes shared
    batch = rows.batch(torch.arange(len(rows)), CUDA)
    out = []
    for fwd in (concat_forward, lambda m, b: packed_forward(m, b, ["chosen", "rejected"])):
        model.zero_grad()
        logps, _ = fwd(model, batch)
        (logps["chosen"] - 0.5 * logps["rejected"]).sum().backward()
        out.append((torch.cat([logps["chosen"], logps["rejected"]]).detach(),
                    torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert out[0][0].is_cuda
    torch.testing.assert_close(out[1][0], out[0][0], rtol=FP32_RTOL, atol=FP32_RTOL)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-3, atol=1e-5)
    # the exact task's masked model on the GPU: packed = unpacked = the reference log-probs of the cache
    split = prepare(cuda_env, "paired", "train", cache_dir, CUDA)
    b = split.tokens.batch(torch.arange(16), CUDA)
    policy = cuda_env.make_policy().to(CUDA)
    assert PolicyForward(policy, split.tokens, ["chosen", "rejected"], True, CUDA).pack  # the production check
    a, _ = concat_forward(policy, b)
    p, _ = packed_forward(policy, b, ["chosen", "rejected"])
    for c in a:
        torch.testing.assert_close(p[c], a[c], rtol=FP32_RTOL, atol=FP32_RTOL)
        torch.testing.assert_close(a[c].cpu(), split.ref_logps[c][:16], rtol=FP32_RTOL, atol=FP32_RTOL)


@torch.no_grad()
def test_kv_cache_generation_matches_the_uncached_forward():
    """Greedy generation with the KV cache = without it (tokens and scores), on left-padded prompts; and the
    training forward over the finished rows gives the log-probs the cached generation chose from (what PPO uses)."""
    from alignbench.generation import right_pad
    from alignbench.logprobs import sequence_logps
    from alignbench.models import tiny_gpt2

    model = tiny_gpt2(32, n_positions=64, n_layer=2, n_embd=32, n_head=4, seed=5).to(CUDA).eval()
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 9, (12,), generator=g)
    p = int(lengths.max())
    ids = torch.zeros(12, p, dtype=torch.long)
    mask = torch.zeros(12, p, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, p - n:] = torch.randint(1, 32, (n,), generator=g)
        mask[i, p - n:] = 1
    ids, mask = ids.to(CUDA), mask.to(CUDA)
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None,
              output_scores=True, return_dict_in_generate=True)
    cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
    plain = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    for a, b in zip(cached.scores, plain.scores):
        torch.testing.assert_close(a, b, rtol=FP32_RTOL, atol=FP32_RTOL)
    new = cached.sequences[:, p:]
    chosen = torch.stack([s.log_softmax(-1).gather(1, new[:, t:t + 1]).squeeze(1)
                          for t, s in enumerate(cached.scores)], 1).sum(1)
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    comp = torch.cat([torch.zeros_like(mask), torch.ones_like(new)], 1)
    r_ids, r_attn, r_comp = right_pad(cached.sequences, full_mask, comp, 0)
    torch.testing.assert_close(sequence_logps(model, r_ids, r_attn, r_comp).sum, chosen, rtol=FP32_RTOL,
                               atol=FP32_RTOL)


def test_a_ppo_run_on_cuda(cuda_env, cache_dir, tmp_path):
    from alignbench.config import from_mapping
    from alignbench.registry import get_method, get_task
    from alignbench.runner import RunSpec, execute

    cls = get_method("ppo")
    mcfg = from_mapping(cls.config_cls, {"beta": 0.1, "iterations": 2, "rollout_batch": 16, "minibatch_size": 8})
    task_cls = get_task("exact")
    task = task_cls(from_mapping(task_cls.config_cls, TINY_EXACT))
    spec = RunSpec(task="exact", method="ppo", seed=0, method_config=mcfg, task_config=task.config,
                   train=task.train_config({"eval_every": 1}), run_id="ppo-cuda")
    made = []
    original = cuda_env.make_policy
    cuda_env.make_policy = lambda: made.append(original()) or made[-1]
    try:
        summary = execute(spec, cuda_env, cls(mcfg), tmp_path / "ppo", device=CUDA, cache_dir=cache_dir,
                          show_progress=False)
    finally:
        del cuda_env.make_policy
    assert summary["status"] == "ok", summary
    assert summary["steps"] == 2 and summary["kl"] > 0 and summary["perf/rollout_tokens_per_s"] > 0
    assert all(p.is_cuda for p in made[0].parameters())


WHERE = '''
import os
from dataclasses import dataclass

import torch

from alignbench.api import Method, MethodConfig
from alignbench.config import param
from alignbench.registry import register_method


@dataclass(frozen=True)
class WhereConfig(MethodConfig):
    beta: float = param(0.1, "unused")


@register_method("where")
class Where(Method):
    """Records where the executor ran it: the device of its policy, CUDA_VISIBLE_DEVICES, the worker's pid."""

    description = "test probe: where does a run execute"
    config_cls = WhereConfig
    data_format = "online"
    needs_preferences = False

    def run(self, ctx):
        policy = ctx.env.make_policy().to(ctx.device)
        p = next(policy.parameters())
        ctx.extra_summary.update(param_device=str(p.device), visible=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                                 pid=os.getpid())
        ctx.evaluate(policy, 0)
'''


def test_local_executor_places_runs_on_the_gpu(tmp_path, cache_dir):
    plugin = tmp_path / "plugins" / "where.py"
    plugin.parent.mkdir()
    plugin.write_text(textwrap.dedent(WHERE))
    out = tmp_path / "placed"
    n_gpu = torch.cuda.device_count()
    extra = ["--plugins", str(plugin.parent), "--device", "cuda", "--workers", "8", "--runs-per-gpu", "2"]
    assert main(sweep_args(out, cache_dir, methods="where", betas="0.1,0.2,0.3,0.4,0.5,0.6", extra=extra)) == 0
    s = pd.read_csv(out / "summary.csv", dtype={"visible": str})
    assert len(s) == 6 and set(s["status"]) == {"ok"}, s[["run_id", "reason"]]
    assert set(s["param_device"]) == {"cuda:0"}  # each worker sees its one GPU as cuda:0
    assert set(s["visible"]) <= {str(g) for g in range(n_gpu)}
    assert 1 <= s["pid"].nunique() <= min(8, 2 * n_gpu)  # the pool: at most runs_per_gpu workers per GPU
