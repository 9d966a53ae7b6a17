"""seeds=S: GraphMAE's many-seed protocol as one batched model, checked against S one-seed models."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Data

from conftest import TINY_GAT, compose_cfg
from mae_zoo.callbacks.last_checkpoint import LastCheckpoint
from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import mask_seed
from mae_zoo.modalities.graph import GraphMAE
from mae_zoo.modalities.graph_seeds import GraphMAESeeds, seeds_module_config
from mae_zoo.nets.gat_seeds import SeedGraph, SeedStack, _TokenRows
from mae_zoo.objectives import ScaledCosineError
from mae_zoo.results import read_results
from mae_zoo.train import build, train

GAT = TINY_GAT  # dropout off: the batched and the one-seed models then compute the same thing
ARGS = {
    "encoder": GAT,
    "decoder": {"kind": "gat", "heads": 1},
    # replace_rate > 0: random-node replacement (noise nodes and their sources) is exercised too
    "mask": {"_target_": "mae_zoo.masks.node.NodeMask", "ratio": 0.5, "replace_rate": 0.2},
    "optim": {"name": "adam", "decay_all": True, "lr": 1e-3, "weight_decay": 2e-4, "betas": [0.9, 0.999]},
    "objective": ScaledCosineError.spec(alpha=3.0),
}
GRAPH_FAST = ["modality=graph", "debug=smoke", "print_config=false", "logger=csv"]


def sparse_graph(n: int = 50, f: int = 20, edges: int = 120) -> Data:
    """A random graph with bag-of-words-like features (mostly zeros, some all-zero rows)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, f, generator=g) * (torch.rand(n, f, generator=g) < 0.2)
    x[:3] = 0.0
    return Data(x=x, edge_index=torch.randint(0, n, (2, edges), generator=g))


def grads_as_stack(models: list[GraphMAE]) -> dict[str, torch.Tensor]:
    """The one-seed models' gradients laid out as the stack's parameters (stacked like the weights)."""
    for m in models:
        for p in m.parameters():
            p.data = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
    return dict(SeedStack(models, "prelu").named_parameters())


def test_batched_seeds_equal_one_seed_models_in_init_masks_loss_and_gradients():
    seed, seeds, step, data = 7, 3, 5, sparse_graph()
    stacked = GraphMAESeeds(seeds=seeds, in_dim=20, seed=seed, **ARGS).train()
    # (1) initialisation: seed i's slice is GraphMAE built right after torch.manual_seed(seed + i)
    for i in range(seeds):
        torch.manual_seed(seed + i)
        fresh = GraphMAE(in_dim=20, seed=seed + i, **ARGS)
        for (name, a), b in zip(fresh.state_dict().items(), stacked.seed_model(i).state_dict().values()):
            assert torch.equal(a, b), name
    # Move off the initialisation (zero biases and [MASK] token would hide mistakes in their paths).
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(0.3 * torch.randn_like(p))
    refs = [stacked.seed_model(i).train() for i in range(seeds)]
    # (2) loss: seed i's one-seed model, fed the generator its own run uses at this step
    ref_losses = []
    for i, ref in enumerate(refs):
        generator = torch.Generator().manual_seed(mask_seed(seed + i, 0, "train", step))
        out = ref(data, generator=generator)
        out.loss.backward()
        ref_losses.append(out.loss.detach())
    total, losses = stacked.step_loss(data, "train", step)
    torch.testing.assert_close(losses.detach(), torch.stack(ref_losses), rtol=1e-5, atol=1e-6)
    # (3) gradients of what training backpropagates: each seed's slice gets exactly its own model's gradient
    total.backward()
    expected = grads_as_stack(refs)
    for name, p in stacked.stack.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert expected["mask_token"].abs().sum() > 0 and expected["decoder.bias"].abs().sum() > 0


def test_token_rows_with_dropout_match_autograd_on_the_dropped_inputs():
    g = torch.Generator().manual_seed(0)
    token = torch.randn(3, 7, generator=g, requires_grad=True)
    weight = torch.randn(3, 7, 5, generator=g, requires_grad=True)
    keep = (torch.rand(3, 4, 7, generator=g) > 0.3).float()
    grad = torch.randn(3, 4, 5, generator=g)
    out = _TokenRows.apply(token, weight, keep, 1 / 0.7)
    out.backward(grad)
    got = (out.detach(), token.grad.clone(), weight.grad.clone())
    token.grad = weight.grad = None
    ref = torch.bmm(keep * token[:, None] / 0.7, weight)  # the dropped [MASK] rows, then the linear map
    ref.backward(grad)
    for a, b in zip(got, (ref.detach(), token.grad, weight.grad)):
        torch.testing.assert_close(a, b)


def test_seed_masks_differ_and_dropout_is_drawn_per_seed():
    args = {**ARGS, "encoder": {**GAT, "feat_drop": 0.5, "attn_drop": 0.5}}
    stacked = GraphMAESeeds(seeds=2, in_dim=20, **args).train()
    with torch.no_grad():  # two identical seeds: only the masks and dropout can tell them apart
        for p in stacked.stack.parameters():
            p[1] = p[0]
    plan = stacked.plan(50, "train", 0)
    assert not torch.equal(plan.hidden[0], plan.hidden[1])
    plan.hidden[1], plan.tokens[1], plan.noise[1], plan.sources[1] = (
        plan.hidden[0],
        plan.tokens[0],
        plan.noise[0],
        plan.sources[0],
    )
    graph = SeedGraph.build(sparse_graph().x, sparse_graph().edge_index)
    losses = stacked.stack.losses(graph, plan, 3.0)
    assert losses[0] != losses[1]  # same weights, same masks: dropout differs
    stacked.eval()
    losses = stacked.stack.losses(graph, plan, 3.0)
    torch.testing.assert_close(losses[0], losses[1])


def test_seeds_run_writes_the_per_seed_table(tmp_path):
    run = tmp_path / "run"
    cfg = compose_cfg(
        [*GRAPH_FAST, "seeds=2", "seed=3", "final_eval.epochs=10", f"results_file={tmp_path}/res.jsonl"], run
    )
    metrics = train(cfg)
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("eval_linear/test_acc", "eval_linear/test_acc_best_val"):
        per_seed = [saved[f"seed{s}/{key}"] for s in (3, 4)]
        assert saved[key] == pytest.approx(sum(per_seed) / 2) and f"{key}_std" in saved
        assert metrics[key] == saved[key]
    table = (run / "seeds.md").read_text()
    assert "| 3 |" in table and "| 4 |" in table and "mean ± std" in table
    assert [r["seed"] for r in read_results(tmp_path / "res.jsonl")] == [3, 4]
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    "overrides",
    [
        ["modality=image", "model=vit_micro"],
        ["model=gin"],
        ["mask.drop_edge_rate=0.2"],
        ["model.encoder.residual=true"],
        ["model.encoder.norm=layernorm"],
        ["mask=edge"],
        ["model.decoder.heads=2"],
    ],
)
def test_unsupported_seed_configs_fail_at_start_up(overrides):
    cfg = compose_cfg(["modality=graph", "debug=smoke", "seeds=2", *overrides])
    with pytest.raises(ConfigError, match="seeds > 1 trains node-level GraphMAE only"):
        seeds_module_config(cfg, 2)


def test_seeds_1_builds_the_plain_graphmae(tmp_path):
    module, _, _ = build(compose_cfg([*GRAPH_FAST], tmp_path / "run"))
    assert type(module) is GraphMAE
    module, _, _ = build(compose_cfg([*GRAPH_FAST, "seeds=3"], tmp_path / "run"))
    assert isinstance(module, GraphMAESeeds) and module.num_seeds == 3


@pytest.mark.parametrize(("every", "saved"), [(1, [0, 1, 2, 3, 4, 5, 6]), (3, [2, 5, 6])])
def test_last_checkpoint_every_n_epochs_keeps_the_last_epoch(every, saved):
    callback, seen = LastCheckpoint(every_n_epochs=every), []
    callback.save = lambda trainer: seen.append(trainer.current_epoch)  # type: ignore[method-assign]
    for epoch in range(7):
        trainer = SimpleNamespace(current_epoch=epoch, max_epochs=7, sanity_checking=False)
        callback.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert seen == saved
