"""Held-out check of a pre-trained image MAE checkpoint: masked-patch loss on the whole validation
split under fixed masks (trained model vs the same architecture at random init vs predicting the
patch mean, i.e. zero in norm-pix space), and a reconstruction picture of the first validation images.

    python experiments/mae_fashion_mnist/heldout.py runs/record_fashion_mnist/checkpoints/last.ckpt \
        experiments/mae_fashion_mnist
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

import mae_zoo
from mae_zoo.core.module import mask_seed
from mae_zoo.data.image import ImageDataModule


@torch.no_grad()
def heldout_loss(model, loader, zero: bool = False) -> float:
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        out = model(batch, generator=torch.Generator().manual_seed(mask_seed(0, 0, "val", i)))
        if zero:
            per_token = out.target.pow(2).mean(-1)
            loss = (per_token * out.mask).sum() / out.mask.sum()
        else:
            loss = out.loss
        total += loss.item() * out.mask.sum().item()
        count += out.mask.sum().item()
    return total / count


def main(ckpt: str, out_dir: str) -> None:
    torch.set_num_threads(2)
    out = Path(out_dir)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    trained = mae_zoo.load(ckpt)
    random_init = type(trained)(**checkpoint["hyper_parameters"]).eval()
    dm = ImageDataModule(**{**checkpoint["datamodule_hyper_parameters"], "num_workers": 0, "batch_size": 500})
    dm.setup("fit")
    loader = dm.val_dataloader()
    start = time.time()
    results = {
        "heldout/masked_loss_pretrained": heldout_loss(trained, loader),
        "heldout/masked_loss_random_init": heldout_loss(random_init, loader),
        "heldout/masked_loss_predict_patch_mean": heldout_loss(trained, loader, zero=True),
        "heldout/num_images": len(dm.val_set),
    }
    results["heldout/wall_s"] = round(time.time() - start, 1)
    images, _ = next(iter(dm.val_dataloader()))
    views = trained.visualize(images[:12], torch.Generator().manual_seed(0))  # (3, 12, C, H, W)
    grid = make_grid(
        torch.nn.functional.interpolate(views.flatten(0, 1), scale_factor=4, mode="nearest"),
        nrow=12,
        padding=2,
        pad_value=1.0,
    )
    save_image(grid, out / "recon_heldout_final.png")
    (out / "heldout.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
