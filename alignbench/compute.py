"""What a run spent: token counts through the policy and the reference, rollouts, reward queries (one counter).

A :class:`Compute` lives on the run context (``ctx.compute``). The training loops hand it their networks once
(:meth:`Compute.watch`: a forward pre-hook on the module), so every forward is counted where it happens, with
no increments in the loops' bodies; the few counts that are not forwards (rollouts, reward-model queries,
cached reference log-probs) are one :meth:`Compute.add` each. The counts go into the run's summary and are
saved in checkpoints, so a resumed run reports what an uninterrupted one would.

What a count is (``docs/budgets.md``):

* a **token** is a position a forward computed: batch rows x sequence length of the ``input_ids`` handed to
  the model, padding included (it costs the same), so the prefix-sharing packing of the offline loop
  (``alignbench.packing``) counts the positions of its packed rows, not of the unpacked columns; generation
  with the KV cache counts the prompt once and then one position per row and new token;
* ``policy_backward_tokens``: the positions of forwards run with gradients enabled (each is back-propagated);
* evaluation forwards (inside :meth:`Compute.evaluating`: the task's metrics and the offline loop's held-out
  diagnostics) are counted apart, in ``eval_forward_tokens`` (policy and reference together);
* ``policy_tokens`` = forward + 2 x backward tokens: the budget measure of the compute-matched view (a backward
  pass costs about two forwards).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from .report import names as N

COUNTERS = (N.COMPUTE_POLICY_FWD, N.COMPUTE_POLICY_BWD, N.COMPUTE_REF_FWD, N.COMPUTE_EVAL_FWD, N.COMPUTE_SAMPLES,
            N.COMPUTE_RM_QUERIES, N.COMPUTE_GOLD_QUERIES)
BACKWARD_COST = 2.0  # a backward pass costs about two forwards (the budget measure's weight)


def positions(args: tuple, kwargs: dict) -> int:
    """Positions of one model call: the numel of its ``input_ids`` (keyword or first positional), else 0."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


def budget(counts: dict[str, float]) -> float:
    """The compute-matched view's measure: policy forward + 2 x backward tokens."""
    return float(counts.get(N.COMPUTE_POLICY_FWD, 0.0) + BACKWARD_COST * counts.get(N.COMPUTE_POLICY_BWD, 0.0))


class Compute:
    """Counts of one run (keys: ``COUNTERS``), filled by hooks on watched modules and by :meth:`add`."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {k: 0.0 for k in COUNTERS}
        self.in_eval = False
        self._handles: list[Any] = []

    def watch(self, module: nn.Module, role: str = "policy") -> None:
        """Count every forward of ``module`` ("policy": forward, and backward when gradients are on; "reference":
        reference forward), or evaluation tokens inside :meth:`evaluating`. Undone by :meth:`close`."""

        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            n = positions(args, kwargs)
            if self.in_eval:
                self.counts[N.COMPUTE_EVAL_FWD] += n
            elif role == "reference":
                self.counts[N.COMPUTE_REF_FWD] += n
            else:
                self.counts[N.COMPUTE_POLICY_FWD] += n
                if torch.is_grad_enabled():
                    self.counts[N.COMPUTE_POLICY_BWD] += n

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def add(self, key: str, n: float) -> None:
        """Add ``n`` to counter ``key`` (one of ``COUNTERS``); ignored inside :meth:`evaluating`."""
        if not self.in_eval:
            self.counts[key] += float(n)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Forwards inside count as evaluation (``eval_forward_tokens``), not as training compute."""
        was, self.in_eval = self.in_eval, True
        try:
            yield
        finally:
            self.in_eval = was

    def close(self) -> None:
        """Remove the hooks (the reference is shared by every run of a sweep)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def summary(self) -> dict[str, float]:
        """The run's summary columns: every counter and the budget measure ``policy_tokens``."""
        return {**{k: float(v) for k, v in self.counts.items()}, N.COMPUTE_BUDGET: budget(self.counts)}

    def state_dict(self) -> dict[str, float]:
        return dict(self.counts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in COUNTERS:
            self.counts[k] = float(state.get(k, 0.0))
