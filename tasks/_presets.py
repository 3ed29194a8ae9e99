"""Shared loading for the real-model presets (imdb, hh_rlhf, tldr): hub names or local copies.

A private module of the task plugins (the registry skips ``_``-prefixed modules): the harness never imports it.

Every model and dataset of a preset is a config field that takes either a Hugging Face Hub name or a
local path (a ``save_pretrained`` folder; a ``datasets`` ``save_to_disk`` folder, a folder of data
files, or a json / jsonl / parquet / csv file). When the hub cannot be reached (``HF_HUB_OFFLINE=1``,
or no network: checked once with a 3 s connection attempt) a hub name is looked up in the local
Hugging Face cache only, so a missing model or dataset fails at once with one line that names the
field and says how to point the preset at a local copy, never after long retries.

The rest is the machinery the presets share: :class:`SequenceJudge` (a sequence-classification model
used as the gold reward / win-rate judge), :class:`PresetEnv` (a :class:`SampledTaskEnv` whose gold
reward is the judge), the optional SFT step, and a cached build folder per preset configuration.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor, nn

from alignbench.api import GenerationSpec, SampleEvaluable, Task
from alignbench.config import check_choice, check_int, check_positive, check_range, param, stable_hash, to_dict
from alignbench.data import check_text_fields
from alignbench.errors import AlignbenchError, ConfigError
from alignbench.models import quiet
from alignbench.evaluation import SampledTaskEnv

DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------- reachability


def is_offline() -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


@functools.lru_cache(maxsize=4)
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (checked once per process; False offline)."""
    if is_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    return _reachable(url.hostname or "huggingface.co", port, timeout)


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
            or Path(name).suffix.lower() in DATA_SUFFIXES or name.endswith(".gz"))


_TASK_FOR_HINTS = {"name": "TASK"}


def _hint(what: str, name: str, repo_type: str) -> str:
    arg = f"--task-arg {_TASK_FOR_HINTS['name']}.{what}=PATH"
    if _looks_like_path(name) or Path(name).expanduser().is_absolute():
        return f"check the path, or point the preset at a local copy or a hub name ({arg})"
    get = (f"hf download {name} --repo-type dataset --local-dir DIR" if repo_type == "dataset"
           else f"hf download {name} --local-dir DIR")
    return (f"download it where the hub is reachable ({get}, or save_pretrained / save_to_disk) and point the "
            f"preset at the local copy ({arg.replace('PATH', 'DIR')})")


def resolve(name_or_path: str | Path, *, what: str, repo_type: str = "model") -> str:
    """A local path for ``name_or_path`` when it is one (or is in the local HF cache while the hub is
    unreachable); the hub name itself when the hub is reachable. Raises one line otherwise."""
    name = str(name_or_path)
    p = Path(name).expanduser()
    if p.exists():
        return str(p)
    if _looks_like_path(name):
        raise AlignbenchError(f"{what}: local path '{name}' does not exist; {_hint(what, name, repo_type)}")
    if hub_reachable():
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, repo_type=repo_type, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: one line below
        pass
    why = "HF_HUB_OFFLINE is set" if is_offline() else "the hub is unreachable"
    raise AlignbenchError(f"{what}: cannot load '{name}' ({why} and it is not in the local Hugging Face cache); "
                          f"{_hint(what, name, repo_type)}")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


# ------------------------------------------------------------------------------------------ datasets


def load_dataset_any(name_or_path: str | Path, split: str | None, *, what: str = "dataset",
                     config_name: str | None = None, data_dir: str | None = None,
                     revision: str | None = None) -> Any:
    """A ``datasets.Dataset`` from a hub name or a local copy.

    Local copies: a ``save_to_disk`` folder (a ``DatasetDict``: ``split`` is picked; a ``Dataset``: used
    whole), a folder of data files (``load_dataset(folder)``), or one json / jsonl / parquet / csv file
    (used whole). ``split=None`` returns a ``DatasetDict`` where there are splits. Failures are one line.
    """
    import datasets

    name = str(name_or_path)
    src = resolve(name, what=what, repo_type="dataset")
    p = Path(src)
    try:
        if p.is_file():
            suffix = p.suffix.lower() if p.suffix.lower() != ".gz" else Path(p.stem).suffix.lower()
            builder = DATA_SUFFIXES.get(suffix)
            if builder is None:
                raise AlignbenchError(f"{what}: '{name}' is not a json, jsonl, parquet or csv file")
            if p.stat().st_size == 0:
                raise AlignbenchError(f"{what}: '{name}' has zero rows")
            ds = datasets.load_dataset(builder, data_files=str(p), split="train")
            if len(ds) == 0:
                raise AlignbenchError(f"{what}: '{name}' has zero rows")
            return ds
        if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split is None:
                    return ds
                if split not in ds:
                    raise AlignbenchError(f"{what}: '{name}' has no split '{split}' (splits: {', '.join(ds)})")
                return ds[split]
            return ds
        kwargs: dict[str, Any] = {}
        if data_dir:
            kwargs["data_dir"] = data_dir
        if revision and not p.is_dir():
            kwargs["revision"] = revision
        return datasets.load_dataset(src, config_name, split=split, **kwargs)
    except AlignbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - one line naming the field
        msg = _first_line(e)
        hint = _hint(what, name, "dataset")
        if "scripts are no longer supported" in msg:
            hint = f"the hub copy is script-based: set {what}_revision=refs/convert/parquet, or {hint}"
        raise AlignbenchError(f"{what}: cannot load '{name}'"
                              f"{f' split {split!r}' if split else ''} ({msg}); {hint}") from None


def has_splits(ds: Any) -> bool:
    import datasets

    return isinstance(ds, datasets.DatasetDict)


def load_train_eval(name_or_path: str | Path, train_split: str, eval_split: str, *, what: str = "dataset",
                    config_name: str | None = None, data_dir: str | None = None, revision: str | None = None,
                    eval_fraction: float = 0.1, seed: int = 0) -> tuple[Any, Any]:
    """Train and eval splits of a dataset. A split-less local source (one file, one saved ``Dataset``, a
    folder of data files without the eval split) is divided deterministically: a seeded
    ``eval_fraction`` of its rows is the eval split, the rest the train split."""
    import datasets

    name = str(name_or_path)
    p = Path(name).expanduser()
    saved_dict = p.is_dir() and (p / "dataset_dict.json").exists()
    saved_one = p.is_dir() and (p / "state.json").exists() and not saved_dict
    files_dir = p.is_dir() and not saved_dict and not saved_one
    kw = dict(what=what, config_name=config_name, data_dir=data_dir, revision=revision)
    if p.is_file() or saved_one:
        whole = load_dataset_any(name, None, **kw)
    else:
        train = load_dataset_any(name, train_split, **kw)
        try:
            return train, load_dataset_any(name, eval_split, **kw)
        except AlignbenchError:
            if not files_dir:
                raise
        whole = train
    if isinstance(whole, datasets.DatasetDict):
        whole = whole[next(iter(whole))]
    n = len(whole)
    if n < 2:
        raise AlignbenchError(f"{what}: '{name}' has {n} rows; need at least 2 to hold some out")
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(eval_fraction * n)))
    return whole.select(sorted(order[k:].tolist())), whole.select(sorted(order[:k].tolist()))


# ------------------------------------------------------------------------------------------ models


def parse_dtype(name: str) -> torch.dtype | None:
    if name not in DTYPES:
        raise AlignbenchError(f"dtype: must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_policy(name_or_path: str | Path, *, what: str = "policy", tokenizer: str | Path | None = None,
                tokenizer_what: str = "tokenizer", trust_remote_code: bool = False,
                dtype: str = "float32") -> tuple[nn.Module, Any, str]:
    """A causal LM and its tokenizer (pad = eos when missing); returns (model, tokenizer, resolved source)."""
    from alignbench.models import check_tokenizer_fits, load_causal_lm, load_tokenizer

    src = resolve(name_or_path, what=what)
    tok_src = resolve(tokenizer, what=tokenizer_what) if tokenizer else src
    tok = load_tokenizer(tok_src, what=tokenizer_what if tokenizer else what, trust_remote_code=trust_remote_code)
    model = load_causal_lm(src, what=what, trust_remote_code=trust_remote_code, dtype=parse_dtype(dtype))
    check_tokenizer_fits(model, tok, what=what, tokenizer_what=tokenizer_what if tokenizer else what)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, src


class SequenceJudge:
    """A sequence-classification model as a judge: scores (prompt, completion) pairs.

    input_mode: "concat" scores the text prompt + completion; "pair" passes (prompt, completion) as a
                text pair (reward models such as OpenAssistant's DeBERTa RM expect this).
    output:     "prob" = softmax probability of ``label`` (e.g. p(positive)); "score" = the raw scalar
                for a one-output model, else the log-odds of ``label``.
    label:      a label name from ``config.id2label`` (case-insensitive prefix match, e.g. "pos"), an
                index, or None: the single output, or the label whose name starts with "pos".
    """

    def __init__(self, name_or_path: str | Path, *, what: str = "judge", input_mode: str = "concat",
                 output: str = "prob", label: str | int | None = None, trust_remote_code: bool = False,
                 dtype: str = "float32", device: torch.device | str = "cpu", batch_size: int = 32,
                 max_length: int = 512, strip: Sequence[str] = ()):
        from transformers import AutoModelForSequenceClassification

        from alignbench.models import fast_kernels, freeze, load_tokenizer

        if input_mode not in ("concat", "pair"):
            raise AlignbenchError(f"judge_input: must be 'concat' or 'pair', got {input_mode!r}")
        if output not in ("prob", "score"):
            raise AlignbenchError(f"judge_output: must be 'prob' or 'score', got {output!r}")
        src = resolve(name_or_path, what=what)
        self.tokenizer = load_tokenizer(src, what=what, trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(src, trust_remote_code=trust_remote_code,
                                                                       dtype=parse_dtype(dtype))
        except Exception as e:  # noqa: BLE001
            raise AlignbenchError(f"{what}: cannot load '{name_or_path}' as a sequence classifier "
                                  f"({_first_line(e)}); {_hint(what, str(name_or_path), 'model')}") from None
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = freeze(fast_kernels(model).to(device))
        self.device = torch.device(device)
        self.input_mode, self.output = input_mode, output
        self.batch_size, self.max_length = batch_size, max_length
        self.strip = tuple(s for s in strip if s)
        self.name = str(name_or_path)
        self.label_index = self._label_index(label, what)

    def _label_index(self, label: str | int | None, what: str) -> int:
        n = int(self.model.config.num_labels)
        id2label = {int(k): str(v) for k, v in (getattr(self.model.config, "id2label", None) or {}).items()}
        if label is None:
            if n == 1:
                return 0
            hits = [i for i, v in id2label.items() if v.lower().startswith("pos")]
            if len(hits) == 1:
                return hits[0]
            raise AlignbenchError(f"{what}_label: cannot tell which of the labels {id2label} to score; set it")
        if isinstance(label, int) or str(label).isdigit():
            i = int(label)
            if not 0 <= i < n:
                raise AlignbenchError(f"{what}_label: index {i} out of range for {n} labels")
            return i
        hits = [i for i, v in id2label.items() if v.lower().startswith(str(label).lower())]
        if len(hits) != 1:
            raise AlignbenchError(f"{what}_label: {label!r} matches {len(hits)} of the labels {id2label}")
        return hits[0]

    def _clean(self, text: str) -> str:
        for s in self.strip:
            text = text.replace(s, "")
        return text

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        out = []
        for s in range(0, len(prompts), self.batch_size):
            ps = list(prompts[s:s + self.batch_size])
            cs = [self._clean(c) for c in completions[s:s + self.batch_size]]
            if self.input_mode == "pair":
                enc = self.tokenizer(ps, cs, truncation=True, max_length=self.max_length, padding=True,
                                     return_tensors="pt")
            else:
                enc = self.tokenizer([p + c for p, c in zip(ps, cs)], truncation=True, max_length=self.max_length,
                                     padding=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            logits = self.model(**enc).logits.float()
            if logits.shape[-1] == 1:
                out.append(logits[:, 0] if self.output == "score" else torch.sigmoid(logits[:, 0]))
                continue
            logp = logits.log_softmax(-1)
            lp = logp[:, self.label_index]
            if self.output == "prob":
                out.append(lp.exp())
            else:
                out.append(lp - torch.log1p(-lp.exp().clamp(max=1 - 1e-7)))
        return torch.cat(out).cpu() if out else torch.zeros(0)


# ------------------------------------------------------------------------------------------ SFT


def sft_reference(model: nn.Module, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], *,
                  steps: int, batch_size: int, lr: float, seed: int, max_tokens: int, device: torch.device,
                  desc: str = "SFT") -> list[float]:
    """Supervised fine-tuning of the reference on prompt + completion (loss on completion tokens only;
    an empty prompt trains on the whole text). Uses the shared :func:`train_causal_lm`."""
    from alignbench.models import train_causal_lm

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    rows, masks = [], []
    for p, c in zip(p_ids, c_ids):
        if not c:
            continue
        keep_p = max(0, max_tokens - len(c))
        p = p[-keep_p:] if keep_p else []
        seq = (p + c)[:max_tokens]
        m = ([0] * len(p) + [1] * len(c))[:max_tokens]
        rows.append(seq)
        masks.append(m)
    if not rows:
        raise AlignbenchError("sft: no training text after tokenization")
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    am = torch.zeros((len(rows), t), dtype=torch.long)
    lm = torch.zeros((len(rows), t), dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, :len(r)] = torch.tensor(r)
        am[i, :len(r)] = 1
        lm[i, :len(r)] = torch.tensor(m)
    model.to(device)
    for prm in model.parameters():
        prm.requires_grad_(True)
    return train_causal_lm(model, ids, lm, steps=steps, batch_size=min(batch_size, len(rows)), lr=lr, seed=seed,
                           attention_mask=am, desc=desc)


# ------------------------------------------------------------------------------------------ the env


class PresetEnv(SampledTaskEnv):
    """A sampled task env whose gold reward is a :class:`SequenceJudge`."""

    has_gold_reward = True

    def __init__(self, *, judge: SequenceJudge, facts: dict[str, Any] | None = None,
                 reward_model_defaults: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.judge = judge
        self.facts = dict(facts or {})
        if reward_model_defaults:
            self.reward_model_defaults = dict(reward_model_defaults)

    def gold_reward(self, prompts: list[str], completions: list[str]) -> Tensor:
        return self.judge(prompts, completions)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(self.facts)
        return d


def build_cached(folder: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` once and move its output to ``folder``: the cache service (:mod:`alignbench.cache`:
    under a file lock, every file checked by sha256 before use, rebuilt when damaged)."""
    from alignbench import cache

    def checked(tmp: Path) -> None:
        build(tmp)
        if not (tmp / "meta.json").exists():
            raise RuntimeError("build_cached: the build wrote no meta.json")

    cache.entry(folder, checked, what=f"preset cache entry '{folder.parent.name}/{folder.name}'")


def generation_spec(tokenizer: Any, max_new_tokens: int, temperature: float) -> GenerationSpec:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    return GenerationSpec(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=int(pad),
                          temperature=temperature)


def completion_texts(tokenizer: Any, samples: Any, spec: GenerationSpec) -> list[str]:
    """Sampled completions as text, with the end-of-sequence text appended where the sample ended,
    so that preference data teaches the policy to stop."""
    eos_text = tokenizer.eos_token or ""
    out = []
    for text, comp, n in zip(samples.texts, samples.completions, samples.lengths.tolist()):
        ended = spec.eos_token_id is not None and n > 0 and int(comp[int(n) - 1]) == spec.eos_token_id
        out.append(text + eos_text if ended and eos_text else text)
    return out


def pairs_from_scores(prompts: Sequence[str], completions: Sequence[Sequence[str]], scores: np.ndarray, *,
                      bt_scale: float, rng: np.random.Generator, max_pairs_per_prompt: int | None = None) -> dict[str, list]:
    """All pairs of the k completions of each prompt (k(k-1)/2 pairs; the DPO paper's 4 -> 6), labelled by
    the judge: the higher score is chosen (``bt_scale`` = 0), or Bradley-Terry
    P(a > b) = sigmoid((s_a - s_b) / bt_scale). Pairs with identical texts or (deterministic) equal scores are dropped."""
    rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "chosen_score": [], "rejected_score": []}
    for x, comps, sc in zip(prompts, completions, scores):
        made = 0
        for i in range(len(comps)):
            for j in range(i + 1, len(comps)):
                if max_pairs_per_prompt is not None and made >= max_pairs_per_prompt:
                    break
                a, b, sa, sb = comps[i], comps[j], float(sc[i]), float(sc[j])
                if a == b or not a.strip() or not b.strip():
                    continue
                if bt_scale > 0:
                    a_wins = rng.random() < 1.0 / (1.0 + math.exp(-(sa - sb) / bt_scale))
                else:
                    if sa == sb:
                        continue
                    a_wins = sa > sb
                w, l, sw, sl = (a, b, sa, sb) if a_wins else (b, a, sb, sa)
                rows["prompt"].append(x)
                rows["chosen"].append(w)
                rows["rejected"].append(l)
                rows["chosen_score"].append(sw)
                rows["rejected_score"].append(sl)
                made += 1
    return rows


# ------------------------------------------------------------------------------------------ presets


@dataclass(frozen=True)
class PresetConfig:
    """Fields shared by the real-model presets. Every model / dataset field takes a hub name or a local path."""

    seed: int = param(0, "seed of prompt selection, SFT and preference sampling")
    policy: str = param("gpt2", "reference policy: a causal LM (hub name or save_pretrained folder)")
    tokenizer: str | None = param(None, "tokenizer of the policy (None: the policy's own)")
    judge: str = param("", "gold reward / win-rate judge: a sequence-classification model (hub name or folder)")
    judge_input: str = param("concat", "'concat': judge scores prompt + completion; 'pair': (prompt, completion) as a text pair")
    judge_output: str = param("prob", "'prob': probability of judge_label; 'score': raw scalar (or log-odds of judge_label)")
    judge_label: str | None = param(None, "label scored by the judge (name prefix or index; None: the single output or 'pos...')")
    judge_batch_size: int = param(16, "sequences per judge forward pass")
    judge_max_length: int = param(512, "judge input truncation in tokens")
    dataset: str = param("", "dataset: hub name, save_to_disk folder, data folder or json/jsonl/parquet/csv file")
    dataset_config: str | None = param(None, "dataset configuration name (hub datasets with several)")
    dataset_data_dir: str | None = param(None, "dataset sub-folder (e.g. 'helpful-base' of Anthropic/hh-rlhf)")
    dataset_revision: str | None = param(None, "dataset revision (e.g. 'refs/convert/parquet' for script-based hub copies)")
    train_split: str = param("train", "split of the training pairs / prompts")
    eval_split: str = param("test", "split of the held-out prompts and pairs")
    n_eval_prompts: int = param(256, "distinct held-out prompts used by evaluate()")
    n_eval_samples: int = param(2, "completions per eval prompt (policy and reference)")
    n_eval_pairs: int = param(512, "held-out preference pairs (reward-model validation)")
    max_prompt_tokens: int = param(256, "prompts longer than this (policy tokens) are skipped")
    max_new_tokens: int = param(64, "longest completion in tokens")
    temperature: float = param(1.0, "sampling temperature of evaluation and rollouts")
    eval_batch_size: int = param(32, "sequences per sampling / scoring batch in evaluation")
    sft_steps: int = param(0, "supervised fine-tuning steps of the reference before anything else (0: none)")
    sft_batch_size: int = param(16, "SFT sequences per step")
    sft_lr: float = param(1e-5, "SFT learning rate")
    sft_max_tokens: int = param(512, "SFT sequence truncation in tokens")
    trust_remote_code: bool = param(False, "allow custom model / tokenizer code from the hub (off unless set)")
    dtype: str = param("float32", "weights dtype of policy and judge: float32, bfloat16, float16 or auto")

    def __post_init__(self) -> None:
        for f in ("tokenizer", "judge_label", "dataset_config", "dataset_data_dir", "dataset_revision"):
            v = getattr(self, f)  # "none" / "null" / "" from the command line mean None
            if isinstance(v, str) and v.strip().lower() in ("", "none", "null"):
                object.__setattr__(self, f, None)
        check_int("seed", self.seed, 0)
        for f in ("policy", "judge", "dataset"):
            if not isinstance(getattr(self, f), str) or not getattr(self, f).strip():
                raise ConfigError(f, "must name a hub model / dataset or a local path")
        check_choice("judge_input", self.judge_input, ("concat", "pair"))
        check_choice("judge_output", self.judge_output, ("prob", "score"))
        for f in ("judge_batch_size", "judge_max_length", "n_eval_prompts", "n_eval_samples", "n_eval_pairs",
                  "max_prompt_tokens", "max_new_tokens", "eval_batch_size", "sft_batch_size", "sft_max_tokens"):
            check_int(f, getattr(self, f), 1)
        check_int("sft_steps", self.sft_steps, 0)
        check_positive("sft_lr", self.sft_lr)
        check_range("temperature", self.temperature, 0.0, 10.0)
        check_choice("dtype", self.dtype, tuple(DTYPES))

    def sources(self) -> list[tuple[str, str, str]]:
        """(field, name, repo type) of everything the preset loads, checked before any heavy work."""
        out = [("policy", self.policy, "model"), ("judge", self.judge, "model"), ("dataset", self.dataset, "dataset")]
        if self.tokenizer:
            out.append(("tokenizer", self.tokenizer, "model"))
        return out


@dataclass
class PresetContext:
    """What a preset's data hooks get: its config, the (SFT'd) reference, tokenizer, sampling spec, judge."""

    config: Any
    model: nn.Module
    tokenizer: Any
    spec: GenerationSpec
    judge: SequenceJudge
    device: torch.device


class PresetTask(Task):
    """Base of the real-model presets: loading, the optional SFT step, cached data, the sampled env.

    Subclasses provide :meth:`sft_texts` (prompts, completions), :meth:`build_pairs` (train / eval
    pair rows and train prompts, cached) and :meth:`eval_prompts` (computed at each setup).
    """

    capabilities = (SampleEvaluable,)
    eval_only_fields: tuple[str, ...] = ("n_eval_prompts", "n_eval_samples", "temperature", "eval_batch_size",
                                         "judge_batch_size")
    reward_model_defaults: dict[str, Any] = {"lr": 1e-5, "batch_size": 16, "epochs": 2}

    # hooks ---------------------------------------------------------------------------------------
    def sft_texts(self, ctx: PresetContext) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def build_pairs(self, ctx: PresetContext) -> tuple[dict[str, list], dict[str, list], list[str], dict[str, Any]]:
        raise NotImplementedError

    def eval_prompts(self, ctx: PresetContext) -> list[str]:
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        return {}

    def split(self, which: str) -> Any:
        """The train or eval split ("train" / "eval") of the preset's dataset, loaded once per task object.
        A split-less local copy is divided by :func:`load_train_eval`."""
        cache = self.__dict__.setdefault("_splits", {})
        if not cache:
            cfg = self.config
            cache["train"], cache["eval"] = load_train_eval(
                cfg.dataset, cfg.train_split, cfg.eval_split, what="dataset", config_name=cfg.dataset_config,
                data_dir=cfg.dataset_data_dir, revision=cfg.dataset_revision, seed=cfg.seed)
        return cache[which]

    # flow ----------------------------------------------------------------------------------------
    def setup(self, cache_dir: Path, device: torch.device) -> PresetEnv:
        with quiet():
            return self._setup(cache_dir, device)

    def _setup(self, cache_dir: Path, device: torch.device) -> PresetEnv:
        from datasets import Dataset, load_from_disk

        from alignbench.io import read_json, write_json
        from alignbench.models import freeze

        cfg = self.config
        device = torch.device(device)
        _TASK_FOR_HINTS["name"] = self.name
        for what, name, repo_type in cfg.sources():  # fail at once, before any heavy work
            resolve(name, what=what, repo_type=repo_type)
        src = resolve(cfg.policy, what="policy")
        root = Path(cache_dir) / self.name
        ref_id: dict[str, Any] = {"policy": cfg.policy, "tokenizer": cfg.tokenizer, "source": src}
        sft_folder = None
        if cfg.sft_steps > 0:
            sft_key = {**ref_id, **{k: getattr(cfg, k) for k in ("seed", "sft_steps", "sft_batch_size", "sft_lr",
                                                                   "sft_max_tokens", "dataset", "dataset_config",
                                                                   "dataset_data_dir", "dataset_revision",
                                                                   "train_split", "dtype")},
                       "sft_data": self.sft_data_key()}
            sft_folder = root / f"sft-{stable_hash(sft_key, 12)}"
        if sft_folder is not None and (sft_folder / "meta.json").exists():
            model, tok, _ = load_policy(sft_folder / "reference", tokenizer=None, trust_remote_code=cfg.trust_remote_code,
                                        dtype=cfg.dtype)
        else:
            model, tok, _ = load_policy(cfg.policy, tokenizer=cfg.tokenizer, trust_remote_code=cfg.trust_remote_code,
                                        dtype=cfg.dtype)
        judge = SequenceJudge(cfg.judge, what="judge", input_mode=cfg.judge_input, output=cfg.judge_output,
                              label=cfg.judge_label, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype,
                              device=device, batch_size=cfg.judge_batch_size, max_length=cfg.judge_max_length,
                              strip=[t for t in (tok.eos_token, tok.pad_token) if t])
        spec = generation_spec(tok, cfg.max_new_tokens, cfg.temperature)
        ctx = PresetContext(cfg, model.to(device), tok, spec, judge, device)
        del model
        reference_dir = Path(src)
        if sft_folder is not None:
            def build_sft(tmp: Path) -> None:
                prompts, completions = self.sft_texts(ctx)
                losses = sft_reference(ctx.model, ctx.tokenizer, prompts, completions, steps=cfg.sft_steps,
                                       batch_size=cfg.sft_batch_size, lr=cfg.sft_lr, seed=cfg.seed,
                                       max_tokens=cfg.sft_max_tokens, device=device, desc=f"{self.name} SFT")
                ctx.model.save_pretrained(tmp / "reference", safe_serialization=True)
                ctx.tokenizer.save_pretrained(tmp / "reference")
                write_json(tmp / "meta.json", {"sft_key": sft_key, "final_loss": float(np.mean(losses[-20:])),
                                               "n_texts": len(prompts)})

            build_cached(sft_folder, build_sft)
            reference_dir = sft_folder / "reference"
            ref_id = {"sft": sft_folder.name}
        ctx.model = freeze(ctx.model)
        d = to_dict(cfg)
        data_key = {"ref": ref_id, **{k: v for k, v in d.items() if k not in self.eval_only_fields}}
        data_folder = root / f"data-{stable_hash(data_key, 12)}"

        def build_data(tmp: Path) -> None:
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                train_rows, eval_rows, train_prompts, meta = self.build_pairs(ctx)
            for split, rows in (("train", train_rows), ("eval", eval_rows)):
                if not rows["prompt"]:
                    raise AlignbenchError(f"dataset: no usable {split} preference pairs in '{cfg.dataset}' "
                                          f"(check the split names and max_prompt_tokens)")
                Dataset.from_dict(rows).save_to_disk(str(tmp / "preferences" / split))
            write_json(tmp / "prompts.json", {"train": train_prompts})
            write_json(tmp / "meta.json", {"data_key": data_key, "n_train_pairs": len(train_rows["prompt"]),
                                           "n_eval_pairs": len(eval_rows["prompt"]), **meta})

        build_cached(data_folder, build_data)
        cols = ["prompt", "chosen", "rejected"]
        prefs = {s: load_from_disk(str(data_folder / "preferences" / s)).select_columns(cols) for s in ("train", "eval")}
        train_prompts = read_json(data_folder / "prompts.json")["train"]
        meta = read_json(data_folder / "meta.json")
        eval_prompts = self.eval_prompts(ctx)
        if len(eval_prompts) < 2:
            raise AlignbenchError(f"dataset: fewer than 2 usable eval prompts in '{cfg.dataset}' split '{cfg.eval_split}'")
        fingerprint = stable_hash({"task": self.name, "config": d, "ref": ref_id, "data": data_folder.name}, 16)
        facts = {"policy": cfg.policy, "judge": cfg.judge, "dataset": cfg.dataset, "sft_steps": cfg.sft_steps,
                 "gold_reward": f"judge {cfg.judge} ({cfg.judge_output}, input {cfg.judge_input})",
                 "n_train_pairs": meta.get("n_train_pairs"), "n_eval_pairs": meta.get("n_eval_pairs"), **self.facts()}
        return PresetEnv(judge=judge, facts=facts, reward_model_defaults=self.reward_model_defaults,
                         task_name=self.name, tokenizer=ctx.tokenizer, reference=ctx.model, reference_dir=reference_dir,
                         preferences=prefs, prompts={"train": train_prompts, "eval": eval_prompts},
                         generation=spec, fingerprint=fingerprint, n_eval_samples=cfg.n_eval_samples,
                         eval_batch_size=cfg.eval_batch_size)

    def sft_data_key(self) -> dict[str, Any]:
        return {}


def prompt_token_count(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    return [len(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def distinct_prompts(prompts: Sequence[str], n: int, seed: int, tokenizer: Any, max_tokens: int) -> list[str]:
    """Up to ``n`` distinct prompts of at most ``max_tokens`` tokens, in a seeded order."""
    uniq = list(dict.fromkeys(p for p in prompts if p and p.strip()))
    order = np.random.default_rng(seed).permutation(len(uniq))
    out = []
    for i in order:
        p = uniq[int(i)]
        if prompt_token_count(tokenizer, [p])[0] <= max_tokens:
            out.append(p)
            if len(out) == n:
                break
    return out


@dataclass(frozen=True)
class PairsPresetConfig(PresetConfig):
    """A preset whose preference pairs come from a dataset (HH-RLHF, TL;DR)."""

    n_train_pairs: int = param(0, "training pairs used (0: all that fit max_prompt_tokens)")
    append_eos: bool = param(True, "append the policy's end-of-sequence text to chosen / rejected (teaches stopping)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_train_pairs", self.n_train_pairs, 0)


class DatasetPairsTask(PresetTask):
    """Preferences read from a dataset of pairs; subclasses turn a row into (prompt, chosen, rejected)."""

    def to_pair(self, row: dict[str, Any]) -> tuple[str, str, str] | None:
        raise NotImplementedError

    def text_fields(self, row: dict[str, Any]) -> tuple[str, ...]:
        """Fields of ``row`` that must hold text: a missing (null) or non-text one is a one-line error
        naming the row and field, never a silent drop or a cast."""
        return ()

    def _pairs(self, which: str, ctx: PresetContext, limit: int, seed: int) -> dict[str, list]:
        cfg = self.config
        ds = self.split(which)
        split = cfg.train_split if which == "train" else cfg.eval_split
        triples = []
        for i, row in enumerate(ds):
            check_text_fields(row, self.text_fields(row), where=f"dataset '{cfg.dataset}' split '{split}' row {i}")
            t = self.to_pair(row)
            if t is not None and t[0].strip() and t[1].strip() and t[2].strip() and t[1] != t[2]:
                triples.append(t)
        if len(triples) < len(ds):  # rows the task's format skips by design (documented per task): counted
            print(f"alignbench: dataset '{cfg.dataset}' split '{split}': skipped {len(ds) - len(triples)} of "
                  f"{len(ds)} rows that give no usable pair (empty, identical or unsplittable texts)",
                  file=sys.stderr, flush=True)
        if not triples:
            raise AlignbenchError(f"dataset: no usable pairs in '{cfg.dataset}' split '{split}' "
                                  f"(columns: {', '.join(ds.column_names)})")
        order = np.random.default_rng(seed).permutation(len(triples))
        eos = (ctx.tokenizer.eos_token or "") if cfg.append_eos else ""
        rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
        for start in range(0, len(order), 1024):  # keep the first `limit` pairs whose prompt fits
            chunk = [triples[int(i)] for i in order[start:start + 1024]]
            counts = prompt_token_count(ctx.tokenizer, [t[0] for t in chunk])
            for (p, c, r), n in zip(chunk, counts):
                if n > cfg.max_prompt_tokens:
                    continue
                rows["prompt"].append(p)
                rows["chosen"].append(c + eos)
                rows["rejected"].append(r + eos)
                if limit and len(rows["prompt"]) >= limit:
                    return rows
        return rows

    def build_pairs(self, ctx: PresetContext):
        cfg = self.config
        train = self._pairs("train", ctx, cfg.n_train_pairs, cfg.seed)
        ev = self._pairs("eval", ctx, cfg.n_eval_pairs, cfg.seed + 1)
        return train, ev, list(train["prompt"]), {}

    def sft_texts(self, ctx: PresetContext) -> tuple[list[str], list[str]]:
        rows = self._pairs("train", ctx, self.config.n_train_pairs, self.config.seed)
        return rows["prompt"], rows["chosen"]

    def eval_prompts(self, ctx: PresetContext) -> list[str]:
        cfg = self.config
        prompts = []
        for row in self.split("eval"):
            t = self.to_pair(row)
            if t is not None:
                prompts.append(t[0])
        return distinct_prompts(prompts, cfg.n_eval_prompts, cfg.seed + 2, ctx.tokenizer, cfg.max_prompt_tokens)

    def sft_data_key(self) -> dict[str, Any]:
        return {"n_train_pairs": self.config.n_train_pairs, "append_eos": self.config.append_eos,
                "max_prompt_tokens": self.config.max_prompt_tokens}
