"""Logger factories. W&B mode comes from WANDB_MODE (online/offline/disabled), never from YAML."""

from __future__ import annotations

import csv
import os
import secrets
import string
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.loggers.csv_logs import _ExperimentWriter as _FabricExperimentWriter
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


def _sweep_info() -> tuple[str | None, str | None, list[str]]:
    """(group, job suffix, tags) for a job of a Hydra multirun: the sweep folder names the group, so a
    sweep shows as one group in the W&B dashboard; the job's overrides become its tags."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover
        return None, None, []
    if not HydraConfig.initialized():
        return None, None, []
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, None, []
    group = str(hc.sweep.dir)[-128:]  # W&B limit
    tags = [str(o) for o in hc.overrides.task if not str(o).startswith(("hydra", "paths."))]
    job = hc.job  # typed as Hydra's JobConf dataclass; at run time a DictConfig, where "num" may be unset
    num = job.get("num", "") if isinstance(job, DictConfig) else job.num
    return group, str(num), [t for t in tags if len(t) <= 64]


def wandb_logger(
    save_dir: str,
    project: str = "mae_zoo",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    entity: str | None = None,
) -> WandbLogger:
    """A WandbLogger whose run id is kept in the run folder, so a resumed run continues the same W&B run.

    In a Hydra multirun, ``group`` defaults to the sweep folder, the name gets the job number and the
    job's overrides are added to ``tags``.
    """
    sweep_group, job_num, sweep_tags = _sweep_info()
    if sweep_group is not None:
        group = group or sweep_group
        name = f"{name}-{job_num}" if name and job_num else name
        tags = [*(tags or []), *(t for t in sweep_tags if t not in (tags or []))]
    run_dir = Path(save_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "wandb_id.txt"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        alphabet = string.ascii_lowercase + string.digits
        run_id = "".join(secrets.choice(alphabet) for _ in range(8))  # W&B's own id format
        if int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))) == 0:
            id_file.write_text(run_id + "\n")
    return WandbLogger(
        project=project,
        name=name,
        group=group,
        tags=list(tags or []),
        entity=entity,
        save_dir=str(run_dir),
        id=run_id,
        resume="allow",
    )


class WandbResolvedConfig(Callback):
    """Puts the whole resolved run config into the W&B run's config (rank 0, at the start of fit)."""

    def __init__(self, cfg: DictConfig) -> None:
        # resolved here, in the process that has Hydra's runtime config (a ddp_spawn worker has not);
        # only when a W&B logger is configured, so other runs never pay for (or fail on) it
        self.config: dict | None = None
        if any("wandb" in str((c or {}).get("_target_", "")) for c in (cfg.get("logger") or {}).values()):
            try:
                container = OmegaConf.to_container(cfg, resolve=True)
            except Exception:
                container = OmegaConf.to_container(cfg, resolve=False)
            assert isinstance(container, dict)  # a DictConfig converts to a dict
            self.config = container

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.config is not None:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.config.update(self.config, allow_val_change=True)


def log_final_metrics(loggers: list, metrics: dict[str, Any]) -> None:
    """The final evaluation table (``final/metrics``: metric, value) and the run summary, for W&B loggers
    whose run lives in this process (with ddp_spawn it lived in a worker that has exited)."""
    numbers = {k: v for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            try:  # a dashboard extra must never fail a finished run
                logger.log_table(
                    key="final/metrics", columns=["metric", "value"], data=[[k, float(v)] for k, v in numbers.items()]
                )
                logger.experiment.summary.update(metrics)
            except Exception as err:
                warnings.warn(f"W&B: could not log the final metrics table: {err}", stacklevel=2)


def finish_wandb() -> None:
    """Close the W&B run (if any) so the next job of a multirun starts its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing metrics.csv (Lightning's writer deletes it) and appends to it."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose history survives a resume in the same run folder: a killed and restarted
    run keeps the rows it logged before the kill; the rows of steps it runs again are dropped
    (:meth:`drop_rows_from`), so no step appears twice."""

    @rank_zero_only
    def drop_rows_from(self, step: int) -> None:
        """Remove the rows logged at ``step`` or later by an earlier process: a run resumed at ``step``
        logs them again."""
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "step" not in rows[0]:
            return
        column = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if r[column] == "" or int(float(r[column])) < step]
        if len(kept) == len(rows):
            return
        tmp = f"{path}.tmp"
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, path)

    @property
    @rank_zero_experiment
    def experiment(self) -> _FabricExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
