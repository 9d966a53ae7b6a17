"""Prototypical probing (Bird-MAE): the head's shapes, max over positions, non-negative last layer,
orthogonality penalty, that it learns position-free evidence, token features, and a smoke evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mae_zoo.core.errors import ConfigError
from mae_zoo.eval import evaluate
from mae_zoo.evaluation.prototype import PrototypeEvaluator, PrototypeHead, token_features
from mae_zoo.modalities.image import ImageMAE
from mae_zoo.train import train
from tests.conftest import FAST, compose_cfg


def _head(dim=8, classes=3, per_class=4, **kw) -> PrototypeHead:
    generator = torch.Generator().manual_seed(0)
    return PrototypeHead(dim, classes, prototypes_per_class=per_class, generator=generator, **kw)


# ------------------------------------------------------------------------------- the head
def test_shapes_and_class_identity():
    head = _head()
    tokens = torch.randn(5, 7, 8)
    assert head.prototypes.shape == (12, 8) and head.num_prototypes == 12
    assert head.similarities(tokens).shape == (5, 12, 7)
    assert head.activations(tokens).shape == (5, 12)
    assert head(tokens).shape == (5, 3)
    assert head.orthogonality().shape == (3, 4, 4)
    # prototypes start U[0, 1) as in Bird-MAE; last layer 1.0 on own prototypes, bias -2
    assert float(head.prototypes.detach().min()) >= 0 and float(head.prototypes.detach().max()) < 1
    assert torch.equal(head.last_layer.weight, torch.ones(3, 4))
    assert torch.equal(head.last_layer.bias, torch.full((3,), -2.0))


def test_similarity_is_relu_cosine():
    head = _head(n_eps_channels=0, eps=0.0)
    tokens = torch.randn(2, 6, 8)
    expected = torch.relu(F.cosine_similarity(tokens[:, None], head.prototypes[None, :, None], dim=-1)) / 1.01
    assert torch.allclose(head.similarities(tokens), expected, atol=1e-6)
    # with Bird-MAE's epsilon channels: the same up to ~eps, and in [0, 1)
    default = _head()
    sims = default.similarities(tokens)
    assert torch.allclose(sims, expected, atol=1e-3) and float(sims.min()) >= 0 and float(sims.max()) < 1
    # scale-free in the tokens, and zero tokens are well defined (no NaN)
    assert torch.allclose(default.similarities(3 * tokens), sims, atol=1e-4)
    assert torch.isfinite(default(torch.zeros(1, 3, 8))).all()


def test_max_over_positions():
    head = _head()
    tokens = torch.randn(4, 9, 8)
    acts = head.activations(tokens)
    per_position = torch.stack([head.activations(tokens[:, i : i + 1]) for i in range(9)], dim=-1)
    assert torch.allclose(acts, per_position.amax(dim=-1))
    perm = torch.randperm(9)
    assert torch.allclose(head.activations(tokens[:, perm]), acts)  # where the evidence sits does not matter
    # one position equal to prototype 5 gives it a (near) full activation, whatever the others are
    tokens[2, 4] = head.prototypes[5].detach() * 2
    assert float(head.activations(tokens)[2, 5]) == pytest.approx(1 / 1.01, abs=1e-3)
    # topk > 1: mean of the k best positions while training, plain max in eval mode
    top3 = _head(topk=3)
    sims = top3.similarities(tokens)
    assert torch.allclose(top3.activations(tokens), sims.topk(3, dim=-1).values.mean(-1))
    top3.eval()
    assert torch.allclose(top3.activations(tokens), sims.amax(-1))


@pytest.mark.parametrize("class_specific", [True, False])
def test_last_layer_is_non_negative(class_specific):
    head = _head(class_specific=class_specific)
    layer = head.last_layer
    acts = torch.rand(6, 12)
    with torch.no_grad():
        layer.weight.copy_(-torch.rand_like(layer.weight))  # all raw weights negative
    assert float(layer.effective_weight().min()) >= 0
    assert torch.allclose(layer(acts), layer.bias.expand(6, -1))  # negative weights contribute nothing
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight))
    more = acts + torch.rand_like(acts)  # more similarity never lowers a logit
    assert (layer(more) >= layer(acts) - 1e-6).all()
    if class_specific:  # class 0 reads only prototypes 0..3
        other = acts.clone()
        other[:, 4:] = torch.rand(6, 8)
        assert torch.allclose(layer(other)[:, 0], layer(acts)[:, 0])
    else:  # starts as own-class 1, others 0
        head2 = _head(class_specific=False)
        assert torch.equal(head2.last_layer.weight.sum(dim=1), torch.full((3,), 4.0))


def test_orthogonality_penalty():
    head = _head(dim=8, classes=3, per_class=4)
    assert float(head.orthogonality_penalty()) > 0  # U[0,1) prototypes are far from orthogonal
    q = torch.linalg.qr(torch.randn(3, 8, 4)).Q.transpose(1, 2)  # (3, 4, 8), orthonormal rows per class
    with torch.no_grad():
        head.prototypes.copy_((q * torch.tensor([0.5, 1.0, 3.0, 7.0])[None, :, None]).reshape(12, 8))
    assert float(head.orthogonality_penalty()) < 1e-6  # any lengths: only directions count
    # prototypes of *different* classes may align: only within-class pairs are penalised
    with torch.no_grad():
        head.prototypes[4:8] = head.prototypes[0:4]
    assert float(head.orthogonality_penalty()) < 1e-6
    with torch.no_grad():  # J identical prototypes per class: every off-diagonal cosine is 1
        head.prototypes.copy_(torch.ones(12, 8))
    expected = math.sqrt(3 * 4 * 3) / (3 * 4 * 4)  # ||G - I||_F / (C J J)
    assert float(head.orthogonality_penalty()) == pytest.approx(expected, rel=1e-5)
    head.orthogonality_penalty().backward()
    assert head.prototypes.grad is not None and head.last_layer.weight.grad is None


def test_head_learns_position_free_evidence():
    """Each class leaves one characteristic token at a random position among noise tokens: the max
    over positions finds it, so a few hundred steps reach (near) perfect accuracy."""
    g = torch.Generator().manual_seed(0)
    dim, classes, positions, n = 32, 4, 12, 512
    keys = F.normalize(torch.randn(classes, dim, generator=g), dim=-1) * 3
    labels = torch.randint(0, classes, (n,), generator=g)
    tokens = torch.randn(n, positions, dim, generator=g)
    where = torch.randint(0, positions, (n,), generator=g)
    tokens[torch.arange(n), where] = keys[labels]
    head = PrototypeHead(dim, classes, prototypes_per_class=3, generator=g)
    opt = torch.optim.AdamW(
        [
            {"params": [head.prototypes], "lr": 0.04},
            {"params": head.last_layer.parameters(), "lr": 4e-3, "weight_decay": 1e-4},
        ]
    )
    for _step in range(150):
        idx = torch.randint(0, n, (64,), generator=g)
        loss = F.cross_entropy(head(tokens[idx]), labels[idx]) + head.orthogonality_penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        acc = (head(tokens).argmax(1) == labels).float().mean().item()
    assert acc > 0.95, acc


# ------------------------------------------------------------------------------- token features
def _tiny_mae() -> ImageMAE:
    cfg = compose_cfg(FAST)
    from hydra.utils import instantiate

    return instantiate(cfg.module, _recursive_=False, _convert_="all").eval()


def test_token_features_from_the_encoder():
    model = _tiny_mae()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = token_features(model, (images, torch.zeros(3)))
        latent = model.encoder(model.tokenize(images).inputs).latent
        assert tokens.shape == (3, 64, 128)  # 8x8 patches, no cls row
        assert torch.equal(tokens, latent[:, 1:])
        assert torch.allclose(model.embed(images), latent[:, 0])
        focal = token_features(model, images, focal=True)
        assert torch.allclose(focal, latent[:, 1:] - latent[:, :1])


def test_token_features_prefers_a_modality_hook():
    model = _tiny_mae()
    model.embed_tokens = lambda batch: torch.ones(2, 5, 7)  # type: ignore[attr-defined]
    assert token_features(model, torch.randn(2, 3, 32, 32)).shape == (2, 5, 7)


def test_bad_settings_fail_early():
    with pytest.raises(ConfigError):
        PrototypeEvaluator(prototypes_per_class=0)
    with pytest.raises(ConfigError):
        PrototypeEvaluator(epochs=0)


# ------------------------------------------------------------------------------- smoke evaluation
def _compose_eval(overrides: list[str], run_dir: Path) -> DictConfig:
    return compose_cfg(overrides, run_dir, config_name="eval")


def test_prototype_smoke_eval(tmp_path):
    run = tmp_path / "pretrain"
    cfg = compose_cfg(
        [*FAST, "logger=none", "callbacks.online_probe.enabled=false", "callbacks.reconstructions=null"], run
    )
    train(cfg)
    ckpt = run / "checkpoints" / "last.ckpt"
    metrics = evaluate(
        _compose_eval(
            [f"ckpt={ckpt}", "eval=prototype", "debug=smoke", "print_config=false", "eval.prototypes_per_class=4"],
            tmp_path / "eval",
        )
    )
    assert 0 <= metrics["eval_prototype/top1"] <= metrics["eval_prototype/top5"] <= 100
    assert metrics["eval_prototype/num_classes"] == 10 and metrics["eval_prototype/prototypes_per_class"] == 4
    assert metrics["eval_prototype/num_tokens"] == 64 and metrics["eval_prototype/feature_dim"] == 128
    assert metrics["eval_prototype/epochs"] == 1  # debug=smoke caps the epochs ...
    assert metrics["eval_prototype/num_val"] == 32  # ... and the batches (2 val batches of 16)
    assert metrics["eval_prototype/ortho_penalty"] > 0 and math.isfinite(metrics["eval_prototype/final_train_loss"])
    assert (tmp_path / "eval" / "metrics.json").is_file()


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
