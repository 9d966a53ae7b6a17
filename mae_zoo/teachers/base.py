"""The teacher contract (``conf/teacher``).

A teacher is a frozen network. It is kept outside the student's module tree (see
``MaskedAutoencoder.teacher``): it is never in the optimizer, the weight-decay groups, DDP's
gradient sync or the student's state dict, and it stays in eval mode. It is read two ways:

* ``hidden_states(batch, blocks, mask)``: hidden states of chosen blocks, for the distillation
  objectives (``conf/distill``); every transformer teacher implements it;
* ``forward(batch, tokens)``: per-token target features that replace the reconstruction target when
  no ``distill`` is configured (feature-target MAEs, MaskFeat/MILAN style).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout, Tokens
from mae_zoo.nets.vit import attention_weights

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (or of a directory's files in name order): what a checkpoint records of its teacher."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        with open(file, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


class Teacher(nn.Module):
    """Base of every teacher. Subclasses set, once built, ``layout`` (their token grid), ``dim``
    (hidden width), ``depth`` (encoder blocks) and ``num_prefix`` (leading non-token rows)."""

    kind: str = "custom"
    layout: Layout | None = None
    dim: int = 0
    depth: int = 0
    num_prefix: int = 0
    decoder_dim: int = 0
    decoder_depth: int = 0

    def bind(self, student: MaskedAutoencoder) -> None:
        """Called once the student is fully built (``configure_model``): copy it (EMA), adapt the
        input normalisation, check that the token grids agree. The default does nothing."""

    def describe(self) -> dict[str, Any]:
        """What the student's checkpoint records of this teacher (kind, path, weights hash)."""
        return {"kind": self.kind, "class": type(self).__qualname__}

    def forward(self, batch: Any, tokens: Tokens) -> torch.Tensor:
        """Per-token target features (B, L, D) for the student's ``tokens`` (no ``distill``)."""
        hidden = self.hidden_states(batch, [-1], None)[0]
        return hidden[:, self.num_prefix :]

    def hidden_states(self, batch: Any, blocks: Sequence[int], mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Outputs of encoder ``blocks`` (before the final norm), in the order asked, each
        (B, num_prefix + n, dim): every token with ``mask`` None, else the visible ones (mask False),
        in the order and with the padding the student's token-dropping encoder uses."""
        raise ConfigError(f"teacher {type(self).__name__} does not hand out hidden states")

    def last_block(self) -> nn.Module | None:
        """The last encoder block when it is a timm ``Block`` (what :meth:`cls_attention` reads)."""
        return None

    def cls_attention(self, batch: Any) -> torch.Tensor:
        """(B, L): how much the first prefix row (cls) attends to each token in the last block, mean
        over heads, on the full input (MaskAlign's attention-guided masking)."""
        block = self.last_block()
        if block is None or self.num_prefix == 0:
            raise ConfigError(f"teacher {type(self).__name__} has no cls attention to guide the mask")
        seen: list[torch.Tensor] = []
        handle = block.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            self.hidden_states(batch, [-1], None)
        finally:
            handle.remove()
        return attention_weights(block, seen[-1])[:, :, 0, self.num_prefix :].mean(dim=1)

    def decoder_hidden_states(self, batch: Any, blocks: Sequence[int], mask: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of decoder ``blocks`` for the input masked with ``mask``, each (B, prefix + L, decoder_dim)."""
        raise ConfigError(
            f"teacher {type(self).__name__} offers no MAE decoder: G2SD needs teacher=checkpoint "
            "teacher.decoder=true on a file with decoder weights"
        )

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def check_grid(self, student: MaskedAutoencoder, what: str) -> None:
        """Token-aligned distillation needs the same token grid in teacher and student."""
        mine, theirs = self.layout, student.layout
        if mine is None or (mine.kind, mine.axes, mine.shape) != (theirs.kind, theirs.axes, theirs.shape):
            raise ConfigError(
                f"{what}: the teacher's token layout {_show(mine)} differs from the student's {_show(theirs)}; "
                "give both the same input size and patch size (and the same modality)"
            )


def _show(layout: Layout | None) -> str:
    return "unknown" if layout is None else f"{layout.name} {list(layout.shape)}"
