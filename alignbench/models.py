"""Models and tokenizers through transformers: tiny GPT-2s for embedded tasks, hub names or local paths."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import AlignbenchError


def progress_disabled(show: bool = True) -> bool | None:
    """tqdm's ``disable``: off when asked or under ALIGNBENCH_QUIET=1, else None (= hide when not a terminal)."""
    return True if (not show or os.environ.get("ALIGNBENCH_QUIET") == "1") else None


def quiet_transformers() -> None:
    """Hide transformers' own progress bars and info logs (weight loading, shard writing), for the whole process."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """For a block: hide the progress bars of ``datasets`` (save / load) and ``transformers`` (weight loading)
    and transformers' notices (e.g. the 'newly initialized weights' of a fresh scalar head); restored after."""
    import datasets
    from transformers.utils import logging as hf_logging

    ds_on = not datasets.utils.are_progress_bars_disabled()
    tf_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    datasets.utils.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if ds_on:
            datasets.utils.enable_progress_bars()
        if tf_on:
            hf_logging.enable_progress_bar()


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:1' force a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AlignbenchError(f"device: '{name}' requested but CUDA is not available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise AlignbenchError(f"device: unknown device '{name}' (auto, cpu, cuda, cuda:N)") from None


def fast_kernels(model: nn.Module) -> nn.Module:
    """Run GPT-2's tanh-approximated GELU through torch's fused kernel (in place; returns ``model``).

    transformers builds GPT-2 (and other ``gelu_new`` models) with ``NewGELUActivation``, the tanh
    formula written as six element-wise ops; ``GELUTanh`` (transformers' ``gelu_pytorch_tanh``) computes
    the same function in one ``F.gelu(approximate="tanh")`` call, equal up to float rounding
    (``tests/test_optim.py`` bounds the logit difference at 1e-5). On the CPU it makes a tiny GPT-2's training
    step about 20% faster. The config is updated too, so a saved copy reloads with the same kernel.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
    config = getattr(model, "config", None)
    for key in ("activation_function", "hidden_act"):
        if getattr(config, key, None) == "gelu_new":
            setattr(config, key, "gelu_pytorch_tanh")
    return model


def tiny_gpt2(vocab_size: int, n_positions: int, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
              pad_token_id: int = 0, eos_token_id: int | None = None, seed: int = 0) -> nn.Module:
    """A small GPT-2 built from a config (no download), with the fused GELU kernel (:func:`fast_kernels`)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_layer=n_layer, n_embd=n_embd,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu_pytorch_tanh",
                     pad_token_id=pad_token_id, bos_token_id=eos_token_id if eos_token_id is not None else pad_token_id,
                     eos_token_id=eos_token_id if eos_token_id is not None else pad_token_id)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


def load_causal_lm(name_or_path: str | Path, *, what: str = "model", trust_remote_code: bool = False,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """AutoModelForCausalLM.from_pretrained on a hub name or a local folder (with :func:`fast_kernels`),
    with a one-line error."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code,
                                                     dtype=dtype, use_safetensors=None)
        return fast_kernels(model)
    except Exception as e:  # noqa: BLE001 - turn any loading failure into one line naming the source
        raise AlignbenchError(_unreachable(what, name_or_path, e)) from None


def load_tokenizer(name_or_path: str | Path, *, what: str = "tokenizer", trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise AlignbenchError(_unreachable(what, name_or_path, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _unreachable(what: str, name: str | Path, err: Exception) -> str:
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return (f"{what}: cannot load '{name}' ({first}); download it where the hub is reachable and pass "
            f"its local folder instead (e.g. --task-arg {what}=/path/to/local/copy)")


def check_tokenizer_fits(model: nn.Module, tokenizer: Any, *, what: str = "policy",
                         tokenizer_what: str = "tokenizer") -> None:
    """Refuse a tokenizer whose token ids do not all index the model's embedding matrix (a mismatched pair)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise AlignbenchError(f"{tokenizer_what}: its {len(tokenizer)} tokens do not fit the {what}'s {rows} "
                              f"embeddings (a tokenizer from another model?); pass the {what}'s own tokenizer")


def prepare_policy(policy: nn.Module, train: Any) -> nn.Module:
    """Apply the memory options of a TrainConfig to a fresh policy copy.

    ``lora_r > 0``: wrap the policy in PEFT LoRA adapters (only they train; the frozen base weights are the
    reference, so the reference is the adapter-disabled model). ``gradient_checkpointing``: recompute
    activations in the backward pass. With neither, the policy is returned unchanged.
    """
    if train.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        policy.config.use_cache = False
    if train.lora_r > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise AlignbenchError("lora_r: LoRA needs the peft extra (pip install 'alignbench[peft]')") from None
        policy = get_peft_model(policy, LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=0.0,
                                                   target_modules="all-linear", task_type="CAUSAL_LM"))
    return policy


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's parameters (names, shapes, values): a cache key for its outputs."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def train_causal_lm(model: nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor, *, steps: int,
                    batch_size: int, lr: float, seed: int, attention_mask: torch.Tensor | None = None,
                    desc: str = "reference (MLE)") -> list[float]:
    """Maximum-likelihood training of a causal LM on token tensors (N, T): the SFT step of every task.

    loss_mask (N, T) is 1 on tokens whose likelihood is maximised (the next-token targets).
    """
    from .logprobs import token_logps
    from .optim import clip_gradients, make_optimizer

    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    opt = make_optimizer(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    losses = []
    dev = next(model.parameters()).device
    for _ in tqdm(range(steps), desc=desc, leave=False, disable=progress_disabled()):
        idx = torch.randint(0, input_ids.shape[0], (batch_size,), generator=g)
        ids, am, lm = input_ids[idx].to(dev), attention_mask[idx].to(dev), loss_mask[idx].to(dev)
        logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits
        lp = token_logps(logits[:, :-1], ids[:, 1:])
        m = lm[:, 1:].float()
        loss = -(lp * m).sum() / m.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses
