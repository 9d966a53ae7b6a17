"""Slurm, for real: the hydra/launcher=slurm preset, Lightning-owned requeue, srun DDP, the sbatch writer.

Tests marked ``slurm`` need a cluster that answers ``sinfo`` (CI starts a one-node cluster with
``.ci/slurm_up.sh``); elsewhere they skip. Every call that waits on Slurm has a timeout, so a lost
job fails the test instead of hanging the suite. The checks before submission need no cluster.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=vit_micro", "print_config=false", "logger=csv", "callbacks.progress_bar=null"]


def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


slurm = pytest.mark.skipif(not _sinfo_answers(), reason="no Slurm cluster answers `sinfo` (CI: .ci/slurm_up.sh)")


def _env(**extra: str) -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}


def _train(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mae_zoo.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _ckpt_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["global_step"]
    except Exception:  # being replaced right now
        return -1


def _sacct_states(job: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], capture_output=True, text=True, timeout=30
    ).stdout
    return [line.split("|")[1] for line in out.splitlines() if line]


def _cancel_sweep_jobs(sweep: Path) -> None:
    """scancel the jobs of this test's sweep only (submitit names its folders <job id>[_<task>]), so a
    test that timed out leaves nothing running on the shared cluster."""
    jobs = {d.name.split("_")[0] for d in (sweep / ".submitit").glob("*") if d.name.split("_")[0].isdigit()}
    for job in sorted(jobs):
        subprocess.run(["scancel", job], timeout=30)


def _wait_for_job(job: str, timeout: float) -> list[str]:
    """Poll sacct until the job has ended; on timeout scancel it and fail (a lost job must not hang CI)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = _sacct_states(job)
        if states and all(s.split()[0] in _ENDED for s in states):
            return states
        time.sleep(1)
    subprocess.run(["scancel", job], timeout=30)
    pytest.fail(f"job {job} did not end within {timeout} s (cancelled)")


_ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


# ------------------------------------------------------------------------- no cluster needed
def test_run_folder_is_named_from_the_slurm_job(monkeypatch):
    from mae_zoo.utils.runtime import run_name

    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    assert run_name("2026-11-25_10-00-00") == "2026-11-25_10-00-00"  # local: the timestamp
    monkeypatch.setenv("SLURM_JOB_ID", "417")
    monkeypatch.setenv("SLURM_JOB_NAME", "mae_zoo-train")
    assert run_name("2026-11-25_10-00-00") == "slurm-417"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "400")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_name("x") == "slurm-400_3"
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: runs must not share a folder
    assert run_name("x") == "x"


def test_fsdp_on_cpu_is_a_clear_error():
    from omegaconf import OmegaConf

    from mae_zoo.core.errors import ConfigError
    from mae_zoo.utils.runtime import check_launch

    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 2}, "strategy": {"name": "fsdp"}})
    with pytest.raises(ConfigError, match="strategy=fsdp needs CUDA GPUs"):
        check_launch(cfg, multirun=False, launcher=None)


def test_launcher_mismatch_is_an_error_before_submission(tmp_path):
    sweep = tmp_path / "sweep"
    res = _train(
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.tasks_per_node=2",
        "seed=0,1",
        "debug=smoke",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("mae_zoo: configuration error: job #0 (seed=0 ")
    assert "hydra.launcher.tasks_per_node=2 but trainer.devices=1" in res.stderr
    assert not (sweep / ".submitit").exists()  # nothing was submitted
    res = _train(
        "-m",
        "hydra/launcher=slurm",
        "trainer.devices=auto",
        "seed=0",
        "debug=smoke",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        timeout=120,
    )
    assert res.returncode != 0 and "trainer.devices='auto': under Slurm set it to an integer" in res.stderr


def test_launcher_resources_follow_the_trainer(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from mae_zoo.core.errors import ConfigError
    from mae_zoo.slurm import job_resources

    def resources(*overrides: str) -> dict:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        return job_resources(
            cfg, OmegaConf.to_container(launcher, resolve=True), OmegaConf.to_container(launcher, resolve=False)
        )

    try:
        assert resources() == {"tasks_per_node": 1, "nodes": 1}
        assert resources("trainer.devices=4", "trainer.num_nodes=2", "trainer.accelerator=gpu") == {
            "tasks_per_node": 4,
            "nodes": 2,
            "gpus_per_node": 4,
        }
        assert resources("trainer.devices=2", "hydra.launcher.tasks_per_node=2")["tasks_per_node"] == 2
        with pytest.raises(ConfigError, match="hydra.launcher.nodes=2 but trainer.num_nodes=1"):
            resources("hydra.launcher.nodes=2")
        with pytest.raises(ConfigError, match="ddp_spawn"):
            resources("trainer.devices=2", "strategy=ddp_spawn")
    finally:
        GlobalHydra.instance().clear()


def test_jobs_with_different_resources_go_out_as_separate_arrays():
    """launch_checked with submitit's submission replaced by a recorder: the grouping and the order."""
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from mae_zoo.slurm import launch_checked

    def cfg(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)

    try:
        master = cfg()
        loader = SimpleNamespace(load_sweep_config=lambda master_cfg, overrides: cfg(*overrides))
        launcher = SimpleNamespace(
            config=master,
            hydra_context=SimpleNamespace(config_loader=loader),
            params=OmegaConf.to_container(master.hydra.launcher, resolve=True),
        )
        calls = []

        def submit(job_overrides, start):
            calls.append((launcher.params["tasks_per_node"], [o[-1] for o in job_overrides], start))
            return [f"job{start + i}" for i in range(len(job_overrides))]

        jobs = [["trainer.devices=1", "seed=0"], ["trainer.devices=2", "seed=1"], ["trainer.devices=1", "seed=2"]]
        assert launch_checked(launcher, jobs, 10, submit) == ["job10", "job11", "job12"]
        assert calls == [(1, ["seed=0"], 10), (1, ["seed=2"], 12), (2, ["seed=1"], 11)]
        assert launcher.params["tasks_per_node"] == 1  # restored
    finally:
        GlobalHydra.instance().clear()


def test_sbatch_script_matches_the_trainer(tmp_path):
    out = tmp_path / "job.sh"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mae_zoo.slurm",
            "--output",
            str(out),
            "debug=smoke",
            "trainer.devices=2",
            "trainer.num_nodes=3",
            "strategy=ddp",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.account=proj",
            "hydra.launcher.timeout_min=240",
            "hydra.launcher.mem_gb=64",
            "hydra.launcher.setup=[module load cuda]",
            f"paths.log_dir={tmp_path}/runs",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    script = out.read_text()
    for line in (
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --time=240",
        "#SBATCH --mem=64G",
        "#SBATCH --signal=USR1@90",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={tmp_path}/runs/train/slurm-%j.out",
        "module load cuda",
    ):
        assert line in script.splitlines(), line
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert srun == [
        f"srun {sys.executable} -m mae_zoo.train debug=smoke trainer.devices=2 trainer.num_nodes=3 "
        f"strategy=ddp paths.log_dir={tmp_path}/runs"
    ]
    assert (tmp_path / "runs" / "train").is_dir()  # Slurm does not create the --output folder itself
    bad = subprocess.run(
        [sys.executable, "-m", "mae_zoo.slurm", "hydra.launcher.tasks_per_node=4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "tasks_per_node=4 but trainer.devices=1" in bad.stderr


# ------------------------------------------------------------------------- against a real cluster
@slurm
@pytest.mark.slow
def test_multirun_through_the_slurm_launcher(tmp_path):
    """Test 1: a 2-job `debug=smoke` sweep on hydra/launcher=slurm; both results come back."""
    sweep = tmp_path / "sweep"
    t0 = time.time()
    try:
        res = _train(
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=debug",
            "debug=smoke",
            *TINY,
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
            timeout=240,
        )
    except subprocess.TimeoutExpired:
        _cancel_sweep_jobs(sweep)
        raise
    assert res.returncode == 0, res.stderr[-3000:]
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2
    for path in results:
        status, ret = pickle.loads(path.read_bytes())
        assert status == "success" and ret.return_value > 0  # val/loss came back to the launcher
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["trainer/global_step"] == 4
        record = json.loads((sweep / job / "slurm.jsonl").read_text().splitlines()[0])
        assert record["slurm_array_task_id"] == job and record["slurm_ntasks"] == "1"
        # the result pickle can come back before Slurm has marked the job ended: wait for its final state
        assert _wait_for_job(f"{record['slurm_array_job_id']}_{job}", timeout=60) == ["COMPLETED"]
    with open(sweep / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["seed"], r["status"], r["trainer/global_step"]) for r in rows] == [
        ("0", "0", "ok", "4"),
        ("1", "1", "ok", "4"),
    ]
    print(f"2-job slurm multirun: {time.time() - t0:.1f} s")


@slurm
@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes_at_its_step(tmp_path):
    """Test 2: `scancel --signal=USR1` mid-run -> Lightning saves hpc_ckpt_1 and requeues -> the same
    array task reruns in the same folder, resumes at the step it reached and stops at max_steps."""
    sweep = tmp_path / "sweep"
    max_steps = 40
    args = [
        sys.executable,
        "-m",
        "mae_zoo.train",
        "-m",
        "hydra/launcher=slurm",
        *TINY,
        "data.num_train=160",
        "data.num_val=16",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_epochs=-1",
        f"trainer.max_steps={max_steps}",
        "trainer.limit_val_batches=1",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.reconstructions=null",
        "callbacks.online_probe=null",
        "seed=0",
        f"hydra.sweep.dir={sweep}",
    ]
    t0 = time.time()
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = sweep / "0"
    last = run / "checkpoints" / "last.ckpt"
    signalled = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and _ckpt_step(last) >= 4:
                first = json.loads((run / "slurm.jsonl").read_text().splitlines()[0])
                job = (
                    f"{first['slurm_array_job_id']}_{first['slurm_array_task_id']}"
                    if "slurm_array_job_id" in first
                    else first["slurm_job_id"]
                )  # a 1-job sweep goes out as a plain job, not an array
                subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
                signalled = _ckpt_step(last)
                break
            time.sleep(0.2)
        assert signalled is not None, "the job never reached step 4 (or finished before it was signalled)"
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            _cancel_sweep_jobs(sweep)
    assert proc.returncode == 0, out[-3000:]
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in run.iterdir())
    saved = _ckpt_step(hpc)
    assert signalled <= saved < max_steps, (signalled, saved)  # saved mid-run, after the signal
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainer/start_step"] == saved  # the second run started where the first stopped
    assert metrics["trainer/global_step"] == max_steps  # and stopped at the intended step
    starts = [json.loads(line) for line in (run / "slurm.jsonl").read_text().splitlines()]
    assert [s.get("slurm_restart_count", "0") for s in starts] == ["0", "1"]  # one folder, two starts
    assert starts[0]["slurm_job_id"] == starts[1]["slurm_job_id"]  # scontrol requeue keeps the job id
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert f"resuming from {hpc}" in logs
    print(f"preempt + requeue + resume: {time.time() - t0:.1f} s, hpc checkpoint at step {saved}")


class MaskRecorder(pl.Callback):
    """Test helper, instantiated inside the Slurm job (+callbacks.mask_recorder._target_=...): records
    the training masks this rank drew, as the model used them, and saves them at the end of fit."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.masks: list[torch.Tensor] = []
        inner = pl_module.forward

        def recording_forward(*args, **kwargs):
            out = inner(*args, **kwargs)
            if pl_module.training:
                self.masks.append(out.mask.detach().cpu().clone())
            return out

        pl_module.forward = recording_forward  # type: ignore[method-assign]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "masks": self.masks,
                "effective_batch": pl_module.schedule_info["effective_batch"],
                "strategy": type(trainer.strategy).__name__,
                "cluster": type(trainer.strategy.cluster_environment).__name__,
            },
            Path(trainer.default_root_dir) / f"masks_rank{trainer.global_rank}.pt",
        )


@slurm
@pytest.mark.slow
def test_two_rank_ddp_under_srun_draws_different_masks(tmp_path):
    """Test 3: `python -m mae_zoo.slurm --submit` writes the sbatch script and submits it; 2 CPU DDP ranks run
    under srun (tasks_per_node=2, Slurm starts them, not Lightning); both ranks share the run folder named
    after the job id and drew different masks at every step."""
    script = tmp_path / "ddp.sh"
    logs = tmp_path / "runs"
    t0 = time.time()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mae_zoo.slurm",
            "--submit",
            "--output",
            str(script),
            "debug=smoke",
            *TINY,
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "strategy=ddp",
            "callbacks.online_probe=null",
            "callbacks.reconstructions=null",
            f"paths.log_dir={logs}",
            "+callbacks.mask_recorder._target_=tests.test_slurm.MaskRecorder",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )  # sbatch passes env on
    assert res.returncode == 0, res.stderr[-2000:]
    assert "#SBATCH --ntasks-per-node=2" in script.read_text()
    job = res.stdout.strip().split(";")[0]
    assert job.isdigit(), res.stdout
    states = _wait_for_job(job, timeout=300)
    run = logs / "train" / f"slurm-{job}"
    log = logs / "train" / f"slurm-{job}.out"
    assert states == ["COMPLETED"], (states, log.read_text()[-3000:] if log.is_file() else "no log")
    ranks = [torch.load(run / f"masks_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r, rec in enumerate(ranks):
        assert rec["rank"] == r and rec["world_size"] == 2
        assert rec["strategy"] == "DDPStrategy" and rec["cluster"] == "SLURMEnvironment"  # srun made the ranks
        assert rec["effective_batch"] == 2 * 16  # per-device batch x real world size
        assert len(rec["masks"]) == 4  # debug=smoke: 4 steps
    for m0, m1 in zip(ranks[0]["masks"], ranks[1]["masks"]):
        assert m0.shape == m1.shape and m0.float().mean() == m1.float().mean()  # same ratio ...
        assert not torch.equal(m0, m1)  # ... different tokens
    assert json.loads((run / "metrics.json").read_text())["trainer/global_step"] == 4
    print(f"2-rank srun DDP job: {time.time() - t0:.1f} s")
