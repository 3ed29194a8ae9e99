"""Preference data: validation errors name the row and field; unpaired derivation; tokenization."""

import pytest
import torch
from datasets import Dataset

from alignbench.data import format_dataset, tokenize, unpair, validate_rows
from alignbench.errors import DataError
from alignbench.tokenization import build_word_tokenizer


def pairs(n=6):
    return Dataset.from_dict({
        "prompt": [f"p{i % 3}" for i in range(n)],
        "chosen": [f"a b{i % 2}" for i in range(n)],
        "rejected": [f"c d{i % 2}" for i in range(n)],
    })


@pytest.mark.parametrize("rows,msg", [
    ({"prompt": ["p0"], "chosen": [""], "rejected": ["x"]}, "row 0: field 'chosen' must be a non-empty string"),
    ({"prompt": ["p0"], "chosen": ["x"], "rejected": [None]}, "row 0: field 'rejected' is missing"),
    ({"prompt": ["p0"], "chosen": ["x"]}, "missing field 'rejected'"),
    ({"prompt": [], "chosen": [], "rejected": []}, "zero rows"),
    ({"prompt": ["p0", "p1"], "chosen": ["x", "y"], "rejected": ["y", "   "]}, "row 1: field 'rejected'"),
])
def test_validation_names_row_and_field(rows, msg):
    with pytest.raises(DataError, match=msg):
        validate_rows(Dataset.from_dict(rows), "paired")


def test_unpair_keeps_every_completion_and_mismatches_prompts():
    ds = pairs()
    u = format_dataset(ds, "unpaired", seed=0, statistic_columns={"kl_completion": "mismatched"})
    assert len(u) == 2 * len(ds)
    assert sum(u["label"]) == len(ds)
    assert sorted(u["completion"]) == sorted(list(ds["chosen"]) + list(ds["rejected"]))
    # the KL completion comes from a row with another prompt (completions here are unique per row)
    uniq = Dataset.from_dict({"prompt": [f"p{i % 3}" for i in range(6)], "chosen": [f"c{i}" for i in range(6)],
                              "rejected": [f"r{i}" for i in range(6)]})
    uu = format_dataset(uniq, "unpaired", seed=1, statistic_columns={"kl_completion": "mismatched"})
    owner = dict(zip(uu["completion"], uu["prompt"]))
    assert all(owner[k] != p for p, k in zip(uu["prompt"], uu["kl_completion"]))
    validate_rows(u, "unpaired")
    again = format_dataset(ds, "unpaired", seed=0, statistic_columns={"kl_completion": "mismatched"})
    assert again["kl_completion"] == u["kl_completion"]  # fixed per dataset and seed
    assert unpair(ds)["completion"] == u["completion"] and "kl_completion" not in unpair(ds).column_names


def test_tokenize_masks_completion_only():
    tok = build_word_tokenizer(["p0", "p1", "p2", "a", "b0", "b1", "c", "d0", "d1"])
    t = tokenize(pairs(), "paired", tok)
    assert set(t.input_ids) == {"chosen", "rejected"}
    ids, cm, am = t.input_ids["chosen"], t.completion_mask["chosen"], t.attention_mask["chosen"]
    assert ids.shape == (6, 3)
    assert cm[0].tolist() == [0, 1, 1] and am[0].tolist() == [1, 1, 1]
    assert tok.decode(ids[0][cm[0].bool()]) == "a b0"
    b = t.batch(torch.tensor([1, 2]), torch.device("cpu"))
    assert b.input_ids["rejected"].shape == (2, 3)
