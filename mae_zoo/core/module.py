"""``MaskedAutoencoder``: the one LightningModule that runs tokenize -> mask -> encode -> decode -> objective.

A modality subclasses it and brings ``tokenize``, ``encoder``, ``decoder``, ``objective`` and
``embed``; optimisation, mask seeding, logging and checkpoint metadata live here.
"""
from __future__ import annotations

import math
from typing import Any

import hydra.utils
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn as nn

from mae_zoo.core.optim import WarmupCosine, all_params_group, build_optimizer, param_groups, scaled_lr
from mae_zoo.core.types import Layout, MAEOutput, Tokens
from mae_zoo.masks.base import MaskGenerator

_STAGES = {"train": 0, "val": 1, "test": 2, "predict": 3, "visual": 4}


def mask_seed(seed: int, rank: int, stage: str, step: int, micro: int = 0) -> int:
    """A 64-bit seed mixed from (seed, global rank, stage, step, micro-batch) with numpy's SeedSequence.

    Lightning's ``seed_everything`` gives every rank the same seed, so masks drawn from the global
    RNG would repeat across DDP ranks; mixing in the rank makes them differ while staying reproducible.
    """
    words = [int(seed), int(rank), _STAGES[stage], int(step), int(micro)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


class MaskedAutoencoder(pl.LightningModule):
    """Shared base. Subclasses set ``self.encoder``, ``self.decoder``, ``self.objective``,
    ``self.layout`` and implement ``tokenize`` and ``embed``.

    ``encoder(inputs, mask)`` may drop hidden tokens (ViT) or substitute them (graph [MASK]);
    ``decoder(encoded)`` returns per-token predictions; ``objective(pred, target, mask)`` returns
    ``(loss, normalised_target)``.
    """

    datamodule_class: str | None = None  # the DataModule this modality trains on, for evaluation
    encoder: nn.Module
    decoder: nn.Module
    objective: nn.Module
    layout: Layout

    def __init__(self, mask: dict, optim: dict, seed: int = 0) -> None:
        super().__init__()
        # Every __init__ argument of the subclass chain is a plain container, so checkpoints hold
        # only primitives and load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.mask_generator: MaskGenerator = hydra.utils.instantiate(mask)
        self.optim_cfg = dict(optim)
        self.seed = int(seed)

    # ----------------------------------------------------------------------------- modality hooks
    def tokenize(self, batch: Any) -> Tokens:
        """Token inputs, reconstruction targets and layout of a batch (each modality defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define tokenize(batch)")

    def embed(self, batch: Any) -> torch.Tensor:
        """Features of the unmasked input, (B, D), for probes and retrieval (each modality defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define embed(batch)")

    @staticmethod
    def batch_inputs(batch: Any) -> Any:
        """The model input of a (input, label) tuple, a dict with 'input', or a bare tensor."""
        if isinstance(batch, (tuple, list)):
            return batch[0]
        if isinstance(batch, dict):
            return batch["input"]
        return batch

    @staticmethod
    def batch_labels(batch: Any) -> torch.Tensor | None:
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            return batch[1]
        if isinstance(batch, dict):
            return batch.get("label")
        return None

    # ----------------------------------------------------------------------------- the data path
    def forward(self, batch: Any, mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> MAEOutput:
        tokens = self.tokenize(batch)
        batch_size = tokens.inputs.shape[0]
        if mask is None:
            mask = self.mask_generator(tokens.layout, batch_size, generator)
        mask = mask.to(device=tokens.inputs.device, dtype=torch.bool)
        if mask.shape != tokens.inputs.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.inputs.shape[:2])}")
        encoded = self.encode(tokens, mask, generator)
        pred = self.decode(encoded, tokens, mask)
        loss, target = self.objective(pred, tokens.target, mask)
        return MAEOutput(loss=loss, pred=pred, mask=mask, target=target)

    def encode(self, tokens: Tokens, mask: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        """Encoder step. Token-dropping encoders need only inputs and mask; a modality whose encoder
        needs more of the layout (a graph's edges) or random numbers of its own overrides this."""
        return self.encoder(tokens.inputs, mask)

    def decode(self, encoded: Any, tokens: Tokens, mask: torch.Tensor) -> torch.Tensor:
        """Decoder step: per-token predictions (B, L, Q)."""
        return self.decoder(encoded)

    def mask_rng(self, stage: str, step: int, micro: int = 0) -> torch.Generator:
        """A generator seeded by (seed, global rank, stage, step, micro-batch): ranks differ, runs repeat."""
        return torch.Generator().manual_seed(mask_seed(self.seed, self.global_rank, stage, step, micro))

    # ----------------------------------------------------------------------------- Lightning steps
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        micro = batch_idx % max(1, self.trainer.accumulate_grad_batches)
        out = self(batch, generator=self.mask_rng("train", self.global_step, micro))
        # The check syncs with the device, so it runs only on steps that are logged anyway.
        if self.global_step % self.trainer.log_every_n_steps == 0 and not torch.isfinite(out.loss):
            raise FloatingPointError(f"non-finite training loss {out.loss.item()} at step {self.global_step}")
        size = out.mask.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        self.log("train/mask_ratio", out.mask.float().mean(), batch_size=size)
        self.log("optim/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        self.log("optim/effective_batch", float(self.schedule_info["effective_batch"]), batch_size=size)
        return out.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # The same masks every epoch, so val/loss curves compare like with like.
        out = self(batch, generator=self.mask_rng("val", batch_idx))
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=out.mask.shape[0])

    # ----------------------------------------------------------------------------- optimisation
    def effective_batch_size(self) -> int:
        trainer = self.trainer
        per_device = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule is not None else None
        if per_device is None:
            per_device = trainer.train_dataloader.batch_size  # type: ignore[union-attr]
        return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches

    def configure_optimizers(self) -> dict:
        cfg = self.optim_cfg
        effective = self.effective_batch_size()
        lr = cfg.get("lr") or scaled_lr(cfg["blr"], effective)
        # Fused AdamW: on CPU the default per-tensor loop cost 12% of a ViT-B bf16 step (bench/README.md).
        fused = self.device.type in ("cpu", "cuda")
        groups = (all_params_group if cfg.get("decay_all") else param_groups)(self, cfg["weight_decay"])
        optimizer = build_optimizer(cfg.get("name", "adamw"), groups, lr, cfg.get("betas", (0.9, 0.95)), fused=fused)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = cfg.get("warmup_steps")
        if warmup is None:
            batches = self.trainer.num_training_batches
            per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches) if math.isfinite(batches) else 0
            warmup = round(cfg.get("warmup_epochs", 0) * per_epoch)
        warmup = min(int(warmup), max(0, total - 1))
        schedule = WarmupCosine(warmup, total, min_factor=cfg.get("min_lr", 0.0) / lr,
                                constant=cfg.get("schedule", "cosine") == "constant")
        self.schedule_info = {"lr": lr, "effective_batch": effective, "warmup_steps": warmup, "total_steps": total}
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        info = getattr(self, "schedule_info", None)
        if info and self.trainer.is_global_zero:
            self.print(
                f"optim: lr={info['lr']:.3g} (effective batch {info['effective_batch']}), "
                f"warmup {info['warmup_steps']} of {info['total_steps']} steps"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        cls = type(self)
        meta = {"class": f"{cls.__module__}.{cls.__qualname__}", "layout": self.layout.name}
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:  # lets evaluation rebuild the same data from the checkpoint alone
            dm_cls = type(datamodule)
            meta["datamodule"] = f"{dm_cls.__module__}.{dm_cls.__qualname__}"
        checkpoint["mae_zoo"] = meta
