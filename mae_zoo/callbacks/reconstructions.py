"""Save input | masked | reconstruction grids of held-out samples, and hand them to the logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_fabric.utilities.apply_func import apply_to_collection, move_data_to_device
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.strategies import FSDPStrategy
from pytorch_lightning.utilities import rank_zero_warn
from torchvision.utils import make_grid, save_image

from mae_zoo.core.module import MaskedAutoencoder


def _take(batch: Any, n: int) -> Any:
    """The first ``n`` samples of a batch, kept on the CPU."""
    return apply_to_collection(batch, torch.Tensor, lambda x: x[:n].detach().cpu())


class ReconstructionPictures(pl.Callback):
    """After every ``every_n_epochs`` validation epochs and at the end of training, draw the first
    ``num_samples`` validation samples under a fixed mask, from ``pl_module.visualize(batch, generator)``
    ((rows, N, C, H, W) in [0, 1]); nothing for a modality whose ``visualize`` returns None."""

    def __init__(
        self, dirpath: str, num_samples: int = 8, every_n_epochs: int = 1, seed: int = 0, min_size: int = 96
    ) -> None:
        self.dirpath = Path(dirpath)
        self.min_size = min_size  # small images are enlarged (nearest) so the patches stay visible
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.batch: Any = None
        self.held_out = False  # True once the samples come from the validation set
        self.warned = False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.held_out and batch_idx == 0:
            self.batch, self.held_out = _take(batch, self.num_samples), True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.batch is None:  # until validation runs (or if it never does), a training batch
            self.batch = _take(batch, self.num_samples)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.draw(trainer, pl_module, f"epoch{trainer.current_epoch:03d}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module, "final")

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str) -> Path | None:
        if isinstance(trainer.strategy, FSDPStrategy):
            # Sharded parameters: a forward on rank 0 alone would wait forever for the other ranks.
            if not self.warned:
                rank_zero_warn("reconstruction pictures are not drawn under FSDP (parameters are sharded)")
                self.warned = True
            return None
        if not trainer.is_global_zero or self.batch is None or not isinstance(pl_module, MaskedAutoencoder):
            return None
        was_training = pl_module.training
        pl_module.eval()
        batch = move_data_to_device(self.batch, pl_module.device)
        with torch.no_grad(), trainer.precision_plugin.forward_context():  # same autocast as training
            views = pl_module.visualize(batch, torch.Generator().manual_seed(self.seed))
        pl_module.train(was_training)
        if views is None:  # a modality without pictures (graphs, sequences)
            return None
        _rows, n = views.shape[:2]
        images = views.flatten(0, 1).float().cpu()
        if images.shape[1] not in (1, 3):  # e.g. 5-channel stacks through the image MAE: PNGs hold 1 or 3
            images = images[:, :3] if images.shape[1] > 3 else images[:, :1]
        factor = max(1, -(-self.min_size // images.shape[-1]))
        if factor > 1:
            images = F.interpolate(images, scale_factor=factor, mode="nearest")
        grid = make_grid(images, nrow=n, padding=2, pad_value=1.0)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        split = "val" if self.held_out else "train"
        path = self.dirpath / f"recon_{split}_{tag}_step{trainer.global_step:06d}.png"
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"recon/{split}", images=[str(path)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"recon/{split}", grid, trainer.global_step)
        return path
