"""Anthropic HH-RLHF with real models: dialogue pairs, a Pythia policy, a reward-model judge.

* Data: ``Anthropic/hh-rlhf`` rows hold two full transcripts, ``chosen`` and ``rejected``. Each is split
  at its last ``"\\n\\nAssistant:"`` into the shared prompt (the dialogue so far, ending with that
  marker) and the final assistant response; rows whose two prompts differ, or with an empty
  response, are skipped. ``dataset_data_dir`` picks a subset (e.g. ``helpful-base``).
* Policy: a causal LM (default ``EleutherAI/pythia-410m``; the DPO paper used Pythia 2.8B after SFT on
  the chosen responses: ``sft_steps`` > 0 does that here).
* Gold reward / win-rate judge: a sequence-classification reward model (default
  ``OpenAssistant/reward-model-deberta-v3-large-v2``, scoring (prompt, response) as a text pair).

Every model and dataset name may be a local path; see :mod:`tasks._presets`. Needs a GPU for real sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignbench.config import param
from alignbench.tasks._presets import DatasetPairsTask, PairsPresetConfig
from alignbench.registry import register_task

ASSISTANT = "\n\nAssistant:"


def split_transcript(text: str) -> tuple[str, str] | None:
    """(prompt up to and including the last assistant marker, final response) or None."""
    i = text.rfind(ASSISTANT)
    if i < 0:
        return None
    return text[: i + len(ASSISTANT)], text[i + len(ASSISTANT):]


@dataclass(frozen=True)
class HHConfig(PairsPresetConfig):
    policy: str = param("EleutherAI/pythia-410m", "policy: a causal LM (hub name or save_pretrained folder)")
    judge: str = param("OpenAssistant/reward-model-deberta-v3-large-v2", "reward model judge (sequence classification)")
    judge_input: str = param("pair", "the reward model scores (prompt, response) as a text pair")
    judge_output: str = param("score", "the reward model's raw scalar")
    dataset: str = param("Anthropic/hh-rlhf", "HH-RLHF pairs (columns chosen / rejected): hub name or local copy")
    eval_split: str = param("test", "split of the held-out prompts and pairs")
    max_new_tokens: int = param(128, "longest response in tokens")
    max_prompt_tokens: int = param(256, "dialogues longer than this (policy tokens) are skipped")
    n_eval_prompts: int = param(128, "distinct held-out dialogues used by evaluate()")
    judge_max_length: int = param(1024, "judge input truncation in tokens")
    chosen_column: str = param("chosen", "column of the preferred transcript")
    rejected_column: str = param("rejected", "column of the dispreferred transcript")


@register_task("hh_rlhf")
class HHTask(DatasetPairsTask):
    description = "Anthropic HH-RLHF dialogues: Pythia policy, reward-model judge; needs hub access or local copies"
    config_cls = HHConfig
    train_defaults = {"steps": 2000, "batch_size": 64, "lr": 1e-6, "warmup_steps": 150, "eval_every": 250,
                      "max_grad_norm": 10.0}

    def text_fields(self, row: dict[str, Any]) -> tuple[str, ...]:
        return (self.config.chosen_column, self.config.rejected_column)

    def to_pair(self, row: dict[str, Any]) -> tuple[str, str, str] | None:
        cfg: HHConfig = self.config
        a = split_transcript(str(row.get(cfg.chosen_column) or ""))
        b = split_transcript(str(row.get(cfg.rejected_column) or ""))
        if a is None or b is None or a[0] != b[0]:
            return None
        return a[0], a[1], b[1]

    def facts(self):
        return {"prompts": "HH-RLHF dialogues up to the last 'Assistant:' turn",
                "preferences": "the dataset's human chosen / rejected responses"}
