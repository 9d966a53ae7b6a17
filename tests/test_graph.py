"""GraphMAE: masks, re-masking, SCE, evaluation protocols, data, and short real runs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from conftest import ROOT, TINY_GAT, compose_cfg, needs_shared, run_cli
from mae_zoo.api import load
from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout, Masks
from mae_zoo.data.graph import SBMDataModule, TUDataModule, one_hot_degree
from mae_zoo.evaluation.graph import NodeLinearProbe, svm_cross_validation
from mae_zoo.masks.node import EdgeMask, NodeMask
from mae_zoo.modalities.graph import GraphMAE
from mae_zoo.nets.gnn import corrupt_nodes, drop_edges, split_counts
from mae_zoo.objectives import ScaledCosineError
from mae_zoo.results import read_results, record_result
from mae_zoo.train import train

GRAPH_FAST = ["modality=graph", "debug=smoke", "print_config=false", "logger=csv"]
GAT = TINY_GAT
OPTIM = {"name": "adam", "decay_all": True, "lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999]}


def tiny_model(mask: dict | None = None, in_dim: int = 12, encoder: dict | None = None) -> GraphMAE:
    torch.manual_seed(0)
    mask = mask or {"_target_": "mae_zoo.masks.node.NodeMask", "ratio": 0.5, "replace_rate": 0.0}
    return GraphMAE(
        encoder=encoder or GAT,
        decoder={"kind": "gat", "heads": 1},
        mask=mask,
        optim=OPTIM,
        in_dim=in_dim,
        objective=ScaledCosineError.spec(alpha=2.0),
    ).eval()


def ring_graph(n: int = 30, f: int = 12, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    src = torch.arange(n)
    edges = torch.cat([torch.stack([src, (src + 1) % n]), torch.stack([(src + 1) % n, src])], dim=1)
    return Data(x=torch.rand(n, f, generator=g), edge_index=edges)


# ------------------------------------------------------------------------------------------------ masks
def test_node_mask_counts_follow_the_official_floors():
    mask = NodeMask(ratio=0.5, replace_rate=0.05)
    hidden = mask(Layout("graph", shape=(2708,)), 1, torch.Generator().manual_seed(0))
    assert hidden.shape == (1, 2708) and int(hidden.sum()) == 1354  # int(0.5 * 2708)
    # Cora: 1354 hidden -> int(0.95 * 1354) = 1286 [MASK] + int(0.05 * 1354) = 67 random = 1353, one untouched.
    assert split_counts(1354, mask.replace_rate) == (1286, 67)
    assert NodeMask(ratio=0.75, replace_rate=0.0).num_masked(188) == 141
    assert split_counts(7, 0.0) == (7, 0)


def test_corrupt_zeroes_tokens_adds_mask_token_and_copies_random_nodes():
    n, f = 200, 8
    x = torch.rand(n, f) + 1.0  # no zero rows, so every kind of node is recognisable
    mask_gen = NodeMask(ratio=0.5, replace_rate=0.1)
    hidden = mask_gen(Layout("graph", shape=(n,)), 1, torch.Generator().manual_seed(1))[0]
    token = torch.full((1, f), 0.25)
    out, is_token = corrupt_nodes(x, hidden, token, mask_gen.replace_rate, torch.Generator().manual_seed(2))
    num_token, num_noise = split_counts(int(hidden.sum()), mask_gen.replace_rate)
    assert int(is_token.sum()) == num_token and not (is_token & ~hidden).any()
    assert torch.equal(out[is_token], token.expand(num_token, f))  # zeroed, then the token added
    assert torch.equal(out[~hidden], x[~hidden])  # visible nodes untouched
    others = hidden & ~is_token
    copied = [(out[i] == x).all(dim=1).nonzero().flatten().tolist() for i in others.nonzero().flatten()]
    replaced = [rows for i, rows in zip(others.nonzero().flatten().tolist(), copied) if rows != [i]]
    kept_own = [rows for i, rows in zip(others.nonzero().flatten().tolist(), copied) if rows == [i]]
    # Noise nodes carry some node's features; the floor leftovers (0..2) keep their own.
    assert all(len(rows) >= 1 for rows in copied)
    assert len(replaced) + len(kept_own) == int(others.sum()) and len(kept_own) <= 2
    assert num_token + num_noise + len(kept_own) >= int(hidden.sum()) - 2


def test_edge_mask_drops_the_requested_fraction_of_edges():
    edges = torch.randint(0, 1000, (2, 20000))
    kept = drop_edges(edges, EdgeMask(ratio=0.3).drop_edge_rate, torch.Generator().manual_seed(0))
    assert abs(kept.shape[1] / 20000 - 0.7) < 0.02
    assert drop_edges(edges, NodeMask(ratio=0.5).drop_edge_rate) is edges


def test_mask_parameters_are_validated():
    with pytest.raises(ConfigError, match="replace_rate must be in"):
        NodeMask(ratio=0.5, replace_rate=1.0)
    with pytest.raises(ConfigError, match="open interval"):
        NodeMask(ratio=0.0)


# ------------------------------------------------------------------------------------------------ model
def test_sce_matches_its_closed_form():
    theta = torch.tensor([0.0, 0.3, 1.2, 2.5])
    pred = torch.stack([torch.ones(4), torch.zeros(4)], dim=-1)[None] * 3.0  # scale must not matter
    target = torch.stack([theta.cos(), theta.sin()], dim=-1)[None]
    mask = torch.tensor([[True, True, False, True]])
    for alpha in (1.0, 2.0, 3.0):
        loss, _ = ScaledCosineError(alpha)(pred, target, mask)
        expected = ((1 - theta.cos()) ** alpha)[mask[0]].mean()
        assert math.isclose(float(loss), float(expected), rel_tol=1e-6)


def test_hidden_node_features_do_not_reach_the_encoder_and_are_remasked():
    model = tiny_model()
    data = ring_graph()
    hidden = torch.zeros(1, 30, dtype=torch.bool)
    hidden[0, ::3] = True
    tokens = model.tokenize(data)
    encoded = model.encode(tokens, hidden)
    changed = data.clone()
    changed.x[hidden[0]] = torch.randn(int(hidden.sum()), 12)
    assert torch.allclose(encoded.latent, model.encode(model.tokenize(changed), hidden).latent)
    seen = {}
    handle = model.decoder.layers[0].register_forward_pre_hook(lambda m, args: seen.update(rep=args[0]))
    model.decode(encoded, tokens, Masks.build(hidden))
    handle.remove()
    assert torch.count_nonzero(seen["rep"][hidden[0]]) == 0 and torch.count_nonzero(seen["rep"][~hidden[0]]) > 0
    out = model(data, mask=hidden)
    assert out.pred.shape == (1, 30, 12) and torch.isfinite(out.loss)


def test_masks_that_need_a_grid_fail_on_graphs_and_node_masks_fail_on_images(tmp_path):
    for overrides, fitting in ((["mask=random"], "['edge', 'node']"), (["mask=tube"], "['edge', 'node']")):
        cfg = compose_cfg(GRAPH_FAST + overrides, tmp_path)
        with pytest.raises(ConfigError, match="Masks that fit this modality") as info:
            train(cfg)
        assert fitting in str(info.value)
    cfg = compose_cfg(["mask=node", "debug=smoke", "print_config=false"], tmp_path)
    with pytest.raises(ConfigError, match="mask NodeMask does not fit"):
        train(cfg)


def test_wrong_protocol_for_the_data_fails_before_training(tmp_path):
    cfg = compose_cfg([*GRAPH_FAST, "eval@final_eval=graph_svm"], tmp_path)
    with pytest.raises(ConfigError, match="eval=graph_svm needs graph-level data"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_graph_embeddings_pool_per_graph():
    model = tiny_model()
    model.pooling = "sum"
    batch = Batch.from_data_list([ring_graph(10, seed=1), ring_graph(14, seed=2)])
    pooled = model.embed(batch)
    nodes = model.embed_nodes(batch)
    assert pooled.shape == (2, 16)
    assert torch.allclose(pooled[1], nodes[10:].sum(0), atol=1e-5)


# ------------------------------------------------------------------------------------------------ evaluation
def test_node_probe_keeps_the_latest_best_validation_epoch():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(40)
    x = torch.nn.functional.one_hot(y, 3).float() * 2 + 0.8 * torch.randn(120, 3, generator=g)
    idx = torch.randperm(120, generator=g)
    masks = [
        torch.zeros(120, dtype=torch.bool).index_fill_(0, idx[a:b], True) for a, b in ((0, 30), (30, 60), (60, 120))
    ]
    probe = NodeLinearProbe(lr=0.05, weight_decay=0.0, epochs=60, seed=0)
    metrics = probe.probe(x, y, *masks)
    history = probe.history
    best = max(history)
    assert metrics["eval_linear/best_val_acc"] == best
    assert metrics["eval_linear/best_epoch"] == max(i for i, v in enumerate(history) if v == best)  # ties -> later
    assert metrics["eval_linear/test_acc"] > 70 and metrics["eval_linear/test_acc_best_val"] > 70


def test_svm_protocol_separates_separable_graphs_and_not_random_labels():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    x = rng.normal(size=(100, 4)) + y[:, None] * 4.0
    mean, std = svm_cross_validation(x, y)
    assert mean == 100.0 and std == 0.0
    mean, _ = svm_cross_validation(x, rng.permutation(y))
    assert mean < 75.0


def test_one_hot_degree_features_are_capped():
    star = Data(edge_index=torch.stack([torch.arange(1, 10), torch.zeros(9, dtype=torch.long)]), num_nodes=10)
    pair = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2)
    width = one_hot_degree([star, pair], cap=5)
    assert width == 6  # the centre's in-degree 9 is capped at 5: one-hot width cap + 1
    assert star.x.shape == (10, 6) and torch.equal(star.x.sum(1), torch.ones(10))
    assert star.x[0, 5] == 1 and star.x[1, 0] == 1 and pair.x[1, 1] == 1


def test_embedded_sbm_graph_is_deterministic_and_split_like_planetoid():
    a, b = SBMDataModule(), SBMDataModule()
    ga, gb = a.graphs()[0], b.graphs()[0]
    assert torch.equal(ga.x, gb.x) and torch.equal(ga.edge_index, gb.edge_index)
    assert int(ga.train_mask.sum()) == 5 * 20 and int(ga.val_mask.sum()) == 200 and int(ga.test_mask.sum()) == 400
    assert not (ga.train_mask & ga.test_mask).any() and not (ga.val_mask & ga.test_mask).any()
    assert a.num_features == 500 and a.num_classes == 5


def test_results_file_accumulates_seeds_and_replaces_reruns(tmp_path):
    path = tmp_path / "res.jsonl"
    record_result(path, 0, {"eval_linear/test_acc": 80.0, "train/loss": 0.3})
    record_result(path, 1, {"eval_linear/test_acc": 84.0})
    table = record_result(path, 0, {"eval_linear/test_acc": 82.0})  # seed 0 again: replaces
    rows = read_results(path)
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["metrics"] == {"eval_linear/test_acc": 82.0}
    assert "**83.00 ± 1.00**" in table.read_text()


# ------------------------------------------------------------------------------------------------ runs
def test_graph_smoke_on_the_embedded_default_and_checkpoint_reload(tmp_path):
    cfg = compose_cfg([*GRAPH_FAST, "final_eval.epochs=20", f"results_file={tmp_path}/res.jsonl"], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["trainer/global_step"] == 1 and 0 <= metrics["eval_linear/test_acc"] <= 100
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["eval_linear/test_acc"]
        == metrics["eval_linear/test_acc"]
    )
    assert read_results(tmp_path / "res.jsonl")[0]["seed"] == 0
    model = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(model, GraphMAE) and model.in_dim == 500
    data = SBMDataModule().graphs()[0]
    assert model.embed(data).shape == (1000, 512)


@pytest.fixture
def tu_root(tmp_path):
    return shutil.copytree(needs_shared("tudataset", "MUTAG"), tmp_path / "tu" / "MUTAG").parent


def test_mutag_smoke_run_with_svm_protocol(tu_root, tmp_path):
    cfg = compose_cfg(
        [
            "experiment=graphmae_mutag",
            "debug=smoke",
            "print_config=false",
            f"data.root={tu_root}",
            f"data.cache_dir={tmp_path}/cache",
            "data.batch_size=64",
            "results_file=null",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["trainer/global_step"] == 3  # 188 graphs / 64 per batch
    assert 50 < metrics["eval_svm/test_acc"] <= 100
    dm = TUDataModule(str(tu_root), "MUTAG", cache_dir=str(tmp_path / "cache"))
    assert dm.num_features == 7 and dm.num_classes == 2 and len(dm.graphs()) == 188


def test_seed_sweeps_split_over_invocations_accumulate_in_one_table(tu_root, tmp_path):
    """Two multiruns of one preset, one seed each, into the same sweep folder: each seed gets its own
    folder (the seed is in its name, so the job numbers restarting at 0 do not collide), and the
    results file holds both seeds."""
    sweep, results = tmp_path / "sweep", tmp_path / "results" / "mutag.jsonl"
    common = [
        "-m",
        "experiment=graphmae_mutag",
        "debug=smoke",
        "print_config=false",
        f"data.root={tu_root}",
        f"data.cache_dir={tmp_path}/cache",
        f"results_file={results}",
        f"hydra.sweep.dir={sweep}",
    ]
    for seed in (0, 1):
        res = run_cli(*common, f"seed={seed}", timeout=400)
        assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["seed0-job0", "seed1-job0"]
    assert [row["seed"] for row in read_results(results)] == [0, 1]
    assert "2 seed(s): 0, 1" in results.with_suffix(".md").read_text()
    ckpt = sweep / "seed1-job0" / "checkpoints" / "last.ckpt"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mae_zoo.eval",
            f"ckpt={ckpt}",
            "eval=graph_svm",
            "print_config=false",
            f"hydra.run.dir={tmp_path}/eval",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval_svm/test_acc"]
    assert evaluated == pytest.approx(
        read_results(results)[1]["metrics"]["eval_svm/test_acc"]
    )  # same folds, same model


def test_short_cora_run_beats_raw_feature_logistic_regression(tmp_path):
    root = shutil.copytree(needs_shared("planetoid", "Cora"), tmp_path / "planetoid" / "Cora").parent
    res = run_cli(
        "experiment=graphmae_cora",
        "trainer.max_epochs=25",
        "print_config=false",
        "results_file=null",
        f"data.root={root}",
        f"data.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={tmp_path}/run",
        timeout=400,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cfg = compose_cfg(["experiment=graphmae_cora", f"data.root={root}", f"data.cache_dir={tmp_path}/cache"], tmp_path)
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    data = dm.graphs()[0]
    raw = NodeLinearProbe(lr=0.01, weight_decay=1e-4, epochs=300, seed=0).probe(
        data.x, data.y, data.train_mask, data.val_mask, data.test_mask
    )
    # 25 of the 1500 pre-training epochs already lift the probe well above raw features (~53%).
    assert metrics["eval_linear/test_acc"] > raw["eval_linear/test_acc"] + 10, (metrics, raw)
    assert metrics["trainer/global_step"] == 25
