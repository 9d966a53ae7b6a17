"""Evaluation: linear probe, weighted kNN (and its DDP-synced metric), fine-tuning, the eval CLI."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from omegaconf import DictConfig

from mae_zoo.core.errors import ConfigError
from mae_zoo.eval import eval_options, evaluate
from mae_zoo.evaluation.finetune import ViTClassifier, layer_decay_param_groups, layer_id
from mae_zoo.evaluation.knn import KNNAccuracy, knn_scores
from mae_zoo.evaluation.linear import LARS, LinearHead, train_linear_probe
from mae_zoo.modalities.image import ImageMAE
from mae_zoo.train import train
from tests.conftest import FAST, ROOT, compose_cfg

SMOKE = ["debug=smoke", "print_config=false"]  # 4 train / 2 val batches of 16, one epoch


def compose_eval(overrides: list[str], run_dir: Path) -> DictConfig:
    return compose_cfg(overrides, run_dir, config_name="eval")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A vit_micro image MAE pre-trained for 4 steps on the embedded shapes (10 classes, 32px RGB);
    few shapes are drawn (the checkpoint records it, and evaluation rebuilds the same data), to stay quick."""
    run = tmp_path_factory.mktemp("pretrain")
    train(compose_cfg([*FAST, "data.num_train=512", "data.num_val=96"], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


# ------------------------------------------------------------------------------- evaluators, smoke
def test_linear_smoke(tiny_ckpt, tmp_path):
    overrides = ["+data_overrides.num_train=256"]  # applied on top of the checkpoint's data settings
    metrics = evaluate(compose_eval([f"ckpt={tiny_ckpt}", "eval=linear", *SMOKE, *overrides], tmp_path))
    assert 0 <= metrics["eval_linear/top1"] <= 100
    assert metrics["eval_linear/top1"] <= metrics["eval_linear/top5"] <= 100  # 10 classes: top-5 reported
    # debug=smoke: 4 train / 2 val batches of 16, one epoch
    assert metrics["eval_linear/num_train"] == 64 and metrics["eval_linear/num_val"] == 32
    assert metrics["eval_linear/epochs"] == 1 and metrics["eval_linear/feature_dim"] == 128
    assert metrics["eval_linear/pool"] == "cls" and metrics["eval_linear/init"] == "pretrained"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval_linear/top1"] == metrics["eval_linear/top1"]
    assert (tmp_path / "config.yaml").is_file()
    assert "num_train: 256" in (tmp_path / "config.yaml").read_text()


def test_knn_smoke_pixels_and_random_init(tiny_ckpt, tmp_path):
    base = [f"ckpt={tiny_ckpt}", "eval=knn", *SMOKE]
    pretrained = evaluate(compose_eval(base, tmp_path / "a"))
    assert 0 <= pretrained["eval_knn/top1"] <= pretrained["eval_knn/top5"] <= 100
    assert pretrained["eval_knn/k"] == 20 and pretrained["eval_knn/num_train"] == 64
    pixels = evaluate(compose_eval([*base, "eval.features=pixels", "eval.k=5"], tmp_path / "b"))
    assert pixels["eval_knn/feature_dim"] == 3 * 32 * 32 and pixels["eval_knn/pool"] is None
    random = evaluate(compose_eval([*base, "init=random", "eval.pool=mean"], tmp_path / "c"))
    assert random["eval_knn/init"] == "random" and random["eval_knn/pool"] == "mean"
    # a random encoder really is a different one
    assert (
        random["eval_knn/top1"] != pretrained["eval_knn/top1"] or random["eval_knn/top5"] != pretrained["eval_knn/top5"]
    )
    # a feature cache: the linear probe extracts, the kNN reuses; a random encoder gets its own entry
    cache = f"eval.feature_cache={tmp_path / 'cache'}"
    evaluate(compose_eval([f"ckpt={tiny_ckpt}", "eval=linear", *SMOKE, cache], tmp_path / "d"))
    assert len(list((tmp_path / "cache").glob("features_embed_*.pt"))) == 1
    cached = evaluate(compose_eval([*base, cache], tmp_path / "e"))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    assert (
        cached["eval_knn/top1"] == pretrained["eval_knn/top1"]
        and cached["eval_knn/top5"] == pretrained["eval_knn/top5"]
    )
    evaluate(compose_eval([*base, cache, "init=random"], tmp_path / "f"))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    # probing an intermediate block: its own features, its own cache entry
    first = evaluate(compose_eval([*base, cache, "eval.block=0"], tmp_path / "g"))
    assert first["eval_knn/block"] == 0 and len(list((tmp_path / "cache").glob("*.pt"))) == 3
    assert (
        first["eval_knn/top1"] != pretrained["eval_knn/top1"] or first["eval_knn/top5"] != pretrained["eval_knn/top5"]
    )


def test_finetune_smoke(tiny_ckpt, tmp_path):
    metrics = evaluate(
        compose_eval([f"ckpt={tiny_ckpt}", "eval=finetune", "eval.log_every_n_steps=0", *SMOKE], tmp_path)
    )
    assert 0 <= metrics["eval_finetune/top1"] <= metrics["eval_finetune/top5"] <= 100
    assert metrics["eval_finetune/mode"] == "vit" and metrics["eval_finetune/epochs"] == 1
    assert metrics["eval_finetune/steps"] == 4 and metrics["eval_finetune/num_val"] == 32
    assert math.isfinite(metrics["eval_finetune/train_loss"])


def test_finetune_on_a_carved_val_split_reports_val_and_test_and_reads_test_once(tiny_ckpt, tmp_path, monkeypatch):
    from mae_zoo.data.image import ImageDataModule

    calls = []
    original = ImageDataModule.test_dataloader
    monkeypatch.setattr(ImageDataModule, "test_dataloader", lambda self: calls.append(1) or original(self))
    split = ["+data_overrides.val_from_train=96", "+data_overrides.train_subset=64", "eval.val_every=1"]
    cfg = compose_eval([f"ckpt={tiny_ckpt}", "eval=finetune", "eval.log_every_n_steps=0", *SMOKE, *split], tmp_path)
    metrics = evaluate(cfg)
    assert calls == [1]  # the test split is scored once, after training; the curve reads val only
    assert metrics["eval_finetune/val_split"] == "carved from train"
    assert metrics["eval_finetune/num_train"] == 64 and metrics["eval_finetune/steps"] == 4
    assert metrics["eval_finetune/num_val"] == 32 and metrics["eval_finetune/num_test"] == 32  # 2 batches of 16
    assert 0 <= metrics["eval_finetune/val_top1"] <= metrics["eval_finetune/val_top5"] <= 100
    assert metrics["eval_finetune/top1"] == metrics["eval_finetune/test_top1"]
    assert metrics["eval_finetune/val_top1_per_epoch"] == [[1, round(metrics["eval_finetune/val_top1"], 3)]]
    rows = (tmp_path / "finetune_curve.csv").read_text().splitlines()
    assert rows[0] == "epoch,step,train_loss,val_top1,wall_s" and len(rows) == 2
    with pytest.raises(ConfigError, match="val_every"):
        evaluate(compose_eval([f"ckpt={tiny_ckpt}", "eval=finetune", "eval.val_every=0", *SMOKE], tmp_path / "b"))


def test_finetune_does_not_touch_the_pretrained_model(tiny_ckpt):
    model = ImageMAE(**torch.load(tiny_ckpt, weights_only=True)["hyper_parameters"])
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    net = ViTClassifier(model, num_classes=10, drop_path=0.2)
    torch.optim.SGD(net.parameters(), lr=1.0).zero_grad()
    images = torch.randn(2, 3, 32, 32)
    net(images).sum().backward()
    for p in net.parameters():
        if p.grad is not None:
            p.data.add_(p.grad, alpha=-1.0)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------- kNN
def _knn_bruteforce(train_x, train_y, query_x, num_classes, k, t):
    scores = torch.zeros(len(query_x), num_classes, dtype=torch.float64)
    tn = train_x.double() / train_x.double().norm(dim=1, keepdim=True)
    for i, q in enumerate(query_x.double()):
        q = q / q.norm()
        sims = sorted(((float(tn[j] @ q), j) for j in range(len(tn))), reverse=True)[:k]
        for sim, j in sims:
            scores[i, int(train_y[j])] += math.exp(sim / t)
    return scores


def test_knn_weighted_vote_matches_bruteforce():
    g = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    query_x = torch.randn(9, 6, generator=g)
    for k, t in [(1, 0.07), (5, 0.07), (7, 0.5), (100, 1.0)]:
        fast = knn_scores(train_x * 3.0, train_y, query_x, 4, k=k, temperature=t, chunk_size=4)  # scale-free
        ref = _knn_bruteforce(train_x, train_y, query_x, 4, min(k, 40), t)
        torch.testing.assert_close(fast.double(), ref, rtol=1e-4, atol=1e-6)


def test_knn_hand_example():
    # Two class-0 points at 0 degrees, one class-1 point at 90 degrees; the query at 60 degrees.
    train_x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    train_y = torch.tensor([0, 0, 1])
    query = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]])
    s = knn_scores(train_x, train_y, query, 2, k=3, temperature=1.0)
    torch.testing.assert_close(s, torch.tensor([[2 * math.exp(0.5), math.exp(math.cos(math.pi / 6))]]))
    assert int(s.argmax()) == 0  # at a high temperature two weaker votes outweigh one stronger
    s = knn_scores(train_x, train_y, query, 2, k=3, temperature=0.1)
    torch.testing.assert_close(s, torch.tensor([[2 * math.exp(5.0), math.exp(math.cos(math.pi / 6) / 0.1)]]))
    assert int(s.argmax()) == 1  # at a low temperature the nearest neighbour wins
    s = knn_scores(train_x, train_y, query, 2, k=2, temperature=1.0)
    torch.testing.assert_close(s, torch.tensor([[math.exp(0.5), math.exp(math.cos(math.pi / 6))]]))  # k=2 drops one


def _toy_bank(seed: int = 1, classes: int = 6, dim: int = 8):
    """Train and query samples around the same class centres (overlapping: kNN is good, not perfect)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 1.5
    ty, qy = torch.randint(0, classes, (120,), generator=g), torch.randint(0, classes, (50,), generator=g)
    return centers[ty] + torch.randn(120, dim, generator=g), ty, centers[qy] + torch.randn(50, dim, generator=g), qy


def test_knn_metric_merged_ranks_equal_single_process():
    tx, ty, qx, qy = _toy_bank()
    single = KNNAccuracy(k=10, temperature=0.1, num_classes=6)
    single.update(train_features=tx, train_labels=ty, query_features=qx, query_labels=qy)
    ref = single.compute()
    assert set(ref) == {"top1", "top5"} and 0 < float(ref["top1"]) < 100
    # two "ranks" with uneven shards of both banks, merged the way DDP sync concatenates states
    rank0, rank1 = KNNAccuracy(k=10, temperature=0.1, num_classes=6), KNNAccuracy(k=10, temperature=0.1, num_classes=6)
    rank0.update(train_features=tx[:70], train_labels=ty[:70], query_features=qx[:20], query_labels=qy[:20])
    rank1.update(train_features=tx[70:], train_labels=ty[70:])
    rank1.update(query_features=qx[20:], query_labels=qy[20:])
    rank0.merge_state(rank1)
    merged = rank0.compute()
    for key in ref:
        assert float(merged[key]) == pytest.approx(float(ref[key]))
    # the same through the reduction torchmetrics applies to gathered states (dist_reduce_fx="cat")
    ranks = [KNNAccuracy(k=10, temperature=0.1, num_classes=6) for _ in range(2)]
    ranks[0].update(train_features=tx[:70], train_labels=ty[:70], query_features=qx[:20], query_labels=qy[:20])
    ranks[1].update(train_features=tx[70:], train_labels=ty[70:], query_features=qx[20:], query_labels=qy[20:])
    for name in ("train_features", "train_labels", "query_features", "query_labels"):
        assert ranks[0]._reductions[name].__name__ == "dim_zero_cat"
    ranks[0]._reduce_states({name: getattr(ranks[1], name) for name in ranks[1]._defaults})
    assert {k: float(v) for k, v in ranks[0].compute().items()} == pytest.approx({k: float(v) for k, v in ref.items()})


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tx, ty, qx, qy = _toy_bank()
        metric = KNNAccuracy(k=10, temperature=0.1, num_classes=6)
        cut_t, cut_q = (70, 20)  # uneven shards
        if rank == 0:
            metric.update(
                train_features=tx[:cut_t], train_labels=ty[:cut_t], query_features=qx[:cut_q], query_labels=qy[:cut_q]
            )
        else:
            metric.update(
                train_features=tx[cut_t:], train_labels=ty[cut_t:], query_features=qx[cut_q:], query_labels=qy[cut_q:]
            )
        result = {k: float(v) for k, v in metric.compute().items()}  # syncs the cat states across ranks
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_knn_metric_synced_across_two_gloo_ranks(tmp_path):
    tx, ty, qx, qy = _toy_bank()
    single = KNNAccuracy(k=10, temperature=0.1, num_classes=6)
    single.update(train_features=tx, train_labels=ty, query_features=qx, query_labels=qy)
    ref = {k: float(v) for k, v in single.compute().items()}
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == pytest.approx(ref), rank


def test_knn_rejects_bad_settings():
    with pytest.raises(ConfigError):
        KNNAccuracy(k=0)
    with pytest.raises(ConfigError):
        KNNAccuracy(temperature=0.0)


# ------------------------------------------------------------------------------- linear probe
@pytest.fixture
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation (and stalls badly on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_probe_head_batchnorm_has_no_affine():
    head = LinearHead(32, 10)
    bn, fc = head[0], head[1]
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.weight is None and bn.bias is None
    assert bn.eps == 1e-6
    assert [n for n, _ in head.named_parameters()] == ["1.weight", "1.bias"]
    assert 0.007 < float(fc.weight.detach().std()) < 0.013  # trunc-normal std 0.01 (cut at +-2 absolute, as timm/MAE)
    assert torch.count_nonzero(fc.bias) == 0


@pytest.mark.parametrize("optimizer,lr", [("lars", 16.0), ("sgd", 1.0), ("adamw", 0.03)])
def test_linear_probe_separates_a_separable_toy_set(optimizer, lr, one_thread):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g)
    centers = 6 * centers / centers.norm(dim=1, keepdim=True)

    def sample(n):
        y = torch.randint(0, 4, (n,), generator=g)
        x = centers[y] + 0.5 * torch.randn(n, 16, generator=g)
        return x * 3 + 1.0, y  # off-centre and scaled: the BN has work to do

    (tx, ty), (vx, vy) = sample(2000), sample(500)
    _, m = train_linear_probe(
        tx, ty, vx, vy, num_classes=4, epochs=20, batch_size=128, optimizer=optimizer, lr=lr, warmup_epochs=2
    )
    assert m["eval_linear/train_top1"] >= 99.5, m
    assert m["eval_linear/top1"] >= 99.5, m
    assert "eval_linear/top5" not in m  # fewer than 5 classes


def test_linear_probe_does_not_learn_random_labels(one_thread):
    g = torch.Generator().manual_seed(0)
    tx, vx = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    ty, vy = torch.randint(0, 4, (1000,), generator=g), torch.randint(0, 4, (1000,), generator=g)
    _, m = train_linear_probe(tx, ty, vx, vy, num_classes=4, epochs=10, batch_size=128)
    assert 18 <= m["eval_linear/top1"] <= 32  # chance is 25 %


def test_lars_step_matches_formula():
    p = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |p| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([p, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    p.grad, b.grad = torch.tensor([[1.0, 0.0]]), torch.tensor([2.0])
    opt.step()
    update = torch.tensor([[1.0, 0.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    trust = 0.001 * 5.0 / float(update.norm())
    torch.testing.assert_close(p.data, torch.tensor([[3.0, 4.0]]) - 0.5 * trust * update)
    torch.testing.assert_close(b.data, torch.tensor([1.0 - 0.5 * 2.0]))  # 1-D: plain SGD, no decay


# ------------------------------------------------------------------------------- fine-tuning pieces
def _micro_mae(depth: int = 3) -> ImageMAE:
    return ImageMAE(
        encoder={"embed_dim": 32, "depth": depth, "num_heads": 2},
        decoder={"embed_dim": 16, "depth": 1, "num_heads": 2},
        mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75},
        optim={"blr": 1e-3, "weight_decay": 0.05},
        img_size=16,
        in_chans=3,
        patch_size=4,
    )


def test_layer_decay_scales():
    depth, decay = 3, 0.65
    net = ViTClassifier(_micro_mae(depth), num_classes=5, drop_path=0.3)
    groups = layer_decay_param_groups(net, weight_decay=0.05, layer_decay=decay, depth=depth)
    seen = {}
    for group in groups:
        assert group["lr_scale"] == pytest.approx(decay ** (depth + 1 - group["layer_id"]))
        for name in group["names"]:
            seen[name] = (group["layer_id"], group["weight_decay"])
    assert seen["encoder.cls_token"] == (0, 0.0)
    assert seen["encoder.patch_embed.proj.weight"] == (0, 0.05)
    assert seen["encoder.blocks.0.attn.qkv.weight"] == (1, 0.05)
    assert seen["encoder.blocks.2.mlp.fc1.bias"] == (3, 0.0)
    assert seen["head.weight"] == (depth + 1, 0.05) and seen["fc_norm.weight"] == (depth + 1, 0.0)
    assert "encoder.pos_embed" not in seen  # the fixed sin-cos table is not trained
    assert layer_id("encoder.pos_embed", depth) == 0 and layer_id("encoder.norm.weight", depth) == depth + 1
    # every trainable parameter is in exactly one group
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in net.parameters() if p.requires_grad)


def test_finetune_net_pools_patches_with_fc_norm_and_drop_path():
    model = _micro_mae(depth=3).eval()
    net = ViTClassifier(model, num_classes=5, drop_path=0.3)
    assert isinstance(net.encoder.norm, nn.Identity) and isinstance(net.fc_norm, nn.LayerNorm)
    assert isinstance(net.encoder.blocks[0].drop_path1, nn.Identity)  # rate 0 at the first block
    assert net.encoder.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)
    assert net.encoder.blocks[1].drop_path2.drop_prob == pytest.approx(0.15)
    assert float(net.head.weight.detach().std()) < 1e-4  # trunc-normal std 2e-5
    # the forward is the mean of the patch tokens (cls excluded) -> fc_norm -> head
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    latent = net.encoder(net.tokenize(x).inputs).latent
    expect = net.head(net.fc_norm(latent[:, 1:].mean(1)))
    torch.testing.assert_close(net(x), expect)
    cls_net = ViTClassifier(model, num_classes=5, global_pool=False).eval()
    torch.testing.assert_close(cls_net(x), cls_net.head(model.encoder(model.tokenize(x).inputs).latent[:, 0]))


# ------------------------------------------------------------------------------- CLI and errors
def run_eval_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mae_zoo.eval", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_cli_knn_smoke(tiny_ckpt, tmp_path):
    run = tmp_path / "eval"
    res = run_eval_cli(f"ckpt={tiny_ckpt}", "eval=knn", "debug=smoke", "print_config=false", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == str(run.resolve())
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["eval_knn/top1"] <= 100 and metrics["eval_knn/num_val"] == 32


def test_cli_errors_are_one_line(tmp_path):
    for args, needle in [
        ([f"ckpt={tmp_path}/missing.ckpt", "eval=knn"], "is not a file"),
        (["eval=knn"], "ckpt is required"),
        ([f"ckpt={tmp_path}/missing.ckpt", "eval=nope"], "eval=nope is unknown"),
    ]:
        res = run_eval_cli(*args, f"hydra.run.dir={tmp_path / 'r'}")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mae_zoo: configuration error:") and needle in lines[0], lines
    res = run_eval_cli("--help")
    assert (
        res.returncode == 0
        and "mae_zoo.eval: evaluate" in res.stdout
        and "eval: " + ", ".join(eval_options()) in res.stdout
    )


def test_bad_values_fail_before_work(tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        evaluate(compose_eval([f"ckpt={tiny_ckpt}", "eval=linear", "eval.optimizer=adam", *SMOKE], tmp_path))
    with pytest.raises(ConfigError, match="features"):
        evaluate(compose_eval([f"ckpt={tiny_ckpt}", "eval=knn", "eval.features=logits", *SMOKE], tmp_path))
    with pytest.raises(ConfigError, match="init"):
        evaluate(compose_eval([f"ckpt={tiny_ckpt}", "eval=knn", "init=imagenet", *SMOKE], tmp_path))
