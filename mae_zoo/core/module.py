"""``MaskedAutoencoder``: the one LightningModule that runs tokenize -> mask -> encode -> decode ->
target -> objective.

A modality subclasses it and brings ``tokenize``, ``encoder`` and ``decoder`` (and overrides the
other steps only where it differs); masks, objective and teacher come from config; optimisation,
mask seeding, logging and checkpoint metadata live here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import hydra.utils
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import Generator, Tensor
from torch.utils.data import DataLoader

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.optim import WarmupCosine, all_params_group, build_optimizer, param_groups, scaled_lr
from mae_zoo.core.types import Decoded, Encoded, Keep, Layout, LoadInfo, MAEOutput, Masks, Tokens, keep_indices
from mae_zoo.data.base import MAEDataModule, trainer_datamodule
from mae_zoo.distill.base import Distiller, DistillStep, stack, take_blocks
from mae_zoo.masks.base import MaskGenerator
from mae_zoo.nets.vit import attention_weights, block_inputs
from mae_zoo.objectives.base import Objective
from mae_zoo.teachers.base import Teacher
from mae_zoo.teachers.model import EMATeacher
from mae_zoo.utils.instantiate import instantiate_checked

_STAGES = {"train": 0, "val": 1, "test": 2, "predict": 3, "visual": 4}


class _Blocks:
    """The hidden states a stack returned for ``keep`` (distinct blocks, block order), read back by block."""

    def __init__(self, hidden: list[Tensor], keep: Sequence[int], net: nn.Module) -> None:
        self.hidden, self.keep, self.depth = hidden, keep, len(getattr(net, "blocks", ()))

    def take(self, wanted: Sequence[int]) -> list[Tensor]:
        return take_blocks(self.hidden, self.keep, wanted, self.depth) if wanted else []

    def asked(self, keep: Sequence[int]) -> list[Tensor]:
        """What the stack would have returned for ``keep`` alone."""
        return self.take(sorted(keep_indices(keep, self.depth, "the network"))) if keep else []


def mask_seed(seed: int, rank: int, stage: str, step: int, micro: int = 0) -> int:
    """A 64-bit seed mixed from (seed, global rank, stage, step, micro-batch) with numpy's SeedSequence.

    Lightning's ``seed_everything`` gives every rank the same seed, so masks drawn from the global
    RNG would repeat across DDP ranks; mixing in the rank makes them differ while staying reproducible.
    """
    words = [int(seed), int(rank), _STAGES[stage], int(step), int(micro)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


class MaskedAutoencoder(pl.LightningModule):
    """The shared base. A modality sets ``self.encoder`` and ``self.decoder``, calls
    :meth:`set_layout`, and defines :meth:`tokenize`; every other step has a default here.

    The hooks a modality may override, each with its default below: :meth:`tokenize` (required),
    :meth:`encode`, :meth:`decode`, :meth:`target`, :meth:`embed`, :meth:`embed_tokens`,
    :meth:`visualize`, :meth:`default_objective`. Class attributes a modality may set:
    ``datamodule_class``, ``embed_pools`` and ``embed_pool``.

    Config entries every modality shares (``module.*``, see ``conf/train.yaml``): ``mask`` (the
    encoder mask), ``decoder_mask`` (which positions the decoder predicts; None: the scored ones),
    ``objective`` (``conf/objective``; None: the modality's default), ``teacher`` (``conf/teacher``;
    None: no teacher), ``distill`` (``conf/distill``; None: no distillation term; a teacher without
    one replaces the reconstruction target with its features), ``optim`` and ``seed``.
    """

    datamodule_class: str | None = None  # the DataModule this modality trains on, for evaluation
    embed_pools: tuple[str, ...] = ()  # the pooling choices of embed(): cls needs a prefix row
    embed_pool: str | None = None  # None: this modality has no pooling choice (graph: its own)
    load_info: LoadInfo | None = None  # what mae_zoo.load read and decided (None: built in Python)
    encoder: nn.Module
    decoder: nn.Module
    layout: Layout

    def __init__(
        self,
        mask: dict,
        optim: dict,
        decoder_mask: dict | None = None,
        objective: dict | None = None,
        teacher: dict | None = None,
        seed: int = 0,
        distill: dict | None = None,
    ) -> None:
        super().__init__()
        # Every __init__ argument of the subclass chain is a plain container, so checkpoints hold
        # only primitives and load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.mask_generator: MaskGenerator = hydra.utils.instantiate(mask)
        # An empty node (conf/decoder_mask/none.yaml) means none: the decoder predicts the scored positions.
        self.decoder_mask_generator: MaskGenerator | None = (
            hydra.utils.instantiate(decoder_mask) if decoder_mask else None
        )
        self.objective: Objective = hydra.utils.instantiate(objective or self.default_objective(self.hparams))
        if not isinstance(self.objective, Objective):
            raise ConfigError(
                f"objective must build an mae_zoo.objectives.Objective, got {type(self.objective).__name__}"
            )
        # The teacher lives outside the module tree (a plain attribute, not a submodule): never in the
        # optimizer, weight-decay groups, DDP's gradient sync or the state dict; _apply moves it along.
        # Building a teacher leaves the global RNG alone, so a student starts from the same weights with or without one.
        with torch.random.fork_rng(devices=[]):
            built = instantiate_checked(teacher) if teacher else None  # conf/teacher/none.yaml: empty
        if built is not None and not isinstance(built, Teacher):
            raise ConfigError(f"teacher must build an mae_zoo.teachers.Teacher, got {type(built).__name__}")
        object.__setattr__(self, "teacher", built.requires_grad_(False).eval() if built is not None else None)
        self.teacher: Teacher | None
        self.distill_cfg = dict(distill) if distill else None
        self.distill: Distiller | None = None  # built by configure_model, once the student exists
        self._configured = False
        self.optim_cfg = dict(optim)
        self.seed = int(seed)
        self.schedule_info: dict[str, Any] = {}

    def set_layout(self, layout: Layout) -> None:
        """Record the token layout and fail at start-up when a configured mask does not fit it."""
        self.layout = layout
        self.mask_generator.check(layout)
        if self.decoder_mask_generator is not None:
            self.decoder_mask_generator.check(layout)
            if not self.decoder_mask_generator.enabled:  # e.g. running cell at ratio 0: VideoMAE V1
                self.decoder_mask_generator = None

    def check_embed_pool(self, pool: str) -> str:
        if pool not in self.embed_pools:
            raise ConfigError(
                f"embed_pool must be one of {list(self.embed_pools)} for {type(self).__name__}, got '{pool}'"
            )
        return pool

    # ----------------------------------------------------------------------------- modality hooks
    def tokenize(self, batch: Any) -> Tokens:
        """Token inputs, reconstruction targets and layout of a batch (each modality defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define tokenize(batch)")

    @classmethod
    def default_objective(cls, hparams: Mapping[str, Any]) -> dict:
        """The objective spec used when ``objective`` is None (the modality's paper default), from the
        model's hyperparameters."""
        raise ConfigError(f"{cls.__name__} has no default objective: give module.objective (conf/objective)")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> MaskedAutoencoder:
        """Rebuild from a checkpoint's ``hyper_parameters``. Checkpoints written before objectives came
        from config kept ``norm_pix_loss`` / ``alpha`` on the module; they become the objective's."""
        hp = dict(hparams)
        legacy = {key: hp.pop(key) for key in ("norm_pix_loss", "alpha") if key in hp}
        if legacy and not hp.get("objective"):
            hp["objective"] = {**cls.default_objective(hp), **legacy}
        return cls(**hp)

    def encode(
        self, tokens: Tokens, mask: Tensor | None, generator: Generator | None = None, keep: Keep = ()
    ) -> Encoded:
        """Encoder step. ``mask`` None: every token, unmasked (features for evaluation). Token-dropping
        encoders need only inputs and mask; a modality whose encoder needs more of the layout (a
        graph's edges, a video's grid) or random numbers of its own overrides this."""
        return self.encoder(tokens.inputs, mask, keep=keep)

    def decode(self, encoded: Encoded, tokens: Tokens, masks: Masks, keep: Keep = ()) -> Decoded:
        """Decoder step: per-position predictions (B, L, Q) at (at least) ``masks.predict``."""
        return self.decoder(encoded, keep=keep)

    def target(self, batch: Any, tokens: Tokens, masks: Masks) -> torch.Tensor:
        """What the objective compares predictions with, (B, L, Q): the teacher's features when a
        teacher is configured without a ``distill`` objective, else the tokenizer's target."""
        if self.teacher is not None and self.distill_cfg is None:
            with torch.no_grad():
                features = self.teacher(batch, tokens)
            if features.shape[-1] != tokens.target.shape[-1]:
                raise ConfigError(
                    f"teacher without distill: its features ({features.shape[-1]} channels) replace the target, "
                    f"but the decoder predicts {tokens.target.shape[-1]}; add distill=dmae|mrmae|g2sd"
                )
            return features
        return tokens.target

    def extra_terms(self, tokens: Tokens, masks: Masks, encoded: Encoded, decoded: Decoded) -> dict[str, Tensor]:
        """Further loss terms of a method, already weighted, added to the loss and logged as
        ``train/loss_<name>`` (default: the decoder's own, ``decoded.terms``, e.g. CAE's alignment)."""
        return dict(decoded.terms)

    def embed(self, batch: Any, block: int | None = None) -> torch.Tensor:
        """Features of the unmasked input, (B, D), for probes and retrieval: the cls row or the mean
        of the token rows, as ``embed_pool`` says, of the encoder output or, with ``block``, of that
        block's hidden state (negative: from the last; before the final norm)."""
        encoded = self.encode(self.tokenize(batch), None, keep=() if block is None else (block,))
        latent = encoded.latent if block is None else encoded.intermediates[0]
        return latent[:, 0] if self.embed_pool == "cls" else latent[:, encoded.num_prefix :].mean(dim=1)

    def embed_tokens(self, batch: Any) -> torch.Tensor:
        """Per-token features of the unmasked input, (B, L, D), prefix rows excluded (token-level probes)."""
        return self.encode(self.tokenize(batch), None).tokens

    def visualize(self, batch: Any, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Reconstruction pictures, (rows, N, C, H, W) in [0, 1], or None where the data has no picture."""
        return None

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
    def forward(
        self,
        batch: Any,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        decoder_mask: torch.Tensor | None = None,
        keep: Sequence[int] = (),
        keep_decoder: Sequence[int] = (),
    ) -> MAEOutput:
        """One masked step. ``mask`` (B, L) True = hidden from the encoder; ``decoder_mask`` (B, L)
        True = not predicted by the decoder (VideoMAE V2); either is drawn from its generator when
        not given. ``keep``/``keep_decoder``: encoder/decoder blocks whose hidden states to return."""
        distill = self.distiller()
        # The blocks a distiller reads travel with the ones the caller asked for.
        enc_keep = [*keep, *(distill.encoder_blocks if distill else ())]
        dec_keep = [*keep_decoder, *(distill.decoder_blocks if distill else ())]
        tokens = self.tokenize(batch)
        if mask is None and distill is not None and self.teacher is not None:
            mask = distill.propose_mask(self, batch, self.teacher, generator)
        masks = self.masks(tokens, mask, decoder_mask, generator)
        # Attention maps a distiller reads: the inputs of those blocks, recorded during the one forward.
        encoder_stack = stack(self.encoder)
        wanted = distill.attention_blocks if distill is not None and encoder_stack is not None else ()
        attention_blocks = [encoder_stack.blocks[i] for i in wanted] if encoder_stack is not None else []
        with block_inputs(attention_blocks) as block_in:
            encoded = self.encode(tokens, masks.hidden, generator, enc_keep)
        decoded = self.decode(encoded, tokens, masks, dec_keep)
        loss, target = self.objective(decoded.pred, self.target(batch, tokens, masks), masks.score)
        enc_hidden, dec_hidden, extras = encoded.intermediates, decoded.intermediates, {}
        if distill is not None:
            enc = _Blocks(enc_hidden, enc_keep, self.encoder)
            dec = _Blocks(dec_hidden, dec_keep, self.decoder)
            step = DistillStep(
                batch,
                tokens,
                masks,
                encoded,
                decoded,
                enc.take(distill.encoder_blocks),
                dec.take(distill.decoder_blocks),
                [attention_weights(b, *x) for b, x in zip(attention_blocks, block_in) if x is not None],
                self,
                generator,
            )
            terms = distill(step, self.teacher)
            extras = {"loss_recon": loss.detach(), **{f"loss_{k}": v.detach() for k, v in terms.items()}}
            loss = distill.recon_weight * loss + sum(terms.values())
            enc_hidden, dec_hidden = enc.asked(keep), dec.asked(keep_decoder)
        own = self.extra_terms(tokens, masks, encoded, decoded)
        if own:  # a method's own weighted terms (CAE's alignment, MixedAE's contrastive), logged as loss_<name>
            extras = {"loss_recon": extras.get("loss_recon", loss.detach()), **extras}
            extras.update({f"loss_{k}": v.detach() for k, v in own.items()})
            loss = loss + sum(own.values())
        return MAEOutput(
            loss=loss,
            pred=decoded.pred,
            mask=masks.hidden,
            target=target,
            predicted=masks.predict,
            scored=masks.score,
            encoder_hidden=enc_hidden,
            decoder_hidden=dec_hidden,
            extras=extras,
        )

    # ----------------------------------------------------------------------------- teacher and distillation
    def configure_model(self) -> None:
        """Build what needs the finished student: the teacher's binding (an EMA copy, grid checks) and
        the distillation heads. Lightning calls this before the optimizer, DDP and checkpoint restore;
        ``forward`` calls it when the model is used outside a Trainer. Runs once."""
        if self._configured:
            return
        distill = self.distiller_checked()
        self._configured = True
        if self.teacher is not None:
            with torch.random.fork_rng(devices=[]):
                self.teacher.bind(self)
        if distill is not None:
            distill.build(self, self.teacher)
            self.distill = distill.to(self.device)

    def distiller_checked(self) -> Distiller | None:
        """The configured distillation, instantiated and checked against what is known before the student
        is built (its layout, that a teacher is set); None without one."""
        if self.distill_cfg is None:
            return None
        distill = instantiate_checked(self.distill_cfg)
        if not isinstance(distill, Distiller):
            raise ConfigError(f"distill must build an mae_zoo.distill.Distiller, got {type(distill).__name__}")
        distill.check_fits(self, self.teacher)
        return distill

    def all_teachers(self) -> list[Teacher]:
        """``teacher=`` and any teacher the distillation objective holds itself."""
        extra = list(self.distill.teachers()) if self.distill is not None else []
        return ([self.teacher] if self.teacher is not None else []) + extra

    def distiller(self) -> Distiller | None:
        if self.distill_cfg is not None and not self._configured:
            self.configure_model()
        return self.distill

    def _apply(self, fn: Any, recurse: bool = True) -> MaskedAutoencoder:
        super()._apply(fn, recurse)
        for teacher in self.all_teachers():  # outside the module tree, so moved (and cast) here
            teacher._apply(fn, recurse)
        return self

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._catch_up_ema()

    def _catch_up_ema(self) -> None:
        """One EMA update per optimizer step. Checkpoint callbacks save in their ``on_train_batch_end``,
        which Lightning calls before the module's, so saving catches up first: a resumed teacher then
        equals the uninterrupted run's."""
        teacher = self.teacher
        if isinstance(teacher, EMATeacher) and teacher.updates < self.global_step:
            teacher.update(self)

    def masks(
        self, tokens: Tokens, mask: Tensor | None, decoder_mask: Tensor | None, generator: Generator | None
    ) -> Masks:
        """The hidden, predicted and scored positions of a step (given masks are checked, missing ones drawn)."""
        shape = tokens.inputs.shape[:2]
        if mask is None:
            mask = self.mask_generator(tokens.layout, shape[0], generator)
        mask = mask.to(device=tokens.inputs.device, dtype=torch.bool)
        if decoder_mask is None and self.decoder_mask_generator is not None:
            decoder_mask = self.decoder_mask_generator(tokens.layout, shape[0], generator)
        predict = None if decoder_mask is None else ~decoder_mask.to(device=mask.device, dtype=torch.bool)
        for name, m in (("mask", mask), ("decoder_mask", predict)):
            if m is not None and m.shape != shape:
                raise ValueError(f"{name} shape {tuple(m.shape)} does not match tokens {tuple(shape)}")
        return Masks.build(mask, self.objective.positions, predict)

    def forward_intermediates(
        self, batch: Any, keep: Sequence[int], mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Hidden states of encoder blocks ``keep`` (negative: from the last) for the tokens the encoder
        processed: all of them with ``mask`` None, the visible ones (plus prefix rows) otherwise.
        What teachers, feature targets and probes read; one method for every transformer modality."""
        tokens = self.tokenize(batch)
        if mask is not None:
            mask = mask.to(device=tokens.inputs.device, dtype=torch.bool)
        return self.encode(tokens, mask, keep=keep).intermediates

    def mask_rng(self, stage: str, step: int, micro: int = 0) -> torch.Generator:
        """A generator seeded by (seed, global rank, stage, step, micro-batch): ranks differ, runs repeat."""
        return torch.Generator().manual_seed(mask_seed(self.seed, self.global_rank, stage, step, micro))

    # ----------------------------------------------------------------------------- Lightning steps
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every file of the batch was unreadable (the datamodule counted them): skip the step
            return None
        micro = batch_idx % max(1, self.trainer.accumulate_grad_batches)
        out = self(batch, generator=self.mask_rng("train", self.global_step, micro))
        # The check syncs with the device, so it runs only on steps that are logged anyway.
        every = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by Lightning's logger connector
        if self.global_step % every == 0 and not torch.isfinite(out.loss):
            raise FloatingPointError(f"non-finite training loss {out.loss.item()} at step {self.global_step}")
        size = out.mask.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        for name, value in out.extras.items():
            self.log(f"train/{name}", value, batch_size=size)
        self.log("train/mask_ratio", out.mask.float().mean(), batch_size=size)
        self.log("optim/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        self.log("optim/effective_batch", float(self.schedule_info["effective_batch"]), batch_size=size)
        return out.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None:
            return
        # The same masks every epoch, so val/loss curves compare like with like.
        out = self(batch, generator=self.mask_rng("val", batch_idx))
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=out.mask.shape[0])

    # ----------------------------------------------------------------------------- optimisation
    def effective_batch_size(self) -> int:
        trainer = self.trainer
        datamodule = trainer_datamodule(trainer)
        if isinstance(datamodule, MAEDataModule):
            per_device = datamodule.batch_size
        else:  # a plain LightningDataModule or bare loaders: ask the loader
            loader = trainer.train_dataloader
            if not isinstance(loader, DataLoader) or loader.batch_size is None:
                raise ConfigError("cannot tell the batch size per device: give a DataLoader with a batch_size")
            per_device = loader.batch_size
        return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
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
        schedule = WarmupCosine(
            warmup, total, min_factor=cfg.get("min_lr", 0.0) / lr, constant=cfg.get("schedule", "cosine") == "constant"
        )
        self.schedule_info = {"lr": lr, "effective_batch": effective, "warmup_steps": warmup, "total_steps": total}
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        info = self.schedule_info
        if info and self.trainer.is_global_zero:
            self.print(
                f"optim: lr={info['lr']:.3g} (effective batch {info['effective_batch']}), "
                f"warmup {info['warmup_steps']} of {info['total_steps']} steps"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        cls = type(self)
        meta: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}", "layout": self.layout.name}
        datamodule = trainer_datamodule(self._trainer)
        if datamodule is not None:  # lets evaluation rebuild the same data from the checkpoint alone
            dm_cls = type(datamodule)
            meta["datamodule"] = f"{dm_cls.__module__}.{dm_cls.__qualname__}"
        if self.teacher is not None:  # which teacher, not its weights (an EMA teacher's are the run's own state)
            meta["teacher"] = self.teacher.describe()
            if isinstance(self.teacher, EMATeacher):
                self._catch_up_ema()
                checkpoint["ema_teacher"] = self.teacher.state()
        if self.distill is not None and self.distill.teachers():
            meta["distill_teachers"] = [t.describe() for t in self.distill.teachers()]
        checkpoint["mae_zoo"] = meta

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if isinstance(self.teacher, EMATeacher) and "ema_teacher" in checkpoint:
            self.configure_model()
            self.teacher.load_state(checkpoint["ema_teacher"])
