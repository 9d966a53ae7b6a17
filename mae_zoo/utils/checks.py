"""The one place where values and checkpoints are checked before anything runs.

``check_values`` holds a table of the keys a user types most (seed, batch size, workers, learning
rates, mask ratio, precision, epochs) with what is valid for each; every violation is reported in one
line naming the key. ``safe_load`` reads a checkpoint the same way for ``mae_zoo.load``, evaluation and
training resume: ``weights_only=True`` whatever the environment says, and any failure is one line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mae_zoo.core.errors import ConfigError

# Lightning's accepted values (lightning_fabric.connector._PRECISION_INPUT) plus ours.
PRECISIONS = (
    "auto",
    "32-true",
    "32",
    32,
    "16-mixed",
    "16",
    16,
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "64-true",
    "64",
    64,
    "transformer-engine",
    "transformer-engine-float16",
)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    key: str  # dotted path in the composed config; absent keys are not checked
    valid: str  # what is valid, as the error message says it
    ok: Callable[[Any], bool]


RULES = (
    Rule("seed", "an integer >= 0", lambda v: _integer(v) and v >= 0),
    Rule("data.batch_size", "an integer >= 1", lambda v: _integer(v) and v >= 1),
    Rule("data.num_workers", "an integer >= 0", lambda v: _integer(v) and v >= 0),
    Rule("optim.blr", "a number > 0", lambda v: _number(v) and v > 0),
    Rule("optim.lr", "null or a number > 0", lambda v: v is None or (_number(v) and v > 0)),
    Rule("optim.weight_decay", "a number >= 0", lambda v: _number(v) and v >= 0),
    Rule("optim.warmup_epochs", "a number >= 0", lambda v: _number(v) and v >= 0),
    Rule("optim.min_lr", "a number >= 0", lambda v: _number(v) and v >= 0),
    Rule("mask.ratio", "a number in the open interval (0, 1)", lambda v: _number(v) and 0 < v < 1),
    Rule("trainer.precision", f"one of {list(PRECISIONS)}", lambda v: v in PRECISIONS),
    Rule(
        "trainer.max_epochs",
        "null (Lightning's default), -1 (no limit) or an integer >= 1",
        lambda v: v is None or (_integer(v) and (v >= 1 or v == -1)),
    ),
    Rule("trainer.accumulate_grad_batches", "an integer >= 1", lambda v: _integer(v) and v >= 1),
    Rule("precision_probe.enabled", "true or false", lambda v: isinstance(v, bool)),
    Rule("precision_probe.cache", "true or false", lambda v: isinstance(v, bool)),
    Rule("precision_probe.warmup", "an integer >= 0", lambda v: _integer(v) and v >= 0),
    Rule("precision_probe.steps", "an integer >= 1", lambda v: _integer(v) and v >= 1),
    Rule("precision_probe.min_gain", "a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
)


def check_values(cfg: DictConfig, rules: tuple[Rule, ...] = RULES) -> None:
    """Raise one ConfigError that names every key of ``rules`` holding an invalid value."""
    problems = []
    for rule in rules:
        value = OmegaConf.select(cfg, rule.key, default="__absent__", throw_on_missing=False)
        if isinstance(value, str) and value == "__absent__":
            continue
        if not rule.ok(value):
            problems.append(f"{rule.key}={value!r} (valid: {rule.valid})")
    if problems:
        raise ConfigError("; ".join(problems))


def safe_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code, also
    under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (an explicit argument wins over it). The official MAE
    scripts also store their argparse ``args``; Namespace is a plain attribute bag, so it is allowed.
    ``mmap``: map the tensors instead of reading them (a check that needs only keys and shapes)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is not a file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # not a torch file, truncated, or holding objects that would run code
        raise ConfigError(f"{path} cannot be loaded as a checkpoint: {_why(err)}") from None


def _why(err: Exception) -> str:
    """The part of torch's error that says what is wrong (its advice to retry unsafely is left out)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return f"not a plain-tensor checkpoint (a text file, a truncated file, or a pickle holding code: {detail})"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first[:200]}"


def check_resume(checkpoint: Mapping[str, Any], module: torch.nn.Module, path: str) -> None:
    """Refuse a resume checkpoint that is not mae_zoo's, is another model class, or does not fit the
    model's parameters (another size or depth), in one line instead of Lightning's state-dict dump."""
    meta = checkpoint.get("mae_zoo")
    if not isinstance(meta, Mapping) or "state_dict" not in checkpoint:
        raise ConfigError(f"resume={path} is not an mae_zoo training checkpoint (no 'mae_zoo' entry or state_dict)")
    ours = f"{type(module).__module__}.{type(module).__qualname__}"
    if meta.get("class") != ours:
        raise ConfigError(f"resume={path} holds a {meta.get('class')}, but this run trains a {ours}")
    have, saved = module.state_dict(), checkpoint["state_dict"]
    if not have:  # built lazily from the data (GraphMAE's input width): Lightning checks at fit
        return
    missing = [k for k in have if k not in saved]
    unexpected = [k for k in saved if k not in have]
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}"
        for k, v in have.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{name} {items[:3]}{' ...' if len(items) > 3 else ''}"
            for name, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", shapes))
            if items
        ]
        raise ConfigError(f"resume={path} does not fit this model (another size or depth?): {'; '.join(parts)}")
