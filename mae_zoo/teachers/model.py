"""Teachers that are mae_zoo models: a loaded checkpoint (``teacher=checkpoint``) or an exponential
moving average of the student itself (``teacher=ema``). Both read hidden states through the model's
own ``forward_intermediates``, so they work for every transformer modality without extra code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import in_keep_order
from mae_zoo.teachers.base import Teacher, file_sha256

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder

# Keys of a student's state dict that belong to the distillation heads, not to the model a teacher copies.
DISTILL_PREFIX = "distill."


class ModelTeacher(Teacher):
    """A frozen mae_zoo model (any modality with a transformer encoder)."""

    kind = "model"

    def __init__(self) -> None:
        super().__init__()
        self.model: MaskedAutoencoder | None = None

    def set_model(self, model: MaskedAutoencoder) -> None:
        from mae_zoo.distill.base import stack

        encoder, decoder = stack(model.encoder), stack(model.decoder)
        if encoder is None:
            raise ConfigError(
                f"teacher {type(model).__name__} has no transformer encoder; distillation reads transformer blocks"
            )
        self.model = model.eval().requires_grad_(False)
        self.layout, self.num_prefix = model.layout, encoder.num_prefix
        self.dim, self.depth = encoder.dim, len(encoder.blocks)
        if decoder is not None:
            self.decoder_dim, self.decoder_depth = decoder.dim, len(decoder.blocks)

    def _model(self) -> MaskedAutoencoder:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a model yet")
        return self.model

    def block(self, index: int) -> torch.nn.Module | None:
        from mae_zoo.distill.base import stack

        encoder = stack(self._model().encoder)
        return None if encoder is None else encoder.blocks[index]

    def hidden_states(self, batch: Any, blocks: Sequence[int], mask: torch.Tensor | None) -> list[torch.Tensor]:
        hidden = self._model().forward_intermediates(batch, blocks, mask=mask)
        return in_keep_order(hidden, blocks, self.depth)

    def decoder_hidden_states(self, batch: Any, blocks: Sequence[int], mask: torch.Tensor) -> list[torch.Tensor]:
        if not self.decoder_depth:
            super().decoder_hidden_states(batch, blocks, mask)
        out = self._model()(batch, mask=mask, keep_decoder=blocks)
        return in_keep_order(out.decoder_hidden, blocks, self.decoder_depth)


class CheckpointTeacher(ModelTeacher):
    """``teacher=checkpoint``: anything :func:`mae_zoo.load` reads (an mae_zoo ``.ckpt`` of any
    modality, an official MAE / VideoMAE ``.pth``, a HF ViTMAE / VideoMAE directory). ``decoder``:
    True requires trained decoder weights in the file and lets distillation read the teacher's
    decoder (G2SD); False reads the encoder only."""

    kind = "checkpoint"

    def __init__(self, path: str, decoder: bool = False) -> None:
        super().__init__()
        from mae_zoo.api import load

        if not path:
            raise ConfigError("teacher=checkpoint needs teacher.path: an mae_zoo .ckpt, an official .pth or a HF dir")
        if not Path(path).exists():
            raise ConfigError(f"teacher.path={path} does not exist")
        self.path = str(path)
        model = load(path)
        info = model.load_info
        if decoder and info is not None and any(k.startswith("decoder.") for k in info.not_in_file):
            raise ConfigError(f"teacher.decoder=true but {path} has no decoder weights ({info.kind} file)")
        self.set_model(model)
        if not decoder:
            self.decoder_dim = self.decoder_depth = 0
        self.sha256 = file_sha256(path)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "sha256": self.sha256}


class EMATeacher(ModelTeacher):
    """``teacher=ema``: an exponential moving average of the student (data2vec's schedule): the decay
    rises linearly from ``decay`` to ``end_decay`` over ``anneal_steps`` optimizer steps, then stays.
    Updated after every optimizer step; its weights are saved in the student's checkpoints and
    resumed exactly."""

    kind = "ema"

    def __init__(self, decay: float = 0.999, end_decay: float = 0.9999, anneal_steps: int = 1000) -> None:
        super().__init__()
        for name, value in (("decay", decay), ("end_decay", end_decay)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"teacher.{name} must be in [0, 1], got {value}")
        self.decay, self.end_decay, self.anneal_steps = float(decay), float(end_decay), int(anneal_steps)
        self.updates = 0

    def bind(self, student: MaskedAutoencoder) -> None:
        model = type(student).from_hparams({**student.hparams, "teacher": None, "distill": None})
        model.load_state_dict(student_weights(student.state_dict()))
        self.set_model(model.to(student.device))

    def decay_at(self, step: int) -> float:
        """data2vec: linear from ``decay`` to ``end_decay`` over ``anneal_steps``, constant after."""
        if step >= self.anneal_steps or self.anneal_steps <= 0:
            return self.end_decay
        return self.decay + (self.end_decay - self.decay) * step / self.anneal_steps

    @torch.no_grad()
    def update(self, student: MaskedAutoencoder) -> None:
        """teacher <- decay * teacher + (1 - decay) * student, for every parameter; buffers copied."""
        model = self._model()
        decay = self.decay_at(self.updates)
        mine = dict(student.named_parameters())
        for name, param in model.named_parameters():
            param.lerp_(mine[name].detach().to(param.dtype), 1.0 - decay)
        theirs = dict(student.named_buffers())
        for name, buf in model.named_buffers():
            buf.copy_(theirs[name])
        self.updates += 1

    def state(self) -> dict[str, Any]:
        return {"updates": self.updates, "state_dict": self._model().state_dict()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._model().load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])


def student_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's own weights, without the distillation heads."""
    return {k: v for k, v in state_dict.items() if not k.startswith(DISTILL_PREFIX)}
