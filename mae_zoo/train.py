"""Pre-train a masked autoencoder: ``python -m mae_zoo.train [group=option ...] [key=value ...]``.

``main`` is a thin Hydra wrapper around :func:`train`, which tests call with a composed config.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning_fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mae_zoo.callbacks.data_check import DataCheck
from mae_zoo.callbacks.last_checkpoint import LastCheckpoint
from mae_zoo.callbacks.rng_state import RNGState
from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.data.base import MAEDataModule
from mae_zoo.results import record_result
from mae_zoo.utils.checks import check_resume, check_values, safe_load
from mae_zoo.utils.console import print_config_tree
from mae_zoo.utils.instantiate import config_errors_surface, instantiate_checked
from mae_zoo.utils.loggers import ResumableCSVLogger, WandbResolvedConfig, finish_wandb, log_final_metrics
from mae_zoo.utils.precision import Choice, ProbeSettings, resolve_auto, write_record
from mae_zoo.utils.runtime import (
    AtomicCheckpointIO,
    check_launch,
    find_resume_checkpoint,
    launched_externally,
    run_checkpoints,
    write_metrics,
    write_run_records,
)

if TYPE_CHECKING:  # imported where seeds > 1: it pulls in torch-geometric
    from mae_zoo.modalities.graph_seeds import SeedTable

log = logging.getLogger(__name__)


def _hydra_launch_info() -> tuple[bool, str | None]:
    if not HydraConfig.initialized():
        return False, None
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN, hc.runtime.choices.get("hydra/launcher")


SIGTERM_EXIT = 143  # 128 + SIGTERM: the shell's and the schedulers' convention for "terminated"


class _FitProgress(pl.Callback):
    """Put the final step and epoch into ``callback_metrics``: the one channel through which
    results also come back from ``ddp_spawn`` workers to the launching process.
    ``trainer/start_step`` is the step this process started from (> 0 after a resume or requeue)."""

    start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = trainer.global_step  # after the checkpoint (if any) was restored
        if self.start_step > 0:  # steps after the checkpoint run again: their old CSV rows go
            for logger in trainer.loggers:
                if isinstance(logger, ResumableCSVLogger):
                    logger.drop_rows_from(self.start_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics["trainer/start_step"] = torch.tensor(float(self.start_step))
        trainer.callback_metrics["trainer/global_step"] = torch.tensor(float(trainer.global_step))
        trainer.callback_metrics["trainer/epoch"] = torch.tensor(float(trainer.current_epoch))


def build(
    cfg: DictConfig, measure_precision: bool = False
) -> tuple[pl.LightningModule, pl.LightningDataModule, pl.Trainer]:
    """Instantiate datamodule, module and trainer; every config error surfaces here, before training.

    ``measure_precision``: resolve ``trainer.precision=auto`` by timing the model on a training batch
    (``precision_probe``; :mod:`mae_zoo.utils.precision`), as :func:`train` does; without it (tests,
    benchmarks that build many trainers) ``auto`` follows the hardware rule."""
    datamodule = instantiate_checked(cfg.data, _convert_="all")
    seeds, last_every = int(cfg.get("seeds", 1)), 1
    if seeds > 1:  # several seeds as one batched model (graph only; checked here, at start-up)
        from mae_zoo.modalities.graph_seeds import SEEDS_CHECKPOINT_EVERY, seeds_module_config

        module = instantiate_checked(seeds_module_config(cfg, seeds), _recursive_=False, _convert_="all")
        last_every = SEEDS_CHECKPOINT_EVERY
    else:
        module = instantiate_checked(cfg.module, _recursive_=False, _convert_="all")
    if isinstance(module, MaskedAutoencoder):
        with config_errors_surface():  # the teacher's binding and the distillation heads: their errors come now
            module.configure_model()
    callbacks = [instantiate_checked(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate_checked(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    container = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(container, dict), "trainer is a mapping of Trainer arguments"
    trainer_kwargs = {str(k): v for k, v in container.items()}
    if str(trainer_kwargs.get("precision", "auto")) == "auto":
        choice = _auto_precision(cfg, module, datamodule, trainer_kwargs, measure_precision)
        trainer_kwargs["precision"] = choice.precision
    trainer = pl.Trainer(
        **trainer_kwargs,
        strategy=instantiate_checked(cfg.strategy),
        callbacks=[
            *callbacks,
            _FitProgress(),
            LastCheckpoint(every_n_epochs=last_every),
            RNGState(),
            DataCheck(),
            WandbResolvedConfig(cfg),
        ],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=cfg.paths.run_dir,
    )
    return module, datamodule, trainer


def _auto_precision(
    cfg: DictConfig, module: Any, datamodule: Any, trainer_kwargs: dict[str, Any], measure: bool
) -> Choice:
    devices = trainer_kwargs.get("devices", 1)
    single = (
        str(devices) in ("1", "[0]", "auto")  # auto: one device on CPU; on GPUs Lightning takes them all
        and (str(devices) != "auto" or not torch.cuda.is_available() or torch.cuda.device_count() == 1)
        and int(trainer_kwargs.get("num_nodes", 1)) == 1
        and not launched_externally()
    )
    run_dir = Path(cfg.paths.run_dir)
    choice = resolve_auto(
        module,
        datamodule,
        str(trainer_kwargs.get("accelerator", "auto")),
        ProbeSettings.from_config(cfg.get("precision_probe")),
        measure=measure,
        single_process=single,
        run_dir=run_dir if run_checkpoints(run_dir) else None,
    )
    if measure:
        log.info(choice.message())
        if getattr(rank_zero_only, "rank", 0) == 0:  # set from the launcher's rank variables at import
            write_record(choice, run_dir)
    return choice


class Stopped(Exception):
    """Training stopped on SIGTERM after saving ``last.ckpt`` at ``step``."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(
            f"stopped by SIGTERM at step {step}; saved {run_dir / 'checkpoints' / 'last.ckpt'}. "
            f"To continue, rerun the same command with hydra.run.dir={run_dir} (resume=auto)"
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Pre-train as configured; return the final metrics (also written to ``<run>/metrics.json``)."""
    start = time.time()
    check_values(cfg)
    run_dir = Path(cfg.paths.run_dir)
    multirun, launcher = _hydra_launch_info()
    check_launch(cfg, multirun, launcher)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    try:
        module, datamodule, trainer = build(cfg, measure_precision=True)
        if trainer.is_global_zero:
            write_run_records(cfg, run_dir)
            if cfg.get("print_config", True):
                print_config_tree(cfg)
        final_eval = instantiate_checked(cfg.final_eval, _convert_="all") if cfg.get("final_eval") else None
        seed_table: SeedTable | None = None
        if final_eval is not None and int(cfg.get("seeds", 1)) > 1:
            from mae_zoo.modalities.graph_seeds import SeedTable

            final_eval = seed_table = SeedTable(final_eval)  # the probe on every seed's model, and seeds.md
        if final_eval is not None:
            with config_errors_surface():  # a protocol that does not fit the data fails now, not after training
                final_eval.check(module, datamodule)
        ckpt_path = find_resume_checkpoint(cfg.get("resume", "auto"), run_dir)
        if ckpt_path:
            check_resume(safe_load(ckpt_path, mmap=True), module, ckpt_path)  # shapes only: Lightning reads it
            if trainer.is_global_zero:
                print(f"resuming from {ckpt_path}")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:
            raise Stopped(trainer.global_step, run_dir) from None
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics["trainer/global_step"] = int(metrics.get("trainer/global_step", trainer.global_step))
        metrics["trainer/epoch"] = int(metrics.get("trainer/epoch", trainer.current_epoch))
        metrics.update({"trainer/precision": str(trainer.precision), "time/fit_wall_s": round(time.time() - start, 2)})
        if isinstance(datamodule, MAEDataModule):
            skipped = datamodule.skipped_paths()
            metrics["data/skipped_files"] = len(skipped)
            if skipped and trainer.is_global_zero:
                (run_dir / "skipped_files.txt").write_text("".join(f"{path}\n" for path in skipped))
        if final_eval is not None and trainer.is_global_zero:
            metrics.update(final_eval(module, datamodule, run_dir))
        if trainer.is_global_zero:
            write_metrics(metrics, run_dir)
            log_final_metrics(trainer.loggers, metrics)  # W&B: final/metrics table + summary
            if cfg.get("results_file"):
                # One row per seed: a seeds=S job fills the same table as S one-seed runs.
                rows = (seed_table.rows if seed_table else None) or [{"seed": cfg.seed, "metrics": metrics}]
                for row in rows:
                    table = record_result(cfg.results_file, row["seed"], row["metrics"], str(run_dir))
                print(f"results: {table}")
        return metrics
    finally:
        finish_wandb()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except ConfigError as err:
        print(f"mae_zoo: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    except Stopped as stop:
        print(f"mae_zoo: {stop}", file=sys.stderr)
        print(Path(cfg.paths.run_dir).resolve())
        sys.exit(SIGTERM_EXIT)
    if cfg.get("optimized_metric"):
        value = metrics.get(cfg.optimized_metric)
    else:
        value = None
    print(Path(cfg.paths.run_dir).resolve())
    return value


if __name__ == "__main__":
    main()
