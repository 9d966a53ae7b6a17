"""Start-up decisions: precision, strategy, resume checkpoint, launch checks, run-folder records."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, Strategy

from mae_zoo.core.errors import ConfigError
from mae_zoo.utils.checks import safe_load
from mae_zoo.utils.precision import cpu_has_fast_bf16 as cpu_has_fast_bf16  # re-exported: its old home
from mae_zoo.utils.precision import rule_precision

STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
_INTERACTIVE_JOB_NAMES = ("bash", "interactive", "sh", "zsh")


def slurm_job_tag() -> str | None:
    """``<job id>`` or ``<array job id>_<array task id>`` inside a Slurm batch job, else None.

    ``scontrol requeue`` keeps these ids, so a folder named after them is found again by the
    requeued job. Interactive allocations (``salloc``/``srun --pty bash``) return None: several
    runs started from one allocation must not share (and resume from) one folder.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("SLURM_JOB_NAME", "") in _INTERACTIVE_JOB_NAMES:
        return None
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{array_task}" if array_job and array_task else job


def run_name(local_name: str) -> str:
    """Resolver ``${mae_zoo.run_name:<local name>}``: ``slurm-<job id>[_<task>]`` under Slurm (every
    srun rank and every requeue of the job agree on it), else ``local_name`` (a timestamp)."""
    tag = slurm_job_tag()
    return f"slurm-{tag}" if tag else str(local_name)


def slurm_count(value: Any, key: str = "trainer.devices") -> int:
    """Resolver ``${mae_zoo.slurm_count:${trainer.devices},trainer.devices}``: the launcher's tasks/nodes
    per job must be a plain integer (Slurm starts that many ranks); anything else is a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{key}={value!r}: under Slurm set it to an integer ≥ 1 (the number of ranks per node "
            "that Slurm starts; Lightning checks that the two agree)"
        )
    return value


for _name, _fn in (("mae_zoo.run_name", run_name), ("mae_zoo.slurm_count", slurm_count)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def resolve_precision(precision: str | int, accelerator: str) -> str | int:
    """``auto`` by the hardware rule (bf16-mixed on bf16 GPUs and AVX512-BF16/AMX CPUs, else fp32), for
    evaluators; training measures instead (:mod:`mae_zoo.utils.precision`)."""
    if str(precision) != "auto":
        return precision
    return rule_precision(accelerator)


def make_strategy(name: str = "auto", **kwargs: Any) -> str | Strategy:
    """Build a Lightning strategy from ``conf/strategy``; MAE never needs unused-parameter search."""
    if name == "auto":
        return "auto"
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=False, **kwargs)
    if name == "ddp_spawn":
        return DDPStrategy(start_method="spawn", find_unused_parameters=False, **kwargs)
    if name == "fsdp":
        from timm.models.vision_transformer import Block

        # use_orig_params keeps parameter names, which the no-weight-decay groups are built from
        return FSDPStrategy(auto_wrap_policy={Block}, use_orig_params=True, **kwargs)
    raise ConfigError(f"strategy.name='{name}' is unknown; valid: {list(STRATEGIES)}")


def launched_externally() -> bool:
    """Ranks started by SLURM (srun/submitit) or torchrun: Lightning then starts no children."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def check_launch(cfg: DictConfig, multirun: bool, launcher: str | None) -> None:
    """Refuse a multirun in which Lightning would re-launch the script for extra DDP ranks.

    Lightning's subprocess launcher re-runs ``sys.argv`` (still holding ``-m`` and the sweep) in
    every child rank, so each child would start a sweep of its own.
    """
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if cfg.strategy.name == "fsdp" and (
        accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    ):
        raise ConfigError(
            "strategy=fsdp needs CUDA GPUs (Lightning's FSDPStrategy refuses the CPU accelerator); on CPU use "
            "strategy=ddp (ranks from srun/torchrun/Lightning) or strategy=ddp_spawn"
        )
    devices = cfg.trainer.get("devices", 1)
    many = (
        (isinstance(devices, int) and (devices > 1 or devices == -1))
        or (isinstance(devices, (list, str)) and str(devices) not in ("1", "auto"))
        or int(cfg.trainer.get("num_nodes", 1)) > 1
    )
    subprocess_ddp = cfg.strategy.name in ("ddp", "fsdp", "auto") and many
    if multirun and launcher == "basic" and subprocess_ddp and not launched_externally():
        raise ConfigError(
            f"a Hydra multirun on the basic launcher cannot use strategy={cfg.strategy.name} with "
            f"trainer.devices={devices}: Lightning would re-run the whole sweep in each DDP child. "
            "Use strategy=ddp_spawn, hydra/launcher=slurm (Slurm starts the ranks), or run jobs one by one."
        )


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints a run folder already holds (its own last/epoch ones and Lightning's SLURM ones)."""
    return sorted([*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")])


def find_resume_checkpoint(resume: str | None, run_dir: Path) -> str | None:
    """``auto``: Lightning's SLURM checkpoint (highest hpc_ckpt_N), else checkpoints/last.ckpt, else None.
    ``none`` (or null): fresh start. Any other value is an explicit checkpoint path.

    A fresh start or another run's checkpoint in a folder that already holds checkpoints would mix two
    runs (a ``last-v1.ckpt`` beside the old ``last.ckpt``, CSV rows appended to the old run's): refused."""
    existing = run_checkpoints(run_dir)
    if resume != "auto" and existing:
        own = resume not in (None, "none", "never", False) and Path(str(resume)).resolve() in [
            p.resolve() for p in existing
        ]
        if not own:
            raise ConfigError(
                f"the run folder {run_dir} already holds {', '.join(p.name for p in existing[:3])} of an earlier run; "
                f"resume={resume} "
                "would mix two runs in it: use resume=auto to continue that run, or a new hydra.run.dir"
            )
    if resume in (None, "none", "never", False):
        return None
    if resume != "auto":
        if not os.path.isfile(str(resume)):
            raise ConfigError(f"resume={resume} is not a file; use resume=auto, resume=none or a checkpoint path")
        return str(resume)
    hpc = glob.glob(str(run_dir / "hpc_ckpt_*.ckpt"))
    if hpc:
        return max(hpc, key=lambda p: int(re.findall(r"hpc_ckpt_(\d+)", p)[-1]))
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file and rename, so a kill mid-save never leaves a truncated checkpoint;
    read with ``weights_only=True`` whatever the environment says (:func:`mae_zoo.utils.checks.safe_load`)."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = safe_load(path, map_location if map_location is not None else "cpu")
        if not isinstance(checkpoint, dict):
            raise ConfigError(f"{path} is not a training checkpoint (it holds a {type(checkpoint).__name__})")
        return checkpoint

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


def git_revision(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return f"{rev}{' (dirty)' if dirty else ''}" if rev else "unknown (not a git checkout)"


SLURM_RECORD_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_RESTART_COUNT",
    "SLURM_JOB_NAME",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_NODELIST",
    "SLURM_NNODES",
    "SLURM_NTASKS",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_CPUS_PER_TASK",
)


def write_run_records(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "git_revision.txt").write_text(git_revision(Path(__file__).resolve().parents[2]) + "\n")
    if os.environ.get("SLURM_JOB_ID"):
        # one line per (re)start: a requeued job appends, so the file shows each restart of the run
        record = {k.lower(): os.environ[k] for k in SLURM_RECORD_VARS if k in os.environ}
        with open(run_dir / "slurm.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def write_metrics(metrics: dict[str, Any], run_dir: Path) -> None:
    """Merge into ``metrics.json`` (fit and eval both add to it)."""
    path = run_dir / "metrics.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(metrics)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
