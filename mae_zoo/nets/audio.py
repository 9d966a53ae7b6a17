"""Audio-MAE's local decoder (``decoder_mode=1``): shifted-window attention over the (time, freq)
token grid, from timm's ``SwinTransformerBlock``.

As in facebookresearch/AudioMAE ``models_mae.py``: the encoder rows are projected, mask tokens
fill the hidden positions, the fixed table (with its cls row) is added, then the cls row is
**dropped**; the blocks attend inside (4, 4) windows of the token grid, every odd block with the
windows shifted by (2, 0) (time only); final norm and a linear head to the patch values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.models.swin_transformer import SwinTransformerBlock
from torch import Tensor

from mae_zoo.core.types import Decoded, Encoded, keep_indices
from mae_zoo.nets.vit import MAEDecoder, layer_norm


class LocalDecoder(MAEDecoder):
    """MAE decoder whose blocks are shifted-window blocks on the ``grid`` (rows, cols) of tokens.

    Same parameters as :class:`MAEDecoder` (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
    ``blocks``, ``norm``, ``decoder_pred``); ``window`` and ``shift`` in tokens (shift applied on odd
    blocks). A window larger than the grid is clamped to it (then that axis is not shifted), as timm does.
    """

    def __init__(
        self,
        encoder_dim: int,
        pos_table: Tensor,
        out_dim: int,
        grid: tuple[int, int],
        embed_dim: int = 512,
        num_prefix: int = 1,
        window: Sequence[int] = (4, 4),
        shift: Sequence[int] = (2, 0),
        depth: int = 16,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(
            encoder_dim,
            pos_table,
            out_dim,
            embed_dim=embed_dim,
            num_prefix=num_prefix,
            depth=0,
            num_heads=num_heads,
            norm_eps=norm_eps,
        )
        self.grid = (int(grid[0]), int(grid[1]))
        win = (int(window[0]), int(window[1]))
        sh = (int(shift[0]), int(shift[1]))
        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                embed_dim,
                self.grid,
                num_heads=num_heads,
                window_size=win,
                shift_size=(0, 0) if i % 2 == 0 else sh,  # type: ignore[arg-type]  # timm takes a 2-tuple too
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=r,
                norm_layer=layer_norm(norm_eps),
            )
            for i, r in enumerate(rates)
        )

    def forward_blocks(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, keep: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, L, C) tokens in grid order through the window blocks and the norm; hidden states of ``keep``."""
        wanted = keep_indices(keep, len(self.blocks), f"a stack of {len(self.blocks)} blocks")
        b, n, c = x.shape
        x = x.reshape(b, *self.grid, c)
        hidden = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                hidden.append(x.reshape(b, n, c))
        return self.norm(x.reshape(b, n, c)), hidden

    def forward(self, encoded: Encoded, keep: Sequence[int] = ()) -> Decoded:
        x = self.unshuffle(encoded) + self.decoder_pos_embed
        x, hidden = self.forward_blocks(x[:, self.num_prefix :], keep=keep)  # the cls row never enters
        return Decoded(self.decoder_pred(x), hidden)
