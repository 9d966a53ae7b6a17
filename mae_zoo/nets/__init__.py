"""Networks: transformer blocks, the token-dropping ViT encoder, decoders, GNNs and modality parts.

Nothing here knows about Lightning, configs or training; modalities compose these pieces."""
