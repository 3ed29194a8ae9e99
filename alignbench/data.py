"""Preference and unpaired data: validation, the paired -> unpaired derivation, tokenization to tensors.

Rows live in ``datasets.Dataset`` objects:

* paired:   ``prompt``, ``chosen``, ``rejected`` (strings);
* unpaired: ``prompt``, ``completion``, ``label`` (bool, True = desirable).

A method may ask for extra *statistic* columns (``Method.statistic_columns``: column name -> derivation in
:data:`DERIVED_COLUMNS`), e.g. ``"mismatched"``: the completion of a row with another prompt, fixed once
per dataset, so that KTO's reference point z0 (KL estimated from mismatched pairs) can use cached reference
log-probs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

# Completion columns that the harness tokenizes and scores for each data format (a method's
# statistic_columns come on top).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "paired": ("chosen", "rejected"),
    "unpaired": ("completion",),
    "online": (),
}

REQUIRED = {
    "paired": {"prompt": str, "chosen": str, "rejected": str},
    "unpaired": {"prompt": str, "completion": str, "label": bool},
}


def validate_rows(ds: Any, fmt: str, *, split: str = "train") -> None:
    """Raise DataError naming the split, row and field of the first malformed row."""
    if len(ds) == 0:
        raise DataError(f"{split}: the dataset has zero rows")
    required = REQUIRED[fmt]
    missing = [k for k in required if k not in ds.column_names]
    if missing:
        raise DataError(f"{split}: missing field '{missing[0]}' (rows need {', '.join(required)})")
    for i, row in enumerate(ds):
        for key, typ in required.items():
            v = row[key]
            if v is None:
                raise DataError(f"{split} row {i}: field '{key}' is missing")
            if typ is str and (not isinstance(v, str) or not v.strip()):
                raise DataError(f"{split} row {i}: field '{key}' must be a non-empty string, got {v!r}")
            if typ is bool and not isinstance(v, (bool, np.bool_)):
                raise DataError(f"{split} row {i}: field '{key}' must be true or false, got {v!r}")


def check_text_fields(row: dict[str, Any], keys: Any, *, where: str) -> None:
    """DataError naming ``where`` (the row) and the field when a field is missing (null) or not text
    (a string, or a list of chat messages); a malformed row is never dropped or cast silently."""
    for key in keys:
        v = row.get(key)
        if v is None:
            raise DataError(f"{where}: field '{key}' is missing")
        if not isinstance(v, (str, list)):
            raise DataError(f"{where}: field '{key}' must be text, got {v!r}")


def unpair(ds: Any) -> Any:
    """Paired rows -> unpaired rows: chosen -> desirable, rejected -> undesirable (the same data, for KTO)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": list(ds["prompt"]) * 2,
                              "completion": list(ds["chosen"]) + list(ds["rejected"]),
                              "label": [True] * len(ds) + [False] * len(ds)})


def mismatched_completions(prompts: list[str], completions: list[str], *, seed: int = 0) -> list[str]:
    """For each row, the completion of another row with a different prompt: a seeded shuffle, each row taking
    the next row of the shuffled order whose prompt differs (its own completion only if every prompt is equal)."""
    n = len(prompts)
    order = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    for j, i in enumerate(order):
        # walk forward in the shuffled order until the prompt differs (at most n steps)
        for step in range(1, n + 1):
            k = order[(j + step) % n]
            if prompts[k] != prompts[i] or step == n:
                out[i] = completions[k]
                break
    return out


# how a statistic column is derived from a dataset's rows: name -> f(prompts, completions, seed) -> column
DERIVED_COLUMNS = {"mismatched": mismatched_completions}


@dataclass
class TokenizedColumns:
    """Right-padded token tensors of prompt+completion for each completion column.

    input_ids[col], attention_mask[col], completion_mask[col]: (N, T) int64.
    labels: (N,) bool for unpaired data, else None.
    """

    input_ids: dict[str, Tensor]
    attention_mask: dict[str, Tensor]
    completion_mask: dict[str, Tensor]
    labels: Tensor | None

    def __len__(self) -> int:
        return next(iter(self.input_ids.values())).shape[0]

    @functools.cached_property
    def row_lengths(self) -> dict[str, Tensor]:
        """col -> (N,) real (unpadded) tokens per row; computed once, used by every batch."""
        return {c: am.sum(-1) for c, am in self.attention_mask.items()}

    def select(self, cols: "list[str] | tuple[str, ...]") -> "TokenizedColumns":
        """The same rows with only the completion columns ``cols``."""
        return TokenizedColumns({c: self.input_ids[c] for c in cols}, {c: self.attention_mask[c] for c in cols},
                                {c: self.completion_mask[c] for c in cols}, self.labels)

    def batch(self, idx: Tensor, device: torch.device) -> "TokenizedColumns":
        """Rows ``idx``, trimmed to the longest real sequence of the batch, moved to ``device``."""
        out: dict[str, dict[str, Tensor]] = {"input_ids": {}, "attention_mask": {}, "completion_mask": {}}
        for col in self.input_ids:
            t = int(self.row_lengths[col][idx].max())
            out["input_ids"][col] = self.input_ids[col][idx, :t].to(device, non_blocking=True)
            out["attention_mask"][col] = self.attention_mask[col][idx, :t].to(device, non_blocking=True)
            out["completion_mask"][col] = self.completion_mask[col][idx, :t].to(device, non_blocking=True)
        labels = self.labels[idx].to(device) if self.labels is not None else None
        return TokenizedColumns(out["input_ids"], out["attention_mask"], out["completion_mask"], labels)


def tokenize(ds: Any, fmt: str, tokenizer: Any, *, max_prompt_tokens: int = 512,
             max_completion_tokens: int = 512, extra_columns: "tuple[str, ...] | list[str]" = ()) -> TokenizedColumns:
    """Tokenize prompt and completion separately and concatenate (so the boundary is exact).

    The completion columns are the format's (:data:`FORMAT_COLUMNS`) plus ``extra_columns``.
    Long prompts keep their last ``max_prompt_tokens`` tokens, long completions their first
    ``max_completion_tokens`` (the convention of TRL's preference trainers).
    """
    cols = FORMAT_COLUMNS[fmt] + tuple(extra_columns)
    prompt_ids = tokenizer(list(ds["prompt"]), add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids_out, am_out, cm_out = {}, {}, {}
    for col in cols:
        comp_ids = tokenizer(list(ds[col]), add_special_tokens=False)["input_ids"]
        seqs, masks = [], []
        for p, c in zip(prompt_ids, comp_ids):
            p, c = p[-max_prompt_tokens:], c[:max_completion_tokens]
            if not c:
                raise DataError(f"{col}: a completion tokenizes to zero tokens")
            seqs.append(p + c)
            masks.append([0] * len(p) + [1] * len(c))
        t = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), t), pad, dtype=torch.long)
        am = torch.zeros((len(seqs), t), dtype=torch.long)
        cm = torch.zeros((len(seqs), t), dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            ids[i, : len(s)] = torch.tensor(s)
            am[i, : len(s)] = 1
            cm[i, : len(s)] = torch.tensor(m)
        ids_out[col], am_out[col], cm_out[col] = ids, am, cm
    labels = torch.tensor(list(ds["label"]), dtype=torch.bool) if fmt == "unpaired" else None
    return TokenizedColumns(ids_out, am_out, cm_out, labels)


def format_dataset(preferences: Any, fmt: str, *, seed: int = 0, statistic_columns: "dict[str, str] | None" = None) -> Any:
    """The rows a method of data format ``fmt`` trains on, derived from the task's preference pairs, with
    the method's statistic columns (name -> derivation in :data:`DERIVED_COLUMNS`) added."""
    ds = unpair(preferences) if fmt == "unpaired" else preferences
    for name, kind in (statistic_columns or {}).items():
        if kind not in DERIVED_COLUMNS:
            raise DataError(f"statistic_columns.{name}: unknown derivation '{kind}' (known: {', '.join(DERIVED_COLUMNS)})")
        source = FORMAT_COLUMNS[fmt][0]
        ds = ds.add_column(name, DERIVED_COLUMNS[kind](list(ds["prompt"]), list(ds[source]), seed=seed))
    return ds
