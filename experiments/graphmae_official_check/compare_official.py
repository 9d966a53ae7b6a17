"""Oracle check against the official GraphMAE code (THUDM/GraphMAE, branch ``pyg``).

Builds the official ``PreModel`` and our ``GraphMAE`` with a dataset's ``configs.yml`` setting
(MUTAG: GIN, graph batches; Cora / CiteSeer: GAT, the full graph), copies the official weights into
ours, feeds both the same graph with the same hidden / [MASK] / random-feature nodes, and compares
the loss, every gradient and the eval-mode embeddings (sum-pooled for MUTAG). Feature and attention
dropout are set to 0 so both passes are deterministic (BatchNorm runs in training mode).

Needs a checkout of the official ``pyg`` branch (not a dependency of mae_zoo; run by hand):

    git clone -b pyg https://github.com/THUDM/GraphMAE /tmp/GraphMAE-pyg
    python experiments/graphmae_official_check/compare_official.py --official /tmp/GraphMAE-pyg --dataset MUTAG \
        --data-root ../shared/data/tudataset
    python experiments/graphmae_official_check/compare_official.py --official /tmp/GraphMAE-pyg --dataset Cora \
        --data-root ../shared/data/planetoid

The official package imports ``ogb`` and ``tensorboardX`` at module level; if they are not installed,
pass ``--stub-missing`` to put empty stand-ins on the path (neither is used on these code paths).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

# configs.yml, with in_drop / attn_drop 0 so that both forward passes are deterministic.
SETTINGS = {
    "MUTAG": dict(
        encoder=dict(kind="gin", hidden=32, layers=5, heads=1),
        decoder=dict(kind="gin"),
        norm="batchnorm",
        mask=0.75,
        replace=0.1,
        alpha=2.0,
        pooling="sum",
    ),
    "Cora": dict(
        encoder=dict(kind="gat", hidden=512, layers=2, heads=4),
        decoder=dict(kind="gat", heads=1),
        norm=None,
        mask=0.5,
        replace=0.05,
        alpha=3.0,
        pooling=None,
    ),
    "CiteSeer": dict(
        encoder=dict(kind="gat", hidden=512, layers=2, heads=2),
        decoder=dict(kind="gat", heads=1),
        norm=None,
        mask=0.5,
        replace=0.1,
        alpha=1.0,
        pooling=None,
    ),
}
# Official parameters with no counterpart: GAT keeps an activation module it never calls, and
# lin_dst is the same tensor as lin_src for one-sided input.
OFFICIAL_ONLY = re.compile(r"^(encoder|decoder)\.activation\.|\.lin_dst\.")


def stub_missing_modules() -> None:
    """Empty stand-ins for the official code's module-level imports that these paths never use."""
    for name, attrs in (
        ("ogb", {}),
        ("ogb.nodeproppred", {"PygNodePropPredDataset": object}),
        ("tensorboardX", {"SummaryWriter": object}),
    ):
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module


def official_to_ours(key: str) -> str:
    """Official PreModel state-dict key -> GraphMAE key (same tensors, different module names)."""
    key = key.replace("enc_mask_token", "mask_token")
    # GAT: gat_layers.<l> is a GATConv holding its own activation (and norm).
    key = re.sub(r"gat_layers\.(\d+)\.activation\.", r"layers.\1.act.", key)
    key = re.sub(r"gat_layers\.(\d+)\.norm\.", r"layers.\1.norm.", key)
    key = re.sub(r"gat_layers\.(\d+)\.res_fc\.", r"layers.\1.res_fc.", key)
    key = re.sub(r"gat_layers\.(\d+)\.lin_src\.", r"layers.\1.conv.lin.", key)
    key = re.sub(r"gat_layers\.(\d+)\.", r"layers.\1.conv.", key)
    # GIN: encoder layers are ApplyNodeFunc(mlp=MLP(linears, norms, activations), norm, act); the
    # decoder's is a bare MLP.
    key = re.sub(r"layers\.(\d+)\.nn\.mlp\.", r"layers.\1.nn.", key)
    key = re.sub(r"layers\.(\d+)\.nn\.norm\.", r"layers.\1.nn.post.0.", key)
    key = re.sub(r"layers\.(\d+)\.nn\.act\.", r"layers.\1.nn.post.1.", key)
    key = re.sub(r"nn\.linears\.0\.", "nn.net.0.", key)
    key = re.sub(r"nn\.norms\.0\.", "nn.net.1.", key)
    key = re.sub(r"nn\.activations\.0\.", "nn.net.2.", key)
    key = re.sub(r"nn\.linears\.1\.", "nn.net.3.", key)
    key = re.sub(r"layers\.(\d+)\.eps$", r"layers.\1.conv.eps", key)
    return re.sub(r"layers\.(\d+)\.nn\.", r"layers.\1.conv.nn.", key)


def load_graphs(dataset: str, data_root: str) -> list:
    """Our loader's graphs (row-normalised Planetoid features; TU node labels, self-loops once)."""
    from mae_zoo.data.graph import PlanetoidDataModule, TUDataModule

    cache = Path(tempfile.mkdtemp())
    shutil.copytree(Path(data_root) / dataset, cache / dataset)
    module = TUDataModule if dataset == "MUTAG" else PlanetoidDataModule
    return module(root=str(cache), name=dataset).load()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of THUDM/GraphMAE, branch pyg")
    parser.add_argument("--dataset", choices=list(SETTINGS), default="MUTAG")
    parser.add_argument("--data-root", required=True, help="folder holding <dataset>/raw/")
    parser.add_argument("--stub-missing", action="store_true", help="stand-ins for ogb / tensorboardX")
    parser.add_argument("--seeds", type=int, default=5, help="how many (weights, graphs, mask) draws")
    parser.add_argument("--tol", type=float, default=1e-5, help="largest absolute difference that passes")
    args = parser.parse_args()

    if args.stub_missing:
        stub_missing_modules()
    sys.path.insert(0, str(Path(args.official).resolve()))
    import graphmae.models.edcoder as official_edcoder  # the official package, from the checkout
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import global_add_pool
    from torch_geometric.utils import add_self_loops, remove_self_loops

    from mae_zoo.modalities.graph import GraphMAE
    from mae_zoo.objectives import ScaledCosineError

    s = SETTINGS[args.dataset]
    graphs = load_graphs(args.dataset, args.data_root)
    in_dim = graphs[0].x.shape[1]
    enc = s["encoder"]
    official_kwargs = dict(
        in_dim=in_dim,
        num_hidden=enc["hidden"],
        num_layers=enc["layers"],
        nhead=enc["heads"],
        nhead_out=s["decoder"].get("heads", 1),
        activation="prelu",
        feat_drop=0.0,
        attn_drop=0.0,
        negative_slope=0.2,
        residual=False,
        norm=s["norm"],
        mask_rate=s["mask"],
        encoder_type=enc["kind"],
        decoder_type=s["decoder"]["kind"],
        loss_fn="sce",
        drop_edge_rate=0.0,
        replace_rate=s["replace"],
        alpha_l=s["alpha"],
        concat_hidden=False,
    )
    encoder = dict(enc, activation="prelu", feat_drop=0.0, attn_drop=0.0, residual=False, norm=s["norm"])
    mask_cfg = {"_target_": "mae_zoo.masks.node.NodeMask", "ratio": s["mask"], "replace_rate": s["replace"]}

    worst = {"loss": 0.0, "grad": 0.0, "embed": 0.0}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        official = official_edcoder.PreModel(**official_kwargs)
        ours = GraphMAE(
            encoder=encoder,
            decoder=s["decoder"],
            mask=mask_cfg,
            optim={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
            in_dim=in_dim,
            objective=ScaledCosineError.spec(alpha=s["alpha"]),
            pooling=s["pooling"],
            seed=seed,
        )
        state = {official_to_ours(k): v for k, v in official.state_dict().items() if not OFFICIAL_ONLY.search(k)}
        ours.load_state_dict(state, strict=True)  # every tensor mapped, none left over
        if s["pooling"]:
            batch = next(
                iter(DataLoader(graphs, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)))
            )
            official_edges = batch.edge_index  # TU graphs already carry one self-loop per node
        else:
            batch = graphs[0]
            # The official loader adds self-loops to the graph; our GATConv adds them itself.
            official_edges = add_self_loops(remove_self_loops(batch.edge_index)[0], num_nodes=batch.num_nodes)[0]
        n = batch.num_nodes

        # Our draws: hidden nodes, then (inside corrupt) the token/noise order and the noise sources.
        g = torch.Generator().manual_seed(1000 + seed)
        hidden = torch.zeros(1, n, dtype=torch.bool)
        hidden[0, torch.randperm(n, generator=g)[: int(s["mask"] * n)]] = True
        state_after_mask = g.get_state()
        m = int(hidden.sum())
        order_perm = torch.randperm(m, generator=g)
        sources = torch.randperm(n, generator=g)

        # The same draws for the official encoding_mask_noise (its three torch.randperm calls).
        queue = [torch.cat([hidden[0].nonzero().flatten(), (~hidden[0]).nonzero().flatten()]), order_perm, sources]
        real_randperm = torch.randperm
        official_edcoder.torch.randperm = lambda *a, queue=queue, **k: queue.pop(0)
        try:
            official.train()
            loss_official, _ = official(batch.x, official_edges)
        finally:
            official_edcoder.torch.randperm = real_randperm
        assert not queue, "the official mask made a different number of draws"

        ours.train()
        g_ours = torch.Generator()
        g_ours.set_state(state_after_mask)
        loss_ours = ours(batch, mask=hidden, generator=g_ours).loss

        loss_official.backward()
        loss_ours.backward()
        ours_params = dict(ours.named_parameters())
        grad_diff = max(
            float((p.grad - ours_params[official_to_ours(k)].grad).abs().max())
            for k, p in official.named_parameters()
            if not OFFICIAL_ONLY.search(k)
        )

        official.eval()
        ours.eval()
        with torch.no_grad():
            emb_official = official.embed(batch.x, official_edges)
            if s["pooling"]:
                emb_official = global_add_pool(emb_official, batch.batch)
            emb_ours = ours.embed(batch)
        emb_diff = float((emb_official - emb_ours).abs().max())
        loss_diff = abs(loss_official.item() - loss_ours.item())
        worst = {
            "loss": max(worst["loss"], loss_diff),
            "grad": max(worst["grad"], grad_diff),
            "embed": max(worst["embed"], emb_diff),
        }
        print(
            f"draw {seed}: {n} nodes, {m} hidden | loss official {loss_official.item():.6f} "
            f"ours {loss_ours.item():.6f} | max |grad diff| {grad_diff:.2e} | max |embedding diff| {emb_diff:.2e}"
        )
    print(
        f"{args.dataset}, worst over {args.seeds} draws: loss {worst['loss']:.2e}, grad {worst['grad']:.2e}, "
        f"embedding {worst['embed']:.2e}"
    )
    if max(worst.values()) > args.tol:
        sys.exit(f"FAIL: a difference is above --tol {args.tol:g}")
    print(f"PASS (tolerance {args.tol:g})")


if __name__ == "__main__":
    main()
