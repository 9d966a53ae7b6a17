"""The data that travels along the shared step: tokens, the three position masks, encoder and decoder
outputs, and what a model returns. Every modality speaks these types."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Layout:
    """What a mask generator may know about token positions.

    ``kind`` names the family (``grid`` for image/video/spectrogram tokens, ``points`` for point
    groups, ``graph`` for nodes, ``seq`` for 1-D sequences); ``axes`` names the grid axes in
    flattening order, e.g. ``("h", "w")`` for images, ``("t", "h", "w")`` for video, ``("t", "f")``
    for spectrograms; ``shape`` is the grid shape (same length as ``axes``). ``extra`` carries
    non-grid information (point centres, graph edge index) for the masks and encoders that need it.
    """

    kind: str
    axes: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_tokens(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def name(self) -> str:
        """Layout name that masks declare support for, e.g. ``grid:h,w`` or ``graph``."""
        return f"{self.kind}:{','.join(self.axes)}" if self.axes else self.kind


@dataclass
class Tokens:
    """Output of a tokenizer: encoder inputs, reconstruction targets and the layout."""

    inputs: torch.Tensor  # (B, L, P) raw token features (e.g. flattened patch pixels)
    target: torch.Tensor  # (B, L, Q) what the decoder reconstructs (before objective normalisation)
    layout: Layout


POSITIONS = ("hidden", "visible", "all")
Keep = Sequence[int]  # block indices whose hidden states a network hands out (negative: from the last)


def keep_indices(keep: Keep, depth: int, what: str) -> set[int]:
    """The block numbers ``keep`` names in a network of ``depth`` blocks (``what`` names it in the error)."""
    out = set()
    for i in keep:
        if not -depth <= int(i) < depth:
            raise ValueError(f"block index {i} is out of range for {what}")
        out.add(int(i) % depth)
    return out


def in_keep_order(hidden: Sequence[torch.Tensor], keep: Keep, depth: int) -> list[torch.Tensor]:
    """Reorder the hidden states a network returned for ``keep`` (block order, one per distinct
    block) to one per entry of ``keep``, in ``keep``'s order."""
    table = dict(zip(sorted(keep_indices(keep, depth, f"a stack of {depth} blocks")), hidden))
    return [table[int(i) % depth] for i in keep]


@dataclass
class Masks:
    """The three position sets of one step, each (B, L) bool.

    ``hidden``: hidden from the encoder. ``predict``: positions the decoder predicts (a decoder that
    predicts every position, like MAE's, may ignore it). ``score``: positions the objective scores.
    MAE: predict = score = hidden. VideoMAE V2 dual masking: predict = the decoder mask's kept cells,
    score = hidden & predict. G2SD scores ``all`` positions, MaskAlign the ``visible`` ones.
    """

    hidden: torch.Tensor
    predict: torch.Tensor
    score: torch.Tensor

    @classmethod
    def build(cls, hidden: torch.Tensor, positions: str = "hidden", predict: torch.Tensor | None = None) -> Masks:
        """``positions`` (hidden | visible | all) picks what is scored; ``predict`` (default: the scored
        positions) narrows it: only predicted positions can be scored."""
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {list(POSITIONS)}, got '{positions}'")
        base = {"hidden": hidden, "visible": ~hidden, "all": torch.ones_like(hidden)}[positions]
        if predict is None:
            return cls(hidden, base, base)
        return cls(hidden, predict, base & predict)


@dataclass
class Visible:
    """Which tokens a token-dropping encoder saw and how to put them back.

    ``ids_keep`` (B, n): indices of the tokens fed to the encoder, visible ones first in position
    order; ``padding`` (B, n) is True where a sample had fewer than n visible tokens and the slot
    holds a hidden token that attention must ignore (None when all samples have n visible tokens);
    ``ids_restore`` (B, L) undoes the ordering ``[kept..., the rest...]``.
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    padding: torch.Tensor | None

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Visible:
        visible_counts = (~mask).sum(dim=1)
        n = int(visible_counts.max())
        ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        padding = None
        if int(visible_counts.min()) != n:
            padding = torch.arange(n, device=mask.device)[None, :] >= visible_counts[:, None]
        return cls(ids_shuffle[:, :n], ids_restore, padding)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Select the kept rows of a (B, L, C) tensor."""
        return torch.gather(x, 1, self.ids_keep[..., None].expand(-1, -1, x.shape[-1]))

    def attn_mask(self, num_prefix: int) -> torch.Tensor | None:
        """Boolean SDPA mask (True = attend) of shape (B, 1, 1, prefix + n), or None."""
        if self.padding is None:
            return None
        prefix = self.padding.new_zeros(self.padding.shape[0], num_prefix)
        return ~torch.cat([prefix, self.padding], dim=1)[:, None, None, :]


@dataclass
class Encoded:
    """What every encoder returns.

    ``latent``: (B, prefix + n, D) after the final norm for transformers (n = the tokens the encoder
    processed), (N, D) node features for graph encoders. ``visible``: how a token-dropping encoder
    chose its tokens (None when it saw every token). ``num_prefix``: leading non-token rows (cls).
    ``intermediates``: hidden states of the blocks asked for with ``keep``, same rows as ``latent``,
    before any final norm (timm's ``forward_intermediates(norm=False)``).
    """

    latent: torch.Tensor
    visible: Visible | None = None
    num_prefix: int = 0
    intermediates: list[torch.Tensor] = field(default_factory=list)

    @property
    def tokens(self) -> torch.Tensor:
        """The token rows of ``latent``, prefix (cls) dropped."""
        return self.latent[:, self.num_prefix :]


@dataclass
class Decoded:
    """What every decoder returns: per-position predictions (B, L, Q), zero where nothing was predicted,
    and the hidden states of the decoder blocks asked for with ``keep``. ``terms``: further weighted
    loss terms of the decoder's own (CAE's latent alignment), added to the loss and logged as
    ``train/loss_<name>``."""

    pred: torch.Tensor
    intermediates: list[torch.Tensor] = field(default_factory=list)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MAEOutput:
    """What ``model(batch, mask=None)`` returns."""

    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (B, L, Q) per-position predictions (zero where the decoder predicted nothing)
    mask: torch.Tensor  # (B, L) bool, True = hidden from the encoder
    target: torch.Tensor  # (B, L, Q) the (normalised) target the loss compares against
    predicted: torch.Tensor  # (B, L) bool, positions the decoder predicted
    scored: torch.Tensor  # (B, L) bool, positions the objective scored
    encoder_hidden: list[torch.Tensor] = field(default_factory=list)  # blocks asked for with keep
    decoder_hidden: list[torch.Tensor] = field(default_factory=list)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # further loss terms, for logging


@dataclass
class LoadInfo:
    """What :func:`mae_zoo.load` read and what it had to decide; attached to the model as ``model.load_info``.

    ``format``: ``mae_zoo`` (a ``.ckpt``), ``official_mae`` (facebookresearch/mae ``.pth``) or
    ``hf_vitmae`` (a ``save_pretrained`` directory). ``kind``: ``pretrain`` (encoder and
    decoder), ``encoder`` (official encoder-only file) or ``finetune`` (official fine-tuned
    file). ``not_in_file``: our state-dict keys the file did not provide, which keep their fresh
    initialisation (the decoder of an encoder-only or fine-tuned file; ``encoder.norm.*`` of a
    global-pool fine-tuned file). ``extra``: tensors of the file with no place in the model
    (``head.*``, ``fc_norm.*`` of a fine-tuned file, official names, on CPU). ``choices``: the
    hyperparameters that the file does not store and how each was chosen.
    """

    source: str
    format: str
    kind: str = "pretrain"
    not_in_file: list[str] = field(default_factory=list)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    choices: list[str] = field(default_factory=list)
