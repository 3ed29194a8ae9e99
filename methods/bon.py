"""Best-of-N: draw n completions from the reference and keep the one the learned reward model scores highest.

Nothing is trained (besides the shared reward model). The sweep varies ``n``.

* On an exact task (``env.exact``) the best-of-n distribution is computed exactly from the reference
  table and the reward model's score of every response (:func:`alignbench.exact.best_of_n_logp`), so
  its gold reward and its KL(pi_BoN || pi_ref) are exact.
* On a sampled task, n completions per held-out prompt are sampled from the reference, the reward
  model's best is kept and evaluated by the task; the KL is the analytic value
  log n - (n - 1)/n (Stiennon et al. 2020), which is an upper bound (Beirami et al. 2024,
  arXiv 2401.01879), reported with ``kl/is_bound = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING


from alignbench.api import EnumerableEnv, Method, SampleEvaluable, TabularProblem, Target, NoTarget
from alignbench.config import check_int, param
from alignbench.exact import best_of_n_logp, expected
from alignbench.generation import sample
from alignbench.registry import register_method
from alignbench.reward_model import rm_score_table

if TYPE_CHECKING:  # pragma: no cover
    from alignbench.api import RunContext

@dataclass(frozen=True)
class BestOfNConfig:
    """Best-of-N settings (no beta: the sweep varies n)."""

    n: int = param(4, "completions drawn from the reference per prompt; the reward model's best is kept")
    samples_per_prompt: int = param(1, "sampled tasks: best-of-n draws per held-out prompt (more: smaller standard errors)")
    eval_prompts: int | None = param(None, "sampled tasks: number of held-out prompts used (None: all)")
    max_batch: int = param(512, "sampled tasks: sequences per generation batch")

    def __post_init__(self) -> None:
        check_int("n", self.n, 1)
        check_int("samples_per_prompt", self.samples_per_prompt, 1)
        if self.eval_prompts is not None:
            check_int("eval_prompts", self.eval_prompts, 1)
        check_int("max_batch", self.max_batch, 1)


def bon_kl_bound(n: int) -> float:
    """Analytic KL(pi_BoN || pi_ref) = log n - (n - 1)/n (Stiennon et al. 2020): an upper bound."""
    return math.log(n) - (n - 1) / n


@register_method("bon")
class BestOfN(Method):
    """Best-of-N sampling from the reference with the learned reward model as the judge."""

    description = "best-of-N from the reference, ranked by the learned reward model (exact on exact tasks)"
    config_cls = BestOfNConfig  # type: ignore[assignment]  (no beta: swept over n)
    data_format = "online"
    needs_reward_model = True
    needs_preferences = True
    sweep_param = "n"
    default_grid = (1, 2, 4, 8, 16, 32, 64)
    requires_one_of = (EnumerableEnv, SampleEvaluable)  # exact tables, or the task scoring given samples
    proxy_metric = "bon/rm_score"  # the reward model's mean score of the kept completions

    def population_target(self, problem: TabularProblem) -> Target | NoTarget:
        """Its own policy, exactly: P(best = y) = F(y)^n - F_<(y)^n under pi_ref ranked by r_RM (nothing is estimated)."""
        if problem.rm_reward is None:
            return NoTarget("the reward model's score table is not available")
        n = self.config.n  # type: ignore[attr-defined]
        return Target(best_of_n_logp(problem.ref_logp.double(), problem.rm_reward.double(), n), "best-of-n of pi_ref by r_RM")

    def run(self, ctx: "RunContext") -> None:
        cfg: BestOfNConfig = self.config
        env = ctx.env
        rm = ctx.reward_model()
        ctx.extra_summary.update(rm.summary())
        bound = bon_kl_bound(cfg.n)
        extra = {"bon/n": float(cfg.n), "kl/bon_bound": bound}
        if isinstance(env, EnumerableEnv):
            scores = rm_score_table(env, rm)
            logp = best_of_n_logp(env.ref_logp_table, scores, cfg.n)
            result = env.evaluate_table(logp, beta=None)
            result.metrics["kl/is_bound"] = 0.0
            extra["bon/rm_score"] = float(expected(logp, scores))
            extra["bon/rm_score_ref"] = float(expected(env.ref_logp_table, scores))
            ctx.log_eval(0, result, extra)
            return
        prompts = list(env.prompts["eval"])
        if cfg.eval_prompts is not None:
            prompts = prompts[:cfg.eval_prompts]
        prompts = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
        flat = [p for p in prompts for _ in range(cfg.n)]
        s = sample(env.reference, env.tokenizer, flat, env.generation, generator_seed=ctx.seed,
                   max_batch=cfg.max_batch)
        scores = rm.score(s.input_ids, s.attention_mask).float().cpu().view(len(prompts), cfg.n)
        best = scores.argmax(-1)
        rows = [i * cfg.n + int(j) for i, j in enumerate(best)]
        texts = [s.texts[r] for r in rows]
        lengths = [float(s.lengths[r]) for r in rows]
        result = env.evaluate_samples(prompts, texts, kl=bound, kl_se=0.0, kl_is_bound=True, lengths=lengths,
                                      seed=ctx.seed)
        result.metrics["kl/is_bound"] = 1.0
        extra["bon/rm_score"] = float(scores.max(-1).values.mean())
        extra["bon/rm_score_ref"] = float(scores.mean())
        ctx.log_eval(0, result, extra)
