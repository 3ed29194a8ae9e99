"""The plugin API: what a method and a task provide, and what the harness hands them.

This module is the contract. It imports nothing of the harness's implementation (only ``config`` and
``errors``; ``tests/test_architecture.py`` checks it): the training loops, the run context and the
evaluation code implement what is declared here.

A **method** (``methods/<name>.py``) is a :class:`Method` subclass with a frozen config dataclass,
a pure loss function over explicit tensors and ``@register_method``. It declares its needs as class
attributes; the harness reads the attributes and never branches on a method's name. Offline methods
(:class:`OfflineMethod`) only turn a :class:`LogpBatch` into a :class:`LossOutput`; the harness trains
them with its offline loop. Other methods implement :meth:`Method.run` against :class:`RunContext`.

A **task** (``tasks/<name>.py``) is a :class:`Task` subclass whose :meth:`Task.setup` returns a
:class:`TaskEnv`: tokenizer, frozen reference policy, prompts, preference data, gold reward and an
``evaluate`` that gives the standard metrics (exactly, or from samples with standard errors). Optional
capabilities of a task's environment are typed interfaces (:class:`EnumerableEnv`,
:class:`SampleEvaluable`); a task lists the ones it provides (``Task.capabilities``), a method the ones
it can work with (``Method.requires_one_of``), and the sweep refuses an incompatible pair before
writing anything.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from .config import TrainConfig, check_positive, param

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from datasets import Dataset

DataFormat = Literal["paired", "unpaired", "online"]


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
    """Sequence log-probabilities of one batch, by completion column (``alignbench.data.FORMAT_COLUMNS`` of the
    method's data format, plus its ``statistic_columns``).

    policy[col]:    (B,) sum over completion tokens of log pi(y_t | x, y_<t); carries gradients.
    reference[col]: (B,) the same under pi_ref (cached, no gradient).
    lengths[col]:   (B,) number of completion tokens (for length-normalised losses).
    labels:         (B,) bool, True = desirable (unpaired data only), else None.
    """

    policy: dict[str, Tensor]
    reference: dict[str, Tensor]
    lengths: dict[str, Tensor]
    labels: Tensor | None = None


@dataclass(frozen=True)
class Panel:
    """One panel of a method's diagnostics figure: logged metrics drawn over training steps.

    series: (metric name, legend label, matplotlib line style) per line; ylabel: the panel's y axis.
    """

    title: str
    series: tuple[tuple[str, str, str], ...]
    ylabel: str

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "series": [list(s) for s in self.series], "ylabel": self.ylabel}


@dataclass(frozen=True)
class TabularProblem:
    """An enumerable task seen as tables, for a method's population target (:meth:`Method.population_target`).

    ref_logp:      (K, N) normalised log pi_ref(y|x).
    reward:        (K, N) gold reward r(x, y).
    labels:        how the task's preference pairs are labelled: "bt" (Bradley-Terry on ``reward``) or
                   "deterministic" (the larger reward wins, ties by a coin); then flipped with ``label_noise``.
    label_noise:   probability that a pair's label is flipped.
    rm_reward:     (K, N) the learned reward model's score of every response, where the method uses one; else None.
    lengths:       (N,) token count of each response.
    Pairs are (y, y') ~ pi_ref x pi_ref with y != y', prompts uniform (the exact task's sampling).
    """

    ref_logp: Tensor
    reward: Tensor
    labels: str = "bt"
    label_noise: float = 0.0
    rm_reward: Tensor | None = None
    lengths: Tensor | None = None


@dataclass(frozen=True)
class Target:
    """A method's population optimum on a :class:`TabularProblem`: ``logp`` (K, N) normalised log-probs, and
    ``formula`` the closed form it came from, in words (e.g. "pi_ref exp(r/beta)/Z")."""

    logp: Tensor
    formula: str


@dataclass(frozen=True)
class NoTarget:
    """No finite or no known population optimum; ``reason`` says why (one sentence)."""

    reason: str


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
    # extra completion columns used only for batch statistics (no gradient; gathered over processes):
    # column name -> how the harness derives it from the rows (``alignbench.data.DERIVED_COLUMNS``), e.g.
    # KTO's ``{"kl_completion": "mismatched"}``: a completion of another prompt, whose log-ratio estimates z0
    statistic_columns: ClassVar[Mapping[str, str]] = {}
    default_grid: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.3, 1.0, 3.0)
    # environment capabilities this method can work with (any one of them); empty = the TaskEnv basics suffice
    requires_one_of: ClassVar[tuple[type, ...]] = ()
    # what the report reads (recorded in sweep.json, so the report never names a method):
    # the logged metric that plays "proxy reward" for the overoptimization flag (None: none)
    proxy_metric: ClassVar[str | None] = None
    # a logged proxy reward over training to draw against the gold reward (online methods), or None
    proxy_curve: ClassVar[str | None] = None
    # the method's own panels of its diagnostics figure (after the loss panels every offline method has)
    diagnostic_panels: ClassVar[tuple[Panel, ...]] = ()
    # True where the config's ``beta`` is the KL coefficient of max E[r] - beta KL(pi || pi_ref) that the method
    # optimises (DPO, IPO, KTO, PPO, ...): the sweep's ``betas`` apply to it, summary.csv's ``beta`` column shows it
    # and exact tasks measure KL to pi*_beta. False where ``beta`` is only a scale (SimPO), or where there is no beta.
    beta_is_kl_coef: ClassVar[bool] = True
    # why the method has no population target (:meth:`population_target`'s default answer), one sentence
    no_target_reason: ClassVar[str] = "not declared"
    # the checkpoint a practitioner would keep, chosen without the gold reward: (logged metric, "min" | "max"), the
    # evaluation where it is best (earliest on ties) is the run's early-stopped policy (``docs/checkpoints.md``);
    # None: the method declares none (e.g. best-of-N, which does not train) and has no early-stopped policy.
    # ``early_stop_oracle``: the signal is the gold reward itself (methods trained on it), so the choice is an oracle.
    early_stop_signal: ClassVar[tuple[str, str] | None] = None
    early_stop_oracle: ClassVar[bool] = False

    def __init__(self, config: MethodConfig):
        self.config = config

    @property
    def sweep_value(self) -> float:
        return float(getattr(self.config, self.sweep_param))

    def state_dict(self) -> dict[str, Any]:
        """Running state of the method itself (e.g. BCO's reward shift), saved in checkpoints; {} = stateless."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called on resume, only for methods with a state)."""

    @classmethod
    def report_info(cls) -> dict[str, Any]:
        """The declarations the report reads (saved per method in ``sweep.json``)."""
        return {"sweep_param": cls.sweep_param, "data_format": cls.data_format, "proxy_metric": cls.proxy_metric,
                "proxy_curve": cls.proxy_curve, "panels": [p.as_dict() for p in cls.diagnostic_panels],
                "needs_reward_model": cls.needs_reward_model,
                "early_stop_signal": list(cls.early_stop_signal) if cls.early_stop_signal else None,
                "early_stop_oracle": cls.early_stop_oracle}

    def population_target(self, problem: TabularProblem) -> "Target | NoTarget":
        """The policy this method's objective is minimised by in the population limit (infinite data, a tabular
        policy) on ``problem``, or :class:`NoTarget` with the reason. The exact task measures every run against it
        (``kl/to_own_target``, ``exact/objective_gap``, ``exact/estimation_gap``); see docs/targets.md. The default
        says none, with :attr:`no_target_reason`."""
        return NoTarget(self.no_target_reason)

    def run(self, ctx: "RunContext") -> None:
        """Train (or build) the policy, logging through ``ctx``; the harness writes the summary.

        Offline methods do not implement it: the harness runs its offline loop on :meth:`OfflineMethod.compute_loss`.
        """
        raise NotImplementedError(f"method '{self.name}' implements neither run() nor OfflineMethod.compute_loss()")


# the panels every method trained by the offline loop gets (the loop logs these metrics)
OFFLINE_PANELS = (
    Panel("preference loss", (("eval/loss", "held-out", "-"), ("train/loss", "train subset", "--")), "loss"),
    Panel("implicit-reward accuracy", (("eval/implicit_acc", "held-out", "-"),
                                       ("train/implicit_acc", "train subset", "--")), "accuracy"),
    Panel("log π/π_ref on held-out pairs", (("logratio/chosen", "chosen", "-"), ("logratio/rejected", "rejected", "--"),
                                            ("logratio/margin", "margin", ":")), "log-ratio [nats]"),
)


class OfflineMethod(Method):
    """A method trained by the harness's shared offline loop (``alignbench.trainer``).

    Subclasses only turn a :class:`LogpBatch` into a :class:`LossOutput` by calling their pure loss.
    """

    proxy_metric = "logratio/margin"  # the implicit reward margin on held-out pairs
    diagnostic_panels = OFFLINE_PANELS
    early_stop_signal = ("eval/loss", "min")  # the method's own loss on held-out pairs (logged at every evaluation)

    @abstractmethod
    def compute_loss(self, batch: LogpBatch) -> LossOutput: ...


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
                (+ ``_se``), ``policy/entropy``, ``policy/length``; exact tasks add ``kl/to_target`` (KL to the
                gold pi*_beta), ``exact/frontier_gap``, ``exact/unseen_mass``, and against the method's own
                population target ``kl/to_own_target``, ``exact/objective_gap``, ``exact/estimation_gap``.
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

    def stored_arrays(self, per_prompt: dict[str, Any]) -> dict[str, Any]:
        """A run's per-prompt arrays as written to its folder (``eval_final.npz``); a task may store large tables
        compactly here (the exact task: log-prob tables as uint8 codes), while the run itself keeps full precision."""
        return per_prompt

    def describe(self) -> dict[str, Any]:
        """Facts for the report (sizes, estimators, temperature)."""
        return {"kl_estimator": self.kl_estimator}

    def notes(self) -> list[str]:
        """Remarks the report prints about this task's setup (e.g. what its labels imply); Markdown sentences."""
        return []


# ------------------------------------------------------------------------------------------ capabilities


@runtime_checkable
class EnumerableEnv(Protocol):
    """An environment whose response space is enumerable: every metric of any policy table is exact.

    ref_logp_table, reward_table: (K, N) reference log-probs and gold rewards of every (prompt, response);
    prompt_ids (K,) and response_ids (N, L): the token ids that build every sequence.
    """

    ref_logp_table: Tensor
    reward_table: Tensor
    prompt_ids: Tensor
    response_ids: Tensor

    def evaluate_table(self, logp: Tensor, beta: float | None = None) -> EvalResult:
        """Exact metrics of a (K, N) log-probability table."""


@runtime_checkable
class SampleEvaluable(Protocol):
    """An environment that scores a policy given only as samples (prompts[i] -> completions[i])."""

    def evaluate_samples(self, prompts: Sequence[str], completions: Sequence[str], *, kl: float | None = None,
                         kl_se: float | None = None, kl_is_bound: bool = False,
                         lengths: Sequence[float] | None = None, seed: int = 0) -> EvalResult:
        """Gold reward and win rate of the samples; ``kl`` passed through (``kl_is_bound``: only an upper bound)."""


@runtime_checkable
class TargetEvaluable(Protocol):
    """An enumerable environment that measures a policy against a method's own population target."""

    def tabular_problem(self) -> TabularProblem:
        """The task as tables (no reward-model scores: the harness adds them for methods that use one)."""

    def target_metrics(self, result: EvalResult, target: Target) -> dict[str, float]:
        """``kl/to_own_target``, ``exact/objective_gap``, ``exact/estimation_gap`` of an evaluation of this env."""


@runtime_checkable
class RobustnessEvaluable(Protocol):
    """An environment that measures its final policy once more: at other sampling temperatures, and on shifted
    prompts (the DPO paper's Fig. 2 right and its section 6.3). The harness calls it once per run, after training,
    on the policy of the run's last :meth:`RunContext.evaluate`; the metrics become summary columns."""

    def evaluate_robustness(self, policy: nn.Module, *, temperatures: Sequence[float], seed: int = 0,
                            final: EvalResult | None = None) -> dict[str, float]:
        """Metrics named by ``report.names.at_temperature`` (one set per temperature, 0 = greedy) and
        ``report.names.on_split`` (in-distribution and shifted prompts, where the task has both); ``final`` is
        the standard evaluation of the same policy (its values may be reused where a setting repeats it)."""


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
    # TrainConfig fields this task sets for one method (e.g. eval_every for a method counted in fewer iterations than
    # the task's steps, so that every method gets about as many evaluations); the sweep's train_args win over them
    method_train_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # optional environment capabilities the task's env provides (EnumerableEnv, SampleEvaluable)
    capabilities: ClassVar[tuple[type, ...]] = ()

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def setup(self, cache_dir: Path, device: torch.device) -> TaskEnv:
        """Build (or load from ``cache_dir``) the reference model and data."""

    def train_config(self, overrides: dict[str, Any] | None = None) -> TrainConfig:
        from .config import from_mapping

        return from_mapping(TrainConfig, {**self.train_defaults, **(overrides or {})}, where="train")


# ------------------------------------------------------------------------------------------ the run context


@runtime_checkable
class RunContext(Protocol):
    """What the harness hands a method's :meth:`Method.run` (implemented by ``alignbench.runner``).

    Attributes: the task's built env, the method, the device, the cache folder, the run's seed and
    :class:`~alignbench.config.TrainConfig`, ``extra_summary`` (columns added to the run's summary row) and
    ``compute`` (``alignbench.compute.Compute``: a loop calls ``compute.watch(policy)`` once on each network it
    trains or samples, ``compute.add(...)`` for rollouts and reward queries; :meth:`evaluate` counts apart).
    """

    env: TaskEnv
    method: Method
    device: torch.device
    cache_dir: Path
    extra_summary: dict[str, Any]
    compute: Any

    @property
    def train(self) -> TrainConfig: ...

    @property
    def seed(self) -> int: ...

    def target_beta(self) -> float | None:
        """The beta of the KL-regularised objective this run aims at (None for methods swept on another axis)."""

    def evaluate(self, policy: nn.Module, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate ``policy`` on the task and log one metrics row (plus ``extra``)."""

    def log_eval(self, step: int, result: EvalResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Log an evaluation the method computed itself (e.g. an exact table)."""

    def reward_model(self) -> Any:
        """The learned reward model for this task and seed (trained once, then cached)."""

    def save_checkpoint(self, step: int, modules: dict[str, Any], extra: dict[str, Any]) -> None:
        """Atomically save everything needed to continue at ``step``."""

    def resume(self, modules: dict[str, Any], extra: dict[str, Any]) -> int:
        """Restore the last checkpoint into ``modules``; its step, or 0."""

    def check_finite(self, value: Tensor, what: str, step: int) -> None:
        """Stop the run (status failed) when ``value`` is not finite."""

    def progress(self, total: int, desc: str) -> Any:
        """A progress bar (tqdm) over ``total`` steps."""
