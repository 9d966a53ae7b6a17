"""GraphMAE's many-seed protocol as one job: ``python -m mae_zoo.train experiment=graphmae_cora seeds=20``.

``seeds=S`` (> 1) trains seeds ``seed ... seed+S-1`` of a node-level GraphMAE together, as one batched
model (:class:`mae_zoo.nets.gat_seeds.SeedStack`): one forward, one backward and one Adam step per
epoch for all seeds, instead of ``S`` processes. What each seed gets is what its own one-seed run
(``seed=seed+i``) would get, except the dropout draws:

- initial weights: ``GraphMAE(...)`` built right after ``torch.manual_seed(seed + i)``;
- masks and corruption: drawn from the one-seed run's generator for that seed and step
  (``mask_seed(seed + i, rank, stage, step)``), in the same order (``corruption_plan``);
- optimisation: Adam is elementwise and the loss is the *sum* of the per-seed losses, so each seed's
  slice of a stacked parameter follows exactly its own Adam trajectory (same lr, decay, schedule);
- evaluation: each seed's weights are copied into a one-seed ``GraphMAE`` and probed by the
  configured ``NodeLinearProbe`` with ``eval.seed + i``; the run folder gets every seed's numbers
  with mean and std in ``metrics.json`` and ``seeds.md``.

Supported: GAT encoder and decoder without residual or norm, ``mask=node`` without DropEdge, the
SCE objective on hidden nodes, ``optim.decay_all=true``, no teacher / distillation / decoder mask,
node-level graph data (one graph, full batch), one device, ``eval=node_linear`` or none.
:func:`seeds_module_config` checks this at start-up.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder, mask_seed
from mae_zoo.core.types import Layout
from mae_zoo.data.base import trainer_datamodule
from mae_zoo.data.graph import GraphDataModule
from mae_zoo.evaluation.base import EvalData
from mae_zoo.evaluation.graph import NodeLinearProbe
from mae_zoo.masks.node import EdgeMask, NodeMask
from mae_zoo.modalities.graph import GraphMAE
from mae_zoo.nets.gat_seeds import SeedGraph, SeedPlan, SeedStack
from mae_zoo.nets.gnn import corruption_plan
from mae_zoo.objectives import ScaledCosineError
from mae_zoo.results import mean_std, summary_table

# last.ckpt at every 50th epoch end (and the last) instead of every one: a 20-seed Cora stack with its
# Adam moments is ~0.5 GB, whose save costs a large part of an epoch; the step checkpoint (every 200
# steps) and the save on SIGTERM are unchanged.
SEEDS_CHECKPOINT_EVERY = 50

SUPPORTED = (
    "seeds > 1 trains node-level GraphMAE only (modality=graph, e.g. experiment=graphmae_cora) with: "
    "model.encoder.kind=gat and model.decoder.kind=gat (one head), residual=false, norm=null; mask=node with "
    "mask.drop_edge_rate=0; objective=sce on hidden nodes; optim.decay_all=true; no teacher, distill or "
    "decoder_mask; module.pooling=null; node-level data (data=planetoid|sbm); one device; "
    "final_eval=node_linear or null"
)


def seeds_module_config(cfg: DictConfig, seeds: int) -> DictConfig:
    """The ``module`` node for ``seeds`` > 1 (GraphMAESeeds), or a ConfigError naming what is supported."""
    problems = []
    module = cfg.module
    if module.get("_target_") != "mae_zoo.modalities.graph.GraphMAE":
        problems.append(f"module is {module.get('_target_')}")
    else:
        enc, dec = module.encoder, module.decoder
        if enc.get("kind") != "gat" or dec.get("kind") != "gat":
            problems.append(f"model kinds are {enc.get('kind')}/{dec.get('kind')}")
        if int(dec.get("heads", 1)) != 1:
            problems.append(f"model.decoder.heads={dec.get('heads')}")
        if enc.get("residual") or enc.get("norm") is not None:
            problems.append(f"residual={enc.get('residual')}, norm={enc.get('norm')}")
        if module.get("pooling") is not None:
            problems.append(f"module.pooling={module.pooling}")
    mask_target = str(cfg.mask.get("_target_", ""))
    if mask_target != f"{NodeMask.__module__}.{NodeMask.__name__}" or float(cfg.mask.get("drop_edge_rate", 0)) > 0:
        problems.append(
            f"mask is {mask_target.rsplit('.', 1)[-1]} with drop_edge_rate={cfg.mask.get('drop_edge_rate')}"
        )
    objective = cfg.get("objective") or {}
    if (
        objective.get("_target_") not in ("mae_zoo.objectives.ScaledCosineError", None)
        or objective.get("positions", "hidden") != "hidden"
    ):
        problems.append(f"objective is {objective.get('_target_')} on {objective.get('positions')}")
    if not cfg.optim.get("decay_all"):
        problems.append("optim.decay_all=false")
    for key in ("teacher", "distill", "decoder_mask"):
        if cfg.get(key):
            problems.append(f"{key} is set")
    final_eval = cfg.get("final_eval")
    if final_eval and final_eval.get("_target_") != f"{NodeLinearProbe.__module__}.{NodeLinearProbe.__name__}":
        problems.append(f"final_eval is {final_eval.get('_target_')}")
    if str(cfg.trainer.get("devices", 1)) not in ("1", "auto") or int(cfg.trainer.get("num_nodes", 1)) != 1:
        problems.append(f"trainer.devices={cfg.trainer.get('devices')}, num_nodes={cfg.trainer.get('num_nodes')}")
    if int(cfg.trainer.get("accumulate_grad_batches", 1)) != 1:
        problems.append("accumulate_grad_batches != 1")
    if problems:
        raise ConfigError(f"seeds={seeds}: not supported here ({'; '.join(problems)}). {SUPPORTED}")
    node = OmegaConf.to_container(module, resolve=True)
    assert isinstance(node, dict)
    node["_target_"] = f"{GraphMAESeeds.__module__}.{GraphMAESeeds.__name__}"
    node["seeds"] = int(seeds)
    return OmegaConf.create(node)


class GraphMAESeeds(MaskedAutoencoder):
    """``seeds`` GraphMAE models trained as one (module docstring). Takes ``GraphMAE``'s arguments."""

    datamodule_class = GraphMAE.datamodule_class
    stack: SeedStack

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        seeds: int,
        in_dim: int | None = None,
        pooling: str | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        self.set_layout(Layout("graph"))
        if not isinstance(self.mask_generator, NodeMask) or isinstance(self.mask_generator, EdgeMask):
            raise ConfigError(SUPPORTED)
        if not isinstance(self.objective, ScaledCosineError) or self.objective.positions != "hidden":
            raise ConfigError(SUPPORTED)
        self.sce: ScaledCosineError = self.objective
        if int(seeds) < 2:
            raise ConfigError(f"GraphMAESeeds needs seeds >= 2, got {seeds}; seeds=1 is the plain GraphMAE")
        self.node_mask: NodeMask = self.mask_generator
        self.num_seeds = int(seeds)
        self.in_dim: int | None = None
        self._graph: SeedGraph | None = None
        if in_dim is not None:
            self._build(int(in_dim))

    def seed_model(self, i: int, in_dim: int | None = None) -> GraphMAE:
        """A fresh one-seed GraphMAE for seed ``seed + i`` (same config); built with stacked weights
        once the stack exists (``in_dim`` None), else with its own initialisation."""
        hp = {k: v for k, v in self.hparams.items() if k != "seeds"}
        hp.update(seed=self.seed + i, in_dim=in_dim if in_dim is not None else self.in_dim)
        model = GraphMAE(**hp)
        if in_dim is None:
            self.stack.copy_to(model, i)
        return model.to(self.device)

    def _build(self, in_dim: int) -> None:
        # Seed i starts from the weights GraphMAE draws right after torch.manual_seed(seed + i); the
        # global RNG is left as it was.
        models = []
        with torch.random.fork_rng(devices=[]):
            for i in range(self.num_seeds):
                torch.manual_seed(self.seed + i)
                models.append(self.seed_model(i, in_dim))
        self.stack = SeedStack(models, self.hparams["encoder"].get("activation"))
        self.in_dim = in_dim
        self.hparams["in_dim"] = in_dim

    def configure_model(self) -> None:
        if self.in_dim is None:
            datamodule = trainer_datamodule(self._trainer)
            if self._trainer is None:  # train.build's start-up check: the rest waits for the datamodule
                return
            if not isinstance(datamodule, GraphDataModule) or datamodule.task != "node":
                raise ConfigError(SUPPORTED)
            self._build(datamodule.num_features)
        super().configure_model()

    @property
    def embed_dim(self) -> int:
        return int(self.hparams["encoder"]["hidden"])

    # ----------------------------------------------------------------------------- the data path
    def plan(self, num_nodes: int, stage: str, step: int) -> SeedPlan:
        """Every seed's masks for ``step``: drawn exactly as that seed's one-seed run draws them."""
        layout = Layout("graph", shape=(num_nodes,))
        hidden, tokens, noise, sources = [], [], [], []
        for i in range(self.num_seeds):
            generator = torch.Generator().manual_seed(mask_seed(self.seed + i, self.global_rank, stage, step))
            mask = self.mask_generator(layout, 1, generator)[0]
            drawn = corruption_plan(mask, self.node_mask.replace_rate, generator)
            hidden.append(mask)
            tokens.append(drawn[0])
            noise.append(drawn[1])
            sources.append(drawn[2])
        parts = (torch.stack(p).to(self.device) for p in (hidden, tokens, noise, sources))
        return SeedPlan(*parts)

    def seed_losses(self, batch: Any, stage: str, step: int) -> torch.Tensor:
        """(S,) each seed's GraphMAE loss on the batch's graph."""
        graph = self._graph
        if graph is None or not graph.same(batch.x.float(), batch.edge_index):  # full batch: built once
            graph = self._graph = SeedGraph.build(batch.x, batch.edge_index)
        return self.stack.losses(graph, self.plan(graph.num_nodes, stage, step), self.sce.alpha)

    def step_loss(self, batch: Any, stage: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(what to backpropagate, the (S,) per-seed losses). The sum, not the mean: seed i's slice of
        every stacked parameter then gets exactly seed i's gradient (a mean would scale it by 1/S, and
        Adam would not undo that through its epsilon)."""
        losses = self.seed_losses(batch, stage, step)
        return losses.sum(), losses

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, losses = self.step_loss(batch, "train", self.global_step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {losses.tolist()} at step {self.global_step}")
        self.log("train/loss", losses.mean(), prog_bar=True, batch_size=1)  # mean over seeds
        self.log("train/loss_max", losses.max(), batch_size=1)
        self.log("optim/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        losses = self.seed_losses(batch, "val", batch_idx)
        self.log("val/loss", losses.mean(), prog_bar=True, batch_size=1)


class SeedTable:
    """The node probe run on every seed's model; writes ``seeds.md`` and returns the per-seed
    metrics (``seed<n>/<metric>``) with their mean (the plain metric names) and std (``<metric>_std``)."""

    def __init__(self, probe: NodeLinearProbe) -> None:
        if not isinstance(probe, NodeLinearProbe):
            raise ConfigError(SUPPORTED)
        self.probe = probe
        self.rows: list[dict[str, Any]] = []

    def check(self, model: Any, datamodule: EvalData) -> None:
        self.probe.check(model, datamodule)

    def __call__(self, model: GraphMAESeeds, datamodule: EvalData, run_dir: Path) -> dict[str, float]:
        self.rows = []
        for i in range(model.num_seeds):
            probe = copy.copy(self.probe)
            probe.seed = self.probe.seed + i  # what the one-seed run of seed + i would use
            self.rows.append(
                {
                    "seed": model.seed + i,
                    "run_dir": str(run_dir),
                    "metrics": probe(model.seed_model(i), datamodule, run_dir),
                }
            )
        return self.write(run_dir)

    def write(self, run_dir: Path) -> dict[str, float]:
        title = f"GraphMAE, {len(self.rows)} seeds trained as one job"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "seeds.md").write_text(summary_table(self.rows, title))
        metrics: dict[str, float] = {}
        for key in self.rows[0]["metrics"]:
            values = [float(row["metrics"][key]) for row in self.rows]
            metrics[key], metrics[f"{key}_std"] = mean_std(values)
            metrics.update({f"seed{row['seed']}/{key}": v for row, v in zip(self.rows, values)})
        return metrics
