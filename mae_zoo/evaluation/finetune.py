"""End-to-end fine-tuning, after MAE's ``main_finetune``: layer-wise LR decay, drop path, global
average pool of the patch tokens (cls excluded) + ``fc_norm``, head init trunc-normal std 2e-5,
AdamW, linear warmup then half-cosine per step to ``min_lr``, label smoothing.

It works on any modality whose ``encoder`` is a ViT stack (a ``TransformerStack``: ``blocks``,
``norm``, ``num_prefix``, returns ``.latent``) fed with ``model.tokenize(batch).inputs``: the image
MAE today, the other ViT-based modalities as they come. For other encoders it falls back to
``model.embed`` + head, trained with one LR (no layer decay or drop path), and says so in the
metrics (``eval_finetune/mode``).

Splits: the model is trained on the datamodule's train loader and scored on its val loader. When the
datamodule keeps a test split apart (image data with ``data.val_from_train``), the val loader is
the held-out part of the training set and the test split is scored once, after training:
``eval_finetune/val_top1`` (carved split) and ``eval_finetune/test_top1`` (= ``eval_finetune/top1``,
the final number). Nothing is selected on the test split: the reported model is the last epoch's,
and ``val_every`` only records the val curve (``finetune_curve.csv``) for choosing hyper-parameters.

Deviations from MAE, for a CPU budget: no RandAugment/mixup/cutmix/random erasing; the train loader
is the datamodule's own augmented one (RandomResizedCrop as in pre-training, flip as configured).
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.optim import NO_DECAY_NAMES, WarmupCosine
from mae_zoo.evaluation.base import EvalData, Evaluator, accuracy_metrics, autocast, resolve_runtime, to_device
from mae_zoo.nets.vit import TransformerStack

EMBED_PREFIXES = ("cls_token", "pos_embed", "patch_embed", "dist_token", "reg_token", "mask_token")


def layer_id(name: str, depth: int) -> int:
    """MAE's layer id of an encoder parameter name: cls/pos/patch_embed 0, block i -> i + 1, the rest depth + 1."""
    name = name.removeprefix("encoder.")
    if name.split(".", 1)[0] in EMBED_PREFIXES:
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_param_groups(net: nn.Module, weight_decay: float, layer_decay: float, depth: int) -> list[dict]:
    """One group per (layer id, decay or not) with ``lr_scale = layer_decay ** (depth + 1 - layer_id)``;
    no weight decay on 1-D parameters (biases, norms) and tokens / position tables."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        lid = layer_id(name, depth)
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "layer_id": lid,
                "lr_scale": layer_decay ** (depth + 1 - lid),
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def set_drop_path(blocks: nn.ModuleList, drop_path: float) -> None:
    """Stochastic depth rising linearly from 0 to ``drop_path`` over the blocks (timm's rule)."""
    from timm.layers import DropPath

    rates = torch.linspace(0, drop_path, len(blocks)).tolist() if len(blocks) else []
    for block, rate in zip(blocks, rates):  # timm Blocks: one drop path after attention, one after the MLP
        block.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
        block.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()


class ViTClassifier(nn.Module):
    """A copy of the MAE's ViT encoder with a classification head.

    ``global_pool=True`` (MAE fine-tuning): the encoder's final norm is dropped, the patch tokens are
    averaged and normalised by a fresh ``fc_norm``; ``False``: the cls token after the encoder's norm.
    """

    def __init__(
        self,
        model: MaskedAutoencoder,
        num_classes: int,
        drop_path: float = 0.1,
        global_pool: bool = True,
        head_init_std: float = 2e-5,
    ) -> None:
        super().__init__()
        self.tokenize = model.tokenize  # a bound method: tokenizers hold no parameters
        encoder = copy.deepcopy(model.encoder)
        if not isinstance(encoder, TransformerStack):
            raise ConfigError(f"ViTClassifier needs a ViT encoder (TransformerStack), got {type(encoder).__name__}")
        self.encoder = encoder
        self.depth = len(encoder.blocks)
        self.num_prefix = int(encoder.num_prefix)
        if not global_pool and self.num_prefix == 0:
            raise ConfigError("global_pool=false needs a cls token, and this encoder has none")
        self.global_pool = global_pool
        norm = encoder.norm
        if not isinstance(norm, nn.LayerNorm):
            raise ConfigError(f"ViTClassifier needs the encoder's final LayerNorm, got {type(norm).__name__}")
        dim = norm.normalized_shape[0]
        if global_pool:
            eps = norm.eps
            encoder.norm = nn.Identity()
            self.fc_norm: nn.Module = nn.LayerNorm(dim, eps=eps)
        else:
            self.fc_norm = nn.Identity()
        set_drop_path(encoder.blocks, drop_path)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: Any) -> torch.Tensor:
        latent = self.encoder(self.tokenize(batch).inputs).latent
        pooled = latent[:, self.num_prefix :].mean(dim=1) if self.global_pool else latent[:, 0]
        return self.head(self.fc_norm(pooled))


class EmbedClassifier(nn.Module):
    """Fallback for encoders that are not ViT stacks: ``model.embed`` then a head."""

    def __init__(self, model: MaskedAutoencoder, num_classes: int, dim: int, head_init_std: float = 2e-5) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        self.model.decoder = nn.Identity()  # embed never decodes: no parameters to train or hold
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        self.depth = 0

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.model.embed(batch))


class FineTune(Evaluator):
    """Fine-tune a copy of the encoder on the augmented train loader; top-1/top-5 on the val loader."""

    name = "finetune"
    epochs: int

    def __init__(
        self,
        epochs: int = 100,
        warmup_epochs: float = 5,
        blr: float = 5e-4,
        lr: float | None = None,
        min_lr: float = 1e-6,
        layer_decay: float = 0.65,
        weight_decay: float = 0.05,
        drop_path: float = 0.1,
        label_smoothing: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        global_pool: bool = True,
        clip_grad: float | None = None,
        device: str = "auto",
        precision: str = "auto",
        num_classes: int | None = None,
        log_every_n_steps: int = 50,
        val_every: int | None = None,
    ) -> None:
        if epochs < 1:
            raise ConfigError(f"eval.epochs must be positive, got {epochs}")
        if val_every is not None and val_every < 1:
            raise ConfigError(f"eval.val_every must be null (val after the last epoch only) or >= 1, got {val_every}")
        if not 0 < layer_decay <= 1:
            raise ConfigError(f"eval.layer_decay must be in (0, 1], got {layer_decay}")
        if not 0 <= drop_path < 1:
            raise ConfigError(f"eval.drop_path must be in [0, 1), got {drop_path}")
        self.epochs, self.warmup_epochs, self.blr, self.lr, self.min_lr = epochs, warmup_epochs, blr, lr, min_lr
        self.layer_decay, self.weight_decay, self.drop_path = layer_decay, weight_decay, drop_path
        beta1, beta2 = betas
        self.label_smoothing, self.betas, self.global_pool, self.clip_grad = (
            label_smoothing,
            (beta1, beta2),
            global_pool,
            clip_grad,
        )
        self.device, self.precision, self.num_classes = device, precision, num_classes
        self.log_every_n_steps = log_every_n_steps
        self.val_every = val_every

    def build(self, model: MaskedAutoencoder, num_classes: int, sample: Any) -> tuple[nn.Module, list[dict], str]:
        """The classifier, its optimizer groups and the mode ('vit' or 'embed')."""
        if isinstance(model.encoder, TransformerStack):
            net = ViTClassifier(model, num_classes, self.drop_path, self.global_pool)
            return net, layer_decay_param_groups(net, self.weight_decay, self.layer_decay, net.depth), "vit"
        with torch.no_grad():
            dim = model.embed(sample).shape[-1]
        fallback = EmbedClassifier(model, num_classes, dim)
        return fallback, layer_decay_param_groups(fallback, self.weight_decay, 1.0, 0), "embed"

    def __call__(self, model: MaskedAutoencoder, datamodule: EvalData, run_dir: Path) -> dict[str, Any]:
        device, precision = resolve_runtime(self.device, self.precision)
        datamodule.setup("fit")
        train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise ConfigError("the train loader is empty (fewer samples than one batch?)")
        first = to_device(next(iter(train_loader)), device)
        num_classes = self.class_count(datamodule, MaskedAutoencoder.batch_labels(first))
        net, groups, mode = self.build(model.to(device), num_classes, first)
        net = net.to(device)
        batch_size = int(MaskedAutoencoder.batch_inputs(first).shape[0])
        lr = self.lr if self.lr is not None else self.blr * batch_size / 256
        for group in groups:
            group.pop("names")
        opt = torch.optim.AdamW(groups, lr=lr, betas=self.betas)
        total = self.epochs * steps_per_epoch
        schedule = WarmupCosine(
            min(round(self.warmup_epochs * steps_per_epoch), total - 1),
            total,
            min_factor=self.min_lr / lr if lr else 0.0,
        )
        step, history = 0, []
        curve: list[dict[str, Any]] = []  # one row per epoch: train loss, and val top-1 where measured
        start = time.time()
        for epoch in range(self.epochs):
            net.train()
            loss_sum, seen = 0.0, 0
            for batch in train_loader:
                batch = to_device(batch, device)
                labels = batch_labels(batch)
                for group in opt.param_groups:
                    group["lr"] = lr * schedule(step) * group["lr_scale"]
                with autocast(precision, device):
                    logits = net(batch)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"fine-tuning loss {loss.item()} at step {step}; lower eval.blr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip_grad:
                    nn.utils.clip_grad_norm_(net.parameters(), self.clip_grad)
                opt.step()
                step += 1
                loss_sum += loss.item() * labels.shape[0]
                seen += labels.shape[0]
                if self.log_every_n_steps and step % self.log_every_n_steps == 0:
                    print(
                        f"finetune: epoch {epoch} step {step}/{total} loss {loss.item():.4f} "
                        f"({time.time() - start:.0f} s)",
                        flush=True,
                    )
            history.append(round(loss_sum / max(1, seen), 5))
            row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": history[-1], "val_top1": ""}
            if self.val_every and ((epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs):
                epoch_logits, epoch_labels = predict(net, val_loader, device, precision)
                row["val_top1"] = round(accuracy_metrics("v", epoch_logits, epoch_labels, num_classes)["v/top1"], 3)
                print(f"finetune: epoch {epoch + 1} val top-1 {row['val_top1']}", flush=True)
            row["wall_s"] = round(time.time() - start, 1)
            curve.append(row)
        train_s = time.time() - start
        write_curve(curve, run_dir)
        logits, labels = predict(net, val_loader, device, precision)
        val_metrics = accuracy_metrics("eval_finetune", logits, labels, num_classes)
        metrics: dict[str, Any] = dict(val_metrics)
        if datamodule.test_set is not None:  # val is carved from train: report both, the test split last
            metrics = {key.replace("eval_finetune/", "eval_finetune/val_"): value for key, value in val_metrics.items()}
            test_logits, test_labels = predict(net, datamodule.test_dataloader(), device, precision)
            test_metrics = accuracy_metrics("eval_finetune", test_logits, test_labels, num_classes)
            metrics.update(test_metrics)  # top1 / top5: the final number, on the test split
            metrics.update({key.replace("eval_finetune/", "eval_finetune/test_"): v for key, v in test_metrics.items()})
            metrics["eval_finetune/num_test"] = int(test_labels.shape[0])
        metrics["eval_finetune/val_split"] = "carved from train" if datamodule.test_set is not None else "test split"
        train_data = train_loader.dataset
        metrics["eval_finetune/num_train"] = len(train_data) if isinstance(train_data, Sized) else None
        measured = [[row["epoch"], row["val_top1"]] for row in curve if row["val_top1"] != ""]
        metrics["eval_finetune/val_top1_per_epoch"] = measured
        metrics.update(
            {
                "eval_finetune/train_loss": history[-1],
                "eval_finetune/train_loss_per_epoch": history,
                "eval_finetune/epochs": self.epochs,
                "eval_finetune/steps": step,
                "eval_finetune/lr": lr,
                "eval_finetune/batch_size": batch_size,
                "eval_finetune/layer_decay": self.layer_decay if mode in ("vit", "point") else 1.0,
                "eval_finetune/drop_path": self.drop_path if mode in ("vit", "point") else 0.0,
                "eval_finetune/mode": mode,
                "eval_finetune/global_pool": self.global_pool,
                "eval_finetune/num_val": int(labels.shape[0]),
                "eval_finetune/train_wall_s": round(train_s, 2),
                "eval_finetune/precision": precision,
            }
        )
        if not math.isfinite(history[-1]):
            raise FloatingPointError("fine-tuning diverged")
        return metrics


def write_curve(curve: list[dict[str, Any]], run_dir: Path) -> None:
    """``finetune_curve.csv`` in the run folder: epoch, step, train_loss, val_top1 (blank where not
    measured), wall_s."""
    if not curve:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "finetune_curve.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows(curve)


def batch_labels(batch: Any) -> torch.Tensor:
    """The batch's labels as int64; a ConfigError for unlabelled batches."""
    labels = MaskedAutoencoder.batch_labels(batch)
    if labels is None:
        raise ConfigError("eval=finetune needs labelled batches ((input, label) tuples or dicts with 'label')")
    return labels.long()


@torch.no_grad()
def predict(net: nn.Module, loader: Any, device: torch.device, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    net.eval()
    logits, labels = [], []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(precision, device):
            logits.append(net(batch).float().cpu())
        labels.append(batch_labels(batch).cpu())
    if not logits:
        raise ConfigError("the val loader gave no batches")
    return torch.cat(logits), torch.cat(labels)
