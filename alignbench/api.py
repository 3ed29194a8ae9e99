"""The plugin API: what a method and a task provide, and what the harness hands them.

A **method** (``methods/<name>.py``) is a :class:`Method` subclass with a frozen config dataclass,
a pure loss function over explicit tensors and ``@register_method``. It declares its needs as class
attributes; the harness reads the attributes and never branches on a method's name.

A **task** (``tasks/<name>.py``) is a :class:`Task` subclass whose :meth:`Task.setup` returns a
:class:`TaskEnv`: tokenizer, frozen reference policy, prompts, preference data, gold reward and an
``evaluate`` that gives the standard metrics (exactly, or from samples with standard errors).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from .config import TrainConfig, check_positive, param

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from datasets import Dataset

    from .runner import RunContext

DataFormat = Literal["paired", "unpaired", "online"]

# Completion columns that the harness tokenizes and scores for each offline data format.
# "kl_completion" is a completion from another prompt of the same dataset (KTO's reference point).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "paired": ("chosen", "rejected"),
    "unpaired": ("completion", "kl_completion"),
    "online": (),
}


# ------------------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config: ``beta`` is the KL strength the sweep varies."""

    beta: float = param(0.1, "KL strength beta of max E[r] - beta KL(pi || pi_ref)")

    def __post_init__(self) -> None:
        check_positive("beta", self.beta)


@dataclass(frozen=True)
class LossOutput:
    """What every loss function returns (the same fields for every method).

    loss:             scalar to minimise.
    chosen_rewards:   (B_c,) implicit rewards of the chosen / desirable completions (detached).
    rejected_rewards: (B_r,) implicit rewards of the rejected / undesirable completions (detached).
    metrics:          scalar diagnostics, e.g. ``{"kto/z0": ...}`` (detached).
    """

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def pair_diagnostics(logratio_chosen: Tensor, logratio_rejected: Tensor, beta: float) -> dict[str, Tensor]:
    """The batch metrics every paired loss reports: implicit-reward margin and accuracy, mean log-ratios.

    logratio_chosen, logratio_rejected: (B,) detached log pi/pi_ref of chosen and rejected completions.
    """
    rc, rr = beta * logratio_chosen, beta * logratio_rejected
    return {
        "train/margin": (rc - rr).mean(),
        "train/accuracy": (rc > rr).float().mean(),
        "train/logratio_chosen": logratio_chosen.mean(),
        "train/logratio_rejected": logratio_rejected.mean(),
    }


@dataclass
class LogpBatch:
    """Sequence log-probabilities of one batch, by completion column (see FORMAT_COLUMNS).

    policy[col]:    (B,) sum over completion tokens of log pi(y_t | x, y_<t); carries gradients.
    reference[col]: (B,) the same under pi_ref (cached, no gradient).
    lengths[col]:   (B,) number of completion tokens (for length-normalised losses).
    labels:         (B,) bool, True = desirable (unpaired data only), else None.
    """

    policy: dict[str, Tensor]
    reference: dict[str, Tensor]
    lengths: dict[str, Tensor]
    labels: Tensor | None = None


class Method(ABC):
    """Base class of all alignment methods. Subclasses set the class attributes below."""

    name: ClassVar[str]  # set by @register_method
    description: ClassVar[str] = ""  # one line, shown by `alignbench list`
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    data_format: ClassVar[DataFormat] = "paired"
    needs_reference: ClassVar[bool] = True
    needs_reward_model: ClassVar[bool] = False  # a learned reward model trained on the task's pairs
    needs_gold_reward: ClassVar[bool] = False  # the task's gold reward as the training signal
    needs_preferences: ClassVar[bool] = True  # preference pairs (directly or through a reward model)
    sweep_param: ClassVar[str] = "beta"  # the config field the sweep varies
    # completion columns used only for batch statistics (no gradient; gathered over processes),
    # e.g. KTO's mismatched completions that estimate z0
    statistic_columns: ClassVar[tuple[str, ...]] = ()
    default_grid: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.3, 1.0, 3.0)

    def __init__(self, config: MethodConfig):
        self.config = config

    @property
    def sweep_value(self) -> float:
        return float(getattr(self.config, self.sweep_param))

    @abstractmethod
    def run(self, ctx: "RunContext") -> None:
        """Train (or build) the policy, logging through ``ctx``; the harness writes the summary."""


class OfflineMethod(Method):
    """A method trained by the shared offline loop (:func:`alignbench.trainer.train_offline`).

    Subclasses only turn a :class:`LogpBatch` into a :class:`LossOutput` by calling their pure loss.
    """

    @abstractmethod
    def compute_loss(self, batch: LogpBatch) -> LossOutput: ...

    def run(self, ctx: "RunContext") -> None:
        from .trainer import train_offline

        train_offline(self, ctx)


# ------------------------------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class GenerationSpec:
    """How completions are sampled on a task."""

    max_new_tokens: int
    fixed_length: bool = False  # exact task: exactly max_new_tokens tokens, no end token
    eos_token_id: int | None = None
    pad_token_id: int = 0
    temperature: float = 1.0


@dataclass
class EvalResult:
    """Metrics of one evaluation of a policy.

    metrics:    standard names: ``reward/gold`` (+ ``_se``), ``kl/ref`` (+ ``_se``), ``winrate/vs_ref``
                (+ ``_se``), ``policy/entropy``, ``policy/length``; exact tasks add ``kl/to_target``,
                ``exact/frontier_gap``, ``exact/unseen_mass``.
    per_prompt: optional per-prompt arrays (e.g. ``reward``) kept with the run for head-to-head win rates.
    """

    metrics: dict[str, float]
    per_prompt: dict[str, Any] | None = None


class TaskEnv(ABC):
    """A built task: everything a run needs, shared by all methods of a sweep."""

    task_name: str
    tokenizer: Any
    reference: nn.Module  # frozen reference policy (eval mode, no grad)
    reference_dir: Path  # save_pretrained folder of the reference model and tokenizer
    preferences: "dict[str, Dataset] | None"  # {"train", "eval"}: rows prompt/chosen/rejected
    prompts: dict[str, list[str]]  # {"train", "eval"}
    generation: GenerationSpec
    fingerprint: str  # identity of task config + reference weights + data, used as a cache key
    exact: ClassVar[bool] = False
    has_gold_reward: ClassVar[bool] = True
    kl_estimator: ClassVar[str] = "exact"  # how evaluate() gets KL, stated in the report

    def make_policy(self) -> nn.Module:
        """A fresh trainable copy of the reference policy."""
        policy = copy.deepcopy(self.reference)
        policy.train()
        for p in policy.parameters():
            p.requires_grad_(True)
        return policy

    @abstractmethod
    def gold_reward(self, prompts: list[str], completions: list[str]) -> Tensor:
        """(B,) gold reward of each (prompt, completion)."""

    @abstractmethod
    def evaluate(self, policy: nn.Module, *, beta: float | None = None, seed: int = 0) -> EvalResult:
        """Standard metrics of ``policy`` (exact, or sampled with standard errors)."""

    def frontier(self) -> "pd.DataFrame | None":
        """The optimal reward-vs-KL frontier (columns beta, kl, reward) where it is known."""
        return None

    def artifacts(self) -> dict[str, Any]:
        """Arrays saved once per sweep as ``DIR/task_<task>.npz`` (e.g. the exact task's reward table),
        so that per-run files stay small and the report can be rebuilt from the files alone."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Facts for the report (sizes, estimators, temperature)."""
        return {"kl_estimator": self.kl_estimator}


class Task(ABC):
    """Base class of tasks. ``config_cls`` holds the task's parameters (seeded, validated)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    config_cls: ClassVar[type]
    train_defaults: ClassVar[dict[str, Any]] = {}  # TrainConfig fields this task overrides
    has_preferences: ClassVar[bool] = True  # preference pairs exist (offline methods, reward models)
    has_gold_reward: ClassVar[bool] = True  # a gold reward exists (ppo-gt, reported reward)
    default_methods: ClassVar[tuple[str, ...] | None] = None  # None: every compatible method
    # method config defaults suited to this task, e.g. {"ppo": {"iterations": 40}}; user method_args win
    method_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def setup(self, cache_dir: Path, device: torch.device) -> TaskEnv:
        """Build (or load from ``cache_dir``) the reference model and data."""

    def train_config(self, overrides: dict[str, Any] | None = None) -> TrainConfig:
        from .config import from_mapping

        return from_mapping(TrainConfig, {**self.train_defaults, **(overrides or {})}, where="train")


# ============================================================== offline family declarations (issue 17)
# Added as one block at the end of the file while api.py is being refactored; they belong in the class bodies
# of Method / OfflineMethod above. Every method inherits these defaults; the harness reads them, never a name.


def _no_state(self: Method) -> dict[str, Any]:
    """Running state of the method itself (e.g. BCO's reward shift), saved in checkpoints; {} = stateless."""
    return {}


def _load_no_state(self: Method, state: dict[str, Any]) -> None:
    """Restore what :meth:`state_dict` returned (called on resume, only for methods with a state)."""


# True where the config's ``beta`` is the KL coefficient of max E[r] - beta KL(pi || pi_ref) that the method
# optimises (DPO, IPO, KTO, PPO, ...): the sweep's ``betas`` apply to it, summary.csv's ``beta`` column shows it and
# exact tasks measure KL to pi*_beta. False where ``beta`` is only a scale (SimPO), or where there is no beta.
Method.beta_is_kl_coef = True  # type: ignore[attr-defined]
Method.state_dict = _no_state  # type: ignore[attr-defined]
Method.load_state_dict = _load_no_state  # type: ignore[attr-defined]
# completion columns of the data format that the method never reads (not forwarded through the policy),
# e.g. BCO on unpaired data ignores KTO's mismatched "kl_completion" rows
OfflineMethod.unused_columns = ()  # type: ignore[attr-defined]
