"""Online linear probe callback: it learns, adds no gradient to the MAE, is off without labels,
grows with new labels, and its state survives a checkpoint round trip (resume continues it)."""

from __future__ import annotations

import json

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mae_zoo.callbacks import OnlineLinearProbe
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.train import train
from tests.conftest import FAST, compose_cfg

DIM, CLASSES = 16, 4


def blobs(n: int, seed: int, classes: int = CLASSES) -> TensorDataset:
    """Linearly separable Gaussian blobs in DIM dimensions."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, DIM, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(n) % classes
    return TensorDataset(centres[labels] + torch.randn(n, DIM, generator=g), labels)


class Unlabelled(Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, DIM)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


class ToyMAE(pl.LightningModule):
    """``embed`` is a fixed, *trainable-looking* projection that the training loss never uses: if the
    probe leaked gradients into the model, ``proj.weight.grad`` would stop being None."""

    batch_labels = staticmethod(MaskedAutoencoder.batch_labels)
    batch_inputs = staticmethod(MaskedAutoencoder.batch_inputs)

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(DIM))
            self.proj.bias.zero_()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.embed_calls_in_train_mode = 0

    def embed(self, batch):
        self.embed_calls_in_train_mode += int(self.training)
        return self.proj(self.batch_inputs(batch))

    def training_step(self, batch, batch_idx):
        return (self.dummy - 1.0).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.dummy.sum(), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD([self.dummy], lr=0.1)


def fit(module, probe, train_set, val_set=None, epochs=3, ckpt_path=None, root=None, batch_size=32, **kw):
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[probe],
        default_root_dir=root,
        **kw,
    )
    val = DataLoader(val_set, batch_size=64) if val_set is not None else None
    trainer.fit(module, DataLoader(train_set, batch_size=batch_size, shuffle=False), val, ckpt_path=ckpt_path)
    return trainer


def test_learns_separable_features_without_touching_the_model(tmp_path):
    module, probe = ToyMAE(), OnlineLinearProbe(lr=1e-2, every_n_steps=1)
    trainer = fit(module, probe, blobs(512, 0), blobs(256, 1), root=tmp_path)
    metrics = trainer.callback_metrics
    assert float(metrics["probe_online/top1"]) > 95.0  # percent, like every evaluator
    assert "probe_online/train_loss" in metrics and "probe_online/top5" not in metrics  # 4 classes: no top-5
    assert probe.num_classes == CLASSES and probe.feature_dim == DIM and probe.steps == 3 * 16
    # no gradient reached the model, and embed ran with the model in eval mode; train mode restored
    assert module.proj.weight.grad is None and module.proj.bias.grad is None
    assert module.embed_calls_in_train_mode == 0 and module.training
    assert torch.equal(module.proj.weight, torch.eye(DIM))


def test_every_n_steps_and_unlabelled_samples(tmp_path):
    data = blobs(320, 0)
    labels = data.tensors[1].clone()
    labels[::2] = -1  # half the samples are unlabelled: ignored
    labels[:32] = -1  # the whole first batch is unlabelled: skipped
    probe = OnlineLinearProbe(every_n_steps=3)
    fit(ToyMAE(), probe, TensorDataset(data.tensors[0], labels), epochs=1, root=tmp_path)
    assert probe.batches_seen == 10 and probe.steps == 3  # batches 1, 4, 7 (0 had no labels), 10 -> 4 - 1


def test_off_without_labels(tmp_path):
    probe = OnlineLinearProbe(every_n_steps=1)
    trainer = fit(ToyMAE(), probe, Unlabelled(128), Unlabelled(64), epochs=1, root=tmp_path)
    assert probe.head is None and probe.steps == 0
    assert not [k for k in trainer.callback_metrics if k.startswith("probe_online")]
    probe = OnlineLinearProbe(every_n_steps=1)  # every label -1: the same
    data = blobs(128, 0)
    fit(ToyMAE(), probe, TensorDataset(data.tensors[0], torch.full((128,), -1)), epochs=1, root=tmp_path)
    assert probe.head is None and probe.state_dict() == {}
    probe = OnlineLinearProbe(enabled=False)
    trainer = fit(ToyMAE(), probe, blobs(128, 0), blobs(64, 1), epochs=1, root=tmp_path)
    assert probe.head is None and "probe_online/top1" not in trainer.callback_metrics


def test_head_grows_with_new_labels(tmp_path):
    # the first batch shows labels 0..1 only; label 5 appears later: the head grows, Adam state padded
    data = blobs(256, 0, classes=6)
    x, y = data.tensors
    order = torch.cat([torch.nonzero(y < 2).flatten(), torch.nonzero(y >= 2).flatten()])
    probe = OnlineLinearProbe(lr=1e-2, every_n_steps=1)
    trainer = fit(ToyMAE(), probe, TensorDataset(x[order], y[order]), blobs(120, 1, classes=6), epochs=2, root=tmp_path)
    assert probe.num_classes == 6 and probe.head[1].weight.shape == (6, DIM)
    assert probe.optimizer.state[probe.head[1].weight]["exp_avg"].shape == (6, DIM)
    assert "probe_online/top5" in trainer.callback_metrics
    fixed = OnlineLinearProbe(num_classes=9)
    fit(ToyMAE(), fixed, blobs(64, 0), epochs=1, root=tmp_path)
    assert fixed.head[1].weight.shape == (9, DIM)


def test_state_survives_a_checkpoint_round_trip(tmp_path):
    module, probe = ToyMAE(), OnlineLinearProbe(lr=1e-2, every_n_steps=1)
    trainer = fit(module, probe, blobs(256, 0), blobs(64, 1), epochs=1, root=tmp_path)
    ckpt = tmp_path / "probe.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["OnlineLinearProbe"]  # plain tensors/containers
    assert saved["num_classes"] == CLASSES and saved["steps"] == 8

    restored = OnlineLinearProbe(lr=1e-2, every_n_steps=1)
    restored.load_state_dict(saved)
    restored._ensure_head(None, torch.zeros(2, DIM), None)  # built on the first batch after loading
    for (name, a), b in zip(probe.head.state_dict().items(), restored.head.state_dict().values()):
        assert torch.equal(a, b), name
    exp_avg = probe.optimizer.state[probe.head[1].weight]["exp_avg"]
    assert torch.equal(restored.optimizer.state[restored.head[1].weight]["exp_avg"], exp_avg)

    # resuming the fit continues the same probe: 8 more steps on top of the saved 8
    resumed = OnlineLinearProbe(lr=1e-2, every_n_steps=1)
    fit(ToyMAE(), resumed, blobs(256, 0), blobs(64, 1), epochs=2, ckpt_path=ckpt, root=tmp_path)
    assert resumed.steps == 16 and resumed.batches_seen == 16
    assert not torch.equal(resumed.head[1].weight.cpu(), probe.head[1].weight)  # it trained on


# ------------------------------------------------------------------------------- with the image MAE
def test_image_mae_default_callbacks_log_the_probe(tmp_path):
    """On by default (conf/callbacks/default.yaml) on the labelled shapes: a smoke run of the image MAE
    logs probe_online/* into the returned metrics, metrics.json and the CSV, and keeps the probe in
    last.ckpt. (A few steps cannot beat chance on shapes: random-init ViT features give ~15% after 40
    steps; learning itself is tested on separable features above.)"""
    cfg = compose_cfg([*FAST, "logger=csv", "callbacks.reconstructions=null"], tmp_path / "run")
    metrics = train(cfg)
    assert 0 <= metrics["probe_online/top1"] <= metrics["probe_online/top5"] <= 100
    assert metrics["probe_online/train_loss"] > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["probe_online/top1"] == metrics["probe_online/top1"]
    assert "probe_online/top1" in (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    # default every_n_steps=4: of the 4 smoke steps, the first trained the probe
    assert state["OnlineLinearProbe"]["num_classes"] == 10 and state["OnlineLinearProbe"]["steps"] == 1
    assert state["OnlineLinearProbe"]["batches_seen"] == 4
    assert state["OnlineLinearProbe"]["feature_dim"] == 128


def test_probe_leaves_pre_training_unchanged(tmp_path):
    """The MAE trained with the probe on equals, bit for bit, the one trained with it off: no
    gradient, no RNG draw, no state change reaches the model."""
    weights = []
    for enabled in (True, False):
        run = tmp_path / f"probe_{enabled}"
        metrics = train(
            compose_cfg(
                [*FAST, "logger=none", "callbacks.reconstructions=null", f"callbacks.online_probe.enabled={enabled}"],
                run,
            )
        )
        assert ("probe_online/top1" in metrics) == enabled
        weights.append(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
