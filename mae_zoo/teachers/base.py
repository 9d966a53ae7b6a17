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
from mae_zoo.core.types import Layout, Tokens, Visible
from mae_zoo.nets.vit import attention_weights, block_inputs

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

    def block(self, index: int) -> nn.Module | None:
        """Encoder block ``index`` (negative: from the end) when it is a timm ``Block``, whose input
        :meth:`attention_maps` and :meth:`cls_attention` read; None when the blocks are not reachable."""
        return None

    def attention_maps(self, batch: Any, blocks: Sequence[int], mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Softmax attention of encoder ``blocks``, each (B, heads, N, N) over the rows
        :meth:`hidden_states` hands out for ``mask`` (prefix + every token, or prefix + the visible ones).
        A teacher that drops tokens attends among the visible ones only; one that always reads the full
        input has its maps restricted to the visible rows and keys and renormalised over the keys."""
        modules = [self.block(int(i)) for i in blocks]
        if any(m is None for m in modules):
            raise ConfigError(f"teacher {type(self).__name__} offers no attention maps")
        with block_inputs(modules) as seen:  # type: ignore[arg-type]  # None excluded above
            self.hidden_states(batch, blocks, mask)
        maps = []
        for module, entry in zip(modules, seen):
            assert entry is not None, "a teacher block did not run"
            maps.append(attention_weights(module, *entry))  # type: ignore[arg-type]
        return [self.restrict(a, mask) for a in maps]

    def restrict(self, maps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Full-input maps (B, H, prefix + L, prefix + L) -> prefix + visible rows and keys, renormalised."""
        p = self.num_prefix
        if mask is None or maps.shape[-1] != p + mask.shape[1]:
            return maps  # already over the student's rows
        keep = Visible.from_mask(mask.to(maps.device)).ids_keep
        if int((~mask).sum(dim=1).min()) != keep.shape[1]:
            raise ConfigError("attention maps of a full-input teacher need the same visible count in every sample")
        rows = torch.cat([torch.arange(p, device=maps.device).expand(keep.shape[0], p), keep + p], dim=1)
        b, h = maps.shape[:2]
        index = rows[:, None, :, None].expand(b, h, rows.shape[1], maps.shape[-1])
        maps = torch.gather(maps, 2, index)
        maps = torch.gather(maps, 3, rows[:, None, None, :].expand(b, h, rows.shape[1], rows.shape[1]))
        return maps / maps.sum(dim=-1, keepdim=True).clamp_min(1e-12)

    def cls_attention(self, batch: Any) -> torch.Tensor:
        """(B, L): how much the first prefix row (cls) attends to each token in the last block, mean
        over heads, on the full input (MaskAlign's attention-guided masking)."""
        if self.num_prefix == 0:
            raise ConfigError(f"teacher {type(self).__name__} has no cls row whose attention could guide the mask")
        return self.attention_maps(batch, [-1], None)[0][:, :, 0, self.num_prefix :].mean(dim=1)

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
