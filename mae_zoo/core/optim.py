"""AdamW with MAE's parameter groups, LR scaled by the effective batch, warmup + half-cosine per step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

# Parameters that never get weight decay (besides every 1-D tensor: biases and norm weights).
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed", "dist_token", "reg_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases/norms/tokens/position tables without decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule used by MAE: lr = blr * effective_batch / 256."""
    return base_lr * effective_batch / 256.0


@dataclass
class WarmupCosine:
    """LR factor per optimizer step: linear warmup from 0, then half-cosine down to ``min_factor``."""

    warmup_steps: int
    total_steps: int
    min_factor: float = 0.0

    constant: bool = False  # warmup, then the peak LR throughout (GraphMAE's ``scheduler: False``)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        if self.constant:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, progress)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lamb(
    params: Iterable[dict], lr: float, betas: tuple[float, float], fused: bool | None = None
) -> torch.optim.Optimizer:
    """SparK's LAMB: timm's ``Lamb`` (SparK's ``utils/lamb.py`` is a copy of it): the global gradient norm
    clipped to 5, eps 1e-6, the trust ratio only on parameters with weight decay. ``fused`` is ignored."""
    from timm.optim import Lamb

    return Lamb(params, lr=lr, betas=betas, eps=1e-6, max_grad_norm=5.0)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "lamb": lamb,
}


def build_optimizer(
    name: str, params: Iterable[dict], lr: float, betas: tuple[float, float], fused: bool | None = None
) -> torch.optim.Optimizer:
    """AdamW (MAE and most methods), Adam with L2 weight decay (GraphMAE's ``optimizer: adam``) or LAMB (SparK)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {list(OPTIMIZERS)}, got '{name}'")
    return OPTIMIZERS[name](params, lr=lr, betas=tuple(betas), fused=fused)


def all_params_group(model: nn.Module, weight_decay: float) -> list[dict]:
    """One group, weight decay on every parameter (GraphMAE's ``create_optimizer``)."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
