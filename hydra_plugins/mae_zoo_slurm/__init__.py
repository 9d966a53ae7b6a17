"""Hydra finds launcher plugins only inside the ``hydra_plugins`` namespace package; this module holds
the class that ``conf/hydra/launcher/slurm.yaml`` names. The logic lives in :mod:`mae_zoo.slurm`
(imported lazily: Hydra imports every plugin module at start-up, also for ``--help``)."""

import sys
from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class MaeZooSlurmLauncher(SlurmLauncher):
    """submitit's Slurm launcher; before submission, every job's Slurm resources are checked against its
    trainer (``tasks_per_node == trainer.devices``, ``nodes == trainer.num_nodes``), see mae_zoo.slurm."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from mae_zoo.core.errors import ConfigError
        from mae_zoo.slurm import launch_checked

        try:
            return launch_checked(self, job_overrides, initial_job_idx, super().launch)
        except ConfigError as err:  # one line and rc 2, as mae_zoo.train reports configuration errors
            print(f"mae_zoo: configuration error: {err}", file=sys.stderr)
            sys.exit(2)
