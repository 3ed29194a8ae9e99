"""Typed, validated configs.

Every config in alignbench is a frozen dataclass whose fields carry a ``help`` text in their
metadata (``field(default=..., metadata={"help": ...})``, shortened by :func:`param`). Configs are
built from plain mappings (YAML, CLI) by :func:`from_mapping`, which rejects unknown keys with a
did-you-mean, coerces numbers and tuples, and runs the dataclass's own ``__post_init__`` checks.
Errors are :class:`~alignbench.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")


def param(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (shown by ``alignbench list --verbose`` and in docs)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}


# ---------------------------------------------------------------- validation helpers used in __post_init__


def check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(name, f"must be finite, got {value!r}")


def check_positive(name: str, value: float) -> None:
    check_finite(name, value)
    if value <= 0:
        raise ConfigError(name, f"must be > 0, got {value!r}")


def check_nonnegative(name: str, value: float) -> None:
    check_finite(name, value)
    if value < 0:
        raise ConfigError(name, f"must be >= 0, got {value!r}")


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    check_finite(name, value)
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be in [{lo}, {hi}], got {value!r}")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(name, f"must be one of {choices}, got {value!r}")


def check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value!r}")


# ---------------------------------------------------------------- building configs from mappings


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Coerce a YAML/CLI value to the annotated type; raise ConfigError naming the field otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError as e:  # try the next member of the union
                errors.append(e)
        raise errors[0] if errors else ConfigError(name, f"invalid value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return tuple(_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(name, f"must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(name, f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(name, f"must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(name, f"must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(name, f"must be a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
        return value
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    data = dict(data or {})
    prefix = f"{where}." if where else ""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{prefix}{key}", f"unknown key{hint}")
    kwargs = {k: _coerce(f"{prefix}{k}", v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not e.field.startswith(prefix):
            raise ConfigError(f"{prefix}{e.field}", str(e).split(": ", 1)[1]) from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-friendly dict of a (possibly nested) dataclass config."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def non_default(cfg: Any) -> dict[str, Any]:
    """The fields of a dataclass config that differ from their defaults (nested configs recursively).

    Run ids hash this, so adding a new field with a default to a config keeps every existing run id.
    """
    out: dict[str, Any] = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        if dataclasses.is_dataclass(v):
            sub = non_default(v)
            if sub:
                out[f.name] = sub
        elif to_dict(v) != to_dict(default):
            out[f.name] = to_dict(v)
    return out


def stable_hash(obj: Any, n: int = 10) -> str:
    """Short content hash of a JSON-serialisable object (key order independent)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping with the safe loader; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError("config", f"{p} is not UTF-8 text (byte {e.start}); a YAML file is expected") from None
    except yaml.YAMLError as e:
        raise ConfigError("config", f"{p} is not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{p} must hold a mapping of fields, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every method (tasks supply defaults; the sweep may override)."""

    steps: int = param(200, "optimizer steps per run; methods counted in iterations (PPO) run this many "
                                 "iterations unless their own `iterations` field is set")
    batch_size: int = param(32, "examples (pairs, or unpaired rows) per optimizer step")
    lr: float = param(1e-3, "peak learning rate of AdamW")
    warmup_steps: int = param(10, "linear learning-rate warmup steps (DPO paper: 150 at its scale)")
    weight_decay: float = param(0.0, "AdamW weight decay")
    max_grad_norm: float = param(10.0, "gradient clipping norm")
    eval_every: int = param(25, "evaluate every this many steps (and at the last step)")
    eval_temperatures: tuple[float, ...] = param((0.0, 0.25, 0.5, 0.75, 1.0), "sampling temperatures at which the "
                                                 "final policy is evaluated once more (0: greedy; empty: none)")
    grad_accum: int = param(1, "gradient accumulation steps per optimizer step")
    precision: str = param("fp32", "fp32 or bf16 (mixed precision where the device supports it)")
    checkpoint_every: int = param(100, "save a resumable checkpoint every this many steps (0: never)")
    gradient_checkpointing: bool = param(False, "recompute activations in the backward pass (memory for time)")
    lora_r: int = param(0, "rank of LoRA adapters trained in place of the policy's weights (0: full fine-tuning)")
    lora_alpha: float = param(16.0, "LoRA scaling alpha (the update is scaled by alpha / r)")
    share_prompt: bool = param(True, "offline methods: run each distinct prefix of a batch once (a prompt shared "
                                     "by chosen and rejected or by several rows, common completion prefixes), "
                                     "packed under a 4D attention mask where that saves positions (the same "
                                     "log-probs up to float rounding; false: the concatenated layout)")

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_nonnegative("weight_decay", self.weight_decay)
        check_positive("max_grad_norm", self.max_grad_norm)
        check_int("eval_every", self.eval_every, 1)
        for i, t in enumerate(self.eval_temperatures):
            check_range(f"eval_temperatures[{i}]", t, 0.0, 5.0)
        check_int("grad_accum", self.grad_accum, 1)
        check_choice("precision", self.precision, ("fp32", "bf16"))
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_int("lora_r", self.lora_r, 0)
        check_positive("lora_alpha", self.lora_alpha)
