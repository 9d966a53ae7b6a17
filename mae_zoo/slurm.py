"""Slurm support: the ``hydra/launcher=slurm`` launcher and a plain sbatch script writer.

``hydra/launcher=slurm`` (``conf/hydra/launcher/slurm.yaml``) is hydra-submitit-launcher 1.2.0 with
mae_zoo's defaults and one addition (``hydra_plugins.mae_zoo_slurm.MaeZooSlurmLauncher``, whose
``launch`` is :func:`launch_checked`): before anything is submitted it composes
every job of the sweep and checks that Slurm, not Lightning, will start the DDP ranks:
``tasks_per_node == trainer.devices`` and ``nodes == trainer.num_nodes``. Left at their preset values
(``trainer.devices``, ``trainer.num_nodes`` through the ``mae_zoo.slurm_count`` resolver) they follow
each job, and jobs that need different resources go out as separate arrays; set by hand and different
from a job's trainer, they are a clear error, raised before submission.

Plain sbatch, for users who do not use the Hydra launcher::

    python -m mae_zoo.slurm [--output FILE] [--submit] debug=smoke trainer.devices=2 hydra.launcher.partition=gpu

prints (or writes, or submits) an sbatch script whose ``#SBATCH`` lines come from the same
``hydra.launcher`` fields and whose ``srun`` line runs ``python -m mae_zoo.train`` with the overrides.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from mae_zoo.core.errors import ConfigError
from mae_zoo.utils import runtime as _runtime  # noqa: F401  (registers the mae_zoo.* resolvers the configs use)

FOLLOW = {
    "tasks_per_node": "${mae_zoo.slurm_count:${trainer.devices},trainer.devices}",
    "nodes": "${mae_zoo.slurm_count:${trainer.num_nodes},trainer.num_nodes}",
}
GPU_ACCELERATORS = ("gpu", "cuda")
# Lightning owns requeue: SIGUSR1 this many seconds before the time limit -> hpc checkpoint + scontrol requeue
DEFAULT_SIGNAL = "USR1@90"
SBATCH_TIMEOUT_S = 120


def _launcher_dict(node: Any, resolve: bool) -> dict[str, Any]:
    """``hydra.launcher`` (a mapping) as a plain dict."""
    container = OmegaConf.to_container(node, resolve=resolve)
    if not isinstance(container, dict):
        raise ConfigError(f"hydra.launcher must be a mapping, got {type(container).__name__}")
    return {str(key): value for key, value in container.items()}


def job_resources(cfg: DictConfig, launcher: dict[str, Any], raw_launcher: dict[str, Any]) -> dict[str, Any]:
    """The Slurm resources one job needs: tasks_per_node, nodes (and gpus_per_node on GPUs).

    Raises ConfigError when the launcher fields were set by hand and disagree with the trainer.
    """
    devices, num_nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ConfigError(
            f"trainer.devices={devices!r}: under Slurm set it to the number of processes per node (an integer "
            "≥ 1): Slurm starts one task per device and Lightning checks that the two agree"
        )
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes={num_nodes!r} must be an integer ≥ 1")
    wanted = {"tasks_per_node": devices, "nodes": num_nodes}
    out: dict[str, Any] = {}
    for key, value in wanted.items():
        raw = raw_launcher.get(key)
        if raw == FOLLOW[key] or raw is None:
            out[key] = value
            continue
        if int(launcher[key]) != value:
            trainer_key = "devices" if key == "tasks_per_node" else "num_nodes"
            raise ConfigError(
                f"hydra.launcher.{key}={launcher[key]} but trainer.{trainer_key}={value}: they must be equal, so that "
                f"Slurm starts all the ranks and Lightning starts none (on a mismatch Lightning would re-run "
                f"the job script itself, or wait for ranks that never come). Drop hydra.launcher.{key} to let it "
                f"follow trainer.{trainer_key}, or set both to the same value."
            )
        out[key] = value
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if launcher.get("gpus_per_node") is None and accelerator in GPU_ACCELERATORS:
        out["gpus_per_node"] = devices
    elif launcher.get("gpus_per_node") is not None:
        out["gpus_per_node"] = launcher["gpus_per_node"]
    if cfg.strategy.get("name") == "ddp_spawn" and devices > 1:
        raise ConfigError(
            "strategy=ddp_spawn starts its own processes; under Slurm use strategy=ddp "
            "(Slurm starts one task per device)"
        )
    return out


def launch_checked(
    launcher: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    submit: Callable[[Sequence[Sequence[str]], int], Sequence[Any]],
) -> list[Any]:
    """The body of ``hydra_plugins.mae_zoo_slurm.MaeZooSlurmLauncher.launch``.

    Composes every job of the sweep, checks its resources (:func:`job_resources`) before anything is
    submitted, then submits one Slurm array per distinct (tasks_per_node, nodes, gpus_per_node) through
    submitit's own ``launch`` (``submit``); returns the JobReturns in the sweep's order.
    """
    raw_launcher = _launcher_dict(launcher.config.hydra.launcher, resolve=False)
    groups: dict[tuple, list[int]] = {}
    for i, overrides in enumerate(job_overrides):
        job_cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        try:
            res = job_resources(job_cfg, launcher.params, raw_launcher)
        except ConfigError as err:
            raise ConfigError(f"job #{initial_job_idx + i} ({' '.join(overrides)}): {err}") from None
        groups.setdefault(tuple(sorted(res.items())), []).append(i)
    base = dict(launcher.params)
    results: list[Any] = [None] * len(job_overrides)
    try:
        for res_items, indices in groups.items():
            launcher.params = {**base, **dict(res_items)}
            # submit contiguous runs of job numbers (Hydra numbers jobs initial_job_idx + position)
            start = 0
            for k in range(1, len(indices) + 1):
                if k == len(indices) or indices[k] != indices[k - 1] + 1:
                    chunk = indices[start:k]
                    returns = submit([job_overrides[i] for i in chunk], initial_job_idx + chunk[0])
                    for i, ret in zip(chunk, returns):
                        results[i] = ret
                    start = k
    finally:
        launcher.params = base
    return results


# ------------------------------------------------------------------------------------- plain sbatch
def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    conf_dir = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        return compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)


def _is_launcher_override(o: str) -> bool:
    key = o.lstrip("+~")
    return key.startswith("hydra/launcher=") or key.startswith("hydra.launcher.")


def sbatch_script(overrides: list[str], python: str | None = None, workdir: str | None = None) -> str:
    """An sbatch script that runs ``python -m mae_zoo.train <overrides>`` under ``srun``, with Slurm
    resources matching the trainer and Lightning-owned requeue (``--signal=USR1@90``, ``--requeue``)."""
    cfg = _compose(list(overrides))
    launcher = _launcher_dict(cfg.hydra.launcher, resolve=True)
    raw = _launcher_dict(cfg.hydra.launcher, resolve=False)
    res = job_resources(cfg, launcher, raw)
    log_dir = Path(workdir or ".").joinpath(str(cfg.paths.log_dir), str(cfg.task_name)).resolve()
    flags: dict[str, Any] = {
        "job-name": f"mae_zoo-{cfg.task_name}",
        "chdir": str(Path(workdir or ".").resolve()),  # relative paths in the config are relative to this
        "nodes": res["nodes"],
        "ntasks-per-node": res["tasks_per_node"],
        "time": int(launcher["timeout_min"]),
        # %j is the job id; the run folder is <log_dir>/<task>/slurm-<job id> (see conf/hydra/default.yaml)
        "output": str(log_dir / "slurm-%j.out"),
        "open-mode": "append",  # a requeued job appends to the same log
        "requeue": True,
    }
    for key in (
        "partition",
        "account",
        "qos",
        "constraint",
        "exclude",
        "gres",
        "cpus_per_task",
        "mem_per_cpu",
        "mem_per_gpu",
        "comment",
    ):
        if launcher.get(key) is not None:
            flags[key.replace("_", "-")] = launcher[key]
    if res.get("gpus_per_node"):
        flags["gpus-per-node"] = res["gpus_per_node"]
    if launcher.get("mem_gb") is not None:
        flags["mem"] = f"{launcher['mem_gb']}G"
    extra = dict(launcher.get("additional_parameters") or {})
    flags.update({k.replace("_", "-"): v for k, v in extra.items()})
    flags.setdefault("signal", DEFAULT_SIGNAL)
    lines = [
        "#!/bin/bash",
        "# Written by `python -m mae_zoo.slurm`; submit with `sbatch <this file>`.",
        "# Lightning owns requeue: SIGUSR1 before the time limit -> hpc_ckpt_N.ckpt in the run folder ->",
        "# scontrol requeue; the requeued job keeps its job id, so it finds the same run folder and resumes.",
        "# The folder of --output must exist before sbatch (--output/--submit create it).",
    ]
    for key, value in flags.items():
        lines.append(f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}")
    lines += ["", "set -euo pipefail", f"mkdir -p {shlex.quote(str(log_dir))}"]
    lines += [str(s) for s in (launcher.get("setup") or [])]
    train_args = [o for o in overrides if not _is_launcher_override(o)]
    cmd = ["srun", python or sys.executable, "-m", "mae_zoo.train", *train_args]
    lines += ["", " ".join(shlex.quote(c) for c in cmd), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae_zoo.slurm",
        description="Print (or write, or submit) an sbatch script that runs mae_zoo.train under srun. "
        "Slurm settings come from hydra.launcher.* (conf/hydra/launcher/slurm.yaml).",
        epilog="example: python -m mae_zoo.slurm debug=smoke trainer.devices=2 hydra.launcher.partition=gpu "
        "hydra.launcher.timeout_min=240",
    )
    parser.add_argument("--output", "-o", help="write the script to this file instead of printing it")
    parser.add_argument("--submit", action="store_true", help="write it (to --output or a temp file) and sbatch it")
    parser.add_argument("--python", default=None, help="interpreter for the srun line (default: this one)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for mae_zoo.train")
    args = parser.parse_args(argv)
    try:
        script = sbatch_script(args.overrides, python=args.python, workdir=os.getcwd())
    except (ConfigError, InterpolationResolutionError) as err:
        shown = err.__cause__ if isinstance(err.__cause__, ConfigError) else err
        print(f"mae_zoo: configuration error: {shown}", file=sys.stderr)
        return 2
    if not args.output and not args.submit:
        print(script, end="")
        return 0
    path = Path(args.output) if args.output else Path(os.getcwd()) / "mae_zoo_sbatch.sh"
    path.write_text(script)
    for line in script.splitlines():  # Slurm does not create the folder of --output itself
        if line.startswith("#SBATCH --output="):
            Path(shlex.split(line.split("=", 1)[1])[0]).parent.mkdir(parents=True, exist_ok=True)
    print(f"sbatch script: {path}", file=sys.stderr)
    if args.submit:
        try:  # sbatch only queues the job; a controller that does not answer must not hang the caller
            out = subprocess.run(
                ["sbatch", "--parsable", str(path)], capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            print(f"sbatch did not answer within {SBATCH_TIMEOUT_S} s (is slurmctld up?)", file=sys.stderr)
            return 1
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        print(out.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
