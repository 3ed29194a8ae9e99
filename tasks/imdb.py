"""IMDb controlled sentiment with real models: the DPO paper's setup (arXiv 2305.18290, §6.1, App. C.1).

* Reference: a causal LM (default ``gpt2-large``). The paper first fine-tunes it on IMDb train reviews;
  set ``sft_steps`` > 0 to do that here (maximum likelihood on the train reviews, cached).
* Prompts: prefixes of 2 to 8 policy tokens of IMDb reviews (eval prompts from the ``eval_split``
  reviews, train prompts from the ``train_split`` reviews).
* Gold reward: p(positive) of the sentiment classifier ``siebert/sentiment-roberta-large-english`` on
  prompt + completion (the positive label is found from the classifier's ``id2label``).
* Preferences: ``completions_per_prompt`` reference samples per train prefix (4 in the paper), every pair
  of them (6 per prefix) labelled by the classifier (the higher p(positive) is chosen; ``bt_scale`` > 0
  samples Bradley-Terry labels instead).

Every model and dataset name may be a local path; see :mod:`tasks._presets`. Needs a GPU for real sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignbench.config import check_int, check_nonnegative, param
from alignbench.errors import ConfigError
from alignbench.generation import sample
from alignbench.tasks._presets import PresetConfig, PresetContext, PresetTask, completion_texts, pairs_from_scores
from alignbench.registry import register_task


@dataclass(frozen=True)
class ImdbConfig(PresetConfig):
    policy: str = param("gpt2-large", "reference policy: a causal LM (hub name or save_pretrained folder)")
    judge: str = param("siebert/sentiment-roberta-large-english", "sentiment classifier: gold reward = p(positive)")
    judge_input: str = param("concat", "the classifier scores prompt + completion")
    judge_output: str = param("prob", "'prob': p(judge_label)")
    dataset: str = param("stanfordnlp/imdb", "IMDb reviews (a 'text' column): hub name or local copy")
    eval_split: str = param("test", "split whose review prefixes are the eval prompts")
    max_new_tokens: int = param(48, "longest completion in tokens")
    sft_max_tokens: int = param(128, "SFT review truncation in tokens")
    prompt_min_tokens: int = param(2, "shortest prompt prefix in tokens (paper: 2)")
    prompt_max_tokens: int = param(8, "longest prompt prefix in tokens (paper: 8)")
    n_train_prompts: int = param(1000, "train prefixes for preference data")
    completions_per_prompt: int = param(4, "reference samples per train prefix; every pair is labelled (4 -> 6 pairs)")
    bt_scale: float = param(0.0, "0: the higher p(positive) is chosen; > 0: Bradley-Terry labels with this scale")
    sft_reviews: int = param(0, "train reviews used by SFT (0: all)")
    text_column: str = param("text", "column holding the review text")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("prompt_min_tokens", self.prompt_min_tokens, 1)
        check_int("prompt_max_tokens", self.prompt_max_tokens, self.prompt_min_tokens)
        check_int("n_train_prompts", self.n_train_prompts, 1)
        check_int("completions_per_prompt", self.completions_per_prompt, 2)
        check_nonnegative("bt_scale", self.bt_scale)
        check_int("sft_reviews", self.sft_reviews, 0)
        if not self.text_column:
            raise ConfigError("text_column", "must name a column")


def clean_review(text: str) -> str:
    return " ".join(str(text).replace("<br />", " ").replace("<br/>", " ").split())


@register_task("imdb")
class ImdbTask(PresetTask):
    description = "IMDb sentiment (DPO paper): gpt2-large reference, sentiment-classifier gold reward; needs hub access or local copies"
    config_cls = ImdbConfig
    # the DPO paper's DPO settings: batch 64, lr 1e-6, 150 warmup steps, evaluation every 100 steps
    train_defaults = {"steps": 1000, "batch_size": 64, "lr": 1e-6, "warmup_steps": 150, "eval_every": 100,
                      "max_grad_norm": 10.0}

    def _reviews(self, which: str) -> list[str]:
        cfg: ImdbConfig = self.config
        ds = self.split(which)
        if cfg.text_column not in ds.column_names:
            raise ConfigError("text_column", f"'{cfg.text_column}' is not a column of '{cfg.dataset}' "
                                             f"(columns: {', '.join(ds.column_names)})")
        return [clean_review(t) for t in ds[cfg.text_column] if t and str(t).strip()]

    def _prefixes(self, ctx: PresetContext, reviews: list[str], idx: np.ndarray, rng: np.random.Generator) -> list[str]:
        cfg: ImdbConfig = self.config
        texts = [reviews[int(i)] for i in idx]
        ids = ctx.tokenizer(texts, add_special_tokens=False)["input_ids"]
        out = []
        for row in ids:
            k = int(rng.integers(cfg.prompt_min_tokens, cfg.prompt_max_tokens + 1))
            k = min(k, max(1, len(row) - 1))
            p = ctx.tokenizer.decode(row[:k])
            if p.strip():
                out.append(p)
        return out

    def sft_texts(self, ctx: PresetContext) -> tuple[list[str], list[str]]:
        cfg: ImdbConfig = self.config
        reviews = self._reviews("train")
        if cfg.sft_reviews:
            idx = np.random.default_rng(cfg.seed).permutation(len(reviews))[: cfg.sft_reviews]
            reviews = [reviews[int(i)] for i in idx]
        eos = ctx.tokenizer.eos_token or ""
        return [""] * len(reviews), [r + eos for r in reviews]

    def sft_data_key(self) -> dict[str, Any]:
        return {"sft_reviews": self.config.sft_reviews, "text_column": self.config.text_column}

    def build_pairs(self, ctx: PresetContext):
        cfg: ImdbConfig = self.config
        rng = np.random.default_rng(cfg.seed + 1)
        train_reviews = self._reviews("train")
        eval_reviews = self._reviews("eval")
        train_prompts = self._prefixes(ctx, train_reviews, rng.integers(0, len(train_reviews), cfg.n_train_prompts), rng)
        per_prompt = cfg.completions_per_prompt * (cfg.completions_per_prompt - 1) // 2
        n_eval_pp = max(1, math.ceil(cfg.n_eval_pairs / per_prompt))
        # eval pairs from the tail of the eval-prompt permutation (eval prompts come from its head)
        perm = np.random.default_rng(cfg.seed + 2).permutation(len(eval_reviews))
        eval_pair_prompts = self._prefixes(ctx, eval_reviews, perm[::-1][:n_eval_pp], rng)
        rows = {}
        scores_all = []
        for name, prompts, seed in (("train", train_prompts, cfg.seed + 11), ("eval", eval_pair_prompts, cfg.seed + 12)):
            k = cfg.completions_per_prompt
            rep = [p for p in prompts for _ in range(k)]
            smp = sample(ctx.model, ctx.tokenizer, rep, ctx.spec, temperature=1.0, generator_seed=seed,
                         max_batch=cfg.eval_batch_size)
            texts = completion_texts(ctx.tokenizer, smp, ctx.spec)
            scores = ctx.judge(rep, texts).numpy().reshape(len(prompts), k)
            scores_all.append(scores)
            grouped = [texts[i * k:(i + 1) * k] for i in range(len(prompts))]
            rows[name] = pairs_from_scores(prompts, grouped, scores, bt_scale=cfg.bt_scale, rng=rng)
        rows["eval"] = {c: v[: cfg.n_eval_pairs] for c, v in rows["eval"].items()}
        meta = {"reference_mean_reward": float(scores_all[0].mean()), "n_train_prompts": len(train_prompts)}
        return rows["train"], rows["eval"], train_prompts, meta

    def eval_prompts(self, ctx: PresetContext) -> list[str]:
        cfg: ImdbConfig = self.config
        reviews = self._reviews("eval")
        perm = np.random.default_rng(cfg.seed + 2).permutation(len(reviews))
        rng = np.random.default_rng(cfg.seed + 3)
        out: list[str] = []
        seen: set[str] = set()
        for start in range(0, len(perm), 4 * cfg.n_eval_prompts):
            for p in self._prefixes(ctx, reviews, perm[start:start + 4 * cfg.n_eval_prompts], rng):
                if p not in seen:
                    seen.add(p)
                    out.append(p)
                    if len(out) == cfg.n_eval_prompts:
                        return out
        return out

    def facts(self) -> dict[str, Any]:
        cfg: ImdbConfig = self.config
        return {"prompts": f"prefixes of {cfg.prompt_min_tokens}-{cfg.prompt_max_tokens} tokens of {cfg.dataset} "
                           f"'{cfg.eval_split}' reviews",
                "preferences": f"{cfg.completions_per_prompt} reference samples per prefix, all pairs, labelled by the judge"}
