"""``last.ckpt`` at every training-epoch end and when the process is told to stop.

Lightning's ModelCheckpoint saves either every N steps or at epoch ends, not both; and on SIGTERM
(schedulers, ``timeout``, ``docker stop``, Kubernetes, Slurm's ``scancel``) Lightning only stops after
the current batch. This callback adds the two saves the step-based checkpoint misses, so a restart
with ``resume=auto`` continues at the epoch end or the very step the run stopped at.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException


class LastCheckpoint(pl.Callback):
    """Has the run's ModelCheckpoint write its ``last.ckpt`` at each training-epoch end and on SIGTERM.

    It goes through ModelCheckpoint's own save-last path so that the callback keeps track of the file
    (a file written behind its back would make it version the next one as ``last-v1.ckpt``)."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        # > 1: only every n-th epoch end (and the last one), for models whose checkpoint costs more
        # than an epoch (a many-seed GraphMAE stack: ~0.5 GB of weights and Adam moments per save).
        self.every_n_epochs = max(1, int(every_n_epochs))

    def save(self, trainer: pl.Trainer) -> None:
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            # Every rank calls it; the strategy writes on rank 0 only.
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if not trainer.sanity_checking and (epoch % self.every_n_epochs == 0 or last):
            self.save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.save(trainer)
