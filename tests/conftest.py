from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("MAE_ZOO_DATA", ROOT.parent / "shared" / "data"))

# Small and quick: what most tests train with.
FAST = ["model=vit_micro", "debug=smoke", "print_config=false", "logger=csv"]
# A tiny GraphMAE GAT (conf/model/gat.yaml's keys), dropout off so that runs compare exactly.
TINY_GAT = {
    "kind": "gat",
    "hidden": 16,
    "layers": 2,
    "heads": 2,
    "activation": "prelu",
    "feat_drop": 0.0,
    "attn_drop": 0.0,
    "negative_slope": 0.2,
    "residual": False,
    "norm": None,
}

# Under pytest-xdist (make test: two workers on two cores) each worker takes one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
# Runs the tests start resolve precision=auto into a cache of their own, never the user's ~/.cache.
os.environ.setdefault("MAE_ZOO_PRECISION_CACHE", os.path.join(tempfile.mkdtemp(prefix="mae_zoo_precision_"), "p.json"))


def compose_cfg(overrides: list[str], run_dir: Path | None = None, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, with the run folder set to ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def factory(*overrides: str, fast: bool = True) -> DictConfig:
        return compose_cfg((FAST if fast else []) + list(overrides), tmp_path / "run")

    return factory


def run_cli(*args: str, timeout: float = 300, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mae_zoo.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def needs_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path
