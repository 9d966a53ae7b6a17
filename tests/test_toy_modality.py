"""A new modality is one module plus one YAML: a toy 1-D modality (tests/toy_sequence.py and
tests/toy_conf/modality/sequence.yaml), written against the public hooks only, trains through the
CLI with debug=smoke, and its checkpoint reloads and evaluates like any other."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import ROOT, run_cli
from mae_zoo.api import load
from tests.toy_sequence import SequenceMAE, SineWaves

TOY_CONF = ROOT / "tests" / "toy_conf"


def test_toy_modality_trains_from_the_cli_and_reloads(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "modality=sequence",
        "debug=smoke",
        "print_config=false",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 4 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "probe_online/top1" in metrics  # the online probe works through the declared hooks
    assert not list((run_dir / "pictures").glob("*.png"))  # visualize() returns None: no picture, no error

    model = load(run_dir / "checkpoints" / "last.ckpt")
    assert isinstance(model, SequenceMAE) and model.layout.name == "grid:l"
    data = SineWaves(batch_size=8)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    generator = torch.Generator().manual_seed(0)
    out = model(batch, generator=generator)
    assert out.mask.sum(1).eq(12).all()  # random mask 0.75 of 16 patches
    assert model.embed(batch).shape == (8, 32) and model.embed_tokens(batch).shape == (8, 16, 32)
