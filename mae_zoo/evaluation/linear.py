"""Linear probe on frozen features, after MAE's ``main_linprobe``.

Head: ``BatchNorm1d(affine=False, eps=1e-6)`` -> ``Linear`` (weight trunc-normal std 0.01, bias 0),
trained alone with LARS (MAE's choice), SGD or AdamW, ``lr = blr * batch_size / 256``, linear warmup
then half-cosine per step. The feature is the model's ``embed`` (cls token for the image MAE, as in
MAE; ``pool=mean`` for the patch average) or the raw pixels (``features=pixels``).

Deviation from MAE, for a CPU budget: features are extracted once, without augmentation, and the
head trains on the cached features (MAE runs the frozen encoder on RandomResizedCrop+flip views in
every epoch). With the encoder frozen the only difference is the missing augmentation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.optim import WarmupCosine
from mae_zoo.evaluation.base import EvalData, Evaluator, accuracy_metrics, check_features, cpu_threads, frozen_features

OPTIMIZERS = ("lars", "sgd", "adamw")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as MAE's probe uses it.

    For every parameter with more than one dimension the update ``g + wd * p`` is rescaled by
    ``trust_coefficient * |p| / |g + wd * p|`` (1 where either norm is 0); 1-D parameters (biases,
    norms) get neither weight decay nor the rescaling. Then heavy-ball momentum and ``p -= lr * buf``.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(p_norm)
                    trust = torch.where(
                        p_norm > 0, torch.where(u_norm > 0, group["trust_coefficient"] * p_norm / u_norm, one), one
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss


class LinearHead(nn.Sequential):
    """MAE's probe head: affine-free BatchNorm then a Linear layer."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        norm, linear = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6), nn.Linear(in_dim, num_classes)
        super().__init__(norm, linear)
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)


def build_optimizer(
    name: str, params: Any, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got '{name}'")


def train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    epochs: int = 90,
    batch_size: int = 1024,
    optimizer: str = "lars",
    blr: float = 1.6,
    lr: float | None = None,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    warmup_epochs: float = 10,
    min_lr: float = 0.0,
    seed: int = 0,
    prefix: str = "eval_linear",
) -> tuple[LinearHead, dict[str, float]]:
    """Train the probe head on cached (N, D) features; metrics of the final head on train and val."""
    with cpu_threads(1, train_x.device):
        return _train_linear_probe(
            train_x,
            train_y,
            val_x,
            val_y,
            num_classes,
            epochs,
            batch_size,
            optimizer,
            blr,
            lr,
            weight_decay,
            momentum,
            warmup_epochs,
            min_lr,
            seed,
            prefix,
        )


def _train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    optimizer: str,
    blr: float,
    lr: float | None,
    weight_decay: float,
    momentum: float,
    warmup_epochs: float,
    min_lr: float,
    seed: int,
    prefix: str,
) -> tuple[LinearHead, dict[str, float]]:
    device = train_x.device
    multilabel = train_y.dim() == 2
    head = LinearHead(train_x.shape[1], num_classes).to(device)
    n = train_x.shape[0]
    batch_size = min(batch_size, n)
    lr = lr if lr is not None else blr * batch_size / 256
    opt = build_optimizer(optimizer, head.parameters(), lr, weight_decay, momentum)
    steps_per_epoch = max(1, n // batch_size)  # drop_last, as MAE's loader
    total = max(1, epochs * steps_per_epoch)
    schedule = WarmupCosine(
        min(round(warmup_epochs * steps_per_epoch), total - 1), total, min_factor=min_lr / lr if lr else 0.0
    )
    generator = torch.Generator().manual_seed(seed)
    step, loss = 0, torch.tensor(float("nan"))
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr * schedule(step)
            idx = order[i * batch_size : (i + 1) * batch_size]
            if multilabel:  # multi-hot labels (BirdSet / AudioSet lists): one sigmoid per class
                loss = F.binary_cross_entropy_with_logits(head(train_x[idx]), train_y[idx].float())
            else:
                loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    with torch.no_grad():
        metrics = accuracy_metrics(prefix, _logits(head, val_x), val_y, num_classes)
        score = "mAP" if multilabel else "top1"
        metrics[f"{prefix}/train_{score}"] = accuracy_metrics(prefix, _logits(head, train_x), train_y, num_classes)[
            f"{prefix}/{score}"
        ]
    metrics.update({f"{prefix}/final_train_loss": float(loss.detach()), f"{prefix}/lr": lr, f"{prefix}/steps": step})
    return head, metrics


def _logits(head: nn.Module, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([head(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]) if x.shape[0] else x.new_zeros(0, 1)


class LinearProbe(Evaluator):
    """Frozen encoder, features cached once; the BN + Linear head trains on them."""

    name = "linear"
    epochs: int

    def __init__(
        self,
        features: str = "embed",
        pool: str | None = None,
        block: int | None = None,
        optimizer: str = "lars",
        epochs: int = 90,
        warmup_epochs: float = 10,
        batch_size: int = 1024,
        blr: float = 1.6,
        lr: float | None = None,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        min_lr: float = 0.0,
        feature_batch_size: int | None = None,
        feature_cache: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"eval.optimizer must be one of {list(OPTIMIZERS)}, got '{optimizer}'")
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"eval.epochs and eval.batch_size must be positive, got {epochs} and {batch_size}")
        check_features(features, pool, block)
        self.block = block
        self.features, self.pool, self.optimizer = features, pool, optimizer
        self.epochs, self.warmup_epochs, self.batch_size = epochs, warmup_epochs, batch_size
        self.blr, self.lr, self.weight_decay, self.momentum, self.min_lr = blr, lr, weight_decay, momentum, min_lr
        self.feature_batch_size, self.device, self.precision = feature_batch_size, device, precision
        self.feature_cache = feature_cache
        self.num_classes, self.seed = num_classes, seed

    def __call__(self, model: MaskedAutoencoder, datamodule: EvalData, run_dir: Path) -> dict[str, Any]:
        f = frozen_features(self, model, datamodule)
        device, precision, num_classes = f.device, f.precision, f.num_classes
        train_x, train_y, val_x, val_y = f.train_x, f.train_y, f.val_x, f.val_y
        _, probe_metrics = train_linear_probe(
            train_x.to(device),
            train_y.to(device),
            val_x.to(device),
            val_y.to(device),
            num_classes,
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            blr=self.blr,
            lr=self.lr,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            warmup_epochs=self.warmup_epochs,
            min_lr=self.min_lr,
            seed=self.seed,
        )
        metrics: dict[str, Any] = dict(probe_metrics)
        metrics.update(
            {
                "eval_linear/features": self.features,
                "eval_linear/optimizer": self.optimizer,
                "eval_linear/pool": model.embed_pool if self.features == "embed" else None,
                "eval_linear/block": self.block,
                "eval_linear/epochs": self.epochs,
                "eval_linear/batch_size": min(self.batch_size, len(train_y)),
                "eval_linear/feature_dim": int(train_x.shape[1]),
                "eval_linear/num_train": int(train_x.shape[0]),
                "eval_linear/num_val": int(val_x.shape[0]),
                "eval_linear/precision": precision,
            }
        )
        if not math.isfinite(metrics["eval_linear/final_train_loss"]):
            raise FloatingPointError(
                f"linear probe diverged (loss {metrics['eval_linear/final_train_loss']}); lower eval.blr"
            )
        return metrics
