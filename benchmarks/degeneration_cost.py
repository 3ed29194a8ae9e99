"""Cost of the degeneration metrics (alignbench.degeneration) within one sampled evaluation.

Not part of ``make test``. Builds the sentiment task (its default evaluation sizes: 64 prompts x 8
samples, completions <= 16 tokens; the reference's size from the flags), perturbs a copy of the reference
as the policy, warms the reference-sample cache, then times ``env.evaluate`` with the degeneration metrics
and with them switched off (token extraction and metric code replaced by no-ops), interleaved, ``--repeats``
times each; prints the median of each arm and the median of the per-repeat ratios, and the share of one
evaluation spent in the degeneration code itself (timed inside the same calls).

    PYTHONPATH=. python benchmarks/degeneration_cost.py --repeats 9 --cache-dir /tmp/degen-cache
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from alignbench import evaluation as EV
from alignbench.config import from_mapping
from alignbench.registry import discover, get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--cache-dir", default=".cache/alignbench")
    ap.add_argument("--task-arg", action="append", default=[], help="KEY=VALUE of the sentiment config")
    args = ap.parse_args()
    torch.set_num_threads(1)
    discover()
    cls = get_task("sentiment")
    overrides = dict(kv.split("=", 1) for kv in args.task_arg)
    cfg = from_mapping(cls.config_cls, {k: type(getattr(cls.config_cls(), k))(v) for k, v in overrides.items()})
    env = cls(cfg).setup(Path(args.cache_dir), torch.device("cpu"))
    policy = copy.deepcopy(env.reference)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 else 1.0))
    env.reference_samples(0)  # cached for every later evaluation, in both arms

    spent = [0.0]
    real_tokens, real_put = EV.SampledTaskEnv._sample_tokens, EV.SampledTaskEnv._put_degeneration

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapper

    def arm(on: bool) -> tuple[float, float]:
        EV.SampledTaskEnv._sample_tokens = timed(real_tokens) if on else (lambda self, smp, n: None)
        EV.SampledTaskEnv._put_degeneration = timed(real_put) if on else (lambda self, *a, **k: None)
        spent[0] = 0.0
        t = time.perf_counter()
        env.evaluate(policy, seed=0)
        return time.perf_counter() - t, spent[0]

    arm(True), arm(False)  # warm-up
    on, off, ratio, share = [], [], [], []
    for _ in range(args.repeats):
        (t_on, s_on), (t_off, _) = arm(True), arm(False)
        on.append(t_on)
        off.append(t_off)
        ratio.append(t_on / t_off)
        share.append(s_on / t_on)
    EV.SampledTaskEnv._sample_tokens, EV.SampledTaskEnv._put_degeneration = real_tokens, real_put
    print(f"evaluate: {len(env.prompts['eval'])} prompts x {env.n_eval_samples} samples, {args.repeats} repeats")
    print(f"median with degeneration {statistics.median(on) * 1e3:.1f} ms, "
          f"without {statistics.median(off) * 1e3:.1f} ms")
    print(f"median ratio with/without {statistics.median(ratio):.4f}; "
          f"degeneration code's share of an evaluation (median) {100 * statistics.median(share):.2f}%")


if __name__ == "__main__":
    main()
