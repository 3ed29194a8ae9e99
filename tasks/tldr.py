"""TL;DR summarization from human feedback with real models (Stiennon et al. 2020; DPO paper §6.2).

* Data: the summarize-from-feedback comparisons, either the original ``openai/summarize_from_feedback``
  "comparisons" rows (``info`` with the post, two ``summaries``, ``choice``) or a TRL-formatted copy such
  as ``trl-lib/tldr-preference`` (``prompt`` / ``chosen`` / ``rejected``); the format is detected from
  the columns. Original rows become the prompt ``SUBREDDIT: r/... TITLE: ... POST: ... TL;DR:`` and the
  two summaries (with a leading space). If the hub copy of ``openai/summarize_from_feedback`` is
  script-based, set ``dataset_revision=refs/convert/parquet`` or use the TRL copy.
* Policy: a causal LM (default ``EleutherAI/pythia-410m``; ``sft_steps`` > 0 fine-tunes it on the
  preferred summaries first).
* Gold reward / win-rate judge: a sequence-classification reward model (default
  ``OpenAssistant/reward-model-deberta-v3-large-v2``, trained on these comparisons among others).

Every model and dataset name may be a local path; see :mod:`tasks._presets`. Needs a GPU for real sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignbench.config import param
from alignbench.tasks._presets import DatasetPairsTask, PairsPresetConfig
from alignbench.registry import register_task


def _text(x: Any) -> str:
    """A string field, or the content of the last message of a conversational field."""
    if isinstance(x, list):
        return str(x[-1].get("content", "")) if x and isinstance(x[-1], dict) else ""
    return "" if x is None else str(x)


def _conversation_prompt(x: Any) -> str:
    if isinstance(x, list):
        return "\n\n".join(str(m.get("content", "")) for m in x if isinstance(m, dict))
    return "" if x is None else str(x)


def tldr_prompt(info: dict[str, Any]) -> str:
    """The TL;DR prompt format of Stiennon et al. (2020) as used by TRL's and CleanRL's TL;DR scripts."""
    sub = info.get("subreddit") or ""
    title = info.get("title") or ""
    post = info.get("post") or info.get("article") or ""
    return f"SUBREDDIT: r/{sub}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"


@dataclass(frozen=True)
class TldrConfig(PairsPresetConfig):
    policy: str = param("EleutherAI/pythia-410m", "policy: a causal LM (hub name or save_pretrained folder)")
    judge: str = param("OpenAssistant/reward-model-deberta-v3-large-v2", "reward model judge (sequence classification)")
    judge_input: str = param("pair", "the reward model scores (post, summary) as a text pair")
    judge_output: str = param("score", "the reward model's raw scalar")
    dataset: str = param("openai/summarize_from_feedback", "comparisons (original or TRL prompt/chosen/rejected format)")
    dataset_config: str | None = param("comparisons", "dataset configuration ('comparisons' for the original; None for TRL copies)")
    eval_split: str = param("validation", "split of the held-out prompts and pairs")
    max_new_tokens: int = param(53, "longest summary in tokens (CleanRL's TL;DR setting)")
    max_prompt_tokens: int = param(512, "posts longer than this (policy tokens) are skipped")
    n_eval_prompts: int = param(128, "distinct held-out posts used by evaluate()")
    judge_max_length: int = param(1024, "judge input truncation in tokens")


@register_task("tldr")
class TldrTask(DatasetPairsTask):
    description = "TL;DR summarization comparisons: Pythia policy, reward-model judge; needs hub access or local copies"
    config_cls = TldrConfig
    train_defaults = {"steps": 2000, "batch_size": 64, "lr": 1e-6, "warmup_steps": 150, "eval_every": 250,
                      "max_grad_norm": 10.0}

    def text_fields(self, row: dict[str, Any]) -> tuple[str, ...]:
        trl = "chosen" in row and "rejected" in row and "prompt" in row
        return ("prompt", "chosen", "rejected") if trl else ()

    def to_pair(self, row: dict[str, Any]) -> tuple[str, str, str] | None:
        if "chosen" in row and "rejected" in row and "prompt" in row:  # TRL preference format
            return _conversation_prompt(row["prompt"]), _text(row["chosen"]), _text(row["rejected"])
        if "info" in row and "summaries" in row and "choice" in row:  # the original comparisons
            summaries = row["summaries"]
            choice = row["choice"]
            if not isinstance(summaries, list) or len(summaries) != 2 or choice not in (0, 1):
                return None
            text = [" " + str(s.get("text", "")).strip() for s in summaries]
            return tldr_prompt(row["info"] or {}), text[choice], text[1 - choice]
        return None

    def facts(self):
        return {"prompts": "Reddit posts in the TL;DR format", "preferences": "human summary comparisons"}
