"""The CAE record's open question: why its alignment term rose again in the second half.

For every step checkpoint of a CAE run, on 512 fixed Fashion-MNIST test images with one fixed set of
block masks (eval mode, fp32): the reconstruction term, the alignment term, and the scales behind it:
the mean square of the alignment target (the encoder's own latents of the hidden patches), of the
regressor's predictions, their variance over tokens, and the alignment MSE relative to the target's
variance (1.0 = no better than predicting the target's mean). Writes a JSON list.

    python experiments/cae_fashion_mnist/diagnose.py RUN_DIR OUT.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import FashionMNIST

import mae_zoo


@torch.no_grad()
def measure(ckpt: Path, images: torch.Tensor, generator_seed: int = 0) -> dict:
    model = mae_zoo.load(str(ckpt)).eval().float()
    tokens = model.tokenize(images)
    masks = model.masks(tokens, None, None, torch.Generator().manual_seed(generator_seed))
    encoded = model.encode(tokens, masks.hidden)
    target_enc = model.encoder(tokens.inputs, ~masks.hidden)
    predicted, _ = model.decoder.regress(encoded)
    aim = model.decoder.encoder_to_regressor(target_enc.tokens)
    decoded = model.decoder(encoded, target_enc)
    recon, _ = model.objective(decoded.pred, model.target(images, tokens, masks), masks.score)
    mse = F.mse_loss(predicted, aim)
    return {
        "recon": float(recon),
        "align_term": float(decoded.terms["align"]),
        "align_mse": float(mse),
        "target_mean_square": float(aim.pow(2).mean()),
        "pred_mean_square": float(predicted.pow(2).mean()),
        "target_var_over_tokens": float(aim.flatten(0, 1).var(0).mean()),
        "pred_var_over_tokens": float(predicted.flatten(0, 1).var(0).mean()),
        "align_mse_over_target_var": float(mse / aim.flatten(0, 1).var(0).mean()),
        "encoder_norm_weight_rms": float(model.encoder.norm.weight.pow(2).mean().sqrt()),
    }


def main(run_dir: str, out: str) -> None:
    ckpts = sorted(Path(run_dir, "checkpoints").glob("step*.ckpt"))
    raw = FashionMNIST(str(Path(__file__).resolve().parents[2].parent / "shared/data/vision"), train=False)
    x = raw.data[:512].float().div(255.0).sub(0.2860).div(0.3530)[:, None]
    rows = []
    for ckpt in ckpts:
        step = int(re.search(r"step(\d+)", ckpt.name).group(1))  # type: ignore[union-attr]
        row = {"step": step, **measure(ckpt, x)}
        print(json.dumps(row))
        rows.append(row)
    Path(out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
