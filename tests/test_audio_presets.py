"""Audio presets compose and smoke-run (on the embedded tones where their data is not here), and the
evaluators (linear, kNN, prototype, raw log-mel baseline) run on an audio checkpoint."""

from pathlib import Path

import pytest
import torch

from mae_zoo.eval import evaluate
from mae_zoo.train import train
from tests.conftest import compose_cfg

TINY_DATA = ["data.num_train=64", "data.num_val=32", "data.tones_seconds=1.5", "data.num_workers=0"]
SMOKE = ["debug=smoke", "print_config=false", "logger=none", "trainer.precision=32-true"]


@pytest.mark.parametrize(
    "experiment,checks",
    [
        ("audiomae_fsdd", {"mask.ratio": 0.8, "data.split": "disjoint", "module.decoder_mode": "local"}),
        ("birdmae", {"mask.ratio": 0.75, "data.sample_rate": 32000, "module.decoder_mode": "global"}),
        ("audiomae_as2m", {"mask.ratio": 0.8, "data.target_length": 1024, "module.decoder_mode": "local"}),
    ],
)
def test_audio_presets_compose_with_the_paper_recipe(experiment, checks, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    for key, value in checks.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    if experiment == "birdmae":
        assert cfg.final_eval._target_.endswith("PrototypeEvaluator") and cfg.optim.lr == 1e-4
        assert cfg.model.decoder.depth == 8 and cfg.optim.weight_decay == 1e-4
    if experiment == "audiomae_as2m":
        assert cfg.model.decoder.depth == 16 and cfg.model.encoder.embed_dim == 768 and cfg.optim.blr == 2e-4
        assert cfg.data.roll_mag_aug is True


@pytest.mark.parametrize(
    "experiment,extra",
    [
        # BirdSet is not here: the embedded tones at 32 kHz; the end-of-run prototype probe runs too
        (
            "birdmae",
            [
                "data=audio_tones",
                "data.sample_rate=32000",
                "data.clip_seconds=1.28",
                "model.decoder.depth=1",
                "final_eval.epochs=1",
                "final_eval.prototypes_per_class=2",
            ],
        ),
        # AudioSet is not here: 10.24 s tones (1024 frames, 64 x 8 tokens), roll + magnitude augmentation
        ("audiomae_as2m", ["data=audio_tones", "data.clip_seconds=10.24", "data.target_length=1024"]),
    ],
)
def test_audio_presets_smoke_run(experiment, extra, tmp_path):
    overrides = [f"experiment={experiment}", *extra, *TINY_DATA, *SMOKE, "model=audiomae_micro"]
    if experiment == "audiomae_as2m":
        overrides = [o if o != "data.tones_seconds=1.5" else "data.tones_seconds=11" for o in overrides]
        overrides += ["data.batch_size=4", "data.roll_mag_aug=true"]
    metrics = train(compose_cfg(overrides, tmp_path))
    assert metrics["train/loss"] > 0
    if experiment == "birdmae":
        assert 0 <= metrics["eval_prototype/top1"] <= 100


@pytest.fixture(scope="module")
def audio_ckpt_with_callbacks(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("audio_pretrain")
    train(compose_cfg(["modality=audio", *TINY_DATA, *SMOKE, "callbacks.online_probe.enabled=false"], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert torch.load(ckpt, weights_only=True)["mae_zoo"]["class"].endswith("AudioMAE")
    return ckpt


@pytest.mark.parametrize(
    "name,extra",
    [
        ("linear", []),
        ("knn", ["eval.k=5"]),
        ("knn", ["eval.features=pixels", "eval.k=5"]),  # the raw log-mel baseline
        ("prototype", ["eval.prototypes_per_class=2"]),
        ("finetune", ["eval.log_every_n_steps=0"]),
    ],
)
def test_evaluators_run_on_an_audio_checkpoint(name, extra, audio_ckpt_with_callbacks, tmp_path):
    cfg = compose_cfg(
        [f"ckpt={audio_ckpt_with_callbacks}", f"eval={name}", "debug=smoke", "print_config=false", *extra],
        tmp_path,
        config_name="eval",
    )
    metrics = evaluate(cfg)
    assert 0 <= metrics[f"eval_{name}/top1"] <= 100
    if "eval.features=pixels" in extra:
        assert metrics["eval_knn/feature_dim"] == 128 * 128  # the log-mel map itself


def test_multi_label_linear_probe_uses_bce_and_reports_map():
    from mae_zoo.evaluation.base import accuracy_metrics
    from mae_zoo.evaluation.linear import train_linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    w = torch.randn(16, 5, generator=g)
    y = (x @ w > 0.5).long()  # multi-hot: several labels per sample, linearly decodable
    assert (y.sum(1) > 1).any()
    _, metrics = train_linear_probe(
        x[:400], y[:400], x[400:], y[400:], 5, epochs=30, batch_size=64, optimizer="adamw", lr=1e-2
    )
    assert "eval_linear/top1" not in metrics and metrics["eval_linear/mAP"] > 90
    assert metrics["eval_linear/train_mAP"] > 90
    shuffled = y[400:][torch.randperm(200, generator=g)]
    assert accuracy_metrics("p", x[400:] @ w, shuffled, 5)["p/mAP"] < 70  # chance level is far below
    perfect = accuracy_metrics("p", y[400:].float(), y[400:], 5)["p/mAP"]
    assert perfect == pytest.approx(100.0)
