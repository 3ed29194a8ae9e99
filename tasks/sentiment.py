"""Controlled sentiment generation, embedded: the DPO paper's IMDb experiment at CPU scale.

Everything is built locally, with no download:

* **Corpus**: movie-review sentences from a seeded grammar (subjects, aspects, copulas, verbs,
  boosters, negation, conjunctions, closers) with a latent per-review tone drawn from
  ``sentiment_mix`` (positive / neutral / negative). Clauses mostly follow the latent tone, "but"
  clauses flip it, and a few negated clauses ("the plot is not bad") invert the adjective, so the
  distribution is mixed and a small LM has real structure to learn. Every word that carries
  sentiment is in VADER's lexicon (boosters and negations are VADER's own), so the gold reward is
  learnable from the text.
* **Tokenizer**: a word-level ``PreTrainedTokenizerFast`` over the corpus vocabulary; ``<eos>`` ends a
  review. Saved with ``save_pretrained`` next to the reference model.
* **Reference (SFT) policy**: a tiny GPT-2 trained by maximum likelihood on the train reviews,
  cached under ``cache_dir/sentiment/<hash of the build config>/`` (safetensors, built in a temporary
  folder and moved into place under a file lock), so later sweeps load it in about a second.
* **Prompts**: the first 2 to 4 words of reviews (train prompts from train reviews, distinct eval
  prompts from held-out reviews). Completions: up to ``max_new_tokens`` tokens, ending at ``<eos>``.
* **Gold reward**: the VADER compound score (in [-1, 1]) of the completion text (``reward_on`` can
  switch to prompt + completion).
* **Preferences**: two reference samples per train prompt (resampled while identical), labelled by
  Bradley-Terry on the gold reward: P(a preferred) = sigmoid((r_a - r_b) / bt_scale). VADER lies in
  [-1, 1], so the default scale 0.15 makes labels informative but noisy: a reward gap of 0.15 gives
  73% / 27%, a gap of 0.5 gives 97%, equal rewards a coin flip. Completions in the data end with the
  ``<eos>`` text when the sample ended, so training teaches the policy to stop.

Evaluation (:class:`~alignbench.evaluation.SampledTaskEnv`): ``n_eval_samples`` completions for each
of ``n_eval_prompts`` held-out prompts at ``temperature``; KL(pi || pi_ref) from the policy's samples
(k1, with k3 alongside), win rate against the reference's samples, standard errors over prompts.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignbench.api import GenerationSpec, SampleEvaluable, Task
from alignbench.config import (check_choice, check_int, check_positive, check_range, param, stable_hash,
                               to_dict)
from alignbench.errors import ConfigError
from alignbench.evaluation import SampledTaskEnv
from alignbench.generation import sample
from alignbench.models import quiet
from alignbench.io import read_json, write_json
from alignbench.models import freeze, tiny_gpt2, train_causal_lm, weights_fingerprint
from alignbench.registry import register_task
from alignbench.tokenization import EOS, PAD, build_word_tokenizer
from alignbench.tasks._sentiment_shift import shifted_prompts

# ------------------------------------------------------------------------------------------ grammar

POSITIVE = ("great", "wonderful", "brilliant", "excellent", "superb", "beautiful", "charming", "clever",
            "delightful", "enjoyable", "fantastic", "amazing", "perfect", "lovely", "impressive",
            "entertaining", "fun", "funny", "good", "nice", "powerful", "exciting", "creative",
            "heartfelt", "awesome", "outstanding", "smart", "sweet", "thrilling", "fresh", "strong")
NEGATIVE = ("boring", "awful", "terrible", "horrible", "bad", "dull", "weak", "poor", "stupid", "lame",
            "annoying", "painful", "messy", "ugly", "dreadful", "pathetic", "disappointing", "ridiculous",
            "confusing", "lazy", "tired", "flawed", "forced", "dumb", "fake", "awkward")
# neutral: no VADER valence, or a mild one (|valence| <= 1.2: ok, okay, fine, solid, adequate, alright)
NEUTRAL = ("ok", "okay", "fine", "solid", "adequate", "alright", "average", "typical", "simple", "long",
           "short", "predictable", "familiar", "standard", "plain", "slow", "quiet", "mixed", "modest",
           "uneven", "conventional", "straightforward")
TONES = ("positive", "neutral", "negative")
ADJECTIVES = {"positive": POSITIVE, "neutral": NEUTRAL, "negative": NEGATIVE}
# VADER boosters (intensify) and dampeners (weaken)
BOOSTERS = ("really", "quite", "very", "so", "extremely", "totally", "absolutely", "incredibly",
            "somewhat", "slightly", "particularly")
VERBS = {"positive": ("loved", "enjoyed", "liked", "admired"),
         "neutral": ("watched", "saw", "finished", "remember"),
         "negative": ("hated", "disliked")}
NOUNS = {"positive": ("film", "movie", "story", "debut", "masterpiece", "experience"),
         "neutral": ("film", "movie", "story", "debut", "sequel", "experience"),
         "negative": ("film", "movie", "story", "debut", "mess", "disaster")}
CLOSERS = {"positive": ("i would recommend it", "highly recommended", "i loved every minute", "worth watching",
                        "a real pleasure"),
           "neutral": ("i watched it once", "see it if you want", "that is all", "it is what it is"),
           "negative": ("avoid it", "a total waste of time", "what a waste", "i was bored", "skip it")}
SUBJECTS = ("the film", "this movie", "the movie", "this film", "the story", "the director", "the cast",
            "the script", "the ending", "the sequel", "the show")
ASPECTS = ("acting", "plot", "music", "pacing", "dialogue", "cinematography", "soundtrack", "script",
           "ending", "story", "direction", "editing", "humor", "casting", "score", "setting")
PLURAL_ASPECTS = ("characters", "performances", "visuals", "effects", "actors", "jokes")
OPENERS = ("honestly", "overall", "in short", "to be fair", "i think", "i felt", "frankly", "in the end")
JOIN_SAME = ("and", "and also", "while", "plus")
JOIN_FLIP = ("but", "but then", "though", "yet")
COPULAS = ("is", "was", "feels", "seems")
COPULAS_PLURAL = ("are", "were", "feel", "seem")


def sentiment_words() -> dict[str, tuple[str, ...]]:
    """The words meant to carry sentiment, by tone (for the lexicon check)."""
    return {"positive": POSITIVE + VERBS["positive"], "negative": NEGATIVE + VERBS["negative"] + ("mess", "disaster")}


def _opposite(tone: str, rng: random.Random) -> str:
    if tone == "positive":
        return "negative"
    if tone == "negative":
        return "positive"
    return TONES[0] if rng.random() < 0.5 else TONES[2]


def _clause(tone: str, rng: random.Random, *, first: bool) -> list[str]:
    """One clause of the given tone (a negated clause uses an adjective of the opposite tone)."""
    pick = rng.choice
    adv = [pick(BOOSTERS)] if rng.random() < 0.4 else []
    kind = rng.randrange(5 if first else 6)
    negated = tone != "neutral" and rng.random() < 0.1
    adj = pick(ADJECTIVES[_opposite(tone, rng) if negated else tone])
    mod = ["not"] if negated else adv
    if kind == 0:  # "the film was really great"
        subj = pick(SUBJECTS) if first or rng.random() < 0.5 else "it"
        return [*subj.split(), pick(COPULAS), *mod, adj]
    if kind == 1:  # "the acting is not bad"
        if rng.random() < 0.75:
            return ["the", pick(ASPECTS), pick(COPULAS), *mod, adj]
        return ["the", pick(PLURAL_ASPECTS), pick(COPULAS_PLURAL), *mod, adj]
    if kind == 2:  # "this movie has wonderful music"
        subj = pick(SUBJECTS) if first or rng.random() < 0.5 else "it"
        verb = "has" if rng.random() < 0.7 else "had"
        return [*subj.split(), verb, *adv, pick(ADJECTIVES[tone]), pick(ASPECTS + PLURAL_ASPECTS)]
    if kind == 3:  # "i loved the ending"
        obj = pick(("the film", "it", "this movie", "the ending", "the story")) if rng.random() < 0.5 \
            else "the " + pick(ASPECTS + PLURAL_ASPECTS)
        boost = ["really"] if tone != "neutral" and rng.random() < 0.3 else []
        return ["i", *boost, pick(VERBS[tone]), *obj.split()]
    if kind == 4:  # "it was a clever debut"
        adv4 = [a for a in adv if a != "so"]
        return ["it", pick(("is", "was")), "a", *adv4, pick(ADJECTIVES[tone]), pick(NOUNS[tone])]
    # kind 5 (not first): a bare "adjective aspect" fragment, "... and great music"
    return [pick(ADJECTIVES[tone]), pick(ASPECTS + PLURAL_ASPECTS)]


def _weighted(rng: random.Random, items: tuple, weights: tuple[float, ...]):
    x = rng.random() * sum(weights)
    for item, w in zip(items, weights):
        if x < w:
            return item
        x -= w
    return items[-1]


def generate_review(rng: random.Random, mix: tuple[float, ...]) -> tuple[str, str]:
    """One review (words joined by spaces) and its latent tone."""
    tone = _weighted(rng, TONES, tuple(mix))
    n_clauses = _weighted(rng, (1, 2, 3), (0.3, 0.45, 0.25))
    words: list[str] = []
    if rng.random() < 0.25:
        words += rng.choice(OPENERS).split()
    first_tone = tone if rng.random() < 0.8 else rng.choice(TONES)
    words += _clause(first_tone, rng, first=True)
    current = first_tone
    for _ in range(n_clauses - 1):
        if rng.random() < 0.25:
            words += rng.choice(JOIN_FLIP).split()
            current = _opposite(current, rng)
        else:
            words += rng.choice(JOIN_SAME).split()
            current = tone if rng.random() < 0.85 else current
        words += _clause(current, rng, first=False)
    if rng.random() < 0.25:
        words += ["and", *rng.choice(CLOSERS[tone]).split()]
    return " ".join(words), tone


def generate_corpus(n: int, seed: int, mix: tuple[float, ...], max_words: int) -> list[str]:
    """``n`` reviews of at most ``max_words`` words (longer draws are redrawn)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        text, _ = generate_review(rng, mix)
        if len(text.split()) <= max_words:
            out.append(text)
    return out


def grammar_vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order (the tokenizer's vocabulary)."""
    words: list[str] = []
    groups = [SUBJECTS, ASPECTS, PLURAL_ASPECTS, OPENERS, JOIN_SAME, JOIN_FLIP, COPULAS, COPULAS_PLURAL,
              BOOSTERS, POSITIVE, NEUTRAL, NEGATIVE, ("it", "i", "has", "had", "a", "not", "the", "is", "was"),
              *VERBS.values(), *NOUNS.values(), *(c for cs in CLOSERS.values() for c in cs)]
    for g in groups:
        for phrase in (g if isinstance(g, tuple) else (g,)):
            for w in phrase.split():
                if w not in words:
                    words.append(w)
    return words


# ------------------------------------------------------------------------------------------ reward

_VADER = None


def _vader():
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return _VADER


@lru_cache(maxsize=200_000)
def vader_compound(text: str) -> float:
    """VADER compound score of ``text`` in [-1, 1] (0 for an empty text)."""
    return float(_vader().polarity_scores(text)["compound"]) if text.strip() else 0.0


def _strip_special(text: str) -> str:
    return " ".join(w for w in text.split() if w not in (EOS, PAD))


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class SentimentConfig:
    seed: int = param(0, "seed of the corpus, the reference model's training and the preference sampling")
    n_reviews: int = param(24000, "reviews in the generated corpus (train + held-out)")
    heldout_fraction: float = param(0.1, "share of reviews held out (eval prompts and eval pairs)")
    sentiment_mix: tuple[float, ...] = param((0.3, 0.3, 0.4), "latent tone shares: positive, neutral, negative")
    max_review_words: int = param(17, "longest review in words (so completions fit max_new_tokens)")
    n_layer: int = param(2, "reference GPT-2 layers")
    n_embd: int = param(64, "reference GPT-2 width")
    n_head: int = param(4, "reference GPT-2 attention heads")
    ref_steps: int = param(1200, "maximum-likelihood steps of the reference model")
    ref_batch_size: int = param(64, "reviews per reference training step")
    ref_lr: float = param(3e-3, "reference training learning rate (AdamW, cosine)")
    max_new_tokens: int = param(16, "longest completion in tokens (the end token included)")
    n_train_pairs: int = param(4096, "preference pairs for training (one per train prompt)")
    n_eval_pairs: int = param(256, "held-out preference pairs (prompts from held-out reviews)")
    bt_scale: float = param(0.15, "Bradley-Terry scale of the labels: P(a > b) = sigmoid((r_a - r_b) / scale)")
    n_eval_prompts: int = param(64, "distinct held-out prompts used by evaluate()")
    n_eval_samples: int = param(8, "completions per eval prompt (policy and reference)")
    temperature: float = param(1.0, "sampling temperature of evaluation and rollouts (data is sampled at 1.0)")
    reward_on: str = param("completion", "what VADER scores: 'completion' or 'prompt+completion'")
    eval_batch_size: int = param(1024, "rows per sampling / scoring batch in evaluation")
    data_seed: int | None = param(None, "seed of the preference data (pair prompts, sampled completions, labels), "
                                        "hence of the reward model trained on it; None: `seed`, as before. The "
                                        "corpus, reference, evaluation prompts and gold reward stay those of `seed` "
                                        "(the cache entry is per data seed: its reference is rebuilt, identically)")
    shift_prompts: int = param(0, "prompts of a shifted grammar (other subject nouns) on which the final policy is "
                                  "also evaluated (0: none; distribution shift)")

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0)
        if self.data_seed is not None:
            check_int("data_seed", self.data_seed, 0)
        check_int("n_reviews", self.n_reviews, 50)
        check_range("heldout_fraction", self.heldout_fraction, 0.01, 0.5)
        if len(self.sentiment_mix) != 3:
            raise ConfigError("sentiment_mix", f"needs 3 shares (positive, neutral, negative), got {self.sentiment_mix!r}")
        for i, v in enumerate(self.sentiment_mix):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"sentiment_mix[{i}]", f"must be a number >= 0, got {v!r}")
        if sum(self.sentiment_mix) <= 0:
            raise ConfigError("sentiment_mix", "shares must not all be 0")
        check_int("max_review_words", self.max_review_words, 4)
        check_int("n_layer", self.n_layer, 1)
        check_int("n_embd", self.n_embd, 8)
        check_int("n_head", self.n_head, 1)
        if self.n_embd % self.n_head:
            raise ConfigError("n_head", f"must divide n_embd={self.n_embd}, got {self.n_head}")
        check_int("ref_steps", self.ref_steps, 1)
        check_int("ref_batch_size", self.ref_batch_size, 1)
        check_positive("ref_lr", self.ref_lr)
        check_int("max_new_tokens", self.max_new_tokens, 2)
        check_int("n_train_pairs", self.n_train_pairs, 1)
        check_int("n_eval_pairs", self.n_eval_pairs, 1)
        check_positive("bt_scale", self.bt_scale)
        check_int("n_eval_prompts", self.n_eval_prompts, 2)
        check_int("n_eval_samples", self.n_eval_samples, 1)
        check_range("temperature", self.temperature, 0.0, 10.0)
        check_choice("reward_on", self.reward_on, ("completion", "prompt+completion"))
        check_int("eval_batch_size", self.eval_batch_size, 1)
        check_int("shift_prompts", self.shift_prompts, 0)

    def build_key(self) -> dict[str, Any]:
        """The fields that determine the cached reference model and data."""
        keep = ("seed", "n_reviews", "heldout_fraction", "sentiment_mix", "max_review_words", "n_layer", "n_embd",
                "n_head", "ref_steps", "ref_batch_size", "ref_lr", "max_new_tokens", "n_train_pairs",
                "n_eval_pairs", "bt_scale", "reward_on")
        d = to_dict(self)
        extra = {"data_seed": self.data_seed} if self.data_seed is not None else {}  # default: the keys as before
        return {"version": BUILD_VERSION, **{k: d[k] for k in keep}, **extra}

    @property
    def pair_seed(self) -> int:
        """The seed of the preference data (pair prompts, sampled completions, labels): ``data_seed`` or ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed


BUILD_VERSION = 2  # bump when the grammar or the build changes, to invalidate caches


# ------------------------------------------------------------------------------------------ env


class SentimentEnv(SampledTaskEnv):
    has_gold_reward = True

    def __init__(self, config: SentimentConfig, **kwargs: Any):
        super().__init__(**kwargs)
        self.config = config

    def gold_reward(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        if self.config.reward_on == "completion":
            texts = [_strip_special(c) for c in completions]
        else:
            texts = [_strip_special(p + " " + c) for p, c in zip(prompts, completions)]
        return torch.tensor([vader_compound(t) for t in texts], dtype=torch.float32)

    def evaluate_robustness(self, policy: torch.nn.Module, *, temperatures=(), seed: int = 0,
                            final: Any = None) -> dict[str, float]:
        """Per-temperature metrics on the eval prompts, and the shifted prompt set's (``shift_prompts``)."""
        from alignbench.robustness import sampled_robustness

        return sampled_robustness(self, policy, temperatures=temperatures, seed=seed, final=final)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        meta = getattr(self, "meta", {})
        d.update({
            "gold_reward": f"VADER compound score of the {self.config.reward_on} text, in [-1, 1]",
            "reference": f"tiny GPT-2 ({self.config.n_layer} layers, d={self.config.n_embd}) trained "
                         f"{self.config.ref_steps} steps on {meta.get('n_train_reviews', '?')} grammar reviews",
            "preferences": f"2 reference samples per prompt (T=1), Bradley-Terry labels with scale {self.config.bt_scale}",
            "n_train_pairs": self.config.n_train_pairs,
            "n_eval_pairs": self.config.n_eval_pairs,
            "vocab_size": len(self.tokenizer),
            "reference_mean_reward_train_pairs": meta.get("reference_mean_reward"),
        })
        return d


def _tokenize_reviews(tokenizer, reviews: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask of ``review <eos>`` rows, (N, max_len)."""
    enc = tokenizer([r + " " + EOS for r in reviews], add_special_tokens=False, padding="max_length",
                    truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


def _prompt_of(review: str, rng: np.random.Generator) -> str:
    words = review.split()
    k = int(rng.integers(2, 5))  # 2 to 4 words
    k = min(k, len(words) - 1)  # leave at least one word to complete
    return " ".join(words[: max(k, 1)])


def _completion_text(tokenizer, comp_ids: torch.Tensor, mask: torch.Tensor) -> str:
    """Completion tokens as text, keeping the end token (so data teaches the policy to stop)."""
    return " ".join(tokenizer.convert_ids_to_tokens(comp_ids[mask.bool()].tolist()))


def _sample_pairs(model, tokenizer, prompts: list[str], spec: GenerationSpec, seed: int, reward_fn,
                  bt_scale: float, rng: np.random.Generator) -> dict[str, list]:
    """Two reference samples per prompt (resampled while identical), labelled by Bradley-Terry."""
    a_txt: list[str | None] = [None] * len(prompts)
    b_txt: list[str | None] = [None] * len(prompts)
    todo = list(range(len(prompts)))
    for attempt in range(8):
        if not todo:
            break
        rep = [prompts[i] for i in todo for _ in range(2)]
        smp = sample(model, tokenizer, rep, spec, temperature=1.0, generator_seed=seed * 1000 + attempt,
                     max_batch=2048)
        cm = smp.completion_mask[:, smp.input_ids.shape[1] - smp.completions.shape[1]:]
        texts = [_completion_text(tokenizer, smp.completions[j], cm[j]) for j in range(len(rep))]
        still = []
        for k, i in enumerate(todo):
            ta, tb = texts[2 * k], texts[2 * k + 1]
            if ta == tb and attempt < 7:
                still.append(i)
            else:
                a_txt[i], b_txt[i] = ta, tb
        todo = still
    ra = reward_fn(prompts, a_txt).numpy().astype(np.float64)
    rb = reward_fn(prompts, b_txt).numpy().astype(np.float64)
    p_a = 1.0 / (1.0 + np.exp(-(ra - rb) / bt_scale))
    a_wins = rng.random(len(prompts)) < p_a
    chosen = [a if w else b for a, b, w in zip(a_txt, b_txt, a_wins)]
    rejected = [b if w else a for a, b, w in zip(a_txt, b_txt, a_wins)]
    return {"prompt": list(prompts), "chosen": chosen, "rejected": rejected,
            "chosen_reward": np.where(a_wins, ra, rb).tolist(), "rejected_reward": np.where(a_wins, rb, ra).tolist()}


@register_task("sentiment")
class SentimentTask(Task):
    description = ("controlled sentiment generation on grammar movie reviews: tiny GPT-2 reference, "
                   "VADER gold reward, CPU, no downloads")
    config_cls = SentimentConfig
    capabilities = (SampleEvaluable,)
    # budgets of the default sweep (3 seeds within 15 minutes on 2 cores, docs/performance.md): 100 offline steps
    # of 32 pairs, evaluated every 25; online methods 50 iterations of 128 rollouts of up to 16 tokens, PPO 20
    # iterations (8 minibatch steps each); rewards had flattened by iteration 50 at the default betas in the
    # previous round's 150-iteration runs. The sampled evaluation makes each run ~2x an exact-task run, so the
    # default set is one method per family and variant that the exact task does not already separate (the exact
    # task runs all of them): offline with a reference (DPO, IPO, KTO), reference-free (SimPO), online against the
    # learned reward model (PPO, RLOO, GRPO, online DPO), and best-of-N.
    default_methods = ("dpo", "ipo", "kto", "simpo", "ppo", "rloo", "grpo", "online-dpo", "bon")
    method_defaults = {"ppo": {"iterations": 20}, "ppo-gt": {"iterations": 20}, "rloo": {"iterations": 50},
                       "rloo-gt": {"iterations": 50}, "grpo": {"iterations": 50}, "online-dpo": {"iterations": 50}}
    # four evaluations after step 0 for every method, as the convergence test needs (report/convergence.py)
    method_train_defaults = {"ppo": {"eval_every": 5}, "ppo-gt": {"eval_every": 5},
                             **{m: {"eval_every": 13} for m in ("rloo", "rloo-gt", "grpo", "online-dpo")}}
    # eval_temperatures off: four more sampled evaluations add ~0.8 s a run (12% of a DPO run, 3-4% of an online
    # run; docs/robustness.md), more than the default sweep's time budget spares; configs/shift.yaml turns them on
    train_defaults = {"steps": 100, "batch_size": 32, "lr": 1e-3, "warmup_steps": 10, "eval_every": 25,
                      "max_grad_norm": 10.0, "eval_temperatures": ()}

    def setup(self, cache_dir: Path, device: torch.device) -> SentimentEnv:
        from alignbench import cache

        cfg: SentimentConfig = self.config
        key = cfg.build_key()
        folder = Path(cache_dir) / "sentiment" / stable_hash(key, 12)
        with quiet():
            cache.entry(folder, lambda tmp: _build(cfg, key, tmp), what="sentiment reference model and data")
            return _load(cfg, folder, device)


def _build(cfg: SentimentConfig, key: dict[str, Any], folder: Path) -> None:
    """Corpus, tokenizer, reference model and preference data, written to ``folder`` (a temporary folder of
    the cache service, which checksums it and renames it into place)."""
    from datasets import Dataset

    t0 = time.perf_counter()
    torch_threads = torch.get_num_threads()
    reviews = generate_corpus(cfg.n_reviews, cfg.seed, tuple(cfg.sentiment_mix), cfg.max_review_words)
    n_held = max(2, int(round(cfg.heldout_fraction * len(reviews))))
    train_reviews, held_reviews = reviews[n_held:], reviews[:n_held]
    vocab = list(dict.fromkeys(w for r in reviews for w in r.split()))  # the corpus vocabulary
    tokenizer = build_word_tokenizer(vocab)
    max_len = cfg.max_review_words + 1
    ids, mask = _tokenize_reviews(tokenizer, train_reviews, max_len)
    model = tiny_gpt2(len(tokenizer), n_positions=max(32, cfg.max_review_words + cfg.max_new_tokens + 4),
                      n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, seed=cfg.seed)
    losses = train_causal_lm(model, ids, mask, steps=cfg.ref_steps, batch_size=cfg.ref_batch_size, lr=cfg.ref_lr,
                             seed=cfg.seed, attention_mask=mask, desc="sentiment reference (MLE)")
    freeze(model)
    t_train = time.perf_counter() - t0

    spec = GenerationSpec(max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, temperature=1.0)
    rng = np.random.default_rng(cfg.pair_seed + 1)  # the data streams: pair prompts, completions, labels
    train_prompts = [_prompt_of(train_reviews[int(i)], rng)
                     for i in rng.integers(0, len(train_reviews), cfg.n_train_pairs)]
    eval_pair_prompts = [_prompt_of(held_reviews[int(i)], rng)
                         for i in rng.integers(0, len(held_reviews), cfg.n_eval_pairs)]

    def reward_fn(prompts, completions):
        if cfg.reward_on == "completion":
            texts = [_strip_special(c) for c in completions]
        else:
            texts = [_strip_special(p + " " + c) for p, c in zip(prompts, completions)]
        return torch.tensor([vader_compound(t) for t in texts], dtype=torch.float64)

    with torch.random.fork_rng(devices=[]):
        train_pairs = _sample_pairs(model, tokenizer, train_prompts, spec, cfg.pair_seed + 11, reward_fn, cfg.bt_scale, rng)
        eval_pairs = _sample_pairs(model, tokenizer, eval_pair_prompts, spec, cfg.pair_seed + 12, reward_fn, cfg.bt_scale, rng)
    all_r = train_pairs["chosen_reward"] + train_pairs["rejected_reward"]
    meta = {
        "build_key": key,
        "n_train_reviews": len(train_reviews),
        "n_heldout_reviews": len(held_reviews),
        "reference_final_loss": float(np.mean(losses[-50:])),
        "reference_mean_reward": float(np.mean(all_r)),
        "label_agreement_with_reward": float(np.mean(np.array(train_pairs["chosen_reward"])
                                                     >= np.array(train_pairs["rejected_reward"]))),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "reference_train_seconds": round(t_train, 2),
        "torch_threads": torch_threads,
    }
    model.save_pretrained(folder / "reference", safe_serialization=True)
    tokenizer.save_pretrained(folder / "reference")
    Dataset.from_dict(train_pairs).save_to_disk(str(folder / "preferences" / "train"))
    Dataset.from_dict(eval_pairs).save_to_disk(str(folder / "preferences" / "eval"))
    write_json(folder / "prompts.json", {"train": train_prompts, "heldout_reviews": held_reviews})
    write_json(folder / "meta.json", meta)


def eval_prompts_from(held_reviews: list[str], n: int, seed: int) -> list[str]:
    """``n`` distinct 2-4 word prefixes of held-out reviews (seeded order)."""
    rng = np.random.default_rng(seed + 2)
    out: list[str] = []
    seen: set[str] = set()
    for i in rng.permutation(len(held_reviews)):
        p = _prompt_of(held_reviews[int(i)], rng)
        if p not in seen:
            seen.add(p)
            out.append(p)
            if len(out) == n:
                break
    return out


def _load(cfg: SentimentConfig, folder: Path, device: torch.device) -> SentimentEnv:
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "reference"))
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(str(folder / "reference"))
    model = freeze(model.to(device))
    prefs = {"train": load_from_disk(str(folder / "preferences" / "train")).select_columns(["prompt", "chosen", "rejected"]),
             "eval": load_from_disk(str(folder / "preferences" / "eval")).select_columns(["prompt", "chosen", "rejected"])}
    stored = read_json(folder / "prompts.json")
    meta = read_json(folder / "meta.json")
    eval_prompts = eval_prompts_from(stored["heldout_reviews"], cfg.n_eval_prompts, cfg.seed)
    spec = GenerationSpec(max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, temperature=cfg.temperature)
    prompts = {"train": list(stored["train"]), "eval": eval_prompts}
    if cfg.shift_prompts:
        prompts["shift"] = shifted_prompts(tokenizer.get_vocab(), cfg.shift_prompts, cfg.seed, copulas=COPULAS,
                                           openers=OPENERS, verbs=sum(VERBS.values(), ()))
        if len(prompts["shift"]) < cfg.shift_prompts:
            raise ConfigError("shift_prompts", f"the corpus' vocabulary makes only {len(prompts['shift'])} shifted "
                                               f"prompts, got {cfg.shift_prompts}")
    config = {k: v for k, v in to_dict(cfg).items() if not (k == "data_seed" and v is None)}  # ids as before
    fingerprint = stable_hash({"task": "sentiment", "config": config, "weights": weights_fingerprint(model),
                               "data": folder.name}, 16)
    env = SentimentEnv(cfg, task_name="sentiment", tokenizer=tokenizer, reference=model,
                       reference_dir=folder / "reference", preferences=prefs,
                       prompts=prompts, generation=spec,
                       fingerprint=fingerprint, n_eval_samples=cfg.n_eval_samples,
                       eval_batch_size=cfg.eval_batch_size)
    env.meta = meta
    env.cache_folder = folder
    return env
