"""Online linear probe: a BatchNorm(affine=False) + Linear head trained during pre-training on
detached ``pl_module.embed(batch)`` features, scored on the validation batches.

Like solo-learn's online classifier and lightly's ``OnlineLinearClassifier``, but as a callback with
its own optimizer, so the MAE's optimizer, LR schedule and DDP reducer never see it:

* the features come from ``embed`` under ``torch.no_grad`` with the model briefly in eval mode,
  so the probe adds no gradient to the MAE, no DDP unused-parameter issue, no dropout/drop-path
  draw and no BatchNorm running-stat update to the model; its head is initialised from its own
  ``torch.Generator``, so turning the probe on or off changes nothing in the pre-training itself;
* metrics: ``probe_online/train_loss`` (and ``probe_online/train_top1``) on the training batches it
  trains on, ``probe_online/top1`` (and ``top5`` with at least 5 classes) over each validation
  epoch, logged with ``sync_dist``; accuracies in percent, like the evaluators;
* it is silently off on batches without labels (no label entry, or every label < 0; single labels
  < 0 are ignored, as solo-learn's ``ignore_index=-1``) and on multi-label targets;
* number of classes: ``num_classes`` if given, else the datamodule's ``num_classes`` attribute, else
  ``max label + 1`` of the first labelled batch, and the head grows (new rows start at zero, the
  optimizer state is padded) whenever a larger label shows up later;
* the head, its optimizer and its counters are saved with the checkpoint (``state_dict``), so a
  resumed run continues the same probe;
* cost: ``embed`` is one extra forward of the encoder over *all* tokens of a batch. Measured
  compute-bound (data in memory), one probe step costs 28-36% of an MAE training step (ViT-mini/B/L,
  H100, bf16; 14-36% on 2 CPU threads), so ``every_n_steps`` (default 4: the probe trains on one
  training batch in four, about +7-9% compute) keeps it modest; 1 probes every batch. End to end,
  with data loading, every_n_steps=1 measured +5% to +25% per step. Every validation batch is
  scored (one more forward per batch; ``trainer.limit_val_batches`` bounds it).

With several processes (DDP) each rank trains its own copy of the head on its own batches (no
collective call in the training hook, so a rank whose batch has no labels cannot hang the others);
``probe_online/top1`` is the mean over ranks (``sync_dist``); checkpoints keep rank 0's head, which
every rank resumes. FSDP shards the encoder, and ``embed`` called outside the wrapped forward would
see sharded weights: the probe switches itself off there, with a warning.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.data.base import MAEDataModule, trainer_datamodule

log = logging.getLogger(__name__)


@runtime_checkable
class _ProbedModule(Protocol):
    """What the probe calls on the LightningModule (:class:`~mae_zoo.core.module.MaskedAutoencoder` has both)."""

    def batch_labels(self, batch: Any) -> torch.Tensor | None: ...

    def embed(self, batch: Any) -> torch.Tensor: ...


def _probed(pl_module: pl.LightningModule) -> _ProbedModule:
    if not isinstance(pl_module, _ProbedModule):
        raise TypeError(f"online linear probe: {type(pl_module).__name__} has no batch_labels() and embed()")
    return pl_module


class OnlineLinearProbe(pl.Callback):
    """Train a linear head on frozen, detached ``embed`` features while the MAE pre-trains.

    Args:
        num_classes: classes of the head; ``None`` infers them (datamodule ``num_classes``, else labels).
        every_n_steps: train the head on one training batch in ``every_n_steps`` (1 = every batch).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9).
        lr, weight_decay: of the head's optimizer (constant LR).
        seed: initialises the head (own generator, no global RNG draw).
        enabled: ``False`` turns the callback into a no-op.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        every_n_steps: int = 4,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        enabled: bool = True,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got '{optimizer}'")
        self.num_classes = num_classes
        self.every_n_steps = int(every_n_steps)
        self.optimizer_name = optimizer
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.enabled = bool(enabled)
        self.head: nn.Sequential | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.feature_dim: int | None = None
        self.batches_seen = 0  # training batches with labels (drives every_n_steps)
        self.steps = 0  # head optimizer steps
        self._pending: dict[str, Any] | None = None  # state loaded before the head could be built
        self._unsupported = False

    # ------------------------------------------------------------------------------ helpers
    @staticmethod
    def _labels(pl_module: pl.LightningModule, batch: Any) -> torch.Tensor | None:
        """Integer class labels of the batch (1-D), or None when it carries none usable."""
        labels = _probed(pl_module).batch_labels(batch)
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
            return None
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.numel() == 0:
            return None
        return labels

    @staticmethod
    def _usable(labels: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """Drop labels < 0 (unlabelled samples); None when none is left. One host sync."""
        high, low = torch.stack([labels.max(), labels.min()]).tolist()
        if high < 0:
            return None
        return (labels if low >= 0 else labels[labels >= 0]), int(high)

    def _active(self, trainer: pl.Trainer) -> bool:
        if not self.enabled or self._unsupported:
            return False
        try:
            from pytorch_lightning.strategies import FSDPStrategy
        except ImportError:  # pragma: no cover
            return True
        if isinstance(trainer.strategy, FSDPStrategy):
            self._unsupported = True
            log.warning("online linear probe: switched off under FSDP (embed would see sharded weights)")
            return False
        return True

    @torch.no_grad()
    def _features(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> torch.Tensor:
        """Detached (B, D) float32 features, with every submodule in eval mode for the call."""
        modes = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        try:
            with trainer.precision_plugin.forward_context():  # the autocast the training step runs under
                feats = _probed(pl_module).embed(batch)
        finally:
            for module, mode in modes:
                module.training = mode
        return feats.detach().float()

    def _resolve_num_classes(self, trainer: pl.Trainer, high: int) -> int:
        needed = high + 1
        if self.num_classes is not None:
            return int(self.num_classes)
        # None when fit() was given bare loaders
        datamodule = trainer_datamodule(trainer)
        declared = datamodule.num_classes if isinstance(datamodule, MAEDataModule) else None
        if isinstance(declared, int) and declared > 0:
            return max(declared, needed)
        return needed

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def _build(self, dim: int, num_classes: int, device: torch.device) -> None:
        """BN(affine=False, eps 1e-6) + Linear, head weight trunc-normal(0.01) as MAE's linear probe."""
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG: undo it,
            linear = nn.Linear(dim, num_classes)  # or the data augmentation that follows would change
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            nn.init.trunc_normal_(linear.weight, std=0.01, generator=generator)
            nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear).to(device)
        self.feature_dim, self.num_classes = dim, num_classes
        self.optimizer = self._make_optimizer(list(self.head.parameters()))
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.head.load_state_dict(pending["head"])
            self.optimizer.load_state_dict(pending["optimizer"])  # moves its tensors to the head's device

    def _ensure_head(self, trainer: pl.Trainer, feats: torch.Tensor, high: int | None) -> bool:
        """Build the head (first labelled training batch, or from a loaded checkpoint); grow it when a
        training label ``high`` exceeds its classes. False: nothing to score with yet."""
        if self.head is None:
            if self._pending is not None:
                self._build(self._pending["feature_dim"], self._pending["num_classes"], feats.device)
            elif high is None:
                return False
            else:
                self._build(feats.shape[1], self._resolve_num_classes(trainer, high), feats.device)
        if feats.shape[1] != self.feature_dim:
            raise ValueError(f"online probe: feature dim changed from {self.feature_dim} to {feats.shape[1]}")
        assert self.num_classes is not None  # set with the head
        if high is not None and high >= self.num_classes:
            self._grow(high + 1)
        return True

    def _grow(self, num_classes: int) -> None:
        """More classes than the head has: append zero rows, pad the optimizer state to match."""
        assert self.head is not None and self.num_classes is not None and self.optimizer is not None
        linear = self.head[1]
        assert isinstance(linear, nn.Linear)
        old = self.num_classes
        extra = num_classes - old
        for param in (linear.weight, linear.bias):
            pad = param.new_zeros((extra, *param.shape[1:]))
            state = self.optimizer.state.get(param, {})
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    state[key] = torch.cat([value, pad.to(value.dtype)])
            param.data = torch.cat([param.data, pad])
        linear.out_features = num_classes
        self.num_classes = num_classes
        log.info("online linear probe: head grown from %d to %d classes", old, num_classes)

    @staticmethod
    def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
        """Top-k accuracy in percent (like the evaluators and the MAE paper)."""
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        return 100.0 * (top == labels[:, None]).any(dim=1).float().mean()

    # ------------------------------------------------------------------------------ Lightning hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active(trainer):
            return
        raw = self._labels(pl_module, batch)
        if raw is None:
            return
        self.batches_seen += 1
        if (self.batches_seen - 1) % self.every_n_steps:
            return
        usable = self._usable(raw)
        if usable is None:
            return
        labels, high = usable
        feats = self._features(trainer, pl_module, batch)
        if labels.shape[0] != feats.shape[0]:
            feats = feats[raw >= 0]
        if feats.shape[0] < 2:  # BatchNorm needs two samples in train mode
            return
        self._ensure_head(trainer, feats, high)
        head, optimizer = self.head, self.optimizer
        assert head is not None and optimizer is not None
        head.train()
        with torch.enable_grad(), torch.autocast(feats.device.type, enabled=False):
            logits = head(feats)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        self.steps += 1
        size = feats.shape[0]
        pl_module.log("probe_online/train_loss", loss.detach(), on_step=True, on_epoch=False, batch_size=size)
        pl_module.log(
            "probe_online/train_top1",
            self._topk(logits.detach(), labels, 1),
            on_step=True,
            on_epoch=False,
            batch_size=size,
        )

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not self._active(trainer) or (self.head is None and self._pending is None):
            return
        raw = self._labels(pl_module, batch)
        if raw is None:
            return
        usable = self._usable(raw)
        if usable is None:
            return
        labels = usable[0]
        feats = self._features(trainer, pl_module, batch)
        if labels.shape[0] != feats.shape[0]:
            feats = feats[raw >= 0]
        if not self._ensure_head(trainer, feats, None):
            return
        head = self.head
        assert head is not None
        head.eval()
        with torch.no_grad(), torch.autocast(feats.device.type, enabled=False):
            logits = head(feats)
        ks = (1, 5) if self.num_classes is not None and self.num_classes >= 5 else (1,)
        for k in ks:
            pl_module.log(
                f"probe_online/top{k}",
                self._topk(logits, labels, k),
                on_step=False,
                on_epoch=True,
                sync_dist=True,
                batch_size=feats.shape[0],
            )

    # ------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        if self.head is None:
            return dict(self._pending) if self._pending is not None else {}
        assert self.optimizer is not None and self.feature_dim is not None and self.num_classes is not None
        return {
            "feature_dim": int(self.feature_dim),
            "num_classes": int(self.num_classes),
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "batches_seen": self.batches_seen,
            "steps": self.steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self.batches_seen = int(state_dict.get("batches_seen", 0))
        self.steps = int(state_dict.get("steps", 0))
        # Built on the next batch, when the device is known; the optimizer state follows the head there.
        self.head, self.optimizer = None, None
        self._pending = dict(state_dict)
