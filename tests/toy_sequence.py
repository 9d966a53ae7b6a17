"""A toy modality built only from mae_zoo's public parts: masked autoencoding of 1-D signals.

It is the worked example of CONTRIBUTING.md: one module (this file: the DataModule and the
LightningModule) plus one YAML (``tests/toy_conf/modality/sequence.yaml``), trained by
``tests/test_toy_modality.py`` through the CLI with ``debug=smoke``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.types import Layout, Tokens
from mae_zoo.data.base import MAEDataModule
from mae_zoo.nets.pos_embed import sincos_1d
from mae_zoo.nets.vit import MAEDecoder, ViTEncoder, init_mae_weights
from mae_zoo.objectives import MaskedMSE


class SineWaves(MAEDataModule):
    """Noisy sines whose frequency is the label: (B, length) signals, ``num_classes`` classes."""

    def __init__(
        self,
        length: int = 64,
        num_classes: int = 4,
        num_train: int = 256,
        num_val: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        return int(self.hparams["num_classes"])

    def make(self, num: int, seed: int) -> TensorDataset:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, self.num_classes, (num,), generator=gen)
        phase = torch.rand(num, 1, generator=gen) * 2 * math.pi
        t = torch.linspace(0, 1, self.hparams["length"])[None]
        signal = torch.sin(2 * math.pi * (labels[:, None] + 1) * t + phase)
        return TensorDataset(signal + 0.05 * torch.randn(signal.shape, generator=gen), labels)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self.make(self.hparams["num_train"], self.hparams["seed"])
            self.val_set = self.make(self.hparams["num_val"], self.hparams["seed"] + 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def feature_dataloaders(self, batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
        self.setup()
        size = batch_size or self.batch_size
        return DataLoader(self.train_set, batch_size=size), DataLoader(self.val_set, batch_size=size)


def table(dim: int, num: int) -> torch.Tensor:
    """1-D sin-cos positions with a zero row in front for the cls token."""
    return torch.cat([torch.zeros(1, dim), sincos_1d(dim, torch.arange(num)).float()])


class SequenceMAE(MaskedAutoencoder):
    """MAE on 1-D signals: patches of ``patch_size`` samples, the shared token-dropping ViT encoder
    and MAE decoder; masks, objective and teacher come from the shared config entries."""

    datamodule_class = f"{__name__}.SineWaves"
    embed_pools = ("cls", "mean")

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        length: int = 64,
        patch_size: int = 4,
        embed_pool: str = "mean",
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        self.embed_pool = self.check_embed_pool(embed_pool)
        self.patch_size = patch_size
        num = length // patch_size
        self.set_layout(Layout("grid", ("l",), (num,)))
        dim = encoder["embed_dim"]
        self.encoder = ViTEncoder(nn.Linear(patch_size, dim), table(dim, num), **encoder)
        self.decoder = MAEDecoder(dim, table(decoder["embed_dim"], num), patch_size, **decoder)
        init_mae_weights(self)

    @classmethod
    def default_objective(cls, hparams: Mapping[str, Any]) -> dict:
        return MaskedMSE.spec(norm_pix_loss=True)

    def tokenize(self, batch: Any) -> Tokens:
        patches = self.batch_inputs(batch).unflatten(-1, (-1, self.patch_size))
        return Tokens(inputs=patches, target=patches, layout=self.layout)
