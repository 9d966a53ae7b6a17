"""MixedAE (Chen et al., CVPR 2023, "Mixed Autoencoder for Self-supervised Visual Representation
Learning") on the image MAE: patch-wise mixing of ``1 / r`` images as augmentation, with homologous
recognition (segment embeddings, homologous attention, the homologous contrastive term), reconstructing
each source image's own pixels.

The pieces: the mixing is a mask (:class:`mae_zoo.masks.MixingMask`, ``mask=mixing``); the encoder mixes,
attends homologously and unmixes (:class:`mae_zoo.nets.homologous.HomologousViTEncoder`,
``model.encoder.kind=homologous``); MAE's decoder and norm-pix MSE then reconstruct each source's hidden
patches from its own rows; the contrastive term is :class:`mae_zoo.objectives.homologous.HomologousContrastive`
(``module.contrastive``), logged as ``train/loss_homologous`` beside ``train/loss_recon``.
"""

from __future__ import annotations

from typing import Any

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Decoded, Encoded, Masks, Tokens
from mae_zoo.masks.mixing import MixingMask, group_index
from mae_zoo.modalities.image import ImageMAE
from mae_zoo.nets.homologous import HomologousViTEncoder
from mae_zoo.nets.pos_embed import sincos_2d
from mae_zoo.nets.vit import PatchProjection, init_mae_weights
from mae_zoo.objectives.homologous import HomologousContrastive

# Entries of model.encoder that only the homologous encoder reads.
HOMOLOGOUS_KEYS = ("attention", "homologous_blocks", "segment_embed")


class MixedImageMAE(ImageMAE):
    """``encoder``: the ViT sizes with ``kind: homologous`` and :class:`HomologousViTEncoder`'s
    ``attention``, ``homologous_blocks``, ``segment_embed``; ``decoder``: MAE's (``kind: mae``);
    ``contrastive``: ``weight`` and ``temperature`` of the homologous contrastive term (weight 0: off);
    the rest as :class:`ImageMAE`. Needs ``mask=mixing``; no teacher, distillation or decoder mask."""

    def __init__(self, encoder: dict, decoder: dict, contrastive: dict | None = None, **pixel: Any) -> None:
        # The arguments are left unbound here: Lightning saves them as they are for the checkpoint.
        enc = dict(encoder)
        kind = enc.pop("kind", "homologous")
        if kind != "homologous" or dict(decoder).get("kind", "mae") != "mae":
            raise ConfigError(
                "MixedAE (modality=mixing) needs model.encoder.kind=homologous and model.decoder.kind=mae, "
                f"got {kind!r} and {dict(decoder).get('kind')!r}"
            )
        homologous = {k: enc.pop(k) for k in HOMOLOGOUS_KEYS if k in enc}
        super().__init__(encoder={**enc, "kind": "dropping"}, decoder=decoder, **pixel)
        mixing = self.mask_generator
        if not isinstance(mixing, MixingMask):
            raise ConfigError(f"MixedAE (modality=mixing) needs mask=mixing, got {mixing!r}")
        if self.teacher is not None or self.distill_cfg is not None or self.decoder_mask_generator is not None:
            raise ConfigError("MixedAE (modality=mixing) takes no teacher, distill or decoder_mask")
        if homologous.get("attention", "topk") not in ("topk", "same_source", "full"):
            raise ConfigError(
                "model.encoder.attention must be one of ['full', 'same_source', 'topk'], "
                f"got {homologous.get('attention')!r}"
            )
        self.group = mixing.group
        dim = int(enc["embed_dim"])
        self.encoder = HomologousViTEncoder(
            PatchProjection(self.in_chans, (self.patch_size, self.patch_size), dim),
            sincos_2d(dim, *self.grid, cls_token=True),
            group=self.group,
            **homologous,
            **enc,
        )
        spec = dict(contrastive or {})
        self.contrastive = HomologousContrastive(dim, **spec) if spec.get("weight", 1.0) > 0 else None
        init_mae_weights(self)

    def extra_terms(self, tokens: Tokens, masks: Masks, encoded: Encoded, decoded: Decoded) -> dict[str, torch.Tensor]:
        visible = encoded.visible
        own = super().extra_terms(tokens, masks, encoded, decoded)
        if self.contrastive is None or visible is None:
            return own
        rows = encoded.tokens
        valid = torch.ones(rows.shape[:2], dtype=torch.bool, device=rows.device)
        if visible.padding is not None:
            valid = ~visible.padding
        gid = group_index(rows.shape[0], self.group)[0].to(rows.device)
        return {**own, "homologous": self.contrastive(rows, valid, gid)}
