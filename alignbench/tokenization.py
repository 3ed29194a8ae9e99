"""Word-level fast tokenizers for the embedded tasks (real transformers tokenizers, built locally)."""

from __future__ import annotations

from typing import Iterable

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_word_tokenizer(words: Iterable[str], *, extra_special: Iterable[str] = ()):
    """A ``PreTrainedTokenizerFast`` over a fixed word list, split on whitespace.

    Ids: 0 = <pad>, 1 = <eos>, 2 = <unk>, then ``extra_special`` and ``words`` in the order given
    (deduplicated). Save and load it with ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [PAD, EOS, UNK, *extra_special, *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    fast.padding_side = "right"
    return fast
